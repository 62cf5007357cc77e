"""Parse the text of ``/aegis …`` into a command. Pure: no Slack, no database.

A parse failure is a ``Usage`` carrying the message key the user sees (``usage_error``), so a typo
always gets an ephemeral "what to type instead", never a stack trace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.config import SCENARIOS, SEVERITIES

_KEY = re.compile(r"^(?:INC-)?\d+$", re.I)


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
class Usage:
    problem: str                  # usage_error key
    ctx: dict[str, str]


Command = Declare | OpenDeclareForm | Status | ListOpen | Help | Usage


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
