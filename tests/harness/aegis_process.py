"""Run ``aegis serve`` as a real process for end-to-end tests, with the emulator as Slack.

The emulator runs inside the test process (so tests can read what was posted); the bot runs as a
child process over real HTTP, exactly as in production but for ``SLACK_API_URL``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml

from slack_emulator.server import EmulatorServer
from statemachines.store import Store
from tests.harness.pgcluster import free_port

BOT_TOKEN = "xoxb-test-4242-SECRETBOTTOKEN"
SIGNING_SECRET = "test-signing-secret-0123456789abcdef"
PG_PASSWORD = "pg-pass-do-not-leak-77"


class AegisProcess:
    def __init__(self, workdir: Path, config: dict[str, Any], database_url: str, emulator_api_url: str,
                 port: int | None = None, name: str = "aegis") -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.database_url = database_url
        self.name = name
        self.config_path = workdir / f"{name}.yaml"
        # The monitor (on by default) would open its own incidents when a test stops a server on
        # purpose; only a test that configures `monitoring` runs it.
        config = config if "monitoring" in config else {**config, "monitoring": {"enabled": False}}
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.log"
        self.env = {
            **os.environ,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": emulator_api_url,
            "AEGIS_DATABASE_URL": database_url,
            "AEGIS_CONFIG": str(self.config_path),
            "AEGIS_TEST_PG_PASSWORD": PG_PASSWORD,
            "PYTHONUNBUFFERED": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []   # more `aegis serve` options (e.g. --emulator-port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> AegisProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve", "--port", str(self.port), "--sweep-seconds", "1",
             *self.extra_args],
            cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"aegis exited early:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"aegis did not become healthy:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush — a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def store(self) -> Store:
        return Store(self.database_url)


def start_on_sqlite(workdir: Path, emulator: EmulatorServer, config: dict[str, Any]) -> AegisProcess:
    """``aegis serve`` on a SQLite file in ``workdir``, with ``emulator`` as its Slack (and the emulator told)."""
    workdir.chmod(0o755)
    bot = AegisProcess(workdir, config, f"sqlite:///{workdir}/aegis.db", emulator.api_url)
    emulator.bot_url = bot.url
    return bot.start()


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.2, what: str = "") -> Any:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last={last!r}")
