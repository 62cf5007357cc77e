"""``aegis wal push|fetch`` and ``aegis restore postgres`` as processes, against real PostgreSQL 15 and moto S3.

The archive_command runs as the ``postgres`` OS user, so it uses Aegis installed where that user
can run it (``.tools/server-venv``, made by ``scripts/install-server-side``) — as in production —
with the key in a key file, the catalog in a shared SQLite file and the config in a shared dir
(tests/harness/cli_workspace.py).
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.harness.cli_workspace import (
    REPO,
    SEGMENT,
    SERVER_AEGIS,
    aegis,
    catalog,
    flip_byte,
    local,
    migrate_shared_catalog,
    restored_dsn,
    stop_restored,
    table_digest,
    write_config,
)
from tests.harness.pgcluster import PG_BIN, PgSingle
from tests.harness.storage_servers import MotoS3, aws_env, moto_s3, moto_s3_outage  # noqa: F401

# --- archive_command / restore_command on real servers ----------------------------------------------

@pytest.mark.timeout(600)
def test_archive_command_pushes_encrypted_wal_and_restore_replays_it_to_a_point_in_time(
    shared_dir: Path, moto_s3: MotoS3,  # noqa: F811
) -> None:
    assert SERVER_AEGIS.exists(), "run ./scripts/setup (it installs .tools/server-venv)"
    bucket = moto_s3.create_bucket()
    storage = [local(shared_dir), {"kind": "s3", "bucket": bucket, "endpoint_url": moto_s3.endpoint_url,
                                   "name": "s3"}]
    write_config(shared_dir, storage)
    migrate_shared_catalog(shared_dir)
    archive_command = (f"AEGIS_CONFIG={shared_dir}/aegis.yaml AEGIS_DATABASE_URL=sqlite:///{shared_dir}/aegis.db "
                       f"{SERVER_AEGIS} wal push %p")
    pg = PgSingle.create(settings={"archive_command": archive_command})
    try:
        write_config(shared_dir, storage, dsn=pg.primary.dsn())
        primary = pg.primary
        primary.sql("CREATE TABLE t (id int primary key, batch text, v text)")
        primary.sql("INSERT INTO t SELECT g, 'A', md5(g::text) FROM generate_series(1, 1000) g")
        backup = aegis(shared_dir, "backup", "run", "postgresql", "--quiet")
        assert backup.returncode == 0, backup.stdout + backup.stderr
        primary.sql("INSERT INTO t SELECT g, 'B', md5(g::text) FROM generate_series(1001, 2000) g")
        target = primary.sql("SELECT clock_timestamp()")[0][0]
        time.sleep(1.5)
        primary.sql("INSERT INTO t SELECT g, 'C', md5(g::text) FROM generate_series(2001, 3000) g")
        last = primary.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        deadline = time.monotonic() + 120
        while primary.sql("SELECT coalesce(last_archived_wal, '') >= %s FROM pg_stat_archiver", last)[0][0] is False:
            assert time.monotonic() < deadline, primary.log_tail()
            time.sleep(0.3)
        assert primary.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] == 0, primary.log_tail()
        before_target = table_digest(primary.dsn(), "batch IN ('A', 'B')")
        everything = table_digest(primary.dsn())

        wal_rows = catalog(shared_dir, "kind = 'pg_wal'")
        assert any(r["object_name"] == f"wal/{last}.zst.aes" for r in wal_rows)
        assert all(r["status"] == "ok" and len(r["source_sha256"]) == 64 for r in wal_rows)
        stored = moto_s3.client().get_object(Bucket=bucket, Key=f"wal/{last}.zst.aes")["Body"].read()
        assert stored[:4] != (REPO / "README.md").read_bytes()[:4] and len(stored) > 0

        pitr_dir = shared_dir / "pitr"
        pitr = aegis(shared_dir, "restore", "postgres", "--data-dir", str(pitr_dir), "--quiet",
                     "--target-time", target.isoformat())
        try:
            assert pitr.returncode == 0, pitr.stdout + pitr.stderr
            assert table_digest(restored_dsn(pitr.stdout)) == before_target  # exactly A and B, not C
        finally:
            stop_restored(pitr_dir)
        latest_dir = shared_dir / "latest"
        latest = aegis(shared_dir, "restore", "postgres", "--data-dir", str(latest_dir), "--quiet")
        try:
            assert latest.returncode == 0, latest.stdout + latest.stderr
            assert table_digest(restored_dsn(latest.stdout)) == everything
        finally:
            stop_restored(latest_dir)
        assert not (shared_dir / "pitr.wal-stage").exists(), "decrypted WAL must not outlive the restore"
    finally:
        pg.destroy()


@pytest.mark.timeout(300)
def test_aegis_wal_fetch_works_as_a_servers_restore_command(shared_dir: Path) -> None:
    """The production path: a restored server fetching WAL itself with ``aegis wal fetch %f %p``."""
    from recovery.backup.restore.postgres import RestoreOptions, restore_base_backup

    write_config(shared_dir, [local(shared_dir)])
    migrate_shared_catalog(shared_dir)
    archive_command = (f"AEGIS_CONFIG={shared_dir}/aegis.yaml AEGIS_DATABASE_URL=sqlite:///{shared_dir}/aegis.db "
                       f"{SERVER_AEGIS} wal push %p")
    pg = PgSingle.create(settings={"archive_command": archive_command})
    restored = None
    try:
        primary = pg.primary
        primary.sql("CREATE TABLE t (id int primary key, batch text, v text)")
        base = subprocess.run([str(PG_BIN / "pg_basebackup"), "-h", str(primary.socket_dir), "-p", str(primary.port),
                               "-U", "postgres", "-D", "-", "-Ft", "-X", "fetch"], capture_output=True, check=True)
        primary.sql("INSERT INTO t SELECT g, 'A', md5(g::text) FROM generate_series(1, 500) g")
        last = primary.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        deadline = time.monotonic() + 60
        while primary.sql("SELECT coalesce(last_archived_wal, '') >= %s FROM pg_stat_archiver", last)[0][0] is False:
            assert time.monotonic() < deadline, primary.log_tail()
            time.sleep(0.3)
        import io

        from tests.harness.pgcluster import free_port
        restore_command = (f"AEGIS_CONFIG={shared_dir}/aegis.yaml AEGIS_DATABASE_URL=sqlite:///{shared_dir}/aegis.db "
                           f"{SERVER_AEGIS} wal fetch %f %p")
        restored = restore_base_backup(io.BytesIO(base.stdout), shared_dir / "restored", RestoreOptions(
            port=free_port(), socket_dir=shared_dir / "restored.sock", restore_command=restore_command))
        assert table_digest(restored.dsn) == table_digest(primary.dsn())
        assert "restored log file" in restored.log_tail(20000)
    finally:
        if restored is not None:
            restored.destroy()
        pg.destroy()


# --- push / fetch semantics ----------------------------------------------------------------------------

def test_pushing_the_same_segment_twice_succeeds_once_and_a_different_one_is_refused(shared_dir: Path) -> None:
    write_config(shared_dir, [local(shared_dir)])
    segment = shared_dir / "pg_wal" / SEGMENT
    segment.parent.mkdir()
    original = os.urandom(256 * 1024)
    segment.write_bytes(original)

    first = aegis(shared_dir, "wal", "push", str(segment))
    assert first.returncode == 0, first.stderr
    stored = shared_dir / "staging" / "wal" / f"{SEGMENT}.zst.aes"
    assert stored.exists() and original[:64] not in stored.read_bytes()
    stamp = stored.stat().st_mtime_ns
    again = aegis(shared_dir, "wal", "push", str(segment))
    assert again.returncode == 0 and "already archived" in again.stderr
    assert stored.stat().st_mtime_ns == stamp, "an identical push must not upload again"
    assert len(catalog(shared_dir, "kind = 'pg_wal'")) == 1

    segment.write_bytes(os.urandom(256 * 1024))
    conflict = aegis(shared_dir, "wal", "push", str(segment))
    assert conflict.returncode == 1
    assert "different content" in conflict.stderr
    assert stored.stat().st_mtime_ns == stamp, "a conflicting push must not overwrite"
    fetched = shared_dir / "fetched"
    assert aegis(shared_dir, "wal", "fetch", SEGMENT, str(fetched)).returncode == 0
    assert fetched.read_bytes() == original


def test_fetch_exit_codes_absent_damaged_wrong_key_and_bad_usage(shared_dir: Path) -> None:
    write_config(shared_dir, [local(shared_dir)])
    segment = shared_dir / SEGMENT
    segment.write_bytes(os.urandom(64 * 1024))
    assert aegis(shared_dir, "wal", "push", str(segment)).returncode == 0

    absent = aegis(shared_dir, "wal", "fetch", "000000010000000000000099", str(shared_dir / "x"))
    assert absent.returncode == 1 and not (shared_dir / "x").exists()

    wrong_key = shared_dir / "other.key"
    wrong_key.write_text(base64.b64encode(bytes(32)).decode())
    config = yaml.safe_load((shared_dir / "aegis.yaml").read_text())
    config["encryption"]["key_file"] = str(wrong_key)
    (shared_dir / "wrong.yaml").write_text(yaml.safe_dump(config))
    bad_key = aegis(shared_dir, "wal", "fetch", SEGMENT, str(shared_dir / "y"),
                    env={"AEGIS_CONFIG": str(shared_dir / "wrong.yaml")})
    assert bad_key.returncode == 255, bad_key.stderr
    assert not (shared_dir / "y").exists()

    no_config = aegis(shared_dir, "wal", "fetch", SEGMENT, str(shared_dir / "z"),
                      env={"AEGIS_CONFIG": str(shared_dir / "missing.yaml")})
    assert no_config.returncode == 255 and "does not exist" in no_config.stderr
    assert aegis(shared_dir, "wal", "fetch", SEGMENT).returncode == 255  # %p missing: an error, not "absent"

    flip_byte(shared_dir / "staging" / "wal" / f"{SEGMENT}.zst.aes")
    damaged = aegis(shared_dir, "wal", "fetch", SEGMENT, str(shared_dir / "w"))
    assert damaged.returncode == 255, damaged.stderr
    assert "local" in damaged.stderr and not (shared_dir / "w").exists()


def test_fetch_needs_no_catalog(shared_dir: Path) -> None:
    """During a disaster the bot's database may be gone: the archive alone must serve recovery."""
    write_config(shared_dir, [local(shared_dir)])
    segment = shared_dir / SEGMENT
    segment.write_bytes(os.urandom(64 * 1024))
    assert aegis(shared_dir, "wal", "push", str(segment)).returncode == 0
    (shared_dir / "aegis.db").unlink()
    out = shared_dir / "out"
    fetched = aegis(shared_dir, "wal", "fetch", SEGMENT, str(out))
    assert fetched.returncode == 0, fetched.stderr
    assert out.read_bytes() == segment.read_bytes()
    # and a re-push with the catalog gone still recognises the stored segment instead of overwriting it
    segment.write_bytes(os.urandom(64 * 1024))
    assert aegis(shared_dir, "wal", "push", str(segment)).returncode == 1


def test_push_fails_while_every_remote_target_is_down_and_succeeds_on_retry(
    shared_dir: Path, moto_s3_outage: MotoS3,  # noqa: F811
) -> None:
    bucket = moto_s3_outage.create_bucket()
    write_config(shared_dir, [local(shared_dir), moto_s3_outage.target(bucket)])
    segment = shared_dir / SEGMENT
    segment.write_bytes(os.urandom(64 * 1024))
    port = moto_s3_outage.port
    moto_s3_outage.stop()
    down = aegis(shared_dir, "wal", "push", str(segment))
    assert down.returncode == 1, "PostgreSQL must keep the segment while it is only on the database host"
    assert "every remote target failed" in down.stderr, down.stderr
    [row] = catalog(shared_dir, "kind = 'pg_wal'")
    assert row["status"] == "failed" and "s3" in row["reason"]
    assert (shared_dir / "staging" / "wal" / f"{SEGMENT}.zst.aes").exists()

    from tests.harness.storage_servers import start_moto
    revived = start_moto(port)
    try:
        with contextlib.suppress(Exception):  # moto keeps its buckets in-process across restarts
            revived.create_bucket(bucket)
        retry = aegis(shared_dir, "wal", "push", str(segment))
        assert retry.returncode == 0, retry.stderr
        [row] = catalog(shared_dir, "kind = 'pg_wal'")
        assert row["status"] == "ok"
    finally:
        revived.stop()


# --- restore refuses a damaged backup ------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_restore_refuses_a_damaged_backup_and_names_the_previous_good_one(
    shared_dir: Path, pg_single: PgSingle,
) -> None:
    write_config(shared_dir, [local(shared_dir)], dsn=pg_single.primary.dsn())
    pg_single.primary.sql("CREATE TABLE t (id int primary key, batch text, v text)")
    pg_single.primary.sql("INSERT INTO t SELECT g, 'A', md5(g::text) FROM generate_series(1, 800) g")
    good = aegis(shared_dir, "backup", "run", "postgresql", "--quiet")
    assert good.returncode == 0, good.stderr
    good_id = good.stdout.split()[0]
    newest = aegis(shared_dir, "backup", "run", "postgresql", "--quiet")
    newest_id = newest.stdout.split()[0]
    assert newest_id != good_id
    flip_byte(shared_dir / "staging" / newest_id / "postgres-base.tar.zst.aes", 5000)

    data_dir = shared_dir / "refused"
    refused = aegis(shared_dir, "restore", "postgres", "--data-dir", str(data_dir), "--no-wal", "--quiet")
    assert refused.returncode == 1
    assert newest_id in refused.stderr and "local" in refused.stderr and "chunk" in refused.stderr
    assert f"previous good backup is {good_id}" in refused.stderr
    assert not data_dir.exists(), "nothing may be written for a refused restore"

    restored_dir = shared_dir / "previous"
    restored = aegis(shared_dir, "restore", "postgres", good_id, "--data-dir", str(restored_dir), "--no-wal",
                     "--quiet")
    try:
        assert restored.returncode == 0, restored.stderr
        assert table_digest(restored_dsn(restored.stdout)) == table_digest(pg_single.primary.dsn())
    finally:
        stop_restored(restored_dir)


def test_restore_usage_errors_are_clear(shared_dir: Path) -> None:
    write_config(shared_dir, [local(shared_dir)])
    nothing = aegis(shared_dir, "restore", "postgres", "--data-dir", str(shared_dir / "d"))
    assert nothing.returncode == 2 and "no good pg_full/pg_incremental backup" in nothing.stderr
    naive = aegis(shared_dir, "restore", "postgres", "--data-dir", str(shared_dir / "d"),
                  "--target-time", "2026-11-26 10:00")
    assert naive.returncode == 2
    assert "Traceback" not in nothing.stderr + naive.stderr


# --- streaming ---------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_wal_stream_ships_completed_segments_identical_to_the_archivers(shared_dir: Path, pg_single: PgSingle) -> None:
    """``aegis wal stream``: pg_receivewal through a slot; completed segments go to the targets, the open one
    stays in the spool as .partial (the near-zero-RPO part). The cluster's own archive_command (cp) gives the
    reference bytes of the same segment."""
    primary = pg_single.primary
    write_config(shared_dir, [local(shared_dir)], dsn=primary.dsn())
    spool = shared_dir / "spool"
    env = {**os.environ, "AEGIS_CONFIG": str(shared_dir / "aegis.yaml"),
           "AEGIS_DATABASE_URL": f"sqlite:///{shared_dir}/aegis.db"}
    env.pop("AEGIS_BACKUP_KEY", None)
    assert aegis(shared_dir, "migrate").returncode == 0
    stream = subprocess.Popen([sys.executable, "-m", "bot.cli", "wal", "stream", "--dir", str(spool),
                               "--interval", "0.3"], cwd=shared_dir, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        active_slot = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'aegis_wal' AND active"
        while not primary.sql(active_slot)[0][0]:
            assert stream.poll() is None and time.monotonic() < deadline, stream.stderr.read() if stream.stderr else ""
            time.sleep(0.2)
        primary.sql("CREATE TABLE t (id int primary key, batch text, v text)")
        primary.sql("INSERT INTO t SELECT g, 'A', md5(g::text) FROM generate_series(1, 2000) g")
        switched = primary.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        primary.sql("INSERT INTO t VALUES (2001, 'B', 'after the switch')")
        while not catalog(shared_dir, f"object_name = 'wal/{switched}.zst.aes' AND status = 'ok'") \
                or not (pg_single.archive_dir / switched).exists():
            assert stream.poll() is None and time.monotonic() < deadline, "segment not shipped in time"
            time.sleep(0.3)
        while not any(p.name.endswith(".partial") for p in spool.iterdir()):
            assert time.monotonic() < deadline, "the open segment must stream into the spool"
            time.sleep(0.2)
        assert not (spool / switched).exists(), "a shipped segment leaves the spool"
    finally:
        stream.terminate()
        out, err = stream.communicate(timeout=60)
    assert stream.returncode == 0, err
    assert "refused" in out and "0 refused" in out
    fetched = shared_dir / "fetched"
    assert aegis(shared_dir, "wal", "fetch", switched, str(fetched)).returncode == 0
    assert fetched.read_bytes() == (pg_single.archive_dir / switched).read_bytes()
