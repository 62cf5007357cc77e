"""Issue 7: a restore never ends early at a WAL gap; ``aegis wal stream`` survives a long primary outage.

Real PostgreSQL 15, the ``aegis`` CLI as a process, storage on a local dir, moto S3 and Azurite.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from recovery.backup.wal import commands as wal
from recovery.backup.wal.stream import BACKOFF_FIRST, BACKOFF_MAX, WalStreamer, restart_delay
from recovery.redact import MASK
from tests.harness.cli_workspace import (
    aegis,
    catalog,
    local,
    migrate_shared_catalog,
    restored_dsn,
    stop_restored,
    table_digest,
    write_config,
)
from tests.harness.pgcluster import PgSingle, free_port
from tests.harness.storage_servers import Azurite, MotoS3, aws_env, azurite, moto_s3  # noqa: F401


def wait_archived(pg: PgSingle, name: str) -> None:
    deadline = time.monotonic() + 60
    while pg.primary.sql("SELECT coalesce(last_archived_wal, '') >= %s FROM pg_stat_archiver", name)[0][0] is False:
        assert time.monotonic() < deadline, pg.primary.log_tail()
        time.sleep(0.2)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(300)
def test_a_restore_refuses_a_wal_gap_before_starting_anything(
    shared_dir: Path, pg_single: PgSingle, moto_s3: MotoS3, azurite: Azurite,  # noqa: F811
) -> None:
    from azure.storage.blob import BlobServiceClient

    primary = pg_single.primary
    bucket, container = moto_s3.create_bucket(), azurite.create_container()
    storage = [local(shared_dir),
               {"kind": "s3", "bucket": bucket, "endpoint_url": moto_s3.endpoint_url, "name": "s3"},
               {"kind": "azure", "container": container, "name": "azure",
                "connection_string_env": "AZURE_STORAGE_CONNECTION_STRING"}]
    write_config(shared_dir, storage, dsn=primary.dsn())
    migrate_shared_catalog(shared_dir)
    primary.sql("CREATE TABLE t (id int primary key, batch text, v text)")
    backup = aegis(shared_dir, "backup", "run", "postgresql", "--quiet")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    segments = []
    for batch in range(3):  # three segments after the backup, each with its own rows
        primary.sql("INSERT INTO t SELECT g, %s, md5(g::text) FROM generate_series(%s::int, %s::int) g",
                    str(batch), batch * 100 + 1, batch * 100 + 100)
        segments.append(primary.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
    wait_archived(pg_single, segments[-1])
    for path in sorted(pg_single.archive_dir.iterdir()):
        assert aegis(shared_dir, "wal", "push", str(path)).returncode == 0
    gap = segments[1]  # the middle one
    obj = f"wal/{gap}.zst.aes"
    assert catalog(shared_dir, f"object_name = '{obj}' AND status = 'ok'")

    # the segment disappears from every target
    s3 = moto_s3.client()
    saved = s3.get_object(Bucket=bucket, Key=obj)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=obj)
    BlobServiceClient.from_connection_string(azurite.connection_string).get_blob_client(container, obj).delete_blob()
    (shared_dir / "staging" / obj).unlink(missing_ok=True)  # the local staging copy (dropped once remotes hold it)

    fetched = aegis(shared_dir, "wal", "fetch", gap, str(shared_dir / "fetched"))
    assert fetched.returncode == 255, fetched.stderr  # "absent" (1) would end recovery there and promote
    assert gap in fetched.stderr and not (shared_dir / "fetched").exists()

    def refused_restore(label: str) -> None:
        data_dir, port = shared_dir / label, free_port()
        refused = aegis(shared_dir, "restore", "postgres", "--data-dir", str(data_dir), "--port", str(port),
                        "--quiet")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert gap in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        assert not data_dir.exists() and not Path(f"{data_dir}.wal-stage").exists() \
            and not Path(f"{data_dir}.sock").exists(), "nothing may be left half-written"
        assert not listening(port), "no server may be started"

    refused_restore("catalog-says-archived")
    # Without the catalog's rows the archive's own listing is used: the hole in the sequence is found.
    with sqlite3.connect(shared_dir / "aegis.db") as conn:
        conn.execute("DELETE FROM backup_catalog WHERE kind = 'pg_wal'")
    refused_restore("hole-in-the-listing")

    # the segment back on one target: the same restore goes through to the newest row
    s3.put_object(Bucket=bucket, Key=obj, Body=saved)
    data_dir = shared_dir / "complete"
    complete = aegis(shared_dir, "restore", "postgres", "--data-dir", str(data_dir), "--quiet")
    try:
        assert complete.returncode == 0, complete.stdout + complete.stderr
        assert table_digest(restored_dsn(complete.stdout)) == table_digest(primary.dsn())
    finally:
        stop_restored(data_dir)


def test_the_receivers_restart_back_off_grows_until_it_stayed_up() -> None:
    delays: list[float] = []
    delay = None
    for _ in range(8):  # a receiver that dies at once, again and again
        delay = restart_delay(delay, uptime=0.5, stable_seconds=60)
        delays.append(delay)
    assert delays[:4] == [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST, 8 * BACKOFF_FIRST]
    assert delays[-1] == BACKOFF_MAX
    assert restart_delay(delays[-1], uptime=59, stable_seconds=60) == BACKOFF_MAX
    assert restart_delay(delays[-1], uptime=61, stable_seconds=60) == BACKOFF_FIRST


PIPE_BYTES = 4096  # the smallest pipe Linux makes (one page)


class SmallPipeStreamer(WalStreamer):
    """The real streamer with pg_receivewal's stderr pipe shrunk to one page, so an outage fills it fast."""

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = super()._spawn()
        assert process.stderr is not None
        fcntl.fcntl(process.stderr.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        return process


@pytest.mark.timeout(120)
def test_wal_stream_survives_a_primary_outage_that_overflows_the_receivers_stderr(
    shared_dir: Path, pg_single: PgSingle, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    primary = pg_single.primary
    # A host list (as for a primary with failover candidates) makes every failed attempt long: the
    # receiver reports each host it tried, so one retry during the outage is more than the pipe holds.
    hosts = ",".join([str(primary.socket_dir)] * 60)
    dsn = f"host={hosts} port={primary.port} user=postgres dbname=postgres"
    monkeypatch.setenv("STREAM_TEST_SOCKET_PASSWORD", str(primary.socket_dir))  # a "secret" in its output
    archive = wal.LocalWalStore(shared_dir / "archive")
    streamer = SmallPipeStreamer(dsn, shared_dir / "spool", "aegis_gap_test", archive, interval=0.2)
    stop = threading.Event()
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(stats=streamer.run(stop)), daemon=True)
    caplog.set_level(logging.INFO, logger="aegis.wal.stream")
    runner.start()
    try:
        def shipped(name: str, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while archive.checksum(name) is None:
                assert runner.is_alive() and time.monotonic() < deadline, f"{name} not shipped"
                time.sleep(0.2)

        deadline = time.monotonic() + 30
        while not primary.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'aegis_gap_test' "
                              "AND active")[0][0]:
            assert runner.is_alive() and time.monotonic() < deadline
            time.sleep(0.2)
        primary.sql("CREATE TABLE t (id int)")
        shipped(primary.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0], 20)

        primary.stop("fast")
        deadline = time.monotonic() + 30
        while streamer.stats.receiver_output_bytes < 3 * PIPE_BYTES:
            assert time.monotonic() < deadline, f"receiver wrote only {streamer.stats.receiver_output_bytes} bytes"
            time.sleep(0.2)
        primary.start()
        primary.sql("INSERT INTO t VALUES (1)")
        after = primary.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        shipped(after, 30)  # the next completed segment after the primary returned
    finally:
        stop.set()
        runner.join(30)
    assert not runner.is_alive() and result["stats"].refused == []
    receiver_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pg_receivewal: ")]
    assert receiver_lines, "the receiver's output is logged"
    assert any(MASK in line for line in receiver_lines)
    assert not any(str(primary.socket_dir) in r.getMessage() for r in caplog.records), "logged redacted"


def test_the_gap_check_follows_the_timeline_switch_of_a_promotion() -> None:
    """After a failover at 0/5000060 timeline 2 continues from segment 5: the check reads 1/3..1/4 then 2/5..,
    takes timeline 2's copy of the switch segment, and ignores segments inside the backup (start..stop)."""
    from recovery.backup.wal.sequence import first_gap

    history = {2: "1\t0/5000060\tno recovery target specified\n"}
    names = {"000000010000000000000004", "000000020000000000000005", "000000020000000000000006",
             "000000020000000000000007", "00000002.history"}
    backup = {"backup_tli": 1, "start_lsn": "0/2000028", "stop_lsn": "0/3000100"}
    assert first_gap(names, history, **backup) is None
    assert first_gap(names - {"000000020000000000000006"}, history, **backup) == "000000020000000000000006"
    # the old timeline's full copy of the switch segment serves for it (PostgreSQL falls back to it too)
    assert first_gap(names - {"000000020000000000000005"} | {"000000010000000000000005"}, history, **backup) is None
    assert first_gap(names - {"000000010000000000000004"}, history, **backup) == "000000010000000000000004"
    # a point-in-time target in segment 5: a hole after it does not matter
    assert first_gap(names - {"000000020000000000000006"}, history, **backup,
                     last_needed="000000020000000000000005") is None
    # a timeline that branched before the backup started is not followed: its segments fill no hole
    early = {2: "1\t0/1000000\tbefore the backup\n"}
    assert first_gap(names | {"000000010000000000000006"}, early, **backup) == "000000010000000000000005"
