"""Retention (B1-B3): delete what is older than its kind's window, never what a restore still needs.

Rules, in order of precedence:
- the newest good backup of each series (kind, component and object — e.g. one Milvus collection)
  is never deleted, however old: a broken schedule must not leave a site with no backup at all;
- a kept incremental keeps every link of its chain (``parent_run_id`` back to the full), and a kept
  base backup keeps the ``pg_manifest`` object stored beside it;
- WAL is deleted only when it is older than its window *and* older than the start of the oldest
  base backup that is kept (comparing segment positions), so every kept base backup can still be
  rolled forward; with no kept base backup at all no WAL is deleted; timeline history files are
  kept (they are tiny and every later timeline needs them);
- failed rows age out like good ones (their objects are partial or staging copies).
Deleting removes the object from every target that holds it; the row stays, marked ``deleted``
(an audit trail). If a target cannot be reached the row stays as it is and the next prune retries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from recovery.backup.catalog import (
    KIND_MANIFEST,
    LIVE_STATUSES,
    POSTGRES_BASE_KINDS,
    STATUS_OK,
    SUPPORTING_KINDS,
    WAL_KIND,
    mark_deleted,
    retention_candidates,
    segment_of,
)
from recovery.backup.storage.base import StorageError, Target
from recovery.backup.wal.archive import segment_name
from recovery.redact import redact
from statemachines.models import BackupRecord, require_id, utcnow
from statemachines.store import Store


@dataclass
class RetentionPolicy:
    days: dict[str, float]          # kind -> days kept; a kind not listed is never pruned

    def window(self, kind: str) -> timedelta | None:
        return timedelta(days=self.days[kind]) if kind in self.days else None


@dataclass
class PruneReport:
    dry_run: bool
    deleted: list[str] = field(default_factory=list)              # object names (would be) deleted
    kept: list[tuple[str, str]] = field(default_factory=list)     # (object, why) for expired objects kept
    errors: list[str] = field(default_factory=list)


def _series(record: BackupRecord) -> tuple[str, str, str]:
    """What a backup is a version of: kind, component and its object name without the run id."""
    return record.kind, record.component, record.object_name.split("/", 1)[-1]


def _age_reference(record: BackupRecord) -> datetime:
    return record.finished_at or record.started_at


def _newest_good(rows: Iterable[BackupRecord]) -> set[int]:
    newest: dict[tuple[str, str, str], BackupRecord] = {}
    for row in rows:
        if row.status == STATUS_OK and row.kind not in SUPPORTING_KINDS:  # those follow their base
            key = _series(row)
            if key not in newest or require_id(row) > require_id(newest[key]):
                newest[key] = row
    return {row.id for row in newest.values() if row.id is not None}


def _chain_runs(kept_bases: list[BackupRecord], by_run: dict[str, BackupRecord]) -> set[str]:
    """Run ids of every link the kept base backups need (their parents, back to the full)."""
    needed: set[str] = set()
    for base in kept_bases:
        parent = base.parent_run_id
        while parent and parent not in needed:
            needed.add(parent)
            link = by_run.get(parent)
            parent = link.parent_run_id if link else None
    return needed


def plan(rows: list[BackupRecord], policy: RetentionPolicy, now: datetime) -> tuple[list[BackupRecord],
                                                                                 list[tuple[BackupRecord, str]]]:
    """Split the catalog into (to delete, expired but kept with a reason). Pure: no storage access."""
    live = [r for r in rows if r.status in LIVE_STATUSES]

    def expired(row: BackupRecord) -> bool:
        window = policy.window(row.kind)
        return window is not None and _age_reference(row) < now - window

    protected = _newest_good(live)
    bases = [r for r in live if r.kind in POSTGRES_BASE_KINDS and r.status == STATUS_OK]
    kept_bases = [r for r in bases if not expired(r) or r.id in protected]
    by_run = {r.run_id: r for r in bases}
    chain = _chain_runs(kept_bases, by_run)
    kept_base_runs = {r.run_id for r in kept_bases} | chain
    wal_floor = min((segment_name(r.timeline or 1, r.start_lsn)[8:] for r in bases
                     if r.run_id in kept_base_runs and r.start_lsn), default=None)

    delete: list[BackupRecord] = []
    kept: list[tuple[BackupRecord, str]] = []
    for row in live:
        if not expired(row):
            continue
        if row.id in protected:
            kept.append((row, "newest good backup of its kind"))
        elif row.kind in POSTGRES_BASE_KINDS and row.run_id in chain:
            kept.append((row, "a kept incremental backup builds on it"))
        elif row.kind == KIND_MANIFEST and row.run_id in kept_base_runs:
            kept.append((row, "manifest of a kept base backup"))
        elif row.kind == WAL_KIND:
            segment = segment_of(row.object_name)
            if segment.endswith(".history"):
                kept.append((row, "timeline history is always kept"))
            elif wal_floor is None:
                kept.append((row, "no base backup is kept, so no WAL can be judged unneeded"))
            elif segment[8:24] >= wal_floor:
                kept.append((row, "a kept base backup needs it to roll forward"))
            else:
                delete.append(row)
        else:
            delete.append(row)
    return delete, kept


def _delete_everywhere(row: BackupRecord, targets: list[Target]) -> list[str]:
    errors = []
    for target in targets:
        outcome = row.targets.get(target.name, {})
        if not outcome.get("ok") or outcome.get("removed"):
            # failed uploads may still have left a partial object behind: try, ignore "not there"
            with contextlib.suppress(StorageError):
                target.delete(row.object_name)
            continue
        try:
            target.delete(row.object_name)
        except StorageError as exc:
            errors.append(f"{row.object_name} on {target.name}: {redact(str(exc))[:200]}")
    return errors


def prune(store: Store, targets: list[Target], policy: RetentionPolicy, *, dry_run: bool = False,
          now: datetime | None = None) -> PruneReport:
    now = now or utcnow()
    delete, kept = plan(retention_candidates(store), policy, now)
    report = PruneReport(dry_run=dry_run, kept=[(r.object_name, why) for r, why in kept])
    for row in delete:
        if dry_run:
            report.deleted.append(row.object_name)
            continue
        errors = _delete_everywhere(row, targets)
        if errors:
            report.errors += errors
            continue
        mark_deleted(store, require_id(row), f"pruned {now:%Y-%m-%d %H:%M} UTC")
        report.deleted.append(row.object_name)
    return report
