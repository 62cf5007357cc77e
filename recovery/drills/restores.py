"""Restore one backup into the scratch environment and prove what came back (shared by every drill).

PostgreSQL: a verified copy is restored into a new data directory on a free port
(``restore.from_catalog.restore_postgres``, the same primitive as ``aegis restore postgres``), then
its tables are counted and checksummed and compared with what the catalog recorded at backup time
(``contents.compare``). Neo4j: imported into a new database ``aegis_drill_<id>_<n>`` (the import
checks node and relationship counts against the export's own trailer). Milvus: recreated as
``aegis_drill_<id>_<n>_<collection>`` — on a server URI in that server, for a Milvus Lite file in
a scratch Lite database beside the drill (a Lite file has one owner; production's is never opened).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from recovery.backup.catalog import MILVUS_KIND, NEO4J_KIND, POSTGRES_BASE_KINDS, exported_name
from recovery.backup.repository import VerifiedCopy
from recovery.backup.restore.from_catalog import restore_milvus, restore_neo4j, restore_postgres
from recovery.backup.restore.postgres import RestoredCluster
from recovery.backup.runner import Neo4jSource
from recovery.backup.wal.archive import TargetWalStore
from recovery.drills.contents import RESTORE_TEST_WORKERS, compare, recorded_formats, snapshot
from recovery.drills.context import DrillContext
from recovery.drills.scratch import Scratch
from recovery.redact import redact
from statemachines.json_types import JsonObject
from statemachines.models import BackupRecord, utcnow

if TYPE_CHECKING:   # neo4j is imported where a drill first needs it, as before
    from neo4j import Driver

    from recovery.backup.sources.neo4j import ImportStats


@dataclass
class RestoreResult:
    record_id: int
    run_id: str
    object_name: str
    kind: str
    ok: bool | None                  # None: could not be tested here (the reason says why)
    reason: str
    seconds: float
    details: list[str] = field(default_factory=list)
    wal_files: int = 0
    replay: JsonObject = field(default_factory=dict)
    blocked: bool = False            # the drill's environment refused the test (a non-empty scratch server)

    def as_dict(self) -> JsonObject:
        return {"record_id": self.record_id, "run_id": self.run_id, "object": self.object_name, "kind": self.kind,
                "ok": self.ok, "reason": self.reason, "seconds": round(self.seconds, 3), "details": self.details[:50],
                "blocked": self.blocked}


def _fail(record: BackupRecord, began: float, exc: BaseException) -> RestoreResult:
    return RestoreResult(record.id or 0, record.run_id, record.object_name, record.kind, False,
                         redact(f"{type(exc).__name__}: {exc}")[:800], time.monotonic() - began)


def restore_postgres_copy(ctx: DrillContext, scratch: Scratch, record: BackupRecord, *,
                          replay_wal: bool) -> tuple[RestoredCluster, int, int]:
    """Restore one good copy into a new scratch data dir; returns the cluster, WAL files, resource index.
    A full base backup in one pass (authenticated while streamed into a staging directory, moved into
    place after its final tag and checksum); an incremental chain verified first (``restore_postgres``)."""
    runner = ctx.runner
    data_dir, port, socket_dir, index = scratch.postgres()
    cluster, wal_files = restore_postgres(ctx.store, record, TargetWalStore(runner), data_dir, port=port,
                                          socket_dir=socket_dir, replay_wal=replay_wal,
                                          os_user=ctx.settings.os_user, pg_bin=ctx.settings.pg_bin)
    scratch.mark(index, "created")
    return cluster, wal_files, index


def test_postgres(ctx: DrillContext, scratch: Scratch, record: BackupRecord) -> RestoreResult:
    """The base backup alone (consistent at its end point), compared with the recorded contents."""
    began = time.monotonic()
    index = None
    try:
        cluster, _, index = restore_postgres_copy(ctx, scratch, record, replay_wal=False)
        restored_at = time.monotonic()
        contents = record.contents or {}   # checksummed in the format the catalog recorded (v2 or v3)
        check = compare(contents, snapshot(cluster.dsn, parallel_workers=RESTORE_TEST_WORKERS,
                                           formats=recorded_formats(contents)))
        checked_at = time.monotonic()
    except Exception as exc:
        return _fail(record, began, exc)
    finally:
        if index is not None:   # stopped now; its files are deleted while the drill goes on
            scratch.remove_postgres_soon(index)
    timings = (f"timings: restore {restored_at - began:.2f} s, contents check {checked_at - restored_at:.2f} s, "
               f"scratch server stopped {time.monotonic() - checked_at:.2f} s (its files deleted meanwhile)")
    if check.ok is False:
        reason = "restored, but its contents differ from the catalog's: " + "; ".join(check.problems)[:700]
    elif check.ok is None:
        reason = f"restored and started (pg_verifybackup passed); {check.basis}"
    else:
        reason = f"restored and started; {check.basis}"
    details = [timings] + [f"{t.database}.{t.table}: {t.detail}" for t in check.tables]
    return RestoreResult(record.id or 0, record.run_id, record.object_name, record.kind, check.ok is not False,
                         reason, time.monotonic() - began, details)


def _neo4j_driver(cfg: Neo4jSource) -> Driver:
    from neo4j import GraphDatabase

    auth = (cfg["user"], cfg["password"]) if cfg["password"] else None
    return GraphDatabase.driver(cfg["uri"], auth=auth)


def _result(record: BackupRecord, ok: bool | None, reason: str, began: float, *,
            details: list[str] | None = None, blocked: bool = False) -> RestoreResult:
    return RestoreResult(record.id or 0, record.run_id, record.object_name, record.kind, ok, reason,
                         time.monotonic() - began, details or [], blocked=blocked)


def _imported(stats: ImportStats, where: str) -> tuple[str, list[str]]:
    reason = (f"imported into {where}: {stats.nodes} nodes, {stats.relationships} relationships, "
              f"{stats.constraints} constraints, {stats.indexes} indexes — equal to what the backup recorded "
              "(its export's trailer), per label and relationship type too")
    details = [f"label {k}: {v} nodes" for k, v in stats.labels.items()]
    details += [f"type {k}: {v} relationships" for k, v in stats.relationship_types.items()]
    return reason, details


def test_neo4j(ctx: DrillContext, scratch: Scratch, record: BackupRecord) -> RestoreResult:
    """Into the drills' own server when ``drills.scratch.neo4j`` is set, else a new database beside production."""
    began = time.monotonic()
    if ctx.neo4j_scratch is None and ctx.neo4j is None:
        return _result(record, None, "not tested: no Neo4j server is configured to restore into "
                                     "(drills.scratch.neo4j or components.neo4j)", began)
    try:
        copy = ctx.runner.repository.verified_copy(record)
    except Exception as exc:
        return _fail(record, began, exc)
    if ctx.neo4j_scratch is not None:
        return _neo4j_scratch_server(ctx, scratch, record, copy, began)
    from neo4j.exceptions import ClientError

    assert ctx.neo4j is not None
    with _neo4j_driver(ctx.neo4j) as driver:
        name, index = scratch.neo4j_database(ctx.neo4j["uri"])
        try:
            driver.execute_query("CREATE DATABASE $name WAIT", name=name, database_="system")
        except ClientError as exc:   # Community edition: one user database, no CREATE DATABASE
            scratch.mark(index, "removed")
            return _result(record, None, (
                "not tested: the Neo4j server cannot create a scratch database "
                f"({redact(exc.message or str(exc))[:200]}); Neo4j Community has one user database — name a "
                "scratch server for drills in drills.scratch.neo4j: {uri, user, password_env}; the copy's "
                "checksum was verified"), began)
        scratch.mark(index, "created")
        try:
            stats = restore_neo4j(copy, ctx.runner.key, driver, name)
        except Exception as exc:
            return _fail(record, began, exc)
        finally:
            scratch.remove(index)
    reason, details = _imported(stats, f"a scratch database {name!r}")
    return _result(record, True, reason, began, details=details)


def _neo4j_scratch_server(ctx: DrillContext, scratch: Scratch, record: BackupRecord, copy: VerifiedCopy,
                          began: float) -> RestoreResult:
    from recovery.drills import graph_scratch

    cfg = ctx.neo4j_scratch
    assert cfg is not None
    database = cfg["database"]
    with _neo4j_driver(cfg) as driver:
        try:
            found = graph_scratch.contents(driver, database)
        except Exception as exc:
            return _fail(record, began, exc)
        if not found.empty:   # never import over, nor later wipe, data the drill did not put there
            return _result(record, None, graph_scratch.refusal(cfg["uri"], database, found), began, blocked=True)
        index = scratch.neo4j_server(cfg["uri"], database)
        try:
            stats = restore_neo4j(copy, ctx.runner.key, driver, database)
        except Exception as exc:
            return _fail(record, began, exc)
        finally:   # what the import left (whole or part) is the drill's: recorded, then wiped
            try:
                scratch.note(index, state="created", observed=graph_scratch.contents(driver, database).as_dict())
            finally:
                scratch.remove(index)
    reason, details = _imported(stats, f"the scratch server's empty database {database!r}")
    return _result(record, True, reason + "; emptied afterwards", began, details=details)


def _milvus_is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


def test_milvus(ctx: DrillContext, scratch: Scratch, record: BackupRecord) -> RestoreResult:
    from pymilvus import MilvusClient

    began = time.monotonic()
    try:
        copy = ctx.runner.repository.verified_copy(record)
    except Exception as exc:
        return _fail(record, began, exc)
    source = exported_name(record.object_name, "milvus") or record.object_name
    server = ctx.milvus_uri if ctx.milvus_uri and _milvus_is_server(ctx.milvus_uri) else None
    uri = server or str(scratch.own_dir("milvus") / "milvus.db")
    name, index = scratch.milvus_collection(uri, source)
    client = MilvusClient(uri=uri)
    try:
        scratch.mark(index, "created")
        stats = restore_milvus(copy, ctx.runner.key, client, name)
        schema = client.describe_collection(name)
        fields = len(schema.get("fields", []))
    except Exception as exc:
        return _fail(record, began, exc)
    finally:
        try:
            if client.has_collection(name):
                client.drop_collection(name)
            scratch.mark(index, "removed")
        finally:
            client.close()
            if server is None:
                from milvus_lite.server_manager import server_manager_instance  # type: ignore[import-untyped]

                server_manager_instance.release_server(uri)
    return RestoreResult(record.id or 0, record.run_id, record.object_name, record.kind, True,
                         f"recreated {source!r} as a scratch collection: {stats.total_rows} rows, {fields} fields "
                         "(counts checked against the export)", time.monotonic() - began)


def test_backup(ctx: DrillContext, scratch: Scratch, record: BackupRecord) -> RestoreResult:
    if record.kind in POSTGRES_BASE_KINDS:
        return test_postgres(ctx, scratch, record)
    if record.kind == NEO4J_KIND:
        return test_neo4j(ctx, scratch, record)
    if record.kind == MILVUS_KIND:
        return test_milvus(ctx, scratch, record)
    return RestoreResult(record.id or 0, record.run_id, record.object_name, record.kind, None,
                         f"not tested: no restore test for kind {record.kind}", 0.0)


def replay_point(cluster: RestoredCluster) -> JsonObject:
    """What recovery reached: the newest replayed transaction's commit time and the replay LSN."""
    import psycopg

    with psycopg.connect(cluster.dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT pg_last_xact_replay_timestamp(), pg_last_wal_replay_lsn()::text, "
                           "pg_is_in_recovery()").fetchone()
    assert row is not None
    at: datetime | None = row[0]
    return {"last_xact_at": at, "replay_lsn": row[1], "in_recovery": bool(row[2]), "observed_at": utcnow()}
