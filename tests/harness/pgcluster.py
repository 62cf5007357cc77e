"""Throwaway real PostgreSQL 15 clusters for tests: a single primary or a primary + streaming standby.

Tests run as root but ``initdb`` refuses root, so every server binary runs as the ``postgres`` user
inside a temp directory owned by it (its parents must be traversable, hence ``/tmp`` and 0o755).
Use the fixtures with ``pytest_plugins = ["tests.harness.pgcluster"]`` or build a pair directly::

    pair = PgPair.create()
    try:
        pair.primary.sql("CREATE TABLE t (id int)")
        pair.wait_replicated()
    finally:
        pair.destroy()

PYTEST_DONT_REWRITE: other test modules import this before pytest registers it as a plugin.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

PG_BIN = Path(os.environ.get("AEGIS_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"

_HBA = """\
local   all          all                 trust
host    all          all   127.0.0.1/32  trust
local   replication  all                 trust
host    replication  all   127.0.0.1/32  trust
"""


def free_port() -> int:
    """A port the kernel just handed out; racy in theory, good enough for a test box."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as_postgres(cmd: list[str], cwd: Path, timeout: float = 120) -> str:
    """Run a server binary as ``postgres``; raise with its output when it fails."""
    proc = subprocess.run(
        cmd,
        user=PG_USER,
        group=PG_USER,
        extra_groups=[],
        cwd=cwd,  # the caller's cwd may not be readable by postgres
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _mkdir_for_postgres(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, PG_USER, PG_USER)
    path.chmod(mode)
    return path


def _append_conf(data_dir: Path, settings: dict[str, Any]) -> None:
    """Append to postgresql.conf (later lines win); appending keeps the postgres-owned file's owner."""
    lines = []
    for key, value in settings.items():
        # postgresql.conf strings: backslashes are escapes and '' is one quote (a path may hold either)
        quoted = value.replace("\\", "\\\\").replace("'", "''") if isinstance(value, str) else ""
        rendered = f"'{quoted}'" if isinstance(value, str) else str(value)
        lines.append(f"{key} = {rendered}\n")
    with open(data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
        f.write("\n# --- tests/harness/pgcluster.py ---\n")
        f.writelines(lines)


@dataclass
class PgNode:
    """One PostgreSQL cluster (data directory + server) owned by the postgres user."""

    name: str
    port: int
    data_dir: Path
    socket_dir: Path
    log_file: Path
    pg_bin: Path = PG_BIN

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user={PG_USER} dbname={dbname}"

    def tcp_dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={PG_USER} dbname={dbname}"

    def start(self) -> None:
        _run_as_postgres(
            [str(self.pg_bin / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
             "start"],
            cwd=self.data_dir.parent,
        )

    def stop(self, mode: str = "fast") -> None:
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}")
        _run_as_postgres(
            [str(self.pg_bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop"],
            cwd=self.data_dir.parent,
        )

    def is_running(self) -> bool:
        proc = subprocess.run(
            [str(self.pg_bin / "pg_ctl"), "-D", str(self.data_dir), "status"],
            user=PG_USER, group=PG_USER, extra_groups=[], cwd=self.data_dir.parent,
            capture_output=True, check=False,
        )
        return proc.returncode == 0

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode; rows when it returns any, else []."""
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server log, for assertion messages when something went wrong."""
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _init_primary(base_dir: Path, name: str = "primary", *, pg_bin: Path | None = None,
                  settings: dict[str, Any] | None = None) -> PgNode:
    """initdb + config for a primary that archives WAL into ``<base_dir>/archive``; started.

    ``pg_bin`` picks another PostgreSQL build (e.g. 17 for incremental backups); ``settings`` are
    appended last, so they win (e.g. an ``archive_command`` of ``aegis wal push %p``).
    """
    node = PgNode(
        name=name,
        port=free_port(),
        data_dir=base_dir / name,
        socket_dir=_mkdir_for_postgres(base_dir / f"{name}-sock", 0o755),
        log_file=base_dir / f"{name}.log",
        pg_bin=pg_bin or PG_BIN,
    )
    archive = _mkdir_for_postgres(base_dir / "archive")
    _run_as_postgres(
        [str(node.pg_bin / "initdb"), "-D", str(node.data_dir), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
         "--locale=C", "--no-sync", "--no-instructions"],
        cwd=base_dir,
    )
    _append_conf(node.data_dir, {
        "port": node.port,
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(node.socket_dir),
        "shared_buffers": "16MB",
        "max_connections": 30,
        "max_wal_senders": 5,
        "wal_level": "replica",
        "wal_keep_size": "64MB",
        "archive_mode": "on",
        "archive_command": f"test ! -f {archive}/%f && cp %p {archive}/%f",
        "hot_standby": "on",
        "fsync": "off",
        "logging_collector": "off",
        **(settings or {}),
    })
    (node.data_dir / "pg_hba.conf").write_text(_HBA, encoding="utf-8")
    node.start()
    return node


def _make_standby(base_dir: Path, primary: PgNode, name: str = "standby") -> PgNode:
    """pg_basebackup -R from ``primary`` into a hot standby that streams from it; started."""
    node = PgNode(
        name=name,
        port=free_port(),
        data_dir=base_dir / name,
        socket_dir=_mkdir_for_postgres(base_dir / f"{name}-sock", 0o755),
        log_file=base_dir / f"{name}.log",
    )
    _run_as_postgres(
        [str(PG_BIN / "pg_basebackup"), "-h", str(primary.socket_dir), "-p", str(primary.port),
         "-U", PG_USER, "-D", str(node.data_dir), "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"],
        cwd=base_dir,
    )
    _append_conf(node.data_dir, {
        "port": node.port,
        "unix_socket_directories": str(node.socket_dir),
        # The copy inherits the primary's archive_command; after a promotion it must not write
        # into the old primary's archive.
        "archive_command": "/bin/true",
    })
    node.start()
    return node


def _new_base_dir(base_dir: Path | None) -> Path:
    parent = base_dir if base_dir is not None else Path("/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="aegis-pg-", dir=parent))
    shutil.chown(path, PG_USER, PG_USER)
    path.chmod(0o755)
    return path


def _stop_quietly(node: PgNode | None) -> None:
    if node is None or not node.data_dir.exists():
        return
    with contextlib.suppress(Exception):
        if node.is_running():
            node.stop("immediate")


@dataclass
class PgSingle:
    """One primary (with WAL archiving) and no standby."""

    base_dir: Path
    primary: PgNode

    @classmethod
    def create(cls, base_dir: Path | None = None, *, pg_bin: Path | None = None,
               settings: dict[str, Any] | None = None) -> PgSingle:
        root = _new_base_dir(base_dir)
        try:
            return cls(base_dir=root, primary=_init_primary(root, pg_bin=pg_bin, settings=settings))
        except BaseException:
            _stop_quietly(PgNode("primary", 0, root / "primary", root, root / "primary.log", pg_bin or PG_BIN))
            shutil.rmtree(root, ignore_errors=True)
            raise

    @property
    def archive_dir(self) -> Path:
        return self.base_dir / "archive"

    def destroy(self) -> None:
        _stop_quietly(self.primary)
        shutil.rmtree(self.base_dir, ignore_errors=True)


@dataclass
class PgPair:
    """A primary archiving WAL into ``archive_dir`` and a hot standby streaming from it."""

    base_dir: Path
    primary: PgNode
    standby: PgNode

    @classmethod
    def create(cls, base_dir: Path | None = None) -> PgPair:
        root = _new_base_dir(base_dir)
        primary: PgNode | None = None
        try:
            primary = _init_primary(root)
            standby = _make_standby(root, primary)
            pair = cls(base_dir=root, primary=primary, standby=standby)
            pair.wait_streaming()
            return pair
        except BaseException:
            for name in ("standby", "primary"):
                _stop_quietly(PgNode(name, 0, root / name, root, root / f"{name}.log"))
            shutil.rmtree(root, ignore_errors=True)
            raise

    @property
    def archive_dir(self) -> Path:
        return self.base_dir / "archive"

    def wait_streaming(self, timeout: float = 30) -> None:
        """Block until the primary sees the standby's WAL receiver as streaming."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.primary.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            if rows and rows[0][0] >= 1:
                return
            time.sleep(0.05)
        raise TimeoutError(f"standby not streaming after {timeout}s\n{self.standby.log_tail()}")

    def wait_replicated(self, timeout: float = 30) -> None:
        """Block until the standby has replayed everything the primary has written so far."""
        target = self.primary.sql("SELECT pg_current_wal_lsn()")[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.standby.sql("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", str(target))
            if rows and rows[0][0]:
                return
            time.sleep(0.05)
        raise TimeoutError(f"standby did not replay up to {target} within {timeout}s")

    def destroy(self) -> None:
        _stop_quietly(self.standby)
        _stop_quietly(self.primary)
        shutil.rmtree(self.base_dir, ignore_errors=True)


@pytest.fixture
def pg_pair() -> Iterator[PgPair]:
    """A fresh primary + streaming standby per test, destroyed afterwards."""
    pair = PgPair.create()
    try:
        yield pair
    finally:
        pair.destroy()


@pytest.fixture
def pg_single() -> Iterator[PgSingle]:
    """A fresh primary without a standby per test (``pg_single.primary`` is the PgNode)."""
    single = PgSingle.create()
    try:
        yield single
    finally:
        single.destroy()
