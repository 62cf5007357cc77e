"""A real Neo4j 5.26 with authentication ON (the session server of ``neo4j_server`` has it off).

Needed where a wrong password must be refused by the server. ``Neo4jAuthLauncher.java`` (beside this
file) runs in Java's source-file mode on the classpath of the built test launcher, so nothing new is
built; it sets the ``neo4j`` user's password from an environment variable (never the command line)
and prints READY. The JVM stops when its stdin closes (the fixture's end, or a killed pytest).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.harness.neo4j_server import JVM_OPTS, START_TIMEOUT, install_launcher
from tests.harness.pgcluster import free_port

SOURCE = Path(__file__).with_name("Neo4jAuthLauncher.java")
PASSWORD_ENV = "AEGIS_TEST_NEO4J_AUTH_PASSWORD"


@dataclass
class Neo4jAuthServer:
    port: int
    password: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 60) -> None:
        if self.process.stdin:
            self.process.stdin.close()          # the launcher exits when its stdin closes
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _pump(stream: IO[str], lines: list[str], ready: threading.Event) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))
        if line.startswith("READY"):
            ready.set()


@contextmanager
def neo4j_with_auth(password: str) -> Iterator[Neo4jAuthServer]:
    jar = install_launcher()
    data_dir = Path(tempfile.mkdtemp(prefix="aegis-neo4j-auth-"))
    port = free_port()
    java = os.environ.get("AEGIS_JAVA", "java")
    process = subprocess.Popen(
        [java, *JVM_OPTS, "-cp", str(jar), str(SOURCE), str(port), str(data_dir), PASSWORD_ENV],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, PASSWORD_ENV: password})
    server = Neo4jAuthServer(port, password, process)
    ready = threading.Event()
    assert process.stdout is not None
    threading.Thread(target=_pump, args=(process.stdout, server.output, ready), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while not ready.wait(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Neo4j launcher with authentication did not start:\n" +
                                   "\n".join(server.output[-100:]))
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
