"""Secrets are masked by what the config declares, not by what their variables are called.

``password_env: DB_PASS`` makes the value of ``DB_PASS`` a secret although nothing in the name says
so; the same for ``headers_env``, ``pass_env``, ``connection_string_env``, ``key_env``,
``postgres_dsn_env``. Checked in units (the declared names, the registry, the Slack gateway, the
log formatter) and end to end: ``aegis serve`` runs a hook that prints the database password and a
webhook whose server echoes its credential, and neither value reaches Slack, the database file or
the log — the mask does.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config
from bot.logs import RedactingFormatter
from bot.secrets import declared_secret_names, install_masking
from bot.slack.gateway import SlackGateway
from recovery.redact import MASK, forget_secrets, redact, redact_data, register_secrets
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines.models import require_id
from tests.harness.aegis_process import BOT_TOKEN, SIGNING_SECRET, AegisProcess, wait_for
from tests.harness.pgcluster import free_port
from tests.harness.slack_reading import channel_by_id
from tests.harness.walk import Walk

ROSTER = {
    "incident_commander": ["U0IC"], "database_lead": ["U0DB"], "infrastructure_lead": ["U0INFRA"],
    "application_lead": ["U0APP"], "security_lead": ["U0SEC"], "communication_manager": ["U0COMM"],
}
# names that look like nothing secret: only the config says they are
DB_PASS = "Zq81-db+pass/never-shown"
LB_CREDENTIAL = "lb-Yx77-never-shown"
LB_AUTH = f"Token {LB_CREDENTIAL}"
BACKUP_KEY = "b2sP-backup-key-never-shown"   # in ARCHIVE_MATERIAL, named by encryption.key_env


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """The registry is process-wide: every test starts and ends without registered values."""
    forget_secrets()
    yield
    forget_secrets()


def full_config() -> Config:
    return Config.model_validate({
        "services": [{"name": "api", "health": {"postgres_dsn_env": "API_DSN"}}],
        "components": {
            "postgres": {"primary": {"dsn": "host=db1 user=app", "password_env": "DB_PASS"},
                         "standby": {"dsn": "host=db2 user=app", "password_env": "DB2_PASS"}},
            "neo4j": {"uri": "bolt://graph:7687", "password_env": "GRAPH_PW"},
        },
        "hooks": {
            "update_traffic": {"webhook": "https://lb.internal/failover", "headers_env": {"Authorization": "LB_AUTH"}},
            "fence_primary": {"command": ["/opt/fence"], "env": {"MODE": "ipmi"}, "pass_env": ["IPMI_PW"]},
        },
        "storage": [{"kind": "azure", "container": "c", "connection_string_env": "AZ_CONN"},
                    {"kind": "s3", "bucket": "b"}],
        "encryption": {"key_env": "BK_KEY"},
    })


def test_the_declared_names_come_from_every_section_of_the_config() -> None:
    names = declared_secret_names(full_config())
    declared = {"API_DSN", "DB_PASS", "DB2_PASS", "GRAPH_PW", "LB_AUTH", "IPMI_PW", "AZ_CONN", "BK_KEY"}
    implicit = {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_CONNECTION_STRING",
                "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "AEGIS_BACKUP_KEY",
                "AEGIS_REPORTS_SECRET"}
    assert names == declared | implicit
    # a hook's env holds literal values shown in the file, not secrets
    assert "MODE" not in names


def test_a_declared_value_is_masked_whatever_its_variable_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PASS", DB_PASS)
    monkeypatch.setenv("LB_AUTH", LB_AUTH)
    monkeypatch.setenv("IPMI_PW", "ip")            # too short to mask without mangling ordinary text
    assert DB_PASS in redact(f"connecting with {DB_PASS}")   # not yet declared: the name says nothing
    assert install_masking(full_config()) >= 3
    assert redact(f"connecting with {DB_PASS}") == f"connecting with {MASK}"
    # URL-encoded inside a postgresql:// URL, and a header's credential echoed without its scheme
    assert redact("postgresql://app:Zq81-db%2Bpass%2Fnever-shown@db1/app").count(MASK) == 1
    assert redact(f"echo: {LB_CREDENTIAL}") == f"echo: {MASK}"
    assert redact("ship it") == "ship it"
    # a multi-line secret (a PEM key) printed line by line is masked line by line
    register_secrets(["-----BEGIN KEY-----\nc2VjcmV0LWxpbmU=\n-----END KEY-----"])
    assert redact("c2VjcmV0LWxpbmU=") == MASK
    # nested output for the ledger
    assert redact_data({"checks": [{"detail": f"pw {DB_PASS}"}], "n": 3}) == {"checks": [{"detail": f"pw {MASK}"}],
                                                                               "n": 3}


def test_a_readable_key_file_is_masked(tmp_path: Path) -> None:
    key = tmp_path / "backup.key"
    key.write_text("6f" * 32 + "\n")
    key.chmod(0o600)
    config = Config.model_validate({"encryption": {"key_file": str(key)}})
    install_masking(config)
    assert redact(f"key is {'6f' * 32}") == f"key is {MASK}"


def test_the_gateway_masks_text_and_blocks_but_keeps_identifiers(emulator: EmulatorServer) -> None:
    register_secrets([DB_PASS, "4242"])   # a short numeric secret, like a digit in a button value
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"hook said {DB_PASS}"}},
        {"type": "actions", "block_id": "plan-4242", "elements": [
            {"type": "button", "action_id": "aegis_approve", "value": "14242",
             "text": {"type": "plain_text", "text": f"Approve {DB_PASS}"}}]},
    ]
    SlackGateway(BOT_TOKEN, emulator.api_url, attempts=1).post("C0OPS", f"plan: {DB_PASS}", blocks)
    params = emulator.state.calls("chat.postMessage")[-1]["params"]
    assert DB_PASS not in json.dumps(params)
    assert params["text"] == f"plan: {MASK}"
    assert params["blocks"][0]["text"]["text"] == f"hook said {MASK}"
    button = params["blocks"][1]["elements"][0]
    assert button["value"] == "14242" and params["blocks"][1]["block_id"] == "plan-4242"
    assert button["text"]["text"] == f"Approve {MASK}"


def test_the_log_formatter_masks_declared_values() -> None:
    register_secrets([DB_PASS])
    record = logging.LogRecord("aegis.test", logging.INFO, __file__, 1, "connect failed for %s", (DB_PASS,), None)
    line = RedactingFormatter("%(message)s").format(record)
    assert DB_PASS not in line and MASK in line


# --- end to end ----------------------------------------------------------------------------------


class _EchoCredential(BaseHTTPRequestHandler):
    """A load balancer API that (carelessly) echoes the credential it was sent."""

    received: list[str] = []

    def do_POST(self) -> None:  # http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("X-LB-Auth", "")
        self.received.append(auth)
        body = f"switched; authenticated as {auth.partition(' ')[2]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def echo_webhook() -> Iterator[tuple[str, list[str]]]:
    handler = type("Echo", (_EchoCredential,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/switch", handler.received
    finally:
        server.shutdown()
        server.server_close()


def e2e_config(workdir: Path, webhook: str) -> dict[str, Any]:
    hook = workdir / "fence.sh"
    # Prints the password it was passed (fence.out proves the hook really had it) and a declared
    # secret it was *not* passed but found in a file (only the start-up registry can mask that one);
    # its first run fails with both in its error, so they also reach the step's detail.
    (workdir / "ops-notes.txt").write_text(BACKUP_KEY)
    hook.write_text(f'''#!/bin/sh
echo "fencing with password $DB_PASS" | tee -a {workdir}/fence.out
echo "backup key in use: $(cat {workdir}/ops-notes.txt)"
if [ ! -f {workdir}/fence.tried ]; then
  touch {workdir}/fence.tried
  echo "password $DB_PASS rejected by the IPMI (key $(cat {workdir}/ops-notes.txt))" >&2; exit 3
fi
''')
    hook.chmod(0o755)
    return {
        "locale": "en",
        "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS"},
        "roster": ROSTER,
        # no standby: the plan fences, restores by hand, then starts services (the webhook)
        "components": {"postgres": {"primary": {
            "dsn": f"host=127.0.0.1 port={free_port()} user=app dbname=app connect_timeout=1",
            "password_env": "DB_PASS", "label": "pg-primary"}}},
        "hooks": {
            "fence_primary": {"command": [str(hook)], "timeout_seconds": 30, "pass_env": ["DB_PASS"]},
            "start_services": {"webhook": webhook, "timeout_seconds": 10, "headers_env": {"X-LB-Auth": "LB_AUTH"}},
        },
        "encryption": {"key_env": "ARCHIVE_MATERIAL"},
    }


def test_declared_secrets_reach_no_slack_call_database_or_log(
    tmp_path: Path, emulator: EmulatorServer, echo_webhook: tuple[str, list[str]],
) -> None:
    url, received = echo_webhook
    tmp_path.chmod(0o755)
    bot = AegisProcess(tmp_path, e2e_config(tmp_path, url), f"sqlite:///{tmp_path}/aegis.db", emulator.api_url)
    bot.env.update({"DB_PASS": DB_PASS, "LB_AUTH": LB_AUTH, "ARCHIVE_MATERIAL": BACKUP_KEY, "AEGIS_LOG_LEVEL": "DEBUG"})
    emulator.bot_url = bot.url
    bot.start()
    try:
        walk = Walk(bot, emulator)
        walk.declare()
        walk.assemble_and_assess()
        assert [s.action for s in walk.steps()][:3] == ["hook", "manual", "hook"]
        fence, restore, start = walk.steps()[:3]
        walk.click("U0IC", "aegis_approve", str(fence.id))
        failed = walk.wait_step(fence.id, "failed")
        assert f"password {MASK} rejected by the IPMI (key {MASK})" in failed.detail
        walk.click("U0IC", "aegis_retry", str(fence.id))
        walk.wait_step(fence.id, "succeeded")
        for step in (restore, start):
            walk.click("U0IC", "aegis_approve", str(step.id))
            walk.wait_step(step.id, "succeeded")
        # the secrets really were in play: the hook printed the password, the webhook got the header
        assert DB_PASS in (tmp_path / "fence.out").read_text()
        assert received == [LB_AUTH]
        # and what they produced reached Slack masked: the hook's error and the echoed credential
        wait_for(lambda: f"password {MASK} rejected by the IPMI (key {MASK})" in json.dumps(emulator.state.calls()),
                 what="the fence hook's masked error in a Slack call")
        wait_for(lambda: f"authenticated as {MASK}" in json.dumps(emulator.state.calls()),
                 what="the webhook's masked answer in a Slack call")
        with walk.store.session() as session:
            outputs = json.dumps([e.output for s in (fence, start)
                                  for e in svc.ledger_for_step(session, require_id(s))])
        assert f"fencing with password {MASK}" in outputs and f"authenticated as {MASK}" in outputs
        assert f"backup key in use: {MASK}" in outputs
    finally:
        bot.stop()

    posted = json.dumps([emulator.state.calls(), emulator.state.responses_for("U0IC"),
                         channel_by_id(emulator.state, "C0STAKE")])
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("aegis.db*"))
    log = bot.log()
    for secret in (DB_PASS, LB_AUTH, LB_CREDENTIAL, BACKUP_KEY, BOT_TOKEN, SIGNING_SECRET):
        assert secret not in posted, f"{secret!r} was sent to Slack"
        assert secret.encode() not in stored, f"{secret!r} is in the database file"
        assert secret not in log, f"{secret!r} was logged"
    assert MASK.encode() in stored
    # at DEBUG the Web API calls are logged with their bodies: the hook's error is there, masked
    assert f"password {MASK} rejected by the IPMI" in log
