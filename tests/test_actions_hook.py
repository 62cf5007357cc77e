"""Hook actions with real subprocesses and a real local HTTP server."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from recovery.actions.base import ActionError
from recovery.actions.hook import HookAction

Webhook = tuple[str, list[dict[str, Any]]]


class _Recorder(BaseHTTPRequestHandler):
    """POST /<code> answers with that status code and records the request."""

    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
        code = int(self.path.strip("/") or 200)
        self.send_response(code)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"done")

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def webhook_server() -> Iterator[Webhook]:
    handler = type("Recorder", (_Recorder,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie nobody reaped counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_exactly_one_of_command_or_webhook() -> None:
    with pytest.raises(ValueError):
        HookAction("x")
    with pytest.raises(ValueError):
        HookAction("x", command=["true"], webhook="http://127.0.0.1/")


def test_command_success_streams_output_with_context() -> None:
    hook = HookAction(
        "fence_primary",
        command=["sh", "-c", 'echo "fencing $AEGIS_INCIDENT step $AEGIS_STEP"; echo "$EXTRA"'],
        env={"EXTRA": "second line"},
        context={"incident": "INC-7", "step": "3"},
    )
    lines: list[str] = []
    out = hook.execute(lines.append)
    assert out == {"exit_code": 0, "stdout_tail": "fencing INC-7 step 3\nsecond line"}
    assert lines == ["fencing INC-7 step 3", "second line"]
    assert hook.describe() == "Run hook fence_primary (sh)"


def test_stdout_tail_is_bounded() -> None:
    hook = HookAction("chatty", command=[sys.executable, "-c", "for i in range(2000): print('x' * 50, i)"])
    out = hook.execute(lambda _line: None)
    assert len(out["stdout_tail"]) <= 2000
    assert out["stdout_tail"].endswith("1999")


def test_non_zero_exit_names_code_and_stderr() -> None:
    hook = HookAction("fence", command=["sh", "-c", "echo first >&2; echo 'no route to ipmi' >&2; exit 3"])
    with pytest.raises(ActionError, match=r"exit code 3: no route to ipmi"):
        hook.execute(lambda _line: None)


def test_missing_program_is_an_action_error() -> None:
    with pytest.raises(ActionError, match="could not start"):
        HookAction("x", command=["/nonexistent/fence.sh"]).execute(lambda _line: None)


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    hook = HookAction(
        "slow",
        command=["sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo started; wait"],
        timeout_seconds=1,
    )
    started = time.monotonic()
    with pytest.raises(ActionError, match=r"hook slow timed out after 1s"):
        hook.execute(lambda _line: None)
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), f"sleep {child} survived the timeout"


def test_done_check_true_false_and_error() -> None:
    assert HookAction("h", command=["true"], done_check=["true"]).is_done() is True
    assert HookAction("h", command=["true"], done_check=["false"]).is_done() is False
    assert HookAction("h", command=["true"], done_check=["/nonexistent/check"]).is_done() is None
    assert HookAction("h", command=["true"]).is_done() is None


def test_secrets_printed_by_the_hook_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    # a name that does not look secret: the value is masked because pass_env declares it
    monkeypatch.setenv("HOOK_TEST_PASS", "supersecretvalue")
    hook = HookAction("leaky", command=["sh", "-c", 'echo "token is $HOOK_TEST_PASS"; '
                                                    'echo "bad $HOOK_TEST_PASS" >&2; exit 1'],
                      pass_env=["HOOK_TEST_PASS"])
    lines: list[str] = []
    with pytest.raises(ActionError) as err:
        hook.execute(lines.append)
    assert "supersecretvalue" not in str(err.value) and "bad ********" in str(err.value)
    assert lines == ["token is ********"]

    ok = HookAction("leaky", command=["sh", "-c", 'echo "token is $HOOK_TEST_PASS $API_PASSWORD"'],
                    env={"API_PASSWORD": "hookonlysecret"}, pass_env=["HOOK_TEST_PASS"])
    out = ok.execute(lambda _line: None)
    assert "supersecretvalue" not in json.dumps(out) and "hookonlysecret" not in json.dumps(out)


def test_webhook_success_sends_context_and_secret_header(
    webhook_server: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, received = webhook_server
    monkeypatch.setenv("LB_TOKEN", "Bearer lb-secret-123456")
    hook = HookAction("update_traffic", webhook=f"{base}/200", headers_env={"Authorization": "LB_TOKEN"},
                      context={"incident": "INC-7"})
    out = hook.execute(lambda _line: None)
    assert out["status_code"] == 200
    assert received[0]["json"] == {"hook": "update_traffic", "incident": "INC-7"}
    assert received[0]["headers"]["Authorization"] == "Bearer lb-secret-123456"
    assert "lb-secret" not in json.dumps(out)
    assert "lb-secret" not in hook.describe()
    assert hook.describe() == "Call hook update_traffic (webhook on 127.0.0.1)"


def test_webhook_error_status_and_unreachable(webhook_server: Webhook) -> None:
    base, _ = webhook_server
    with pytest.raises(ActionError, match="HTTP 500"):
        HookAction("lb", webhook=f"{base}/500").execute(lambda _line: None)
    with pytest.raises(ActionError, match="unreachable"):
        HookAction("lb", webhook="http://127.0.0.1:1/failover", timeout_seconds=2).execute(lambda _line: None)


def test_webhook_missing_header_env_is_a_clear_error(webhook_server: Webhook) -> None:
    base, received = webhook_server
    hook = HookAction("lb", webhook=f"{base}/200", headers_env={"Authorization": "AEGIS_TEST_UNSET_VAR"})
    with pytest.raises(ActionError, match="AEGIS_TEST_UNSET_VAR"):
        hook.execute(lambda _line: None)
    assert received == []
