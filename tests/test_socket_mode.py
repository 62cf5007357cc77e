"""Socket Mode, proven: the emulator serves ``apps.connections.open`` and a Socket Mode WebSocket, and
``aegis serve`` with ``SLACK_APP_TOKEN`` walks incidents over it — through dropped connections,
lost acks and ``refresh_requested`` disconnects — without running anything twice.

Real processes: the emulator (in this process) in Socket Mode, ``aegis serve`` as a child process
whose only way in is the socket (its HTTP port serves /healthz alone).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from slack_emulator.server import EmulatorServer
from slack_emulator.socket_mode import SocketModeServer
from statemachines import service as svc
from tests.harness.aegis_process import BOT_TOKEN, SIGNING_SECRET, AegisProcess, wait_for
from tests.harness.slack_reading import message_with_button
from tests.harness.team import ROSTER
from tests.harness.walk import Walk, close_with_modal

APP_TOKEN = "xapp-1-A0AEGIS-test-app-level-token"


@pytest.fixture
def socket_emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN, socket_mode=True,
                            app_token=APP_TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


def socket_of(emulator: EmulatorServer) -> SocketModeServer:
    assert emulator.socket is not None
    return emulator.socket


@pytest.fixture
def bot(tmp_path: Path, socket_emulator: EmulatorServer) -> Iterator[AegisProcess]:
    tmp_path.chmod(0o755)
    config = {
        "locale": "en",
        "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 30},
        "roster": ROSTER,
        # no database component: the plan's first step is this hook; each run leaves a line
        "hooks": {"fence_primary": {"command": ["sh", "-c", f"echo run >> {tmp_path}/fence.count"]}},
    }
    process = AegisProcess(tmp_path, config, f"sqlite:///{tmp_path / 'aegis.db'}", socket_emulator.api_url)
    process.env.pop("SLACK_SIGNING_SECRET")   # Socket Mode needs none
    process.env.update(SLACK_APP_TOKEN=APP_TOKEN, AEGIS_SOCKET_PING_SECONDS="1")
    try:
        process.start()
        socket_of(socket_emulator).wait_for_connection(after=0)
        yield process
    finally:
        process.stop()


def fence_runs(workdir: Path) -> int:
    path = workdir / "fence.count"
    return len(path.read_text().splitlines()) if path.exists() else 0


def approve_every_step(walk: Walk, user: str = "U0IC") -> None:
    """The commander approves each step awaiting approval, in plan order, and waits for it to succeed."""
    for step in walk.steps():
        if step.status == "awaiting_approval":
            walk.click(user, "aegis_approve", str(step.id))
            walk.wait_step(step.id, "succeeded")


def verify(walk: Walk, emulator: EmulatorServer) -> None:
    verify = next(s for s in walk.steps() if s.action == "verify")
    walk.wait_step(verify.id, "awaiting_verification")
    walk.click("U0IC", "aegis_verify_manual", str(verify.id))
    form = wait_for(lambda: [v for v in emulator.state.views(user="U0IC") if v.get("callback_id") ==
                             "aegis_verify_submit" and v.get("status") == "open"], what="the verification form")[-1]
    walk.driver.submit_view("U0IC", form["id"], {"evidence": {"value": {"type": "plain_text_input",
                                                                         "value": "replica answers reads"}}})
    walk.wait_state("verified")


def verify_and_close(walk: Walk, emulator: EmulatorServer) -> None:
    verify(walk, emulator)
    close_with_modal(walk, emulator, "U0IC", "failed over to the standby")


def approval_events(walk: Walk, step_id: int) -> list[Any]:
    with walk.store.session() as session:
        return [e for e in svc.timeline(session, walk.incident_id)
                if e.kind == "approval" and (e.data or {}).get("step_id") == step_id]


def test_a_whole_incident_walks_over_the_socket_to_closed(
    bot: AegisProcess, socket_emulator: EmulatorServer,
) -> None:
    socket = socket_of(socket_emulator)
    # the only way in is the socket: the bot's HTTP port has no events route
    assert requests.post(f"{bot.url}/slack/events", data="x", timeout=5).status_code == 404
    walk = Walk(bot, socket_emulator)
    walk.declare()
    walk.assemble_and_assess()
    # roles hold as over HTTP: an outsider's Approve is refused, audited, and changes nothing
    first = walk.steps()[0]
    walk.click("U0OUT", "aegis_approve", str(first.id))
    refusal = wait_for(lambda: socket_emulator.state.responses_for("U0OUT"), what="the outsider's refusal")
    assert "You can't approve" in refusal[-1]["text"]
    with walk.store.session() as session:
        assert [e.actor for e in svc.timeline(session, walk.incident_id) if e.kind == "audit"] == ["U0OUT"]
        assert svc.get_step(session, first.id).status == "awaiting_approval"
    approve_every_step(walk)
    assert fence_runs(bot.workdir) == 1

    verify(walk, socket_emulator)
    # a view_submission's response_action comes back in the ack's payload
    walk.click("U0IC", "aegis_close", str(walk.incident_id))
    close = wait_for(lambda: [v for v in socket_emulator.state.views(user="U0IC")
                              if v.get("callback_id") == "aegis_close_submit" and v.get("status") == "open"],
                     what="the close modal")[-1]
    empty = walk.driver.submit_view("U0IC", close["id"], {"summary": {"value": {"type": "plain_text_input",
                                                                                  "value": ""}}})
    assert empty.status_code == 200 and empty.json()["response_action"] == "errors"
    assert "summary" in empty.json()["errors"]
    close_with_modal(walk, socket_emulator, "U0IC", "failed over to the standby")
    assert walk.incident().state == "closed"
    envelopes = socket.envelopes()
    assert {e["type"] for e in envelopes} == {"slash_commands", "interactive"}
    assert all(e["acked"] for e in envelopes), [e for e in envelopes if not e["acked"]]
    # one connection carried it all; an ack slower than the emulator's 3 s (a loaded machine) may have
    # been redelivered with retry_attempt > 0 — answered from memory, never run twice (the lost-ack test
    # below counts the step's runs)
    assert len(socket.connections()) == 1


def test_a_dropped_socket_mid_incident_is_reconnected_and_the_walk_goes_on(
    bot: AegisProcess, socket_emulator: EmulatorServer,
) -> None:
    socket = socket_of(socket_emulator)
    walk = Walk(bot, socket_emulator)
    walk.declare()
    walk.assemble_and_assess()

    dropped = socket.drop(hard=True)   # a TCP reset, no close frame: the network failed
    assert len(dropped) == 1
    reconnected = socket.wait_for_connection(after=1, timeout=20)
    assert reconnected["id"] not in dropped
    assert socket.connections()[0]["close_reason"] == "dropped"

    approve_every_step(walk)
    verify_and_close(walk, socket_emulator)
    assert fence_runs(bot.workdir) == 1
    later = [e for e in socket.envelopes() if e["attempts"][0]["at"] > reconnected["opened_at"]]
    assert later and all(e["acked"] and e["attempts"][-1]["connection"] == reconnected["id"] for e in later)


def test_an_approval_redelivered_after_a_reconnect_runs_its_step_once(
    bot: AegisProcess, socket_emulator: EmulatorServer,
) -> None:
    socket = socket_of(socket_emulator)
    walk = Walk(bot, socket_emulator)
    walk.declare()
    walk.assemble_and_assess()
    fence = walk.step("hook", "fence_primary")
    message = wait_for(lambda: message_with_button(walk.chan(), "aegis_approve", str(fence.id)),
                       what="the fence's Approve button")

    # the bot decides and acks, but the ack is lost with the connection: Slack delivers it again
    # on the connection the bot opens next, with the same envelope_id and retry_attempt 1
    answered_before = len(socket_emulator.state.responses_for("U0IC"))
    socket.lose_next_acks(1)
    response = walk.driver.click("U0IC", "aegis_approve", str(fence.id), walk.channel_id, message["ts"])
    assert response.status_code == 200, response.text
    walk.wait_step(fence.id, "succeeded")
    envelope = next(e for e in socket.envelopes() if e["payload"].get("actions", [{}])[0].get("value") == str(fence.id))
    assert envelope["acked"] and [a["lost"] for a in envelope["acks"]][:1] == [True]
    first = envelope["attempts"][0]
    # redelivered on the new connection (under load a "timeout" redelivery may come first, on the old one)
    again_on_new = [a for a in envelope["attempts"] if a["connection"] != first["connection"]]
    assert again_on_new and again_on_new[0]["retry_attempt"] >= 1, envelope
    assert again_on_new[0]["retry_reason"] in ("connection_lost", "timeout"), envelope

    # and once more, the same envelope, as a later retry: acked, nothing run
    again = walk.driver.redeliver(retry_attempt=2)
    assert again.status_code == 200
    wait_for(lambda: "redelivered (retry_attempt 2)" in bot.log(), what="the bot recognising the redelivery")
    assert fence_runs(bot.workdir) == 1
    assert len(walk.ledger(fence.id)) == 1
    assert len(approval_events(walk, fence.id)) == 1
    with walk.store.session() as session:
        assert len([a for a in svc.all_approvals(session, walk.incident_id) if a.step_id == fence.id]) == 1
    # a decision that went through has no answer: a second run would have answered "already approved"
    assert len(socket_emulator.state.responses_for("U0IC")) == answered_before


def test_a_refresh_requested_disconnect_is_followed_by_a_new_connection(
    bot: AegisProcess, socket_emulator: EmulatorServer,
) -> None:
    socket = socket_of(socket_emulator)
    refreshed = requests.post(f"{socket_emulator.url}/_emulator/socket/refresh", timeout=5).json()["refreshed"]
    assert len(refreshed) == 1
    new = socket.wait_for_connection(after=1, timeout=20)
    # the client closed the old connection itself once the new one was up
    old = wait_for(lambda: next((c for c in socket.connections() if c["id"] == refreshed[0] and c["closed_at"]), None),
                   timeout=15, what="the refreshed connection closed")
    assert old["close_reason"] == "client"
    walk = Walk(bot, socket_emulator)
    walk.declare()
    declared = next(e for e in socket.envelopes() if e["type"] == "slash_commands")
    assert declared["attempts"][-1]["connection"] == new["id"] and declared["acked"]


# ---- the emulator's side of the protocol, with a bare WebSocket client ---------------------------

def open_url(emulator: EmulatorServer, token: str = APP_TOKEN) -> dict[str, Any]:
    resp = requests.post(f"{emulator.api_url}apps.connections.open", timeout=5,
                         headers={"Authorization": f"Bearer {token}"})
    body: dict[str, Any] = resp.json()
    return body


def test_the_emulator_speaks_slacks_socket_mode_protocol(socket_emulator: EmulatorServer) -> None:
    socket = socket_of(socket_emulator)
    socket.ack_timeout = 0.5
    assert open_url(socket_emulator, BOT_TOKEN)["error"] == "not_allowed_token_type"
    assert open_url(socket_emulator, "xapp-1-someone-else")["error"] == "invalid_auth"
    opened = open_url(socket_emulator)
    assert opened["ok"] and opened["url"].startswith(f"ws://127.0.0.1:{socket.port}/link/?ticket=")

    with connect(opened["url"]) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["type"] == "hello" and hello["num_connections"] == 1
        assert hello["connection_info"]["app_id"] and hello["debug_info"]["host"]
        with pytest.raises(InvalidStatus):    # a ticket opens one connection
            connect(opened["url"]).close()

        # an events_api envelope not acked in time comes again with retry_attempt + 1
        socket.max_retries = 1
        sent = time.monotonic()
        envelopes: list[dict[str, Any]] = []
        result: list[Any] = []
        waiter = threading.Thread(target=lambda: result.append(socket.events_api({"type": "app_mention"},
                                                                                 timeout=10)))
        waiter.start()
        envelopes.append(json.loads(ws.recv(timeout=5)))
        envelopes.append(json.loads(ws.recv(timeout=5)))
        assert time.monotonic() - sent >= 0.5
        assert [e["retry_attempt"] for e in envelopes] == [0, 1]
        assert envelopes[0]["envelope_id"] == envelopes[1]["envelope_id"]
        assert envelopes[0]["type"] == "events_api" and envelopes[0]["payload"]["event"]["type"] == "app_mention"
        assert envelopes[1]["retry_reason"] == "timeout"
        ws.send(json.dumps({"envelope_id": envelopes[1]["envelope_id"]}))
        waiter.join(10)
        assert result and result[0].acked

        # a slash command: the ack's payload is the reply
        answer: list[Any] = []
        waiter = threading.Thread(target=lambda: answer.append(socket.deliver(
            "slash_commands", {"command": "/aegis", "text": "help"}, timeout=10)))
        waiter.start()
        envelope = json.loads(ws.recv(timeout=5))
        assert envelope["type"] == "slash_commands" and envelope["accepts_response_payload"] is True
        assert "retry_attempt" not in envelope
        ws.send(json.dumps({"envelope_id": envelope["envelope_id"], "payload": {"text": "usage"}}))
        waiter.join(10)
        assert answer and answer[0].payload == {"text": "usage"}

        # after refresh_after seconds the connection is asked to go
        socket.refresh_after = 0.3
        disconnect = json.loads(ws.recv(timeout=5))
        assert disconnect == {"type": "disconnect", "reason": "refresh_requested",
                              "debug_info": {"host": disconnect["debug_info"]["host"]}}


def test_the_socket_mode_manifest_is_the_http_one_without_request_urls() -> None:
    manifests = Path(__file__).resolve().parent.parent / "bot"
    http = yaml.safe_load((manifests / "slack_manifest.yaml").read_text())
    socket = yaml.safe_load((manifests / "slack_manifest.socket.yaml").read_text())
    assert socket["settings"]["socket_mode_enabled"] is True and http["settings"]["socket_mode_enabled"] is False
    assert "request_url" not in socket["settings"]["interactivity"]
    assert all("url" not in command for command in socket["features"]["slash_commands"])
    # apart from where requests arrive, the same app: commands, scopes, settings
    for command in http["features"]["slash_commands"]:
        command.pop("url")
    http["settings"]["interactivity"].pop("request_url")
    http["settings"]["socket_mode_enabled"] = True
    assert socket == http


def test_a_declaration_redelivered_after_a_restart_declares_no_second_incident(
    bot: AegisProcess, socket_emulator: EmulatorServer,
) -> None:
    socket = socket_of(socket_emulator)
    walk = Walk(bot, socket_emulator)
    walk.declare()
    first = walk.incident()

    # the bot restarts (its memory of acked envelopes is gone) and Slack delivers the declaration again
    bot.stop()
    opened = len(socket.connections())
    bot.start()
    socket.wait_for_connection(after=opened)
    again = walk.driver.redeliver(retry_attempt=1)
    assert again.status_code == 200, again.text
    assert first.key in again.text, again.text   # answered with the incident it declared the first time
    wait_for(lambda: "declaration request seen again" in bot.log(), what="the bot recognising the request")
    with walk.store.session() as session:
        assert [i.key for i in svc.open_incidents(session)] == [first.key]
    inc_channels = [c for c in socket_emulator.state.channels() if c["name"].startswith("inc-")]
    assert len(inc_channels) == 1
