"""A real Neo4j 5.26 (embedded community edition, Bolt only) for tests, one per test session.

``scripts/install-neo4j`` builds the launcher (``tests/neo4j-launcher``) into ``.tools/neo4j-launcher/`` the
first time; after that it is a no-op. The server listens on 127.0.0.1 with authentication disabled, keeps its
store in a temp directory, and is stopped with SIGTERM (a clean shutdown) at the end of the session. Community
edition has a single user database, so tests share ``neo4j`` and wipe it between tests. Use with
``pytest_plugins = ["tests.harness.neo4j_server"]``::

    def test_something(neo4j_clean: Neo4jServer) -> None:
        with neo4j_clean.driver() as driver:
            driver.execute_query("CREATE (:Thing {id: 1})")

Or standalone: ``server = Neo4jServer.start(Path(tmpdir)); ...; server.stop()``.

PYTEST_DONT_REWRITE: test modules import this before pytest registers it as a plugin.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import neo4j
import pytest

from tests.harness.pgcluster import free_port

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install-neo4j"
LAUNCHER_JAR = ROOT / ".tools" / "neo4j-launcher" / "neo4j-launcher.jar"
# small heap: test graphs are tiny and CI boxes have 2 cores / little RAM; SerialGC avoids GC threads
JVM_OPTS = ["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC"]
START_TIMEOUT = 180.0


def install_launcher() -> Path:
    """Build the launcher if needed (idempotent; the first build downloads ~125 MB from Maven Central)."""
    proc = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0 or not LAUNCHER_JAR.exists():
        raise RuntimeError(f"scripts/install-neo4j failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return LAUNCHER_JAR


@dataclass
class Neo4jServer:
    """A running launcher process; ``uri``/``auth`` are what any Neo4j driver needs to reach it."""

    port: int
    data_dir: Path
    process: subprocess.Popen[str]
    startup_seconds: float = 0.0
    auth: tuple[str, str] | None = None  # authentication is disabled in the launcher
    _output: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, data_dir: Path, port: int | None = None, java: str | None = None) -> Neo4jServer:
        jar = install_launcher()
        port = port or free_port()
        java = java or os.environ.get("AEGIS_JAVA", "java")
        began = time.monotonic()
        process = subprocess.Popen(
            [java, *JVM_OPTS, "-jar", str(jar), str(port), str(data_dir), "--exit-on-stdin-eof"],
            # the launcher exits when this pipe closes, so a killed pytest never leaves a JVM behind
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        server = cls(port=port, data_dir=data_dir, process=process)
        ready = threading.Event()
        threading.Thread(target=server._pump, args=(process.stdout, ready), daemon=True).start()
        try:
            server._wait_ready(ready, began + START_TIMEOUT)
        except BaseException:
            server.stop()
            raise
        server.startup_seconds = time.monotonic() - began
        return server

    def _pump(self, stream: IO[str], ready: threading.Event) -> None:
        # keep draining stdout so the JVM never blocks on a full pipe; remember it for error messages
        for line in stream:
            self._output.append(line.rstrip("\n"))
            if line.startswith("READY"):
                ready.set()

    def _wait_ready(self, ready: threading.Event, deadline: float) -> None:
        while not ready.wait(0.1):
            if self.process.poll() is not None:
                raise RuntimeError(f"Neo4j launcher exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Neo4j launcher not READY after {START_TIMEOUT:.0f}s:\n{self.output()}")
        # READY means Bolt accepts TCP; a real handshake + query proves the database serves requests
        while True:
            try:
                with self.driver() as driver:
                    driver.verify_connectivity()
                    driver.execute_query("RETURN 1")
                return
            except (neo4j.exceptions.DriverError, neo4j.exceptions.Neo4jError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def output(self) -> str:
        return "\n".join(self._output[-200:])

    def driver(self, **config: object) -> neo4j.Driver:
        """A new driver for this server; the caller closes it (use it as a context manager)."""
        return neo4j.GraphDatabase.driver(self.uri, auth=self.auth, **config)

    def wipe(self, database: str = "neo4j") -> None:
        """Empty ``database``: all nodes and relationships, constraints and indexes except the LOOKUP ones."""
        with self.driver() as driver, driver.session(database=database) as session:
            # batched delete keeps each transaction small for big test graphs
            deleted = 1
            while deleted:
                query = "MATCH (n) WITH n LIMIT 10000 DETACH DELETE n RETURN count(*) AS c"
                deleted = session.run(query).single(strict=True)["c"]
            for record in list(session.run("SHOW CONSTRAINTS YIELD name")):
                session.run(f"DROP CONSTRAINT `{record['name']}`").consume()
            # LOOKUP indexes exist in every fresh database; dropping them would change what tests compare against
            for record in list(session.run("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP' RETURN name")):
                session.run(f"DROP INDEX `{record['name']}`").consume()

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM → the launcher shuts the DBMS down cleanly; SIGKILL only if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdin:
            self.process.stdin.close()


@pytest.fixture(scope="session")
def neo4j_server() -> Iterator[Neo4jServer]:
    data_dir = Path(tempfile.mkdtemp(prefix="aegis-neo4j-"))
    server = Neo4jServer.start(data_dir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def neo4j_clean(neo4j_server: Neo4jServer) -> Neo4jServer:
    """The session's server with an empty ``neo4j`` database (wiped before the test, not after: a failed test
    leaves its graph for inspection until the next one starts)."""
    neo4j_server.wipe()
    return neo4j_server
