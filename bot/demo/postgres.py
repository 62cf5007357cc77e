"""A throwaway local PostgreSQL primary with a streaming standby for ``aegis serve --demo``.

``initdb`` refuses to run as root, so when Aegis runs as root every server binary runs as the
``postgres`` OS user (the Debian packages create it); otherwise as the current user. The clusters live
in the demo's run directory (under /tmp, which that user can traverse) and listen on free loopback
ports. Aegis reaches them over a Unix socket in a directory only the cluster's user (and root) can
enter, so the ``trust`` authentication of the socket is not open to the other users of the machine;
TCP connections are rejected.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import psycopg

from statemachines.json_types import JsonObject

BINARIES = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
ROOT_CLUSTER_USER = "postgres"
SUPERUSER = "postgres"     # the database role (initdb -U), whoever the OS user is
SAMPLE_ROWS = 100

_HBA = """\
# aegis serve --demo: the socket directory is private to the cluster's user; TCP is refused
local   all          all                 trust
local   replication  all                 trust
host    all          all   0.0.0.0/0     reject
host    all          all   ::/0          reject
"""


class DemoPostgresError(RuntimeError):
    """The demo's clusters could not be started; the text says why in one line."""


def _major(bin_dir: Path) -> int:
    try:
        return int(bin_dir.parent.name)
    except ValueError:
        return 0


def _has_binaries(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in BINARIES)


def find_pg_bin() -> Path | None:
    """PostgreSQL server binaries: ``AEGIS_PG_BIN``, else the newest ``/usr/lib/postgresql/*/bin``.

    A set ``AEGIS_PG_BIN`` is the operator's choice: when it holds no binaries there are none (said so),
    rather than silently running another version from /usr/lib."""
    explicit = os.environ.get("AEGIS_PG_BIN")
    candidates = [Path(explicit)] if explicit else sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                                                          key=_major, reverse=True)
    return next((c for c in candidates if _has_binaries(c)), None)


def free_port() -> int:
    """A loopback port the kernel just handed out (a server started right after binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _UserSwitch(TypedDict, total=False):
    """subprocess.run's keywords that run a binary as another user (none: as this process's user)."""

    user: str
    group: str
    extra_groups: list[str]


@dataclass(frozen=True)
class ClusterUser:
    """The OS user the server binaries run as: ``None`` is the current user."""

    name: str | None

    @classmethod
    def for_this_process(cls) -> ClusterUser:
        if os.geteuid() != 0:
            return cls(None)
        try:
            pwd.getpwnam(ROOT_CLUSTER_USER)
        except KeyError:
            raise DemoPostgresError(f"running as root, the demo's PostgreSQL runs as the `{ROOT_CLUSTER_USER}` "
                                    "user, which does not exist (install the postgresql package)") from None
        return cls(ROOT_CLUSTER_USER)

    def run(self, cmd: list[str], cwd: Path, timeout: float = 120) -> str:
        """Run a server binary as this user; raise with the end of its output when it fails."""
        switch: _UserSwitch = {"user": self.name, "group": self.name, "extra_groups": []} if self.name else {}
        try:
            proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                  check=False, **switch)
        except subprocess.TimeoutExpired:
            raise DemoPostgresError(f"{Path(cmd[0]).name} did not finish within {timeout:.0f}s") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DemoPostgresError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {tail[0]}")
        return str(proc.stdout)

    def own(self, path: Path, mode: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        if self.name:
            shutil.chown(path, self.name, self.name)
        path.chmod(mode)
        return path

    def as_command(self) -> list[str]:
        """The prefix a hook script puts before a server binary (``runuser -u postgres --`` as root)."""
        if not self.name:
            return []
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", self.name, "--"]


@dataclass
class DemoNode:
    name: str
    port: int
    data_dir: Path
    socket_dir: Path
    log_file: Path

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def to_state(self) -> JsonObject:
        return {"name": self.name, "port": self.port, "data_dir": str(self.data_dir),
                "socket_dir": str(self.socket_dir), "log_file": str(self.log_file)}

    @classmethod
    def from_state(cls, data: JsonObject) -> DemoNode:
        return cls(str(data["name"]), int(data["port"]), Path(data["data_dir"]), Path(data["socket_dir"]),
                   Path(data["log_file"]))


def _append_conf(data_dir: Path, settings: dict[str, str | int]) -> None:
    """Appended last, so these win; appending keeps the cluster user's ownership of the file."""
    lines = [f"{key} = '{value}'\n" if isinstance(value, str) else f"{key} = {value}\n"
             for key, value in settings.items()]
    with open(data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write("\n# --- aegis serve --demo ---\n")
        conf.writelines(lines)


@dataclass
class DemoCluster:
    """The primary and its streaming standby, under ``<run_dir>/pg``."""

    pg_bin: Path
    user: ClusterUser
    primary: DemoNode
    standby: DemoNode

    @property
    def nodes(self) -> tuple[DemoNode, DemoNode]:
        return self.primary, self.standby

    @classmethod
    def start(cls, run_dir: Path, pg_bin: Path) -> DemoCluster:
        """initdb + start the primary (with sample rows), pg_basebackup + start the standby, wait for streaming."""
        user = ClusterUser.for_this_process()
        base = user.own(run_dir / "pg", 0o755)
        cluster = cls(pg_bin, user, cls._node(base, "primary", user), cls._node(base, "standby", user))
        try:
            cluster._init_primary()
            cluster._seed()
            cluster._make_standby()
            cluster.wait_streaming()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @staticmethod
    def _node(base: Path, name: str, user: ClusterUser) -> DemoNode:
        return DemoNode(name, free_port(), base / name, user.own(base / f"{name}-sock", 0o700), base / f"{name}.log")

    def _pg(self, binary: str) -> str:
        return str(self.pg_bin / binary)

    def _init_primary(self) -> None:
        node = self.primary
        self.user.run([self._pg("initdb"), "-D", str(node.data_dir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                       "--locale=C", "--no-sync", "--no-instructions"], cwd=node.data_dir.parent)
        _append_conf(node.data_dir, {
            "port": node.port, "listen_addresses": "127.0.0.1", "unix_socket_directories": str(node.socket_dir),
            "shared_buffers": "16MB", "max_connections": 30, "max_wal_senders": 5, "wal_level": "replica",
            "wal_keep_size": "64MB", "hot_standby": "on", "fsync": "off", "logging_collector": "off",
        })
        (node.data_dir / "pg_hba.conf").write_text(_HBA, encoding="utf-8")
        self.start_node(node)

    def _seed(self) -> None:
        """What the sample service reads (and what a promotion must still have)."""
        with psycopg.connect(self.primary.dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE demo_orders (id int PRIMARY KEY, item text NOT NULL)")
            conn.execute("INSERT INTO demo_orders SELECT g, 'order ' || g FROM generate_series(1, %s) g",
                         (SAMPLE_ROWS,))

    def _make_standby(self) -> None:
        node, primary = self.standby, self.primary
        self.user.run([self._pg("pg_basebackup"), "-h", str(primary.socket_dir), "-p", str(primary.port),
                       "-U", SUPERUSER, "-D", str(node.data_dir), "-R", "-X", "stream", "--checkpoint=fast",
                       "--no-sync"], cwd=node.data_dir.parent)
        _append_conf(node.data_dir, {"port": node.port, "unix_socket_directories": str(node.socket_dir)})
        self.start_node(node)

    def start_node(self, node: DemoNode) -> None:
        self.user.run([self._pg("pg_ctl"), "-D", str(node.data_dir), "-l", str(node.log_file), "-w", "-t", "60",
                       "start"], cwd=node.data_dir.parent)

    def is_running(self, node: DemoNode) -> bool:
        if not (node.data_dir / "postmaster.pid").exists():
            return False
        try:
            self.user.run([self._pg("pg_ctl"), "-D", str(node.data_dir), "status"], cwd=node.data_dir.parent,
                          timeout=30)
        except DemoPostgresError:
            return False
        return True

    def stop_node(self, node: DemoNode) -> None:
        """Stop a node at once (``immediate``: a crash, as a failed primary would); quiet when it is not running."""
        if self.is_running(node):
            with contextlib.suppress(DemoPostgresError):
                self.user.run([self._pg("pg_ctl"), "-D", str(node.data_dir), "-m", "immediate", "-w", "-t", "60",
                               "stop"], cwd=node.data_dir.parent)

    def wait_streaming(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with psycopg.connect(self.primary.dsn(), autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()
            if row and row[0] >= 1:
                return
            time.sleep(0.1)
        raise DemoPostgresError(f"the demo standby was not streaming after {timeout:.0f}s "
                                f"(see {self.standby.log_file})")

    def stop(self) -> None:
        for node in (self.standby, self.primary):
            self.stop_node(node)

    def to_state(self) -> JsonObject:
        return {"pg_bin": str(self.pg_bin), "user": self.user.name,
                "nodes": [node.to_state() for node in self.nodes]}

    @classmethod
    def from_state(cls, data: JsonObject) -> DemoCluster:
        nodes = {n["name"]: DemoNode.from_state(n) for n in data["nodes"]}
        return cls(Path(data["pg_bin"]), ClusterUser(data.get("user")), nodes["primary"], nodes["standby"])
