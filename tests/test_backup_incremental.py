"""PostgreSQL 17 incremental chains (B1) against real servers: full → incremental → incremental through
the runner, the catalog's chain, ``restore_chain`` (exact rows, PITR, refusal of a corrupt link), and
the cases where the daily slot takes a full backup instead (PostgreSQL 15, ``summarize_wal`` off,
a failed incremental, the chain caps).

PostgreSQL 17 comes from ``scripts/install-pg17`` (``.tools/pg17``); the runner finds it through
``AEGIS_PG_BIN`` as production would find a PGDG client.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlmodel import col, select

from recovery.backup import incremental
from recovery.backup.incremental import ChainError, chain_for, plan_base_backup, restore_chain
from recovery.backup.restore.postgres import RestoreError, RestoreOptions
from recovery.backup.runner import BackupRunner, Sources
from recovery.backup.storage.local import LocalTarget
from recovery.backup.stream.crypto import BackupKey
from statemachines.models import BackupRecord
from statemachines.store import Store
from tests.harness.pgcluster import PgNode, PgSingle, free_port

PG17_BIN = Path(__file__).resolve().parent.parent / ".tools" / "pg17" / "bin"
CHECKSUM_SQL = "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM t"


@pytest.fixture
def pg17_bin(monkeypatch: pytest.MonkeyPatch) -> Path:
    if not (PG17_BIN / "pg_combinebackup").exists():
        pytest.fail("PostgreSQL 17 binaries missing: run scripts/install-pg17 (scripts/setup does)")
    monkeypatch.setenv("AEGIS_PG_BIN", str(PG17_BIN))
    return PG17_BIN


@contextlib.contextmanager
def _cluster(pg_bin: Path | None, settings: dict[str, str] | None = None) -> Iterator[PgSingle]:
    cluster = PgSingle.create(pg_bin=pg_bin, settings=settings)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg17(pg17_bin: Path) -> Iterator[PgSingle]:
    # initdb 17 needs nothing more than 15 here; summarize_wal (17+) is what incrementals need, and it
    # needs wal_level replica (pgcluster's default).
    with _cluster(pg17_bin, {"summarize_wal": "on"}) as cluster:
        yield cluster


@pytest.fixture
def store(tmp_path: Path) -> Store:
    db = Store(f"sqlite:///{tmp_path}/aegis.db")
    db.migrate()
    return db


@pytest.fixture
def key() -> BackupKey:
    return BackupKey.from_bytes(os.urandom(32))


def _rows(node: PgNode, first: int, last: int) -> None:
    node.sql("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text NOT NULL)")
    node.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(%s::int, %s::int) g", first, last)


def _query(dsn: str, sql: str) -> tuple[object, ...]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return tuple(row)


def _catalog(store: Store) -> list[BackupRecord]:
    with store.session() as session:
        return list(session.exec(select(BackupRecord).order_by(col(BackupRecord.id))))


def _wait_archived(node: PgNode, segment: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = node.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        if last and last[:24] >= segment:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{segment} not archived within {timeout}s\n{node.log_tail()}")


def test_chain_backs_up_incrementally_and_restores_exactly(
        pg17: PgSingle, pg17_bin: Path, pg_tmp: Path, store: Store, key: BackupKey, tmp_path: Path) -> None:
    node = pg17.primary
    target = LocalTarget(tmp_path / "backups")
    runner = BackupRunner(store, [target], key, Sources(postgres_dsn=node.dsn()))
    _rows(node, 1, 200_000)

    full = runner.run("postgresql")
    assert full.ok, full
    _rows(node, 200_001, 201_000)
    node.sql("UPDATE t SET v = 'changed' WHERE id % 5000 = 0")   # rewrites pages of the full's heap
    inc1 = runner.run("postgresql", incremental=True)
    assert inc1.ok, inc1
    _rows(node, 201_001, 202_000)
    node.sql("DELETE FROM t WHERE id BETWEEN 100 AND 199")
    inc2 = runner.run("postgresql", incremental=True)
    assert inc2.ok, inc2
    at_inc2 = node.sql(CHECKSUM_SQL)[0]

    # catalog: kinds, manifests beside each base backup, and the parent chain
    rows = {(r.run_id, r.kind): r for r in _catalog(store)}
    assert [(r.kind, r.status) for r in full.records] == [("pg_full", "ok"), ("pg_manifest", "ok")]
    assert [(r.kind, r.status) for r in inc1.records] == [("pg_incremental", "ok"), ("pg_manifest", "ok")]
    assert [(r.kind, r.status) for r in inc2.records] == [("pg_incremental", "ok"), ("pg_manifest", "ok")]
    f, i1, i2 = rows[full.run_id, "pg_full"], rows[inc1.run_id, "pg_incremental"], rows[inc2.run_id, "pg_incremental"]
    assert f.parent_run_id is None and i1.parent_run_id == full.run_id and i2.parent_run_id == inc1.run_id
    assert i1.reason == "" and i2.reason == "" and f.reason == ""
    assert i1.object_name == f"{inc1.run_id}/postgres-incr.tar.zst.aes"
    assert rows[inc1.run_id, "pg_manifest"].object_name == f"{inc1.run_id}/postgres-incr.manifest.zst.aes"
    assert [r.run_id for r in chain_for(store, inc2.run_id)] == [full.run_id, inc1.run_id, inc2.run_id]
    assert i1.start_lsn and i2.start_lsn and i1.timeline == i2.timeline == 1
    # the incrementals carry changed blocks (+ the WAL that makes them consistent), not the database
    for inc in (i1, i2):
        assert inc.source_size < f.source_size / 2, (inc.source_size, f.source_size)
        assert inc.stored_size < f.stored_size / 4, (inc.stored_size, f.stored_size)

    # restore the newest: exactly the rows at the second incremental
    restored = restore_chain(store, inc2.run_id, [target], key, pg_tmp / "restored",
                             RestoreOptions(port=free_port(), socket_dir=pg_tmp / "sock", pg_bin=pg17_bin))
    try:
        assert _query(restored.dsn, CHECKSUM_SQL) == at_inc2
        assert _query(restored.dsn, "SELECT pg_is_in_recovery()") == (False,)
        assert _query(restored.dsn, "SHOW server_version_num")[0].startswith("17")  # type: ignore[union-attr]
    finally:
        restored.destroy()
    assert sorted(p.name for p in pg_tmp.iterdir()) == ["sock"], "the chain's work directory is removed"

    # PITR on top of the combined backup: a batch committed after inc2, then a target, then another
    _rows(node, 300_001, 300_500)
    at_target = node.sql(CHECKSUM_SQL)[0]
    node.sql("SELECT pg_sleep(1)")
    target_time: datetime = node.sql("SELECT now()")[0][0]
    _rows(node, 300_501, 301_000)
    segment = node.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
    node.sql("SELECT pg_switch_wal()")
    _wait_archived(node, segment)
    pitr = restore_chain(store, inc2.run_id, [target], key, pg_tmp / "pitr",
                         RestoreOptions(port=free_port(), socket_dir=pg_tmp / "sock", pg_bin=pg17_bin,
                                        restore_command=f"cp {pg17.archive_dir}/%f %p", target_time=target_time))
    try:
        assert _query(pitr.dsn, CHECKSUM_SQL) == at_target
        assert "recovery stopping before commit" in pitr.log_tail(20000)
    finally:
        pitr.destroy()

    # the chain caps: a seventh link, or a full older than 8 days, starts a new chain (plan only)
    with tempfile.TemporaryDirectory() as work:
        later = plan_base_backup(store, node.dsn(), [target], key, incremental=True, workdir=Path(work),
                                 now=datetime.now(UTC) + timedelta(days=9))
        assert later.kind == "pg_full" and "days old" in later.reason and full.run_id in later.reason
        capped = incremental.CHAIN_MAX_INCREMENTALS
        try:
            incremental.CHAIN_MAX_INCREMENTALS = 2
            plan = plan_base_backup(store, node.dsn(), [target], key, incremental=True, workdir=Path(work))
        finally:
            incremental.CHAIN_MAX_INCREMENTALS = capped
        assert plan.kind == "pg_full" and "already has 2 incrementals" in plan.reason

    # one flipped byte in the first incremental's stored object: refused before anything is written
    stored = target.path_for(i1.object_name)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    with pytest.raises(RestoreError) as refused:
        restore_chain(store, inc2.run_id, [target], key, pg_tmp / "corrupt",
                      RestoreOptions(port=free_port(), socket_dir=pg_tmp / "sock", pg_bin=pg17_bin))
    message = str(refused.value)
    assert i1.object_name in message and "nothing was written" in message
    assert re.search(r"chunk \d+", message), message
    assert not (pg_tmp / "corrupt").exists()
    assert sorted(p.name for p in pg_tmp.iterdir()) == ["sock"]


def test_postgres_15_daily_slot_takes_a_full_and_says_why(
        pg_single: PgSingle, pg_tmp: Path, store: Store, key: BackupKey, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AEGIS_PG_BIN", raising=False)
    runner = BackupRunner(store, [LocalTarget(tmp_path / "b")], key, Sources(postgres_dsn=pg_single.primary.dsn()))
    report = runner.run("postgresql", incremental=True)
    assert report.ok, report
    [record] = report.records   # no manifest object: a 15 backup can never be an incremental's parent
    assert record.kind == "pg_full" and record.parent_run_id is None
    assert "PostgreSQL 15" in record.reason and "17" in record.reason and "full backup" in record.reason
    # restore_chain of a lone full: no combine step, the default (15) binaries
    expected = pg_single.primary.sql("SELECT count(*) FROM pg_database")[0]
    restored = restore_chain(store, report.run_id, runner.targets, key, pg_tmp / "restored",
                             RestoreOptions(port=free_port(), socket_dir=pg_tmp / "sock"))
    try:
        assert _query(restored.dsn, "SELECT count(*) FROM pg_database") == expected
        assert _query(restored.dsn, "SHOW server_version_num")[0].startswith("15")  # type: ignore[union-attr]
    finally:
        restored.destroy()


def test_summarize_wal_off_takes_a_full_and_a_failed_incremental_falls_back_to_full(
        pg17_bin: Path, store: Store, key: BackupKey, tmp_path: Path) -> None:
    with _cluster(pg17_bin) as cluster:   # summarize_wal defaults to off
        node = cluster.primary
        _rows(node, 1, 1000)
        runner = BackupRunner(store, [LocalTarget(tmp_path / "b")], key, Sources(postgres_dsn=node.dsn()))
        first = runner.run("postgresql", incremental=True)
        assert first.ok, first
        assert [r.kind for r in first.records] == ["pg_full", "pg_manifest"]
        assert "summarize_wal off" in first.records[0].reason

        # Switched on now: the summarizer starts from the WAL still in pg_wal (wal_keep_size covers the
        # full), so the next daily slot chains onto the full taken while it was off.
        node.sql("ALTER SYSTEM SET summarize_wal = on")
        node.sql("SELECT pg_reload_conf()")
        _rows(node, 1001, 2000)
        second = runner.run("postgresql", incremental=True)
        assert second.ok, second
        assert second.records[0].kind == "pg_incremental" and second.records[0].parent_run_id == first.run_id

        # Fault: the server lost its WAL summaries (as after wal_summary_keep_time). pg_basebackup
        # refuses the incremental; the failed row stays (ops see the chain broke) and the same run
        # takes a full.
        node.sql("CHECKPOINT")   # let the summarizer get past the parent's start (it summarizes lazily)
        deadline = time.monotonic() + 30
        while not node.sql("SELECT summarized_lsn >= %s::pg_lsn FROM pg_get_wal_summarizer_state()",
                           second.records[0].stop_lsn)[0][0]:
            assert time.monotonic() < deadline, "WAL summarizer did not catch up"
            time.sleep(0.1)
        summaries = node.data_dir / "pg_wal" / "summaries"
        assert list(summaries.glob("*.summary"))
        for summary in summaries.glob("*.summary"):
            summary.unlink()
        _rows(node, 2001, 3000)
        third = runner.run("postgresql", incremental=True)
        kinds = [(r.kind, r.status) for r in third.records]
        assert kinds == [("pg_incremental", "failed"), ("pg_full", "ok"), ("pg_manifest", "ok")], third
        failed, fallback = third.records[0], third.records[1]
        assert failed.parent_run_id == second.run_id and "WAL summaries are required" in failed.reason, failed.reason
        assert fallback.reason.startswith("the incremental failed") and "full backup" in fallback.reason
        assert not third.ok   # the run is reported, so the ops channel hears about the broken chain
        with pytest.raises(ChainError):
            chain_for(store, failed)
        # the next daily slot chains onto that full
        _rows(node, 3001, 4000)
        fourth = runner.run("postgresql", incremental=True)
        assert fourth.ok, fourth
        assert fourth.records[0].kind == "pg_incremental" and fourth.records[0].parent_run_id == third.run_id
        assert [r.run_id for r in chain_for(store, fourth.run_id)] == [third.run_id, fourth.run_id]

        # another cluster pointed at the same catalog: its daily slot must not chain onto this one's backups
        with _cluster(pg17_bin, {"summarize_wal": "on"}) as other, tempfile.TemporaryDirectory() as work:
            plan = plan_base_backup(store, other.primary.dsn(), runner.targets, key, incremental=True,
                                    workdir=Path(work))
            assert plan.kind == "pg_full" and "another cluster" in plan.reason and fourth.run_id in plan.reason
