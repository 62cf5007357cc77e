"""The backup catalog's words and lookups: the kinds a row can have, the object names, and the queries
the pipeline, restores and retention share.

A catalog row is a ``statemachines.models.BackupRecord`` (the table lives with the other tables,
so one Alembic history migrates them all). Catalog SQL still written elsewhere (to be gathered here):
``runner.BackupRunner`` (insert and update of its rows), ``incremental`` (``chain_for`` walks
``parent_run_id`` through ``good_base``), ``restore.from_catalog`` (the archived WAL listing),
``verify`` (writes results back), ``retention`` (rows to prune), ``wal.archive`` (one row per segment),
and in bot/: the CLI and Slack listings and the newest-good lookups of the backup service.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import col, select

from recovery.backup.wal.commands import check_wal_name
from statemachines.models import BackupRecord, require_id
from statemachines.store import Store

# --- kinds -------------------------------------------------------------------------------------------

KIND_FULL = "pg_full"
KIND_INCREMENTAL = "pg_incremental"
KIND_MANIFEST = "pg_manifest"       # a base backup's backup_manifest, kept so the next incremental needs no download
WAL_KIND = "pg_wal"
NEO4J_KIND = "neo4j"
MILVUS_KIND = "milvus"
LOGICAL_KIND = "pg_logical"      # a retention class; no run stores it yet
# The PostgreSQL base backups: what a restore (and an incremental chain) starts from.
POSTGRES_BASE_KINDS = (KIND_FULL, KIND_INCREMENTAL)
# Rows that are parts of other backups, not backups an operator lists or restores on their own.
SUPPORTING_KINDS = (WAL_KIND, KIND_MANIFEST)
WAL_RUN_ID = "wal"                   # every archived WAL file's row has this run id


# --- object names ------------------------------------------------------------------------------------

def base_object_name(run_id: str, kind: str) -> str:
    # Different names for full and incremental: a run whose incremental failed can still store a full.
    return f"{run_id}/postgres-{'incr' if kind == KIND_INCREMENTAL else 'base'}.tar.zst.aes"


def manifest_object_name(base_object: str) -> str:
    return base_object.removesuffix(".tar.zst.aes") + ".manifest.zst.aes"


def wal_object(name: str) -> str:
    return f"wal/{check_wal_name(name)}.zst.aes"


def segment_of(object_name: str) -> str:
    """``wal/000000010000000000000003.zst.aes`` → ``000000010000000000000003``."""
    return object_name.removeprefix("wal/").removesuffix(".zst.aes")


# --- queries -----------------------------------------------------------------------------------------

class BackupNotFound(LookupError):
    """No usable backup matches; the message says what exists."""


def new_run_id(store: Store, now: datetime | None = None) -> str:
    """``backup_YYYYMMDD_HHMMSS`` (UTC), with ``_2``, ``_3``… when a run already took that second."""
    base = f"backup_{(now or datetime.now(UTC)):%Y%m%d_%H%M%S}"
    with store.session() as session:
        taken = {r.run_id for r in session.exec(select(BackupRecord).where(
            col(BackupRecord.run_id).startswith(base)))}
    if base not in taken:
        return base
    n = 2
    while f"{base}_{n}" in taken:
        n += 1
    return f"{base}_{n}"


def records_for(store: Store, ident: str) -> list[BackupRecord]:
    """Every row of run ``ident``, or the row of object ``ident``, oldest first."""
    with store.session() as session:
        query = select(BackupRecord).where(
            (col(BackupRecord.run_id) == ident) | (col(BackupRecord.object_name) == ident))
        return list(session.exec(query.order_by(col(BackupRecord.id))))


def choose(store: Store, kinds: tuple[str, ...], ident: str | None = None) -> list[BackupRecord]:
    """The good catalog rows to restore: those of run/object ``ident``, else the newest run's."""
    with store.session() as session:
        query = select(BackupRecord).where(col(BackupRecord.kind).in_(kinds), BackupRecord.status == "ok")
        if ident:
            rows = list(session.exec(query.where(
                (col(BackupRecord.run_id) == ident) | (col(BackupRecord.object_name) == ident))
                .order_by(col(BackupRecord.id))))
            if not rows:
                raise BackupNotFound(f"no good {'/'.join(kinds)} backup {ident!r}: see `aegis backup list`")
            return rows
        newest = session.exec(query.order_by(col(BackupRecord.id).desc())).first()
        if newest is None:
            raise BackupNotFound(f"no good {'/'.join(kinds)} backup in the catalog yet: run `aegis backup run`")
        return list(session.exec(query.where(BackupRecord.run_id == newest.run_id).order_by(col(BackupRecord.id))))


def previous_good(store: Store, record: BackupRecord) -> BackupRecord | None:
    """The newest usable backup of the same kind and component taken before ``record``."""
    with store.session() as session:
        return session.exec(
            select(BackupRecord).where(BackupRecord.kind == record.kind, BackupRecord.component == record.component,
                                       BackupRecord.status == "ok", col(BackupRecord.id) < require_id(record))
            .order_by(col(BackupRecord.id).desc())
        ).first()


def good_base(store: Store, run_id: str) -> BackupRecord | None:
    """The usable full/incremental of a run (a run whose incremental failed may hold a full instead)."""
    with store.session() as session:
        return session.exec(
            select(BackupRecord).where(BackupRecord.run_id == run_id, BackupRecord.component == "postgres",
                                       col(BackupRecord.kind).in_(POSTGRES_BASE_KINDS), BackupRecord.status == "ok")
            .order_by(col(BackupRecord.id).desc())
        ).first()


def newest_good_base(store: Store) -> BackupRecord | None:
    """The newest usable PostgreSQL full or incremental: what the next incremental builds on."""
    with store.session() as session:
        return session.exec(
            select(BackupRecord).where(BackupRecord.component == "postgres",
                                       col(BackupRecord.kind).in_(POSTGRES_BASE_KINDS), BackupRecord.status == "ok")
            .order_by(col(BackupRecord.id).desc())
        ).first()


def manifest_record(store: Store, base: BackupRecord) -> BackupRecord | None:
    """The stored ``backup_manifest`` of base backup ``base``, if it was captured."""
    with store.session() as session:
        return session.exec(
            select(BackupRecord).where(BackupRecord.run_id == base.run_id, BackupRecord.kind == KIND_MANIFEST,
                                       BackupRecord.object_name == manifest_object_name(base.object_name),
                                       BackupRecord.status == "ok")
        ).first()


# --- restore tests (recovery/drills) -----------------------------------------------------------------

# The backups a restore test restores: base backups and exports (WAL is tested by replaying it).
RESTORE_TESTED_KINDS = (KIND_FULL, KIND_INCREMENTAL, NEO4J_KIND, MILVUS_KIND)


def restore_test_queue(store: Store, kinds: tuple[str, ...] = RESTORE_TESTED_KINDS) -> list[BackupRecord]:
    """Every retained good backup, least recently restore-tested first (never-tested ones before all)."""
    with store.session() as session:
        return list(session.exec(
            select(BackupRecord).where(col(BackupRecord.kind).in_(kinds), BackupRecord.status == "ok")
            .order_by(col(BackupRecord.restore_tested_at).asc().nulls_first(), col(BackupRecord.id))))


def mark_restore_test(store: Store, record_id: int, ok: bool, reason: str) -> None:
    """Record a restore test's outcome on the backup's row (a failed one is never chosen as clean)."""
    with store.session() as session:
        row = session.get(BackupRecord, record_id)
        if row is not None:
            row.restore_tested_at = datetime.now(UTC)
            row.restore_test_ok = ok
            row.restore_test_reason = reason[:1000]
            session.add(row)


def newest_good(store: Store, kinds: tuple[str, ...], *, component: str | None = None,
                before_run: str | None = None, restore_test_ok: bool | None = None) -> BackupRecord | None:
    """The newest usable backup of these kinds.

    ``restore_test_ok=True`` is the clean-point choice: a backup whose restore test failed is never
    returned (an untested one may be: only a test can prove it bad); ``None`` ignores restore tests.
    """
    query = select(BackupRecord).where(col(BackupRecord.kind).in_(kinds), BackupRecord.status == "ok")
    if component is not None:
        query = query.where(BackupRecord.component == component)
    if before_run is not None:
        query = query.where(BackupRecord.run_id != before_run)
    if restore_test_ok:
        query = query.where(col(BackupRecord.restore_test_ok).is_not(False))
    with store.session() as session:
        return session.exec(query.order_by(col(BackupRecord.id).desc())).first()
