"""The backup catalog: its words (kinds, statuses, object names) and **every** query on it.

A catalog row is a ``statemachines.models.BackupRecord`` (the table lives with the other tables,
so one Alembic history migrates them all): one row per stored object — a base backup, an
incremental's manifest, an archived WAL segment (run id ``wal``), a Neo4j or Milvus export. No
other module selects or updates these rows; they call the functions below (the runner inserts and
finishes rows, verify marks them verified, retention marks them deleted, the drills record restore
tests, the CLI and Slack list them, the monitor and the backup service ask for the newest good one).

**Good** is defined once (``_good``): the row's object was stored and the run finished (status
``ok`` — not ``running``, ``failed`` or ``deleted``); ``verified=True`` also requires that the last
``aegis backup verify`` of it passed; ``restore_test_ok=True`` refuses a backup whose last restore
test failed (an untested one may still be chosen: only a test can prove it bad).

**Listing rule** (``listing``, shared by ``aegis backup list`` and ``/aegis backup list``): newest
first; pruned (``deleted``) rows are hidden unless asked for (``--all``), and the supporting rows
(WAL segments, manifests) unless asked for (``--wal``); failed rows are shown, since an operator
must see a run that failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from recovery.backup.wal.commands import check_wal_name
from statemachines.models import BackupRecord, require_id, utcnow
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
# The backups a restore test restores: base backups and exports (WAL is tested by replaying it).
RESTORE_TESTED_KINDS = (KIND_FULL, KIND_INCREMENTAL, NEO4J_KIND, MILVUS_KIND)

# What a run of each kind (``aegis backup run KIND``) stores as usable restore points.
RUN_KINDS: dict[str, tuple[str, ...]] = {
    "postgresql": POSTGRES_BASE_KINDS, "neo4j": (NEO4J_KIND,), "milvus": (MILVUS_KIND,),
}


def kinds_of_run(run_kind: str) -> tuple[str, ...]:
    """The catalog kinds a run of ``run_kind`` (``full`` = every component) counts as backups."""
    if run_kind == "full":
        return tuple(kind for kinds in RUN_KINDS.values() for kind in kinds)
    return RUN_KINDS.get(run_kind, ())


# --- statuses ----------------------------------------------------------------------------------------

STATUS_RUNNING = "running"
STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_DELETED = "deleted"
# Rows whose objects may still be on a target: what retention judges (deleted ones are gone).
LIVE_STATUSES = (STATUS_OK, STATUS_FAILED)


# --- object names ------------------------------------------------------------------------------------

def base_object_name(run_id: str, kind: str) -> str:
    # Different names for full and incremental: a run whose incremental failed can still store a full.
    return f"{run_id}/postgres-{'incr' if kind == KIND_INCREMENTAL else 'base'}.tar.zst.aes"


def manifest_object_name(base_object: str) -> str:
    return base_object.removesuffix(".tar.zst.aes") + ".manifest.zst.aes"


def export_object_name(run_id: str, component: str, name: str) -> str:
    """A Neo4j database's or a Milvus collection's export: ``<run>/neo4j-<database>.jsonl.zst.aes``."""
    return f"{run_id}/{component}-{name}.jsonl.zst.aes"


def exported_name(object_name: str, component: str) -> str | None:
    """The database / collection an export object holds (``export_object_name`` read back); None for others."""
    prefix, sep, rest = object_name.rpartition(f"/{component}-")
    if not sep or not prefix or not rest.endswith(".jsonl.zst.aes"):
        return None
    return rest.removesuffix(".jsonl.zst.aes")


def wal_object(name: str) -> str:
    return f"wal/{check_wal_name(name)}.zst.aes"


def segment_of(object_name: str) -> str:
    """``wal/000000010000000000000003.zst.aes`` → ``000000010000000000000003``."""
    return object_name.removeprefix("wal/").removesuffix(".zst.aes")


class BackupNotFound(LookupError):
    """No usable backup matches; the message says what exists."""


class ChainError(RuntimeError):
    """The catalog does not hold a complete, usable chain for a backup."""


# --- the one definition of "good" --------------------------------------------------------------------

def _good(kinds: Iterable[str], *, verified: bool = False,
          restore_test_ok: bool | None = None) -> SelectOfScalar[BackupRecord]:
    """Rows of these kinds a restore may use (see the module docstring)."""
    query = select(BackupRecord).where(col(BackupRecord.kind).in_(tuple(kinds)), BackupRecord.status == STATUS_OK)
    if verified:
        query = query.where(col(BackupRecord.verified_at).is_not(None),
                            col(BackupRecord.verify_result)["ok"].as_boolean().is_(True))
    if restore_test_ok:
        query = query.where(col(BackupRecord.restore_test_ok).is_not(False))
    return query


def _of(ident: str) -> ColumnElement[bool]:
    """Rows of run ``ident`` or the row of object ``ident``."""
    return (col(BackupRecord.run_id) == ident) | (col(BackupRecord.object_name) == ident)


def newest_good(store: Store, kinds: Iterable[str], *, component: str | None = None, run_id: str | None = None,
                before_run: str | None = None, before: BackupRecord | None = None, verified: bool = False,
                restore_test_ok: bool | None = None) -> BackupRecord | None:
    """The newest good backup of these kinds — the catalog's one "newest good backup" query.

    ``component``/``run_id`` narrow it; ``before_run`` leaves that run out (the run that just failed);
    ``before`` takes only rows older than that row; ``verified`` and ``restore_test_ok`` as in ``_good``.
    """
    query = _good(kinds, verified=verified, restore_test_ok=restore_test_ok)
    if component is not None:
        query = query.where(BackupRecord.component == component)
    if run_id is not None:
        query = query.where(BackupRecord.run_id == run_id)
    if before_run is not None:
        query = query.where(BackupRecord.run_id != before_run)
    if before is not None:
        query = query.where(col(BackupRecord.id) < require_id(before))
    with store.session() as session:
        return session.exec(query.order_by(col(BackupRecord.id).desc())).first()


def previous_good(store: Store, record: BackupRecord) -> BackupRecord | None:
    """The newest good backup of the same kind and component taken before ``record``."""
    return newest_good(store, (record.kind,), component=record.component, before=record)


def good_base(store: Store, run_id: str) -> BackupRecord | None:
    """The good full/incremental of a run (a run whose incremental failed may hold a full instead)."""
    return newest_good(store, POSTGRES_BASE_KINDS, component="postgres", run_id=run_id)


def newest_good_base(store: Store) -> BackupRecord | None:
    """The newest good PostgreSQL full or incremental: what the next incremental builds on."""
    return newest_good(store, POSTGRES_BASE_KINDS, component="postgres")


def manifest_record(store: Store, base: BackupRecord) -> BackupRecord | None:
    """The stored ``backup_manifest`` of base backup ``base``, if it was captured."""
    query = _good((KIND_MANIFEST,)).where(BackupRecord.run_id == base.run_id,
                                          BackupRecord.object_name == manifest_object_name(base.object_name))
    with store.session() as session:
        return session.exec(query).first()


def choose(store: Store, kinds: tuple[str, ...], ident: str | None = None) -> list[BackupRecord]:
    """The good rows to restore: those of run/object ``ident``, else the newest good run's."""
    with store.session() as session:
        if ident:
            rows = list(session.exec(_good(kinds).where(_of(ident)).order_by(col(BackupRecord.id))))
            if not rows:
                raise BackupNotFound(f"no good {'/'.join(kinds)} backup {ident!r}: see `aegis backup list`")
            return rows
    newest = newest_good(store, kinds)
    if newest is None:
        raise BackupNotFound(f"no good {'/'.join(kinds)} backup in the catalog yet: run `aegis backup run`")
    with store.session() as session:
        return list(session.exec(_good(kinds).where(BackupRecord.run_id == newest.run_id)
                                 .order_by(col(BackupRecord.id))))


def retained_backups(store: Store) -> list[BackupRecord]:
    """Every good backup an operator restores (no WAL segments or manifests), oldest first."""
    query = _good(kind for kinds in RUN_KINDS.values() for kind in kinds)
    with store.session() as session:
        return list(session.exec(query.order_by(col(BackupRecord.id))))


# --- lookups by name and listing ---------------------------------------------------------------------

def new_run_id(store: Store, now: datetime | None = None) -> str:
    """``backup_YYYYMMDD_HHMMSS`` (UTC), with ``_2``, ``_3``… when a run already took that second."""
    base = f"backup_{(now or datetime.now(UTC)):%Y%m%d_%H%M%S}"
    with store.session() as session:
        taken = set(session.exec(select(BackupRecord.run_id).where(col(BackupRecord.run_id).startswith(base))))
    if base not in taken:
        return base
    n = 2
    while f"{base}_{n}" in taken:
        n += 1
    return f"{base}_{n}"


def records_for(store: Store, ident: str) -> list[BackupRecord]:
    """Every row of run ``ident``, or the row of object ``ident``, oldest first (any status)."""
    with store.session() as session:
        return list(session.exec(select(BackupRecord).where(_of(ident)).order_by(col(BackupRecord.id))))


def listing(store: Store, *, limit: int, include_deleted: bool = False,
            include_supporting: bool = False) -> list[BackupRecord]:
    """The catalog as operators see it, newest first (the listing rule: module docstring)."""
    query = select(BackupRecord)
    if not include_supporting:  # one row per WAL segment (and per manifest) would bury the backups
        query = query.where(col(BackupRecord.kind).not_in(SUPPORTING_KINDS))
    if not include_deleted:     # pruned: the objects are gone, the row is an audit trail
        query = query.where(BackupRecord.status != STATUS_DELETED)
    with store.session() as session:
        return list(session.exec(query.order_by(col(BackupRecord.id).desc()).limit(limit)))


# --- incremental chains ------------------------------------------------------------------------------

# A corrupt catalog (a parent_run_id loop) must not hang a restore.
_CHAIN_WALK_LIMIT = 1000


def _base_named(store: Store, backup: str) -> BackupRecord | None:
    """The good base backup of run ``backup``, else the row whose object is ``backup`` (any status)."""
    record = good_base(store, backup)
    if record is not None:
        return record
    with store.session() as session:
        return session.exec(select(BackupRecord).where(BackupRecord.object_name == backup)).first()


def chain_for(store: Store, backup: str | BackupRecord) -> list[BackupRecord]:
    """``[full, incremental 1, …, backup]`` by walking ``parent_run_id``; ``ChainError`` if any link is unusable.

    ``backup`` is a catalog record or a run id / object name of a PostgreSQL base backup.
    """
    record = _base_named(store, backup) if isinstance(backup, str) else backup
    if record is None:
        raise ChainError(f"no usable PostgreSQL base backup {backup!r} in the catalog")
    if record.kind not in POSTGRES_BASE_KINDS or record.component != "postgres":
        raise ChainError(f"{record.object_name} is a {record.kind} backup, not a PostgreSQL base backup")
    if record.status != STATUS_OK:
        raise ChainError(f"backup {record.run_id} ({record.object_name}) is {record.status}, not usable")
    chain = [record]
    while chain[-1].kind == KIND_INCREMENTAL:
        child = chain[-1]
        if not child.parent_run_id:
            raise ChainError(f"incremental {child.run_id} has no parent recorded: its chain is broken")
        parent = good_base(store, child.parent_run_id)
        if parent is None:
            raise ChainError(f"incremental {child.run_id} needs {child.parent_run_id}, which is missing or failed")
        if len(chain) > _CHAIN_WALK_LIMIT or any(r.id == parent.id for r in chain):
            raise ChainError(f"the chain of {record.run_id} loops at {parent.run_id}: the catalog is corrupt")
        chain.append(parent)
    chain.reverse()
    return chain


# --- writing rows ------------------------------------------------------------------------------------

def insert_record(store: Store, record: BackupRecord, *, replace_failed: bool = False) -> BackupRecord:
    """Add a new (running) row; ``replace_failed`` first drops an earlier non-ok row of the same object
    (a WAL segment PostgreSQL re-archives after a failed push). A good row is never replaced."""
    with store.session() as session:
        if replace_failed:
            stale = session.exec(select(BackupRecord).where(
                BackupRecord.run_id == record.run_id, BackupRecord.object_name == record.object_name,
                BackupRecord.status != STATUS_OK)).first()
            if stale is not None:
                session.delete(stale)
                session.flush()
        session.add(record)
        session.flush()
        session.refresh(record)
    return record


def update_record(store: Store, record_id: int, **values: object) -> BackupRecord:
    """Set columns of one row; returns the row as stored."""
    with store.session() as session:
        row = session.get(BackupRecord, record_id)
        if row is None:
            raise LookupError(f"backup catalog row {record_id} is gone")
        for field_name, value in values.items():
            setattr(row, field_name, value)
        session.add(row)
        session.flush()
        session.refresh(row)
        return row


def finish_record(store: Store, record_id: int, *, ok: bool, **values: object) -> BackupRecord:
    """A run's object is done: good (``ok``) or failed, with what the pipeline reported."""
    return update_record(store, record_id, status=STATUS_OK if ok else STATUS_FAILED, finished_at=utcnow(), **values)


def mark_failed(store: Store, record_id: int, reason: str) -> BackupRecord:
    return finish_record(store, record_id, ok=False, reason=reason)


def mark_verified(store: Store, record_id: int, *, ok: bool, problems: list[str], reread: list[str]) -> None:
    """Record a verification's outcome (``aegis backup verify``); the status is left as it is."""
    update_record(store, record_id, verified_at=utcnow(),
                  verify_result={"ok": ok, "problems": problems, "reread": reread})


def mark_deleted(store: Store, record_id: int, note: str) -> None:
    """Retention removed the object from every target; the row stays as an audit trail."""
    with store.session() as session:
        row = session.get(BackupRecord, record_id)
        if row is not None:
            row.status = STATUS_DELETED
            row.reason = (row.reason + " " if row.reason else "") + note
            session.add(row)


def retention_candidates(store: Store) -> list[BackupRecord]:
    """Every row whose object may still be stored (good or failed), oldest first: what retention judges."""
    with store.session() as session:
        return list(session.exec(select(BackupRecord).where(col(BackupRecord.status).in_(LIVE_STATUSES))
                                 .order_by(col(BackupRecord.id))))


# --- WAL ---------------------------------------------------------------------------------------------

def wal_rows(store: Store, name: str) -> list[BackupRecord]:
    """Every row of archived WAL file ``name`` (a failed push leaves a failed row), oldest first."""
    with store.session() as session:
        return list(session.exec(select(BackupRecord).where(
            BackupRecord.run_id == WAL_RUN_ID, BackupRecord.object_name == wal_object(name))
            .order_by(col(BackupRecord.id))))


def good_wal(store: Store, name: str) -> BackupRecord | None:
    """The good row of archived WAL file ``name``, if it was archived."""
    return next((r for r in wal_rows(store, name) if r.status == STATUS_OK), None)


def archived_wal(store: Store) -> dict[str, datetime | None]:
    """Every archived WAL file name with when it was pushed (the range a restore can replay)."""
    with store.session() as session:
        return {segment_of(r.object_name): r.started_at for r in session.exec(_good((WAL_KIND,)))}


def newest_archived_wal(store: Store) -> BackupRecord | None:
    """The WAL file archived most recently (the RPO's reference point)."""
    with store.session() as session:
        return session.exec(_good((WAL_KIND,)).order_by(col(BackupRecord.finished_at).desc())).first()


def newest_archived_at(store: Store) -> datetime | None:
    """When the newest WAL file was archived, or None before the first."""
    with store.session() as session:
        return session.exec(select(func.max(BackupRecord.finished_at)).where(
            BackupRecord.kind == WAL_KIND, BackupRecord.status == STATUS_OK)).first()


# --- restore tests (recovery/drills) -----------------------------------------------------------------

def restore_test_queue(store: Store, kinds: tuple[str, ...] = RESTORE_TESTED_KINDS) -> list[BackupRecord]:
    """Every retained good backup, least recently restore-tested first (never-tested ones before all)."""
    with store.session() as session:
        return list(session.exec(_good(kinds).order_by(col(BackupRecord.restore_tested_at).asc().nulls_first(),
                                                       col(BackupRecord.id))))


def mark_restore_test(store: Store, record_id: int, ok: bool, reason: str) -> None:
    """Record a restore test's outcome on the backup's row (a failed one is never chosen as clean)."""
    with store.session() as session:
        row = session.get(BackupRecord, record_id)
        if row is not None:
            row.restore_tested_at = datetime.now(UTC)
            row.restore_test_ok = ok
            row.restore_test_reason = reason[:1000]
            session.add(row)
