"""PostgreSQL backup sources, WAL archive and restore against real PostgreSQL 15 clusters."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from recovery.backup.restore.postgres import RestoredCluster, RestoreError, RestoreOptions, restore_base_backup
from recovery.backup.sources.postgres import (
    BackupSourceError,
    BaseBackupStream,
    base_backup,
    client_env,
    extract_manifest,
    list_databases,
    logical_dump,
    supports_incremental,
)
from recovery.backup.wal import commands as wal
from recovery.backup.wal.commands import LocalWalStore, WalConflictError, WalCorruptError, fetch, push
from tests.harness.pgcluster import PG_BIN, PgNode, PgSingle, free_port

pytest_plugins = ["tests.harness.pgcluster"]

CHECKSUM_SQL = "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM t"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _make_table(node: PgNode, first: int, last: int) -> None:
    node.sql("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text NOT NULL)")
    node.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(%s::int, %s::int) g", first, last)


def _backup_to_file(dsn: str, path: Path, label: str = "test") -> BaseBackupStream:
    with base_backup(dsn, label=label) as bb, open(path, "wb") as out:
        shutil.copyfileobj(bb.stream, out, 1024 * 1024)
    return bb


def _restore(base: Path, backup: Path, restore_command: str | None = None,
             target_time: datetime | None = None) -> RestoredCluster:
    options = RestoreOptions(port=free_port(), socket_dir=base / "restored-sock", restore_command=restore_command,
                             target_time=target_time)
    with open(backup, "rb") as f:
        return restore_base_backup(f, base / "restored", options)


def _query(dsn: str, sql: str) -> tuple[object, ...]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return tuple(row)


def _wait_archived(node: PgNode, segment: str, timeout: float = 30) -> None:
    """Until pg_stat_archiver says ``segment`` (or a later one) was archived; cp alone is not atomic."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = node.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        if last and last[:24] >= segment:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{segment} not archived within {timeout}s\n{node.log_tail()}")


def test_full_base_backup_restores_identical_rows(pg_single: PgSingle, tmp_path: Path) -> None:
    node = pg_single.primary
    _make_table(node, 1, 5000)
    expected = node.sql(CHECKSUM_SQL)[0]
    backup = tmp_path / "base.tar"

    bb = _backup_to_file(node.dsn(), backup, label="backup_20250101_020000")
    lsn = re.compile(r"^[0-9A-F]+/[0-9A-F]+$")
    assert bb.start_lsn and lsn.match(bb.start_lsn) and bb.stop_lsn and lsn.match(bb.stop_lsn)
    assert bb.timeline == 1 and bb.server_version_num and bb.server_version_num // 10000 == 15
    assert bb.started_at and bb.finished_at and bb.started_at <= bb.finished_at
    with tarfile.open(backup) as tar:  # one tar: data, fetched WAL, label and manifest
        names = set(tar.getnames())
        label = tar.extractfile("backup_label").read().decode()  # type: ignore[union-attr]
    assert {"PG_VERSION", "global/pg_control", "backup_manifest"} <= names
    assert any(n.startswith("pg_wal/0000000") for n in names)
    assert "LABEL: backup_20250101_020000" in label and f"START TIMELINE: {bb.timeline}" in label
    assert re.search(rf"START WAL LOCATION: {bb.start_lsn} ", label)
    with open(backup, "rb") as f:
        manifest = json.loads(extract_manifest(f, tmp_path / "backup_manifest").read_text())
    wal_range = manifest["WAL-Ranges"][0]
    assert (wal_range["Start-LSN"], wal_range["End-LSN"]) == (bb.start_lsn, bb.stop_lsn)

    restored = _restore(pg_single.base_dir, backup)
    try:
        assert _query(restored.dsn, CHECKSUM_SQL) == expected
        assert _query(restored.dsn, "SHOW archive_mode") == ("off",)
        assert _query(restored.dsn, "SELECT pg_is_in_recovery()") == (False,)
        assert restored.port != node.port
    finally:
        restored.destroy()
    assert not restored.data_dir.exists()


def test_point_in_time_restore_stops_between_batches(pg_single: PgSingle, tmp_path: Path) -> None:
    node = pg_single.primary
    node.sql("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
    backup = tmp_path / "base.tar"
    _backup_to_file(node.dsn(), backup)

    _make_table(node, 1, 300)  # batch A
    batch_a = node.sql(CHECKSUM_SQL)[0]
    node.sql("SELECT pg_sleep(1)")
    target: datetime = node.sql("SELECT now()")[0][0]
    _make_table(node, 301, 600)  # batch B
    segment = node.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
    assert re.match(r"^[0-9A-F]+/[0-9A-F]+$", wal.switch_wal(node.dsn()))
    _wait_archived(node, segment)

    # restore_command goes through wal.fetch/LocalWalStore (system python: /root's is off limits to postgres).
    if SYSTEM_PYTHON.exists():
        restore_command = f"{SYSTEM_PYTHON} -P {wal.__file__} fetch --dir {pg_single.archive_dir} %f %p"
    else:
        restore_command = f"cp {pg_single.archive_dir}/%f %p"
    restored = _restore(pg_single.base_dir, backup, restore_command=restore_command, target_time=target)
    try:
        assert _query(restored.dsn, CHECKSUM_SQL) == batch_a
        assert _query(restored.dsn, "SELECT max(id) FROM t") == (300,)
        assert _query(restored.dsn, "SELECT pg_is_in_recovery()") == (False,)
        log = restored.log_tail(20000)
        assert "restored log file" in log and "recovery stopping before commit" in log
        # The copy is writable and does not push its new timeline into the production archive.
        with psycopg.connect(restored.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE after_pitr AS SELECT 1 AS x")
        assert not list(pg_single.archive_dir.glob("00000002*"))
    finally:
        restored.destroy()


def test_wal_push_is_idempotent_refuses_conflicts_and_fetch_round_trips(tmp_path: Path) -> None:
    store = LocalWalStore(tmp_path / "archive")
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    seg = pg_wal / "000000010000000000000003"
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, not chunk-aligned
    seg.write_bytes(payload)

    first = push(seg, store)
    assert not first.already_archived and first.size == len(payload)
    again = push(seg, store)
    assert again.already_archived and again.sha256 == first.sha256
    assert (tmp_path / "archive" / "000000010000000000000003.sha256").read_text().startswith(first.sha256)

    seg.write_bytes(payload[:-1] + b"\x00")
    with pytest.raises(WalConflictError):
        push(seg, store)
    assert wal.push_main(seg, store) == 1
    assert (tmp_path / "archive" / seg.name).read_bytes() == payload  # never overwritten

    for name in ("00000002.history", "000000010000000000000003.00000028.backup", "000000010000000000000004.partial"):
        (pg_wal / name).write_bytes(name.encode())
        assert not push(pg_wal / name, store).already_archived
    with pytest.raises(ValueError):
        push(tmp_path / "postgresql.conf", store)

    restore_dir = tmp_path / "restore"
    restore_dir.mkdir()
    dest = restore_dir / "RECOVERYXLOG"
    assert fetch("000000010000000000000009", dest, store) is False
    assert not dest.exists() and not list(restore_dir.iterdir())  # no temp file left behind
    assert wal.main(["fetch", "--dir", str(store.directory), "000000010000000000000009", str(dest)]) == 1
    dest.write_bytes(b"stale")
    assert fetch("000000010000000000000003", dest, store) is True
    assert dest.read_bytes() == payload
    with pytest.raises(ValueError):
        fetch("../../etc/passwd", dest, store)

    # A damaged archive must abort recovery (exit > 125), not look like "absent" and end it early.
    archived = tmp_path / "archive" / "000000010000000000000003"
    archived.write_bytes(payload[:-1] + b"\x01")
    with pytest.raises(WalCorruptError):
        fetch("000000010000000000000003", dest, store)
    assert wal.fetch_main("000000010000000000000003", dest, store) == wal.FETCH_ERROR_EXIT
    assert wal.main(["fetch", "--dir", str(store.directory)]) == wal.FETCH_ERROR_EXIT  # usage error


def test_logical_dump_restores_into_a_fresh_database(pg_single: PgSingle, tmp_path: Path) -> None:
    node = pg_single.primary
    node.sql("CREATE DATABASE app")
    with psycopg.connect(node.dsn("app"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
        conn.execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
    assert list_databases(node.dsn()) == ["app", "postgres"]
    expected = _query(node.dsn("app"), CHECKSUM_SQL)

    dump = tmp_path / "app.dump"
    with logical_dump(node.dsn(), "app") as ld, open(dump, "wb") as out:
        shutil.copyfileobj(ld.stream, out)
    assert ld.database == "app" and ld.returncode == 0
    assert dump.read_bytes()[:5] == b"PGDMP"
    listing = subprocess.run([str(PG_BIN / "pg_restore"), "--list", str(dump)], capture_output=True, text=True)
    assert listing.returncode == 0 and "TABLE public t" in listing.stdout

    node.sql("CREATE DATABASE app_copy")
    restored = subprocess.run(
        [str(PG_BIN / "pg_restore"), "--exit-on-error", "--no-owner", "-d", node.dsn("app_copy"), str(dump)],
        capture_output=True, text=True,
    )
    assert restored.returncode == 0, restored.stderr
    assert _query(node.dsn("app_copy"), CHECKSUM_SQL) == expected


def test_pg_receivewal_receives_a_segment(pg_single: PgSingle, tmp_path: Path) -> None:
    node = pg_single.primary
    assert wal.create_slot_if_missing(node.dsn(), "aegis_wal") is True
    assert wal.create_slot_if_missing(node.dsn(), "aegis_wal") is False
    target = tmp_path / "streamed"
    target.mkdir()
    argv = wal.receivewal_command(node.dsn() + " password=s3cretpw", target, "aegis_wal", synchronous=True)
    assert "--slot" in argv and "--synchronous" in argv and not any("s3cretpw" in a for a in argv)

    proc = subprocess.Popen(argv, env=client_env(node.dsn()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        segment = node.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        _make_table(node, 1, 2000)
        wal.switch_wal(node.dsn())
        deadline = time.monotonic() + 30
        while not (target / segment).exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.1)
        assert (target / segment).exists(), sorted(p.name for p in target.iterdir())
        assert (target / segment).stat().st_size == 16 * 1024 * 1024
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_incremental_is_unavailable_on_postgresql_15(pg_single: PgSingle, tmp_path: Path) -> None:
    ok, reason = supports_incremental(pg_single.primary.dsn())
    assert ok is False
    assert reason == "PostgreSQL 15 has no incremental base backup (needs 17+); the daily slot takes a full backup"
    # The 17+ path is only constructed here, never run.
    manifest = tmp_path / "backup_manifest"
    manifest.write_text("{}")
    stream = base_backup(pg_single.primary.dsn(), label="incr", incremental_from_manifest=manifest)
    assert f"--incremental={manifest}" in stream.argv and stream.incremental
    with pytest.raises(FileNotFoundError):
        base_backup(pg_single.primary.dsn(), label="incr", incremental_from_manifest=tmp_path / "missing")


def test_base_backup_failures_are_reported_without_secrets(pg_single: PgSingle, tmp_path: Path) -> None:
    node = pg_single.primary
    node.sql("CREATE ROLE norepl LOGIN")
    dsn = f"host={node.socket_dir} port={node.port} user=norepl dbname=postgres password=hunter2hunter2"
    with pytest.raises(BackupSourceError) as err, base_backup(dsn, label="x") as bb:
        assert "hunter2hunter2" not in " ".join(bb.argv)
        bb.stream.read()
    assert "replication" in str(err.value) and "hunter2hunter2" not in str(err.value)

    with pytest.raises(BackupSourceError, match="incomplete"), base_backup(node.dsn(), label="x") as bb:
        bb.stream.read(1024)  # a consumer that stops early must not yield a "good" backup

    with pytest.raises(BackupSourceError, match="cannot connect"):
        with base_backup(f"host=127.0.0.1 port={free_port()} user=postgres password=hunter2hunter2", label="x"):
            pass


def test_restore_refuses_non_empty_or_unsafe_input(pg_tmp: Path) -> None:
    data_dir = pg_tmp / "data"
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("15\n")
    with pytest.raises(RestoreError, match="not empty"):
        restore_base_backup(io.BytesIO(b""), data_dir, RestoreOptions(port=free_port(), socket_dir=pg_tmp / "sock"))
    assert [p.name for p in data_dir.iterdir()] == ["PG_VERSION"]

    def tar_with(name: str) -> io.BytesIO:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
        buf.seek(0)
        return buf

    scratch = RestoreOptions(port=free_port(), socket_dir=pg_tmp / "sock")
    for i, bad in enumerate(["../escape", "/etc/evil", "base/../../escape"]):
        with pytest.raises(RestoreError, match="unsafe path"):
            restore_base_backup(tar_with(bad), pg_tmp / f"d{i}", scratch)
    assert not (pg_tmp / "escape").exists()
    with pytest.raises(RestoreError, match="not a pg_basebackup tar"):
        restore_base_backup(tar_with("hello.txt"), pg_tmp / "d9", scratch)
    # inconsistent options are refused when the option object is made, before any restore starts
    with pytest.raises(ValueError, match="timezone-aware"):
        RestoreOptions(port=1, socket_dir=pg_tmp, restore_command="true", target_time=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="needs a restore_command"):
        RestoreOptions(port=1, socket_dir=pg_tmp, target_time=datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="target_action"):
        RestoreOptions(port=1, socket_dir=pg_tmp, target_action="rewind")  # type: ignore[arg-type]
