"""``aegis`` mistakes end in one line on stderr and a non-zero exit, never a traceback (real subprocesses)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.pgcluster import free_port

ROOT = Path(__file__).resolve().parents[1]


def aegis(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("SLACK_", "AEGIS_"))}
    config = cwd / "aegis.yaml"
    if not config.exists():
        config.write_text("locale: en\n")
    environment.update({"PYTHONPATH": str(ROOT), "AEGIS_DATABASE_URL": f"sqlite:///{cwd}/aegis.db",
                        "AEGIS_CONFIG": str(config)})
    environment.update(env)
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aegis"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_unknown_log_level(tmp_path: Path) -> None:
    assert_one_line_error(aegis("--log-level", "BOGUS", "migrate", cwd=tmp_path), "BOGUS", "INFO")
    assert_one_line_error(aegis("migrate", cwd=tmp_path, AEGIS_LOG_LEVEL="LOUD"), "LOUD")


@pytest.mark.parametrize(("url", "needle"), [
    ("garbage", "not a database URL"),
    ("mysql://aegis@db/aegis", "does not support"),
    ("mongodb://x/y", "does not support"),
    ("sqlite:////nonexistent-dir-for-aegis/sub/aegis.db", "does not exist"),
])
def test_unusable_database_urls(tmp_path: Path, url: str, needle: str) -> None:
    for command in (["migrate"], ["serve", "--port", str(free_port())]):
        assert_one_line_error(aegis(*command, cwd=tmp_path, AEGIS_DATABASE_URL=url), needle)


def test_unreachable_database_hides_the_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://aegis:hunter2-not-shown@127.0.0.1:{free_port()}/aegis"
    line = assert_one_line_error(aegis("migrate", cwd=tmp_path, AEGIS_DATABASE_URL=url), "cannot use the database")
    assert "hunter2-not-shown" not in line


@pytest.mark.parametrize("port", ["99999", "-1", "65536", "http", "３０００"])
def test_ports_out_of_range(tmp_path: Path, port: str) -> None:
    assert_one_line_error(aegis("serve", "--port", port, cwd=tmp_path), "not a port")
    assert_one_line_error(aegis("serve", "--emulator-port", port, cwd=tmp_path), "not a port")


def test_port_in_use(tmp_path: Path, busy_port: int) -> None:
    slack = {"SLACK_BOT_TOKEN": "xoxb-cli-test", "SLACK_SIGNING_SECRET": "cli-test-secret",
             "SLACK_API_URL": f"http://127.0.0.1:{free_port()}/api/"}
    assert_one_line_error(aegis("--log-level", "WARNING", "serve", "--port", str(busy_port), cwd=tmp_path, **slack),
                          "in use", str(busy_port))
    # the built-in emulator's port too
    assert_one_line_error(aegis("--log-level", "WARNING", "serve", "--port", str(free_port()), "--emulator-port",
                                str(busy_port), cwd=tmp_path), "in use", "--emulator-port")


def test_emulator_refuses_a_public_host(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::"):
        line = assert_one_line_error(aegis("serve", "--host", host, "--port", str(free_port()), cwd=tmp_path),
                                     "loopback", "SLACK_BOT_TOKEN")
        assert "aegis serve" in line   # how to run the demo


def test_http_mode_without_a_signing_secret(tmp_path: Path) -> None:
    assert_one_line_error(aegis("serve", "--port", str(free_port()), cwd=tmp_path, SLACK_BOT_TOKEN="xoxb-1"),
                          "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN")


def test_config_files_that_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes("locale: en\n# caf\xe9\n".encode("latin-1") + b"\xff\xfe\n")
    (tmp_path / "folder.yaml").mkdir()
    for name in ("latin1.yaml", "folder.yaml"):
        for command in (["config", "check"], ["serve", "--port", str(free_port())]):
            assert_one_line_error(aegis("--config", str(tmp_path / name), *command, cwd=tmp_path))


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(aegis("launch", cwd=tmp_path), "invalid choice")
    assert_one_line_error(aegis("serve", "--sweep-seconds", "often", cwd=tmp_path), "--sweep-seconds")
