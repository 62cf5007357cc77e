"""Hooks get a minimal environment: PATH, HOME, LANG/LC_*, the AEGIS_* context, their own ``env``
and what their ``pass_env`` names — never Aegis's Slack token, backup key or cloud and database
credentials. Real subprocesses through the real HookAction (and the bot's wiring), a real HTTP
server for webhooks."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bot import wiring
from bot.config import Config
from recovery.actions.hook import HookAction
from recovery.redact import MASK
from statemachines.models import PlanStep

POLLUTION = {
    "SLACK_BOT_TOKEN": "xoxb-parent-bot-token-123",
    "SLACK_SIGNING_SECRET": "parent-signing-secret-456",
    "SLACK_APP_TOKEN": "xapp-parent-app-token-789",
    "AEGIS_BACKUP_KEY": "cGFyZW50LWJhY2t1cC1rZXktMzItYnl0ZXMtbG9uZyE=",
    "AWS_SECRET_ACCESS_KEY": "parent-aws-secret-access-key",
    "AWS_ACCESS_KEY_ID": "AKIAPARENTACCESSKEY",
    "AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=http;AccountKey=parentazurekey",
    "PGPASSWORD": "parent-pg-password",
    "DB_PASS": "parent-db-pass-value",
    "RANDOM_VAR": "some unrelated value",
    "AEGIS_DATABASE_URL": "postgresql+psycopg://aegis:storepw@db/aegis",
}
CONTEXT = {"incident": "INC-42", "step": "7", "scenario": "database_failure"}
DUMP = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"


@pytest.fixture
def polluted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Aegis's own environment as in production: full of secrets, plus the locale and a HOME."""
    for name, value in POLLUTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LC_TIME", "C.UTF-8")


def dumped(path: Path) -> dict[str, str]:
    return dict(json.loads(path.read_text()))


BASE = {"PATH", "HOME", "LANG", "LC_TIME", "AEGIS_HOOK", "AEGIS_INCIDENT", "AEGIS_STEP", "AEGIS_SCENARIO"}


def test_command_sees_only_the_allowed_names(polluted: None, tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    hook = HookAction("fence_primary", command=[sys.executable, "-c", DUMP, str(out)], context=CONTEXT,
                      env={"FENCE_MODE": "ipmi"}, pass_env=["DB_PASS", "NOT_SET_ANYWHERE"])
    hook.execute(lambda _line: None)
    env = dumped(out)
    assert set(env) == BASE | {"FENCE_MODE", "DB_PASS"}
    assert env["FENCE_MODE"] == "ipmi" and env["DB_PASS"] == POLLUTION["DB_PASS"]
    assert env["AEGIS_HOOK"] == "fence_primary" and env["AEGIS_INCIDENT"] == "INC-42"
    assert env["AEGIS_STEP"] == "7" and env["AEGIS_SCENARIO"] == "database_failure"
    assert env["HOME"] == str(tmp_path) and env["LANG"] == "C.UTF-8"
    dump = json.dumps(env)
    for name, value in POLLUTION.items():
        if name != "DB_PASS":
            assert value not in dump, f"{name} reached the hook"


def test_env_cannot_impersonate_another_hook_but_may_set_path(polluted: None, tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    hook = HookAction("fence_primary", command=[sys.executable, "-c", DUMP, str(out)], context=CONTEXT,
                      env={"AEGIS_HOOK": "update_traffic", "PATH": "/opt/ops/bin:/usr/bin:/bin"})
    hook.execute(lambda _line: None)
    env = dumped(out)
    assert env["AEGIS_HOOK"] == "fence_primary"
    assert env["PATH"] == "/opt/ops/bin:/usr/bin:/bin"


def test_a_secret_not_passed_is_not_there_and_one_passed_is_masked(polluted: None) -> None:
    script = 'echo "pg=[$PGPASSWORD] slack=[$SLACK_BOT_TOKEN] db=[$DB_PASS]"'
    lines: list[str] = []
    out = HookAction("leaky", command=["sh", "-c", script], pass_env=["DB_PASS"]).execute(lines.append)
    assert lines == [f"pg=[] slack=[] db=[{MASK}]"]
    assert out["stdout_tail"] == lines[0]


def test_done_check_gets_the_same_minimal_environment(polluted: None, tmp_path: Path) -> None:
    out = tmp_path / "done-env.json"
    hook = HookAction("fence_primary", command=["true"], context=CONTEXT, env={"FENCE_MODE": "ipmi"},
                      pass_env=["DB_PASS"], done_check=[sys.executable, "-c", DUMP, str(out)])
    assert hook.is_done() is True
    assert set(dumped(out)) == BASE | {"FENCE_MODE", "DB_PASS"}


def test_the_bot_wiring_passes_env_and_pass_env_from_the_config(polluted: None, tmp_path: Path) -> None:
    out = tmp_path / "wired-env.json"
    config = Config.model_validate({"hooks": {"fence_primary": {
        "command": [sys.executable, "-c", DUMP, str(out)], "env": {"FENCE_MODE": "ipmi"}, "pass_env": ["DB_PASS"],
    }}})
    step = PlanStep(incident_id=1, revision=1, position=1, title="Fence", action="hook",
                    params={"hook": "fence_primary"})
    wiring.build_action(config, step, CONTEXT).execute(lambda _line: None)
    env = dumped(out)
    assert set(env) == BASE | {"FENCE_MODE", "DB_PASS"}
    assert POLLUTION["SLACK_BOT_TOKEN"] not in json.dumps(env)


# --- webhooks -----------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append({"headers": dict(self.headers), "json": json.loads(body)})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    handler = type("Recorder", (_Recorder,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/failover", handler.requests
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_sends_only_headers_env_not_netrc_credentials(
    polluted: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = webhook
    # a ~/.netrc entry for the webhook's host: requests would add it as Basic auth on its own
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login ops password netrc-secret-pw\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("LB_AUTH", "Bearer lb-token-abcdef")

    HookAction("update_traffic", webhook=url, context=CONTEXT).execute(lambda _line: None)
    HookAction("update_traffic", webhook=url, context=CONTEXT,
               headers_env={"X-LB-Auth": "LB_AUTH"}).execute(lambda _line: None)

    bare, with_header = received
    assert "Authorization" not in bare["headers"] and "X-LB-Auth" not in bare["headers"]
    assert with_header["headers"]["X-LB-Auth"] == "Bearer lb-token-abcdef"
    assert "Authorization" not in with_header["headers"]
    assert with_header["json"] == {"hook": "update_traffic", **CONTEXT}
    sent = json.dumps(received)
    for value in [*POLLUTION.values(), "netrc-secret-pw"]:
        assert value not in sent
