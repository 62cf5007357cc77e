"""Parse the text of ``/aegis …`` into a command. Pure: no Slack, no database.

A parse failure is a ``Usage`` carrying the message key the user sees (``usage_error``), so a typo
always gets an ephemeral "what to type instead", never a stack trace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from statemachines.vocabulary import SCENARIOS, SEVERITIES

_KEY = re.compile(r"^(?:INC-)?\d+$", re.I)
# A run id (backup_YYYYMMDD_HHMMSS[_n]) or one object's name (backup_…/postgres-base.tar.zst.aes).
_BACKUP_ID = re.compile(r"^backup_[A-Za-z0-9_./-]{1,200}$")
BACKUP_KINDS = ("full", "postgresql", "neo4j", "milvus")


@dataclass(frozen=True)
class Declare:
    scenario: str
    severity: str
    summary: str


@dataclass(frozen=True)
class OpenDeclareForm:
    pass


@dataclass(frozen=True)
class Status:
    key: str | None


@dataclass(frozen=True)
class ListOpen:
    pass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class BackupRun:
    kind: str                     # full | postgresql | neo4j | milvus


@dataclass(frozen=True)
class BackupList:
    pass


@dataclass(frozen=True)
class BackupVerify:
    ident: str                    # run id or object name


@dataclass(frozen=True)
class DrillRun:
    name: str                     # checked against recovery.drills.drills.DRILLS by the drill desk


@dataclass(frozen=True)
class DrillList:
    pass


@dataclass(frozen=True)
class Report:
    pass                          # a fresh signed link to the report pages (bot/reports/), ephemeral


@dataclass(frozen=True)
class Usage:
    problem: str                  # usage_error key
    ctx: dict[str, str]


Command = (Declare | OpenDeclareForm | Status | ListOpen | Help | BackupRun | BackupList | BackupVerify
           | DrillRun | DrillList | Report | Usage)


def parse(text: str) -> Command:
    words = (text or "").split()
    if not words:
        return Help()
    verb, args = words[0].lower(), words[1:]
    if verb in ("help", "-h", "--help"):
        return Help()
    if verb == "list":
        return ListOpen()
    if verb == "status":
        if len(args) > 1 or (args and not _KEY.match(args[0])):
            return Usage("unknown_command", {"text": text.strip()})
        return Status(args[0].upper() if args else None)
    if verb == "incident":
        return _incident(args)
    if verb == "backup":
        return _backup(args, text)
    if verb in ("report", "reports") and not args:
        return Report()
    if verb == "drill":
        if len(args) == 2 and args[0].lower() == "run":
            return DrillRun(args[1].lower()[:80])
        if len(args) == 1 and args[0].lower() == "list":
            return DrillList()
    return Usage("unknown_command", {"text": text.strip()})


def _incident(args: list[str]) -> Command:
    if not args:
        return OpenDeclareForm()
    scenario = args[0].lower()
    if scenario not in SCENARIOS:
        return Usage("unknown_scenario", {"value": args[0]})
    if len(args) < 2 or args[1].lower() not in SEVERITIES:
        return Usage("unknown_severity", {"value": args[1] if len(args) > 1 else ""})
    summary = " ".join(args[2:]).strip()
    if not summary:
        return Usage("missing_summary", {})
    return Declare(scenario, args[1].lower(), summary[:1000])


def _backup(args: list[str], text: str) -> Command:
    sub = args[0].lower() if args else ""
    if sub == "run":
        kind = args[1].lower() if len(args) > 1 else "full"
        if kind not in BACKUP_KINDS or len(args) > 2:
            return Usage("unknown_backup_kind", {"value": " ".join(args[1:])})
        return BackupRun(kind)
    if sub == "list" and len(args) == 1:
        return BackupList()
    if sub == "verify":
        if len(args) < 2:
            return Usage("missing_backup_id", {})
        if len(args) > 2 or not _BACKUP_ID.match(args[1]):
            return Usage("backup_not_found", {"ident": " ".join(args[1:])})
        return BackupVerify(args[1])
    return Usage("unknown_backup_command", {"text": text.strip()})
