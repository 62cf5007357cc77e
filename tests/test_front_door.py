"""The front door of ``aegis serve``, tried as an attacker and as Slack would: real processes over HTTP.

One bot in HTTP mode serves most tests (module scope, the emulator as Slack); a Socket Mode bot and
a bot with a tiny work queue get their own processes. Every assertion waits for the evidence (an
HTTP status, an ephemeral reply, an audit event, a log line) and then checks it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from bot.bounded import BoundedPool, Busy
from bot.logs import RedactingFormatter
from bot.slack.server import HttpServer
from slack_emulator.faults import fault_from_json
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from tests.harness.aegis_process import BOT_TOKEN, SIGNING_SECRET, AegisProcess, wait_for
from tests.harness.signing import post, sign, slash_body
from tests.harness.slack_reading import all_text, channel_by_id, message_with_button
from tests.harness.team import SERVE_CONFIG

GUESSABLE = ["", "unused", "secret", "not-the-real-signing-secret"]
def texts(emulator: EmulatorServer, user: str, channel: str) -> list[str]:
    return [all_text(e) for e in emulator.state.ephemeral_for(user, channel)]


def wait_ephemeral(emulator: EmulatorServer, user: str, channel: str, needle: str, after: int = 0) -> str:
    found = wait_for(lambda: [t for t in texts(emulator, user, channel)[after:] if needle in t],
                     timeout=20, what=f"an ephemeral for {user} in {channel} saying {needle!r}")
    return found[0]


def response_url(emulator: EmulatorServer, user: str, channel: str, ts: str | None = None) -> tuple[str, str]:
    interaction = emulator.state.new_interaction(user, channel, ts)
    return interaction.trigger_id, f"{emulator.url}/_emulator/response/{interaction.response_id}"


def block_actions(emulator: EmulatorServer, user: str | None, channel: str, ts: str,
                  actions: list[dict[str, Any]]) -> bytes:
    trigger, url = response_url(emulator, user or "U0IC", channel, ts)
    payload: dict[str, Any] = {
        "type": "block_actions", "api_app_id": "A0", "trigger_id": trigger, "response_url": url,
        "team": {"id": "T0"}, "channel": {"id": channel, "name": "x"},
        "container": {"type": "message", "channel_id": channel, "message_ts": ts}, "actions": actions,
    }
    if user is not None:
        payload["user"] = {"id": user, "name": user, "team_id": "T0"}
    return urlencode({"payload": json.dumps(payload)}).encode()


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, bot_url="", signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bot(emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AegisProcess]:
    workdir = tmp_path_factory.mktemp("front-door")
    process = AegisProcess(workdir, SERVE_CONFIG, f"sqlite:///{workdir}/aegis.db", emulator.api_url)
    emulator.bot_url = process.url
    process.start()
    try:
        yield process
    finally:
        process.stop()


class Incident:
    def __init__(self, bot: AegisProcess, emulator: EmulatorServer, summary: str) -> None:
        self.bot, self.emulator = bot, emulator
        before = {c["id"] for c in emulator.state.channels()}
        assert emulator.driver.slash("U0IC", f"incident database_failure critical {summary}").status_code == 200
        chan = wait_for(lambda: next((c for c in emulator.state.channels()
                                      if c["id"] not in before and c["name"].startswith("inc-")), None),
                        what="the incident channel")
        self.channel_id = chan["id"]
        with bot.store().session() as session:
            found = wait_for(lambda: svc.find_by_channel(session, self.channel_id), what="the incident row")
            self.id = found.id

    def chan(self) -> dict[str, Any]:
        return channel_by_id(self.emulator.state, self.channel_id)

    def assess(self) -> None:
        card = wait_for(lambda: message_with_button(self.chan(), "aegis_claim_role", "incident_commander"),
                        what="the incident card")
        self.emulator.driver.click("U0IC", "aegis_claim_role", "incident_commander", self.channel_id, card["ts"])
        wait_for(lambda: message_with_button(self.chan(), "aegis_approve"), what="the plan")

    def steps(self) -> list[Any]:
        with self.bot.store().session() as session:
            return svc.current_steps(session, self.id)

    def audit(self) -> list[str]:
        with self.bot.store().session() as session:
            return [e.text for e in svc.timeline(session, self.id) if e.kind == "audit"]

    def any_message_ts(self) -> str:
        return str(self.chan()["messages"][0]["ts"])


@pytest.fixture(scope="module")
def two_incidents(bot: AegisProcess, emulator: EmulatorServer) -> tuple[Incident, Incident]:
    a, b = Incident(bot, emulator, "incident A"), Incident(bot, emulator, "incident B")
    a.assess()
    b.assess()
    return a, b


# --- 1. no guessable signing secret -------------------------------------------------------------

def test_http_mode_requires_the_real_signing_secret(bot: AegisProcess) -> None:
    body = slash_body("help")
    for secret in GUESSABLE:
        response = post(bot, body, sign(secret, body))
        assert response.status_code == 401, (secret, response.status_code, response.text)
    assert post(bot, body, {"Content-Type": "application/x-www-form-urlencoded"}).status_code == 401
    good = post(bot, body, sign(SIGNING_SECRET, body))
    assert good.status_code == 200 and "/aegis" in good.text   # the help text: the control case


def test_socket_mode_serves_no_events_route_and_survives_a_failed_connection(
    emulator: EmulatorServer, tmp_path: Path,
) -> None:
    process = AegisProcess(tmp_path, SERVE_CONFIG, f"sqlite:///{tmp_path}/aegis.db", emulator.api_url, name="socket")
    process.env["SLACK_APP_TOKEN"] = "xapp-1-A0-test-not-a-real-token"
    process.env.pop("SLACK_SIGNING_SECRET")
    process.start()
    try:
        body = slash_body("help")
        for secret in [*GUESSABLE, SIGNING_SECRET]:
            assert post(process, body, sign(secret, body)).status_code == 404, secret
        # the emulator has no Socket Mode server: the connection fails, is logged, and retried
        wait_for(lambda: "Socket Mode connection failed" in process.log(), what="the Socket Mode failure in the log")
        assert process.proc is not None and process.proc.poll() is None
        assert requests.get(f"{process.url}/healthz", timeout=5).status_code == 200
        assert "xapp-1-A0-test-not-a-real-token" not in process.log()
    finally:
        process.stop()


# --- 2. the emulator never fails open -----------------------------------------------------------

def test_emulator_binds_loopback_only_and_says_it_is_a_simulator(emulator: EmulatorServer) -> None:
    for host in ("0.0.0.0", "::", ""):
        with pytest.raises(ValueError, match="loopback"):
            EmulatorServer(host=host, port=0)
    page = requests.get(f"{emulator.url}/", timeout=5).text
    assert 'id="simulator-banner"' in page and "Local simulator — not Slack" in page and "로컬 시뮬레이터" in page


# --- 3. slash commands containing "payload" -----------------------------------------------------

def test_slash_commands_with_the_word_payload_are_handled(bot: AegisProcess, emulator: EmulatorServer) -> None:
    team = emulator.state.create_channel("payload-team", is_private=False)["id"]
    cases = [("incident database_failure critical API payload errors", "C0OPS"),
             ("incident database_failure critical primary down", team)]
    for text, where in cases:
        before = len(texts(emulator, "U0IC", where))
        response = emulator.driver.slash("U0IC", text, where)
        assert response.status_code == 200, response.text
        wait_ephemeral(emulator, "U0IC", where, "declared", after=before)
    with bot.store().session() as session:
        assert any(i.summary == "API payload errors" for i in svc.open_incidents(session))


# --- 4. authenticate before parsing -------------------------------------------------------------

def test_a_declaration_slack_sends_again_declares_one_incident(bot: AegisProcess, emulator: EmulatorServer) -> None:
    with bot.store().session() as session:
        before = {i.key for i in svc.open_incidents(session)}
    first = emulator.driver.slash("U0IC", "incident database_failure critical declared once, sent twice")
    assert first.status_code == 200
    again = emulator.driver.resend(retry_num=1)   # the same request (its trigger_id), as Slack retries it
    assert again.status_code == 200
    with bot.store().session() as session:
        new = [i.key for i in svc.open_incidents(session) if i.key not in before]
    assert len(new) == 1 and new[0] in first.text and new[0] in again.text, (first.text, again.text)


@pytest.mark.parametrize("timestamp", ["abc", "1.5", "", "-5", "0x10", "１２３"])
def test_bad_timestamps_are_unauthenticated(bot: AegisProcess, timestamp: str) -> None:
    body = slash_body("help")
    headers = sign(SIGNING_SECRET, body, timestamp)
    response = requests.post(f"{bot.url}/slack/events", data=body,
                             headers={k: v.encode() for k, v in headers.items()}, timeout=10)
    assert response.status_code == 401


@pytest.mark.parametrize("payload", ["not json", "[]", "null", '"a string"', "42", "{"])
def test_malformed_payloads_get_400_when_signed_and_401_when_not(bot: AegisProcess, payload: str) -> None:
    body = urlencode({"payload": payload}).encode()
    assert post(bot, body, {"Content-Type": "application/x-www-form-urlencoded"}).status_code == 401
    signed = post(bot, body, sign(SIGNING_SECRET, body))
    assert signed.status_code == 400 and "Traceback" not in signed.text and len(signed.text) < 200


def test_bodies_that_are_not_utf8_or_not_objects(bot: AegisProcess) -> None:
    for body in (b"payload=\xff\xfe\xfa", b"\xc3\x28command=/aegis", b"[1, 2]", b"{\"type\": "):
        assert post(bot, body, {"Content-Type": "application/x-www-form-urlencoded"}).status_code == 401
        response = post(bot, body, sign(SIGNING_SECRET, body))
        assert response.status_code == 400, (body, response.status_code)


# --- 7. logs are not an attack surface ----------------------------------------------------------

def test_rejected_bodies_are_not_logged_and_cannot_forge_lines(bot: AegisProcess) -> None:
    size_before = len(bot.log())
    forged = b"payload=" + b"\nERROR aegis.flows: FORGED step 1 approved\n" * 200_000   # ~8 MB, unsigned
    assert len(forged) > 8_000_000
    assert post(bot, forged, {"Content-Type": "application/x-www-form-urlencoded",
                              "X-Slack-Signature": "v0=00", "X-Slack-Request-Timestamp": "1"}).status_code == 401
    # a signed, handled command whose text carries a forged line and a terminal escape
    body = slash_body("status INC-999\nERROR aegis.flows: FORGED step 2 approved\x1b[31m")
    assert post(bot, body, sign(SIGNING_SECRET, body)).status_code == 200
    assert requests.get(f"{bot.url}/healthz", timeout=5).status_code == 200
    grown = bot.log()[size_before:]
    assert len(grown) < 100_000
    assert not any(line.startswith("ERROR aegis.flows: FORGED") or "FORGED" in line.split(": ", 1)[0]
                   for line in grown.splitlines())
    assert "\x1b" not in grown


def test_formatter_escapes_control_characters_in_messages_and_exceptions() -> None:
    formatter = RedactingFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        raise ValueError("bad\nERROR aegis.flows: FORGED\r\x1b[2J")
    except ValueError:
        import sys
        record = logging.LogRecord("aegis.t", logging.ERROR, __file__, 1, "got %s", ("x\ny\u2028" + "z" * 9000,),
                                   sys.exc_info())
    out = formatter.format(record)
    lines = out.splitlines()
    assert lines[0].startswith("ERROR aegis.t: got x\\ny\\u2028z") and "more characters cut" in lines[0]
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad\\nERROR aegis.flows: FORGED\\r\\x1b[2J"
    assert not any(line.startswith("ERROR aegis.flows") for line in lines)


# --- 8. connections ------------------------------------------------------------------------------

def test_six_hundred_idle_or_slow_connections_do_not_starve_healthz(bot: AegisProcess) -> None:
    idle: list[socket.socket] = []
    try:
        for n in range(600):
            connection = socket.create_connection(("127.0.0.1", bot.port), timeout=5)
            if n % 2:   # every other one is a slow client: headers begun, never finished
                connection.sendall(b"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99\r\n")
            idle.append(connection)
        started = time.monotonic()
        response = requests.get(f"{bot.url}/healthz", timeout=10)
        assert response.status_code == 200 and time.monotonic() - started < 5
        body = slash_body("help")
        assert post(bot, body, sign(SIGNING_SECRET, body)).status_code == 200
    finally:
        for s in idle:
            s.close()


def test_idle_and_slow_clients_are_cut() -> None:
    def hello(_environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = HttpServer(hello, port=0, channel_timeout=1).start()
    try:
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")   # never finishes its headers
        started = time.monotonic()
        assert idle.recv(1) == b"" and slow.recv(1) == b""   # the server closed both
        assert time.monotonic() - started < 8
        assert requests.get(f"{server.url}/", timeout=5).text == "ok"
    finally:
        server.stop()


# --- 5. handlers survive values Slack can send ---------------------------------------------------

def test_step_ids_that_cannot_exist(two_incidents: tuple[Incident, Incident], emulator: EmulatorServer) -> None:
    a, _ = two_incidents
    for value in ("9" * 40, "1" * 1_000_000, "-1", "²"):
        before = len(texts(emulator, "U0IC", a.channel_id))
        body = block_actions(emulator, "U0IC", a.channel_id, a.any_message_ts(),
                             [{"action_id": "aegis_approve", "block_id": "b", "value": value, "type": "button"}])
        assert a.bot is not None
        response = post(a.bot, body, sign(SIGNING_SECRET, body))
        assert response.status_code == 200, response.status_code
        text = wait_ephemeral(emulator, "U0IC", a.channel_id, "does not know", after=before)
        assert "Something went wrong" not in text


def test_clicks_without_user_or_button(two_incidents: tuple[Incident, Incident], emulator: EmulatorServer) -> None:
    a, _ = two_incidents
    cases = [(None, [{"action_id": "aegis_approve", "value": "1"}], "did not say who"),
             ("U0IC", [], "without the button"),
             ("U0IC", ["not an object"], "without the button")]
    for user, actions, needle in cases:
        before = len(texts(emulator, "U0IC", a.channel_id))
        body = block_actions(emulator, user, a.channel_id, a.any_message_ts(), actions)
        assert post(a.bot, body, sign(SIGNING_SECRET, body)).status_code == 200
        wait_ephemeral(emulator, "U0IC", a.channel_id, needle, after=before)


def test_close_for_an_incident_that_does_not_exist(two_incidents: tuple[Incident, Incident],
                                                   emulator: EmulatorServer) -> None:
    a, _ = two_incidents
    before = len(texts(emulator, "U0IC", a.channel_id))
    emulator.driver.click("U0IC", "aegis_close", "987654", a.channel_id, a.any_message_ts())
    wait_ephemeral(emulator, "U0IC", a.channel_id, "no longer exists", after=before)


def test_close_form_for_an_incident_that_does_not_exist(bot: AegisProcess) -> None:
    for metadata in ("987654", "9" * 40, "", "not an id"):
        payload = {"type": "view_submission", "user": {"id": "U0IC", "team_id": "T0"}, "team": {"id": "T0"},
                   "api_app_id": "A0", "trigger_id": "t.2",
                   "view": {"id": "V0", "type": "modal", "callback_id": "aegis_close_submit",
                            "private_metadata": metadata,
                            "state": {"values": {"summary": {"value": {"type": "plain_text_input",
                                                                       "value": "all good"}}}}}}
        body = urlencode({"payload": json.dumps(payload)}).encode()
        response = post(bot, body, sign(SIGNING_SECRET, body))
        assert response.status_code == 200, response.text
        assert "no longer exists" in response.json()["errors"]["summary"]


def test_expired_trigger_says_press_close_again(two_incidents: tuple[Incident, Incident],
                                                emulator: EmulatorServer) -> None:
    a, _ = two_incidents
    card = wait_for(lambda: message_with_button(a.chan(), "aegis_close"), what="a Close button")
    emulator.state.faults.add(fault_from_json({"method": "views.open", "error": "expired_trigger_id"}))
    before = len(texts(emulator, "U0IC", a.channel_id))
    emulator.driver.click("U0IC", "aegis_close", str(a.id), a.channel_id, card["ts"])
    text = wait_ephemeral(emulator, "U0IC", a.channel_id, "press Close again", after=before)
    assert "Something went wrong" not in text


def test_malformed_declare_form_state(bot: AegisProcess, emulator: EmulatorServer) -> None:
    emulator.driver.slash("U0IC", "incident", "C0OPS")
    view = wait_for(lambda: next((v for v in emulator.state.views(user="U0IC", status="open")
                                  if v.get("callback_id") == "aegis_declare"), None), what="the declare form")
    shapes: list[dict[str, Any]] = [
        {"scenario": {"value": "not a dict"}, "severity": [], "summary": {"value": {"value": 42}}},
        {"scenario": {"value": {"selected_option": "critical"}}, "summary": None},
        {},
    ]
    for values in shapes:
        response = emulator.driver.submit_view("U0IC", view["id"], values)
        assert response.status_code == 200, response.text
        errors = response.json()["errors"]
        assert set(errors) == {"scenario", "severity", "summary"}
        assert not any("Something went wrong" in e for e in errors.values())


# --- 11. the declare form confirms like the slash command --------------------------------------

def test_declare_form_submission_posts_the_confirmation(bot: AegisProcess, emulator: EmulatorServer) -> None:
    emulator.driver.slash("U0DB", "incident", "C0OPS")
    view = wait_for(lambda: next((v for v in emulator.state.views(user="U0DB", status="open")
                                  if v.get("callback_id") == "aegis_declare"), None), what="the declare form")
    before = len(texts(emulator, "U0DB", "C0OPS"))
    values = {"scenario": {"value": {"type": "static_select", "selected_option": {"value": "database_failure"}}},
              "severity": {"value": {"type": "static_select", "selected_option": {"value": "high"}}},
              "summary": {"value": {"type": "plain_text_input", "value": "declared from the form"}}}
    assert emulator.driver.submit_view("U0DB", view["id"], values).status_code == 200
    text = wait_ephemeral(emulator, "U0DB", "C0OPS", "declared", after=before)
    assert "INC-" in text


# --- 6. a click acts only on the incident of its channel ----------------------------------------

@pytest.mark.parametrize("action_id", ["aegis_approve", "aegis_reject", "aegis_retry", "aegis_abort"])
def test_a_step_button_of_another_incident_changes_nothing(
    two_incidents: tuple[Incident, Incident], emulator: EmulatorServer, action_id: str,
) -> None:
    a, b = two_incidents
    foreign = b.steps()[0]
    statuses = [s.status for s in b.steps()]
    before, audits = len(texts(emulator, "U0IC", a.channel_id)), len(a.audit())
    plan = wait_for(lambda: message_with_button(a.chan(), "aegis_approve"), what="incident A's plan")
    emulator.driver.click("U0IC", action_id, str(foreign.id), a.channel_id, plan["ts"])
    wait_ephemeral(emulator, "U0IC", a.channel_id, "belongs to another incident", after=before)
    wait_for(lambda: len(a.audit()) > audits, what="the audit event of the refusal")
    assert [s.status for s in b.steps()] == statuses
    with b.bot.store().session() as session:
        assert svc.get(session, b.id).state == "assessed"


def test_a_close_button_of_another_incident_changes_nothing(
    two_incidents: tuple[Incident, Incident], emulator: EmulatorServer,
) -> None:
    a, b = two_incidents
    before, opened = len(texts(emulator, "U0IC", a.channel_id)), len(emulator.state.views(user="U0IC"))
    emulator.driver.click("U0IC", "aegis_close", str(b.id), a.channel_id, a.any_message_ts())
    wait_ephemeral(emulator, "U0IC", a.channel_id, "belongs to another incident", after=before)
    assert len(emulator.state.views(user="U0IC")) == opened   # no close form was opened


# --- 9. bounded work ------------------------------------------------------------------------------

def test_full_interaction_queue_answers_busy_and_healthz_keeps_answering(
    emulator: EmulatorServer, tmp_path: Path,
) -> None:
    process = AegisProcess(tmp_path, SERVE_CONFIG, f"sqlite:///{tmp_path}/aegis.db", emulator.api_url, name="busy")
    process.env["AEGIS_QUEUE_LIMIT"] = "0"   # two interaction workers, no queue
    previous_bot_url = emulator.bot_url
    emulator.bot_url = process.url
    process.start()
    try:
        # both interaction workers wait in a slow views.open
        emulator.state.faults.add(fault_from_json({"method": "views.open", "count": 2, "delay_seconds": 4,
                                                   "error": "expired_trigger_id"}))
        for _ in range(2):
            assert emulator.driver.slash("U0APP", "incident", "C0OPS").status_code == 200
        wait_for(lambda: not emulator.state.faults.pending(), what="both workers inside views.open")
        response = emulator.driver.slash("U0APP", "list", "C0OPS")
        assert response.status_code == 200 and "Aegis is busy" in response.json()["text"]
        card_ts = emulator.state.post_message("C0OPS", "x", [])[1]["ts"]
        before = len(texts(emulator, "U0APP", "C0OPS"))
        # a click is decided on the request thread before its ack (nothing acknowledged is lost), so a
        # full pool does not refuse it: it gets its real answer (this channel has no incident)
        emulator.driver.click("U0APP", "aegis_approve", "1", "C0OPS", card_ts)
        wait_ephemeral(emulator, "U0APP", "C0OPS", "no incident in this channel", after=before)
        assert requests.get(f"{process.url}/healthz", timeout=5).status_code == 200
        # once the workers are free again, the same command is served
        wait_for(lambda: len([t for t in texts(emulator, "U0APP", "C0OPS") if "form expired" in t]) == 2,
                 what="both slow form openings to end (the workers are free again)")
        before = len(texts(emulator, "U0APP", "C0OPS"))
        served = emulator.driver.slash("U0APP", "list", "C0OPS")
        assert served.status_code == 200 and "busy" not in served.text
        wait_ephemeral(emulator, "U0APP", "C0OPS", "open incident", after=before)
    finally:
        emulator.bot_url = previous_bot_url
        process.stop()


def test_bounded_pool_refuses_user_work_but_never_drops_internal_work() -> None:
    pool = BoundedPool(1, 1, thread_name_prefix="t-pool", wait_seconds=0.2)
    release = threading.Event()
    ran: list[str] = []
    pool.try_submit(release.wait)                       # the worker
    pool.try_submit(lambda: ran.append("queued"))       # the one queue slot
    with pytest.raises(Busy):
        pool.try_submit(lambda: ran.append("refused"))
    # internal work on a full pool: waits briefly, then runs in the submitting thread
    done = pool.submit(lambda: ran.append(threading.current_thread().name))
    done.result(timeout=5)
    assert ran == [threading.current_thread().name]
    release.set()
    wait_for(lambda: "queued" in ran, timeout=5, what="the queued work")
    assert "refused" not in ran
    pool.shutdown()


def test_a_worker_submitting_to_its_own_full_pool_runs_the_work_inline() -> None:
    pool = BoundedPool(1, 0, thread_name_prefix="t-inline", wait_seconds=30)
    where: list[str] = []

    def outer() -> None:
        pool.submit(lambda: where.append(threading.current_thread().name)).result(timeout=5)

    started = time.monotonic()
    pool.try_submit(outer).result(timeout=10)
    assert where and where[0].startswith("t-inline_") and time.monotonic() - started < 5   # no 30 s wait
    pool.shutdown()
