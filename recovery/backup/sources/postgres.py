"""PostgreSQL backup sources: ``pg_basebackup`` and ``pg_dump`` as byte streams.

Each source is a context manager around a child process whose stdout *is* the backup, so the caller
can pipe ``.stream`` through compression, encryption and storage without holding it in memory::

    with base_backup(dsn, label="backup_20250101_020000") as bb:
        pipeline.store(bb.stream)          # reads to EOF
    catalog.record(start_lsn=bb.start_lsn, stop_lsn=bb.stop_lsn, ...)

The backup is only good once the ``with`` block has exited without an exception: a child that
fails mid-way just ends the stream early, and its exit status is checked on close. Callers must not
commit the stored object before that.

Passwords never appear on a command line (visible in ``ps``): a ``password`` in the DSN is moved
into the child's ``PGPASSWORD`` and every error text goes through ``recovery.redact.redact``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO, Self

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from recovery.backup.stream.pipe import widen_pipe
from recovery.redact import redact

DEFAULT_PG_BIN = "/usr/lib/postgresql/15/bin"
CONNECT_TIMEOUT_SECONDS = 10
# After the stream hit EOF the child only has to flush and exit; this is a generous bound.
EXIT_WAIT_SECONDS = 60
INCREMENTAL_MIN_VERSION = 170000

# pg_basebackup --verbose lines (messages forced to English with LC_ALL=C so they stay parseable).
_START_RE = re.compile(r"write-ahead log start point: ([0-9A-F]+/[0-9A-F]+) on timeline (\d+)")
_STOP_RE = re.compile(r"write-ahead log end point: ([0-9A-F]+/[0-9A-F]+)")


class BackupSourceError(RuntimeError):
    """A backup source could not produce a complete backup (message is redacted)."""


def pg_bin_dir(pg_bin: str | Path | None = None) -> Path:
    """Where the PostgreSQL client binaries live: argument, ``AEGIS_PG_BIN``, or the Debian 15 path."""
    return Path(pg_bin or os.environ.get("AEGIS_PG_BIN") or DEFAULT_PG_BIN)


def split_password(dsn: str) -> tuple[str, str | None]:
    """``(dsn without password, password)`` so the password can travel in the environment, not argv."""
    params = conninfo_to_dict(dsn)
    password = params.pop("password", None)
    return make_conninfo("", **params), (str(password) if password is not None else None)


def client_env(dsn: str) -> dict[str, str]:
    """Environment for a libpq client child: English messages, connect timeout, password if any."""
    env = dict(os.environ)
    env["LC_ALL"] = "C"  # verbose output is parsed; a localised server message would not match
    env.setdefault("PGCONNECT_TIMEOUT", str(CONNECT_TIMEOUT_SECONDS))
    _, password = split_password(dsn)
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def connect_source(dsn: str) -> psycopg.Connection[TupleRow]:
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    except psycopg.Error as exc:
        raise BackupSourceError(f"cannot connect to PostgreSQL: {redact(str(exc).strip())}") from None


def server_version(dsn: str) -> tuple[int, str]:
    """``(server_version_num, server_version)``, e.g. ``(150018, "15.18 (Debian ...)")``."""
    with connect_source(dsn) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


class SourceStream:
    """A child process whose stdout is a backup; use as a context manager.

    ``__exit__`` without an exception checks that the stream was read to EOF and the child exited 0,
    else raises ``BackupSourceError``; with an exception the child is killed.
    """

    what = "backup source"

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.returncode: int | None = None
        self.stderr_text = ""

    def _before_start(self) -> None:
        """Hook for subclasses (e.g. query the server version) before the child is spawned."""

    def _after_success(self) -> None:
        """Hook for subclasses to parse ``stderr_text`` once the child exited 0."""

    def __enter__(self) -> Self:
        self._before_start()
        # stderr goes to a file, not a pipe: nobody reads it while the consumer drains stdout, and a
        # full stderr pipe would block the child.
        self._stderr = tempfile.TemporaryFile()
        self.started_at = datetime.now(UTC)
        try:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, env=self._env
            )
        except OSError as exc:
            self._stderr.close()
            raise BackupSourceError(f"cannot start {Path(self.argv[0]).name}: {exc.strerror}") from None
        assert self._proc.stdout is not None
        widen_pipe(self._proc.stdout.fileno())
        return self

    @property
    def stream(self) -> BinaryIO:
        """The child's stdout: read it to EOF before leaving the ``with`` block."""
        if self._proc is None or self._proc.stdout is None:
            raise RuntimeError(f"{self.what} not started: use it as a context manager")
        return self._proc.stdout  # type: ignore[return-value]

    def _collect_stderr(self) -> None:
        assert self._stderr is not None
        self._stderr.seek(0)
        self.stderr_text = self._stderr.read().decode("utf-8", "replace")
        self._stderr.close()

    def _last_error_line(self) -> str:
        lines = [line.strip() for line in self.stderr_text.splitlines() if line.strip()]
        return redact(lines[-1]) if lines else "(no error output)"

    def abort(self) -> None:
        """Kill the child (the consumer failed); the partial stream is worthless."""
        proc = self._proc
        if proc is None or self.returncode is not None:
            return
        proc.kill()
        assert proc.stdout is not None
        proc.stdout.close()
        self.returncode = proc.wait()
        self.finished_at = datetime.now(UTC)
        self._collect_stderr()

    def close(self) -> None:
        """Finish: require EOF on stdout and a zero exit status, then parse what the child reported."""
        proc = self._proc
        if proc is None or self.returncode is not None:
            return
        assert proc.stdout is not None
        # One extra byte tells whether the consumer stopped early; draining the rest instead would
        # silently turn a caller bug (a truncated copy) into a "successful" backup.
        if proc.stdout.read(1):
            self.abort()
            raise BackupSourceError(f"{self.what}: stream closed before its end; the copy is incomplete")
        proc.stdout.close()
        try:
            self.returncode = proc.wait(timeout=EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.abort()
            raise BackupSourceError(f"{self.what}: child did not exit after end of stream") from None
        self.finished_at = datetime.now(UTC)
        self._collect_stderr()
        if self.returncode != 0:
            raise BackupSourceError(f"{self.what} failed (exit {self.returncode}): {self._last_error_line()}")
        self._after_success()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
            return
        self.close()


class BaseBackupStream(SourceStream):
    """``pg_basebackup`` as one tar on stdout; LSNs and timeline are known after a clean close.

    Why ``-X fetch`` and not ``-X stream``: with ``-D -`` the output is a single tar, and stream mode
    needs a second output (``pg_wal.tar``) written concurrently, which pg_basebackup refuses for
    stdout. Fetch mode appends the WAL needed for consistency to the same tar at the end of the
    backup. Its risk is that a segment is recycled before the end; the server's ``wal_keep_size``
    (or a slot) must cover one backup's worth of WAL. That failure is loud (non-zero exit), and the
    WAL archive also holds the segments.

    LSNs come from pg_basebackup's ``--verbose`` stderr ("write-ahead log start point: X on timeline
    N" / "end point: Y"), which reports what the server returned for BASE_BACKUP — the same values
    as ``backup_label``'s START WAL LOCATION and the backup-end record, unlike
    ``pg_current_wal_lsn()`` sampled before/after, which includes unrelated traffic. ``started_at``
    and ``finished_at`` are this host's UTC clock around the child.
    """

    what = "pg_basebackup"

    def __init__(self, argv: list[str], env: dict[str, str], dsn: str, label: str, incremental: bool) -> None:
        super().__init__(argv, env)
        self._dsn = dsn
        self.label = label
        self.incremental = incremental
        self.server_version_num: int | None = None
        self.server_version: str | None = None
        self.start_lsn: str | None = None
        self.stop_lsn: str | None = None
        self.timeline: int | None = None

    def _before_start(self) -> None:
        self.server_version_num, self.server_version = server_version(self._dsn)

    def _last_error_line(self) -> str:
        # A refused incremental ends with a DETAIL line ("The first unsummarized LSN ..."); the error
        # line before it says what was refused, so keep both.
        if self.incremental:
            lines = [line.strip() for line in self.stderr_text.splitlines() if line.strip()]
            errors = [i for i, line in enumerate(lines) if "error:" in line]
            if errors:
                return redact(" ".join(lines[errors[-1]:errors[-1] + 2]))
        return super()._last_error_line()

    def _after_success(self) -> None:
        start = _START_RE.search(self.stderr_text)
        stop = _STOP_RE.search(self.stderr_text)
        if not start or not stop:
            # A zero exit without these lines means the output format changed: refuse to guess.
            raise BackupSourceError("pg_basebackup succeeded but did not report its WAL start/end points")
        self.start_lsn, self.timeline, self.stop_lsn = start.group(1), int(start.group(2)), stop.group(1)


class LogicalDumpStream(SourceStream):
    """``pg_dump -Fc`` of one database on stdout."""

    what = "pg_dump"

    def __init__(self, argv: list[str], env: dict[str, str], dsn: str, database: str) -> None:
        super().__init__(argv, env)
        self._dsn = dsn
        self.database = database
        self.server_version_num: int | None = None
        self.server_version: str | None = None

    def _before_start(self) -> None:
        self.server_version_num, self.server_version = server_version(self._dsn)


def _check_label(label: str) -> None:
    # backup_label stores it on one line, limited to MAXPGPATH (1024) bytes by the server.
    if not label or len(label.encode()) >= 1024 or any(c in label for c in "\r\n\0"):
        raise ValueError("backup label must be a non-empty single line shorter than 1024 bytes")


def base_backup(
    dsn: str,
    *,
    label: str,
    incremental_from_manifest: Path | None = None,
    pg_bin: str | Path | None = None,
    max_rate: str | None = None,
) -> BaseBackupStream:
    """A full (or, on PostgreSQL 17+, incremental) base backup as one tar stream.

    The tar contains the data directory, the WAL needed to make it consistent (``pg_wal/``) and the
    ``backup_manifest`` (pg_basebackup injects it when writing a tar to stdout); restore it with
    ``recovery.backup.restore.postgres.restore_base_backup``.

    ``incremental_from_manifest`` is the ``backup_manifest`` of the previous backup in the chain
    (``recovery.backup.incremental`` stores each one and plans the chain). It needs pg_basebackup
    17+ (``pg_bin``) and ``summarize_wal = on`` on the server — check ``supports_incremental``
    first; an incremental restores only through ``pg_combinebackup`` over the extracted chain
    (``recovery.backup.incremental.restore_chain``). Tested against PostgreSQL 17
    (``tests/test_backup_incremental.py``).
    """
    _check_label(label)
    bin_dir = pg_bin_dir(pg_bin)
    conn_dsn, _ = split_password(dsn)
    argv = [
        str(bin_dir / "pg_basebackup"),
        "--dbname", conn_dsn,
        "--pgdata", "-",
        "--format", "tar",
        "--wal-method", "fetch",
        "--checkpoint", "fast",  # start now, not at the next scheduled checkpoint
        "--label", label,
        "--no-password",
        "--verbose",
    ]
    if max_rate:
        argv += ["--max-rate", max_rate]
    if incremental_from_manifest is not None:
        if not Path(incremental_from_manifest).is_file():
            raise FileNotFoundError(f"previous backup manifest not found: {incremental_from_manifest}")
        argv.append(f"--incremental={incremental_from_manifest}")
    return BaseBackupStream(argv, client_env(dsn), dsn, label, incremental_from_manifest is not None)


def supports_incremental(dsn: str, *, pg_bin: str | Path | None = None) -> tuple[bool, str]:
    """Whether ``base_backup(..., incremental_from_manifest=...)`` can work against this server.

    Needs PostgreSQL 17+ on the server with ``summarize_wal = on`` and a pg_basebackup 17+ client.
    """
    version_num, _ = server_version(dsn)
    major = version_num // 10000
    if version_num < INCREMENTAL_MIN_VERSION:
        return False, (
            f"PostgreSQL {major} has no incremental base backup (needs 17+); the daily slot takes a full backup"
        )
    with connect_source(dsn) as conn:
        row = conn.execute("SELECT current_setting('summarize_wal', true)").fetchone()
    if not row or row[0] != "on":
        return False, f"PostgreSQL {major} has summarize_wal off; the daily slot takes a full backup"
    client = subprocess.run(
        [str(pg_bin_dir(pg_bin) / "pg_basebackup"), "--version"], capture_output=True, text=True, check=False
    )
    found = re.search(r"(\d+)(?:\.\d+)?", client.stdout)
    if client.returncode != 0 or not found or int(found.group(1)) < 17:
        return False, "pg_basebackup on this host is older than 17; the daily slot takes a full backup"
    return True, f"PostgreSQL {major} with summarize_wal on: incremental base backups available"


def extract_manifest(tar_stream: BinaryIO, dest: Path) -> Path:
    """Copy ``backup_manifest`` out of a base backup tar stream (the input for the next incremental).

    Streams through the tar without extracting anything else; raises ``FileNotFoundError`` if the
    backup has no manifest (taken with ``--no-manifest``).
    """
    with tarfile.open(fileobj=tar_stream, mode="r|") as tar:
        for member in tar:
            if member.isreg() and member.name.removeprefix("./") == "backup_manifest":
                src = tar.extractfile(member)
                assert src is not None
                with open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1024 * 1024)
                return dest
    raise FileNotFoundError("backup tar has no backup_manifest")


def logical_dump(dsn: str, database: str, *, pg_bin: str | Path | None = None) -> LogicalDumpStream:
    """``pg_dump -Fc`` of ``database`` (custom format: compressed, restorable selectively)."""
    db_dsn = make_conninfo(dsn, dbname=database)
    conn_dsn, _ = split_password(db_dsn)
    argv = [str(pg_bin_dir(pg_bin) / "pg_dump"), "--format", "custom", "--no-password", "--dbname", conn_dsn]
    return LogicalDumpStream(argv, client_env(dsn), db_dsn, database)


def list_databases(dsn: str) -> list[str]:
    """Databases a logical backup should cover: not templates, and accepting connections."""
    with connect_source(dsn) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname"
        ).fetchall()
    return [str(row[0]) for row in rows]
