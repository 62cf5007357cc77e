"""``aegis wal archiver`` and the fast path of ``aegis wal push %p``, on a real PostgreSQL 15 primary.

The primary's ``archive_command`` is ``aegis wal push %p`` from ``.tools/server-venv`` (run as the
``postgres`` OS user, as in production); the archiver runs as that user too, beside the cluster,
and archives to a local staging directory and moto's S3. Each test waits for the evidence
(pg_stat_archiver, the objects, the catalog rows, the archiver's own record) before asserting.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli_workspace import SERVER_AEGIS, catalog, local, migrate_shared_catalog, write_config
from tests.harness.pgcluster import PgNode, PgSingle
from tests.harness.storage_servers import MotoS3, aws_env, moto_s3, moto_s3_outage, start_moto  # noqa: F401

HOLD_ENV = "AEGIS_TEST_ARCHIVER_HOLD"   # recovery/backup/wal/archiver.py: hold every push while this file exists
HANDOFF = Path(__file__).resolve().parents[1] / "recovery" / "backup" / "wal" / "client.py"


class Archiver:
    """``aegis wal archiver`` as the postgres user, its stderr (its own record) in a file."""

    def __init__(self, workdir: Path, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log = workdir / f"archiver-{time.monotonic_ns()}.log"
        self.socket = data_dir / "pg_wal" / "aegis-archiver.sock"
        full_env = {**os.environ, "AEGIS_CONFIG": str(workdir / "aegis.yaml"),
                    "AEGIS_DATABASE_URL": f"sqlite:///{workdir}/aegis.db", **(env or {})}
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [str(SERVER_AEGIS), "wal", "archiver", "--data-dir", str(data_dir)], env=full_env, cwd=workdir,
                user="postgres", group="postgres", extra_groups=[], stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: "listening on" in self.text() or self.process.poll() is not None,
                 "the archiver to listen", self.text)
        assert self.process.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pushed(self, name: str) -> bool:
        return f"archiver: pushed {name}" in self.text()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)


def wait_for(condition: Callable[[], Any], what: str, detail: Callable[[], str] = lambda: "",
             timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{detail()}"
        time.sleep(0.1)


def switch(primary: PgNode, rows: int = 200) -> str:
    """Write a little and close the segment; its name (PostgreSQL marks it .ready)."""
    primary.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, %s) g", rows)
    return str(primary.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])


def archived(primary: PgNode, name: str) -> bool:
    return bool(primary.sql("SELECT coalesce(last_archived_wal, '') >= %s FROM pg_stat_archiver", name)[0][0])


def archiver_counts(primary: PgNode) -> tuple[int, int]:
    archived_count, failed_count = primary.sql("SELECT archived_count, failed_count FROM pg_stat_archiver")[0]
    return int(archived_count), int(failed_count)


def push_in_flight(segment: Path) -> bool:
    """Someone (the archiver) holds the segment's push lock: its push has started and not ended."""
    fd = os.open(segment, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def assert_stored_everywhere(workdir: Path, s3: MotoS3, bucket: str, name: str) -> None:
    [row] = catalog(workdir, f"object_name = 'wal/{name}.zst.aes' AND status = 'ok'")
    assert len(row["source_sha256"]) == 64
    assert (workdir / "staging" / "wal" / f"{name}.zst.aes").stat().st_size > 0
    assert s3.client().head_object(Bucket=bucket, Key=f"wal/{name}.zst.aes")["ContentLength"] > 0


@contextlib.contextmanager
def archiving_primary(workdir: Path, s3: MotoS3, *, fast: bool = False) -> Iterator[tuple[PgSingle, str]]:
    """A primary whose archive_command is ``aegis wal push %p`` (``fast``: the stdlib-only client
    ``python -I -S …/client.py push %p``), archiving to local + S3."""
    assert SERVER_AEGIS.exists(), "run ./scripts/install-server-side"
    bucket = s3.create_bucket()
    write_config(workdir, [local(workdir), s3.target(bucket)])
    migrate_shared_catalog(workdir)
    for leftover in workdir.glob("aegis.db-*"):   # SQLite's -wal/-shm, if the migrating process left them
        leftover.chmod(0o666)
    client = f"{SERVER_AEGIS.parent / 'python'} -I -S {HANDOFF} push" if fast else f"{SERVER_AEGIS} wal push"
    archive_command = (f"AEGIS_CONFIG={workdir}/aegis.yaml AEGIS_DATABASE_URL=sqlite:///{workdir}/aegis.db "
                       f"{client} %p")
    pg = PgSingle.create(settings={"archive_command": archive_command})
    try:
        pg.primary.sql("CREATE TABLE t (id int, v text)")
        yield pg, bucket
    finally:
        pg.destroy()


# --- the fast path's module ----------------------------------------------------------------------------

def test_the_fast_path_module_imports_no_heavy_library() -> None:
    heavy = ("sqlalchemy", "sqlmodel", "boto3", "botocore", "azure", "zstandard", "cryptography", "pydantic",
             "psycopg")
    probe = (f"import sys, recovery.backup.wal.handoff; "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "[]", out.stdout


# --- on a real primary ------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_segments_go_through_the_archiver_and_the_fallback_archives_when_it_is_stopped(
    shared_dir: Path, moto_s3: MotoS3,  # noqa: F811
) -> None:
    with archiving_primary(shared_dir, moto_s3) as (pg, bucket):
        primary = pg.primary
        archiver = Archiver(shared_dir, primary.data_dir)
        try:
            assert (archiver.socket.stat().st_mode & 0o777) == 0o600
            assert archiver.socket.stat().st_uid == primary.data_dir.stat().st_uid   # the postgres user
            before, _ = archiver_counts(primary)
            names = [switch(primary) for _ in range(3)]
            wait_for(lambda: archived(primary, names[-1]), "the segments to be archived", primary.log_tail)
            after, failed = archiver_counts(primary)
            assert after >= before + 3 and failed == 0, primary.log_tail()
            for name in names:
                assert archiver.pushed(name), archiver.text()
                assert_stored_everywhere(shared_dir, moto_s3, bucket, name)
            assert "by the archiver" in primary.log_tail(20000)
        finally:
            archiver.stop()
        assert "stopped:" in archiver.text() and not archiver.socket.exists()

        fallback = switch(primary)
        wait_for(lambda: archived(primary, fallback), "the fallback to archive", primary.log_tail)
        assert archiver_counts(primary)[1] == 0, primary.log_tail()
        assert_stored_everywhere(shared_dir, moto_s3, bucket, fallback)
        # no archiver socket at all: pushing here is the normal path, without a line per segment about it
        assert f"pushing {fallback} here" not in primary.log_tail(20000)
        assert not archiver.pushed(fallback)


@pytest.mark.timeout(300)
def test_a_segment_in_flight_when_the_archiver_is_killed_is_archived_by_the_fallback(
    shared_dir: Path, moto_s3: MotoS3,  # noqa: F811
) -> None:
    hold = shared_dir / "hold"
    hold.touch()
    with archiving_primary(shared_dir, moto_s3) as (pg, bucket):
        primary = pg.primary
        archiver = Archiver(shared_dir, primary.data_dir, env={HOLD_ENV: str(hold)})
        try:
            name = switch(primary)
            segment = primary.data_dir / "pg_wal" / name
            wait_for(lambda: push_in_flight(segment), "the archiver to start pushing", archiver.text)
            # handed over, not yet durable: PostgreSQL keeps it and has not counted it archived
            assert (primary.data_dir / "pg_wal" / "archive_status" / f"{name}.ready").exists()
            assert not archived(primary, name)
            archiver.stop(signal.SIGKILL)
        finally:
            archiver.stop(signal.SIGKILL)
        wait_for(lambda: archived(primary, name), "the fallback to archive the killed push", primary.log_tail)
        assert_stored_everywhere(shared_dir, moto_s3, bucket, name)
        assert not archiver.pushed(name)
        assert "no archiver answered" in primary.log_tail(20000)

        # a new archiver replaces the dead one's stale socket and takes over again
        hold.unlink()
        again = Archiver(shared_dir, primary.data_dir)
        try:
            later = switch(primary)
            wait_for(lambda: archived(primary, later), "the new archiver to archive", primary.log_tail)
            assert again.pushed(later), again.text()
            assert_stored_everywhere(shared_dir, moto_s3, bucket, later)
        finally:
            again.stop()


@pytest.mark.timeout(300)
def test_an_archiver_crash_while_the_remote_is_down_leaves_postgresql_retrying_until_it_is_back(
    shared_dir: Path, moto_s3_outage: MotoS3,  # noqa: F811
) -> None:
    hold = shared_dir / "hold"
    hold.touch()
    with archiving_primary(shared_dir, moto_s3_outage) as (pg, bucket):
        primary = pg.primary
        archiver = Archiver(shared_dir, primary.data_dir, env={HOLD_ENV: str(hold)})
        try:
            name = switch(primary)
            segment = primary.data_dir / "pg_wal" / name
            wait_for(lambda: push_in_flight(segment), "the archiver to start pushing", archiver.text)
            port = moto_s3_outage.port
            moto_s3_outage.stop()                 # the only remote target goes down …
            archiver.stop(signal.SIGKILL)         # … and the archiver dies mid-push
        finally:
            archiver.stop(signal.SIGKILL)
        # the fallback cannot make it durable either (B6): PostgreSQL keeps the segment and retries
        wait_for(lambda: archiver_counts(primary)[1] >= 1, "PostgreSQL to count a failed attempt", primary.log_tail)
        assert not archived(primary, name)
        assert segment.exists() and (primary.data_dir / "pg_wal" / "archive_status" / f"{name}.ready").exists()
        assert "every remote target failed" in primary.log_tail(20000)

        revived = start_moto(port)
        try:
            with contextlib.suppress(Exception):   # moto keeps its buckets in-process across restarts
                revived.create_bucket(bucket)
            back = Archiver(shared_dir, primary.data_dir)
            try:
                switch(primary)   # wakes PostgreSQL's archiver, which retries the failed segment first
                wait_for(lambda: archived(primary, name), "the segment to be archived once all is back",
                         primary.log_tail, timeout=120)
                assert back.pushed(name), back.text()
                assert_stored_everywhere(shared_dir, revived, bucket, name)
            finally:
                back.stop()
        finally:
            revived.stop()


# --- the stdlib-only client as archive_command (python -I -S …/client.py push %p) ------------------------

def good_rows(workdir: Path, name: str) -> int:
    return len(catalog(workdir, f"object_name = 'wal/{name}.zst.aes' AND status = 'ok'"))


@pytest.mark.timeout(300)
def test_the_stdlib_client_falls_back_survives_a_kill_and_a_restart_mid_push(
    shared_dir: Path, moto_s3: MotoS3,  # noqa: F811
) -> None:
    hold = shared_dir / "hold"
    with archiving_primary(shared_dir, moto_s3, fast=True) as (pg, bucket):
        primary = pg.primary
        # 1. no archiver at all: the client execs `aegis wal push %p`, which pushes the segment itself
        alone = switch(primary)
        wait_for(lambda: archived(primary, alone), "the fallback without an archiver", primary.log_tail)
        assert_stored_everywhere(shared_dir, moto_s3, bucket, alone)
        assert archiver_counts(primary)[1] == 0, primary.log_tail()

        # 2. the archiver is SIGKILLed mid-push: PostgreSQL has not counted the segment; the client's
        # fallback archives it (under the segment's lock, which died with the archiver)
        hold.touch()
        killed = Archiver(shared_dir, primary.data_dir, env={HOLD_ENV: str(hold)})
        try:
            name = switch(primary)
            segment = primary.data_dir / "pg_wal" / name
            wait_for(lambda: push_in_flight(segment), "the archiver to start pushing", killed.text)
            assert not archived(primary, name)
            assert (primary.data_dir / "pg_wal" / "archive_status" / f"{name}.ready").exists()
            killed.stop(signal.SIGKILL)
        finally:
            killed.stop(signal.SIGKILL)
        wait_for(lambda: archived(primary, name), "the killed push to be archived", primary.log_tail)
        assert_stored_everywhere(shared_dir, moto_s3, bucket, name)
        assert good_rows(shared_dir, name) == 1 and not killed.pushed(name)

        # 3. the archiver restarts while a segment is handed over: the old one (stopping) finishes or
        # its client falls back; the new one takes the next segments. Nothing is lost, nothing doubled.
        old = Archiver(shared_dir, primary.data_dir, env={HOLD_ENV: str(hold)})
        try:
            held = switch(primary)
            wait_for(lambda: push_in_flight(primary.data_dir / "pg_wal" / held), "the push to start", old.text)
            old.process.send_signal(signal.SIGTERM)       # stops listening at once, its push still held
            wait_for(lambda: not old.socket.exists(), "the old archiver to leave its socket", old.text)
            new = Archiver(shared_dir, primary.data_dir)  # binds while the old one still runs
            try:
                hold.unlink()                             # the old push completes
                old.process.wait(timeout=60)
                wait_for(lambda: archived(primary, held), "the segment handed over at the restart", primary.log_tail)
                assert_stored_everywhere(shared_dir, moto_s3, bucket, held)
                assert good_rows(shared_dir, held) == 1
                later = switch(primary)
                wait_for(lambda: archived(primary, later), "the new archiver to archive", primary.log_tail)
                assert new.pushed(later), new.text()
                assert "by the archiver" in primary.log_tail(20000)
                assert_stored_everywhere(shared_dir, moto_s3, bucket, later)
            finally:
                new.stop()
        finally:
            hold.unlink(missing_ok=True)
            old.stop(signal.SIGKILL)
        assert archiver_counts(primary)[0] >= 4
