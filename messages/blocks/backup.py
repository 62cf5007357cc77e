"""Backup messages: run results, listings, verification and alerts.

The views are plain data built by the bot from the catalog; no ORM rows here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from messages.blocks.kit import (
    LINE_CHARS,
    as_message,
    clip,
    context_block,
    ops_notice,
    phrase,
    section_block,
    sections,
    simple_message,
)
from messages.views import (
    Message,
)

# ---------------------------------------------------------------------------------------------
# Views


@dataclass(frozen=True)
class BackupTargetView:
    name: str
    ok: bool
    error: str | None = None
    removed: bool = False          # a staging copy deleted once two remote targets held it (B6)


@dataclass(frozen=True)
class BackupObjectView:
    run_id: str
    object_name: str
    kind: str                      # pg_full | neo4j | milvus | …
    status: str                    # running | ok | failed | deleted
    stored_size: int
    started_at: datetime | None
    targets: list[BackupTargetView] = field(default_factory=list)
    reason: str = ""

    @property
    def size_text(self) -> str:
        size = float(self.stored_size)
        for unit in ("B", "KiB", "MiB", "GiB"):
            if size < 1024 or unit == "GiB":
                return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
            size /= 1024
        return f"{size:.1f} TiB"


@dataclass(frozen=True)
class BackupRunView:
    run_id: str
    kind: str                      # what was asked for: full | postgresql | neo4j | milvus
    status: str                    # ok | warning (a target failed, the backup is held elsewhere) | failed
    objects: list[BackupObjectView] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)       # run-level errors (already redacted)
    failed_targets: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)      # "s3: connection refused", run errors
    started_by: str | None = None  # Slack user id; None for a scheduled run
    schedule: str | None = None    # scheduled job id
    previous_good: BackupObjectView | None = None
    local_kept: bool = False


@dataclass(frozen=True)
class BackupCheckView:
    run_id: str
    object_name: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    reread: list[str] = field(default_factory=list)


def backup_started(kind: str, locale: str) -> Message:
    """The ephemeral ack of ``/aegis backup run``."""
    return simple_message(locale, "backup", "started", "backup_started", kind=kind)


def backup_verify_started(ident: str, locale: str) -> Message:
    return simple_message(locale, "backup", "verify_started", "backup_verify_started", ident=ident)


def backup_result(run: BackupRunView, locale: str) -> Message:
    """The result of a run, posted in the channel where it was started."""
    header = phrase(locale, "backup", "result_header", run=run)
    lines = [clip(phrase(locale, "backup", "object_line", o=o), LINE_CHARS * 2) for o in run.objects]
    lines += [phrase(locale, "backup", "error_line", error=e) for e in run.errors]
    blocks = [section_block(header, "backup_result")]
    if lines:
        blocks += sections(lines, "backup_objects")
    if run.status == "failed":
        previous = phrase(locale, "backup", "previous_good", good=run.previous_good)
        blocks.append(section_block(previous, "backup_previous"))
    blocks.append(context_block(phrase(locale, "backup", "origin", run=run), "backup_origin"))
    return as_message(header, blocks, locale)


def backup_ops_alert(run: BackupRunView, locale: str) -> Message:
    """The ops channel's notice of a failed run, or of a run that lost one target (``status`` warning)."""
    if run.status == "failed":
        title = phrase(locale, "backup", "ops_failed_title", run=run)
        body = "\n".join([phrase(locale, "backup", "ops_failed_body", run=run),
                          phrase(locale, "backup", "previous_good", good=run.previous_good),
                          phrase(locale, "backup", "origin", run=run)])
    else:
        title = phrase(locale, "backup", "ops_warning_title", run=run)
        body = "\n".join([phrase(locale, "backup", "ops_warning_body", run=run),
                          phrase(locale, "backup", "origin", run=run)])
    return ops_notice(title, body, locale)


def backup_list(objects: list[BackupObjectView], locale: str) -> Message:
    """``/aegis backup list``: newest first, one line per stored object."""
    if not objects:
        return simple_message(locale, "backup", "list_empty", "backup_list")
    lines = [phrase(locale, "backup", "list_title", count=len(objects))]
    lines += [clip(phrase(locale, "backup", "list_line", o=o), LINE_CHARS) for o in objects]
    return as_message(lines[0], sections(lines, "backup_list"), locale)


def backup_verify_result(ident: str, checks: list[BackupCheckView], goods: list[BackupObjectView | None],
                         locale: str) -> Message:
    """``/aegis backup verify ID``: each object, what is wrong where (target, chunk), the previous good one."""
    ok = all(c.ok for c in checks)
    header = phrase(locale, "backup", "verify_header", ident=ident, ok=ok, count=len(checks))
    lines = [phrase(locale, "backup", "verify_line", c=c) for c in checks]
    blocks = [section_block(header, "backup_verify"), *sections(lines, "backup_verify_objects")]
    if not ok:
        seen: set[str] = set()
        for check, good in zip(checks, goods, strict=True):
            key = good.object_name if good else ""
            if not check.ok and key not in seen:
                seen.add(key)
                text = phrase(locale, "backup", "previous_good", good=good)
                blocks.append(section_block(text, f"backup_previous_{len(seen)}"))
    return as_message(header, blocks, locale)


def backup_job_alert(problem: str, job_id: str, error: str, locale: str) -> Message:
    """The ops channel's notice that a scheduled job could not do its work (``not_run``, ``wal_failed``,
    ``prune_failed``); ``error`` is already redacted."""
    title = phrase(locale, "backup", f"{problem}_title", job=job_id)
    body = phrase(locale, "backup", f"{problem}_body", job=job_id, error=error)
    return ops_notice(title, body, locale)
