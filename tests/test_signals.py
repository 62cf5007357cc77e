"""``POST /signals`` against a real ``aegis serve`` (bot/signals.py, recovery/monitor/signals.py).

Every malformed request — unsigned, a wrong signature, a stale timestamp, an oversized body,
non-JSON, an unknown kind, a wrong method — is a 4xx with a one-line JSON error and stores nothing
(and its body never reaches the log). A good signal is 202 and stored; the monitor opens one
CRITICAL ``ransomware`` incident with the signal as evidence, and a second signal from the same
source, while the condition holds, opens no second one. A second source (another tool) joins the
open ransomware incident — a timeline entry naming it and its evidence, a line in the incident and
ops channels, nobody paged twice — and once that incident is closed (through Slack), a new signal
opens a new one. Without a configured secret the route is 404, with its variable unset 503 (no
default secret).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlmodel import func, select

from bot.config import Config
from bot.signals import SignalsApp
from messages import monitor_notices
from recovery.monitor.history import MonitorHistory
from recovery.monitor.signals import Signal, SignalStore
from slack_emulator.server import EmulatorServer
from statemachines.models import Incident, MonitorSignal, TimelineEvent, require_id
from statemachines.store import Store
from tests.harness.aegis_process import AegisProcess, wait_for
from tests.harness.slack_reading import all_text, channel_by_id
from tests.harness.walk import Walk, close_with_modal

SECRET_ENV = "AEGIS_TEST_SIGNALS_SECRET"
SECRET = "signals-secret-for-tests-7f3a9c"
MARKER = "BODY-MARKER-never-in-the-log"
ROSTER = {"incident_commander": ["U0IC"], "security_lead": ["U0SEC"], "database_lead": ["U0DB"]}
CONFIG: dict[str, Any] = {
    "slack": {"ops_channel": "C0OPS", "stakeholder_channel": "C0STAKE"}, "roster": ROSTER,
    "monitoring": {"interval_seconds": 1.0, "warning_repeat_minutes": 60,
                   "signals": {"secret_env": SECRET_ENV, "hold_minutes": 30}},
}


def _signature(timestamp: str, body: bytes, secret: str = SECRET) -> str:
    """What the sender computes (independently of Aegis's code): HMAC-SHA256 over ``timestamp.body``."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _body(**fields: Any) -> bytes:
    signal = {"source": "edr-falcon", "kind": "ransomware", "host": "files-01",
              "detail": f"mass encryption of \\\\files-01\\finance ({MARKER})",
              "at": datetime.now(UTC).isoformat()} | fields
    return json.dumps(signal).encode()


def _post(bot: AegisProcess, body: bytes, *, timestamp: str | None = None, signature: str | None = None,
          signed: bool = True) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if signed:
        ts = timestamp or str(int(time.time()))
        headers |= {"X-Aegis-Timestamp": ts, "X-Aegis-Signature": signature or _signature(ts, body)}
    return requests.post(f"{bot.url}/signals", data=body, headers=headers, timeout=10)


def _stored(bot: AegisProcess) -> int:
    store = bot.store()
    try:
        with store.session() as session:
            return int(session.exec(select(func.count()).select_from(MonitorSignal)).one())
    finally:
        store.dispose()


@pytest.fixture
def bot(tmp_path: Path, emulator: EmulatorServer) -> Iterator[AegisProcess]:
    tmp_path.chmod(0o755)
    process = AegisProcess(tmp_path, CONFIG, f"sqlite:///{tmp_path}/aegis.db", emulator.api_url)
    process.env[SECRET_ENV] = SECRET
    emulator.bot_url = process.url
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _assert_refused(response: requests.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    lines = response.text.strip().splitlines()
    assert len(lines) == 1, response.text
    assert words in json.loads(lines[0])["error"]


def test_every_malformed_signal_is_a_one_line_4xx_and_stores_nothing(bot: AegisProcess) -> None:
    now = int(time.time())
    good = _body()
    _assert_refused(_post(bot, good, signed=False), 401, "X-Aegis-Timestamp")
    _assert_refused(_post(bot, good, signature=_signature(str(now), good, "not-the-secret")), 401, "does not match")
    _assert_refused(_post(bot, good, signature="sha256=abc"), 401, "sha256=<64 hex digits>")
    tampered = _body(host="elsewhere")
    _assert_refused(_post(bot, tampered, signature=_signature(str(now), good)), 401, "does not match")
    stale = str(now - 301)
    _assert_refused(_post(bot, good, timestamp=stale, signature=_signature(stale, good)), 401, "5 minutes")
    _assert_refused(_post(bot, b"x" * (64 * 1024 + 1)), 413, "64 KiB")
    _assert_refused(_post(bot, f"not json {MARKER}".encode()), 400, "not UTF-8 JSON")
    _assert_refused(_post(bot, b"\xff\xfe" + MARKER.encode()), 400, "not UTF-8 JSON")
    _assert_refused(_post(bot, b"[1, 2]"), 400, "JSON object")
    _assert_refused(_post(bot, _body(kind="cryptominer")), 422, "kind must be one of: ransomware")
    _assert_refused(_post(bot, _body(source="")), 422, "source is required")
    _assert_refused(_post(bot, _body(at="yesterday")), 422, "ISO 8601")
    _assert_refused(requests.get(f"{bot.url}/signals", timeout=10), 405, "POST")
    assert _stored(bot) == 0
    assert "signal refused (422)" in bot.log()            # refusals are logged ...
    assert MARKER not in bot.log()                        # ... without the body
    assert requests.get(f"{bot.url}/healthz", timeout=5).status_code == 200


def _ransomware_incidents(bot: AegisProcess) -> list[Incident]:
    store = bot.store()
    try:
        with store.session() as session:
            return list(session.exec(select(Incident).where(Incident.scenario == "ransomware")))
    finally:
        store.dispose()


def _condition_signal_ids(bot: AegisProcess) -> list[int]:
    store = bot.store()
    try:
        return [e["signal"]["id"] for c in MonitorHistory(store).conditions("ransomware:signal edr-falcon")
                if c.cleared_at is None for e in c.evidence if "signal" in e]
    finally:
        store.dispose()


def test_a_signed_ransomware_signal_opens_one_incident_with_the_signal_as_evidence(
        bot: AegisProcess, emulator: EmulatorServer) -> None:
    first = _post(bot, _body())
    assert first.status_code == 202, first.text
    first_id = first.json()["id"]
    assert _stored(bot) == 1
    incident = wait_for(lambda: _ransomware_incidents(bot), timeout=15, what="the ransomware incident")[0]
    assert (incident.declared_by, incident.severity) == ("aegis", "critical")
    store = bot.store()
    try:
        def opened_events() -> list[TimelineEvent]:
            with store.session() as session:
                events = session.exec(select(TimelineEvent).where(TimelineEvent.incident_id == incident.id,
                                                                  TimelineEvent.kind == "audit")).all()
            return [e for e in events if e.data.get("monitor_condition") == "ransomware:signal edr-falcon"]

        # the audit line may commit a moment after the incident row: wait for it, do not read once
        opened = wait_for(opened_events, timeout=15, what="the monitor's audit line with the signal")[0]
        evidence = opened.data["evidence"][0]
        assert evidence["check"] == "signal ransomware" and evidence["ok"] is False
        assert evidence["signal"]["id"] == first_id
        assert (evidence["signal"]["source"], evidence["signal"]["host"]) == ("edr-falcon", "files-01")
        assert "edr-falcon reported ransomware on files-01" in evidence["reason"]
    finally:
        store.dispose()
    alert = wait_for(lambda: [all_text(m) for m in channel_by_id(emulator.state, "C0OPS")["messages"]
                              if "CRITICAL" in all_text(m)], timeout=15, what="the critical alert")
    assert "edr-falcon" in alert[0] and "signal ransomware" in alert[0]

    # the same source again, while the condition holds: stored, seen by the monitor, no second incident
    second = _post(bot, _body(detail="more files encrypted"))
    assert second.status_code == 202 and second.json()["id"] != first_id
    wait_for(lambda: second.json()["id"] in _condition_signal_ids(bot), timeout=15,
             what="the condition's evidence naming the second signal")
    assert [i.id for i in _ransomware_incidents(bot)] == [incident.id]
    assert len([m for m in channel_by_id(emulator.state, "C0OPS")["messages"] if "CRITICAL" in all_text(m)]) == 1
    # a replay of one request inside the window is answered but stored once
    body, ts = _body(detail="replayed"), str(int(time.time()))
    assert _post(bot, body, timestamp=ts).json()["id"]
    assert _post(bot, body, timestamp=ts).json() == {"accepted": True, "duplicate": True}
    assert _stored(bot) == 3


def _call(app: SignalsApp, method: str = "POST") -> tuple[str, bytes]:
    seen: dict[str, str] = {}

    def start_response(status: str, _headers: list[tuple[str, str]]) -> None:
        seen["status"] = status

    body = b"".join(app({"PATH_INFO": "/signals", "REQUEST_METHOD": method, "CONTENT_LENGTH": "2",
                         "wsgi.input": io.BytesIO(b"{}")}, start_response))
    return seen["status"], body


def test_without_a_configured_secret_the_route_is_404_and_with_its_variable_unset_503(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    try:
        status, body = _call(SignalsApp(Config.model_validate({}), store))
        assert status.startswith("404") and b"monitoring.signals.secret_env" in body
        monkeypatch.delenv(SECRET_ENV, raising=False)
        configured = Config.model_validate({"monitoring": {"signals": {"secret_env": SECRET_ENV}}})
        status, body = _call(SignalsApp(configured, store))
        assert status.startswith("503") and f"{SECRET_ENV} is not set".encode() in body
        assert len(body.strip().splitlines()) == 1
    finally:
        store.dispose()


def _channel_of(bot: AegisProcess, incident_id: int | None) -> str | None:
    store = bot.store()
    try:
        with store.session() as session:
            row = session.get(Incident, incident_id)
            return row.channel_id if row else None
    finally:
        store.dispose()


def _audit_lines(bot: AegisProcess, incident_id: int | None) -> list[TimelineEvent]:
    store = bot.store()
    try:
        with store.session() as session:
            return [e for e in session.exec(select(TimelineEvent).where(TimelineEvent.incident_id == incident_id,
                                                                        TimelineEvent.kind == "audit")).all()
                    if e.data.get("monitor_condition")]
    finally:
        store.dispose()


def test_a_second_source_joins_the_open_ransomware_incident_and_a_signal_after_closing_opens_a_new_one(
        bot: AegisProcess, emulator: EmulatorServer) -> None:
    assert _post(bot, _body(source="edr-falcon")).status_code == 202
    incident = wait_for(lambda: _ransomware_incidents(bot), timeout=15, what="the ransomware incident")[0]
    assert _post(bot, _body(source="canary-grid", host="files-02", detail="decoy share rewritten")).status_code == 202
    lines = wait_for(lambda: [e for e in _audit_lines(bot, incident.id) if e.data.get("source") == "canary-grid"],
                     timeout=15, what="the second source on the open incident's timeline")
    assert lines[0].data["attached"] is True and lines[0].data["monitor_condition"] == "ransomware:signal canary-grid"
    assert "canary-grid" in lines[0].text and "files-02" in lines[0].text and "decoy share rewritten" in lines[0].text
    assert lines[0].data["evidence"][0]["signal"]["source"] == "canary-grid"
    assert {e.data["monitor_condition"] for e in _audit_lines(bot, incident.id)} == {
        "ransomware:signal edr-falcon", "ransomware:signal canary-grid"}
    assert [i.id for i in _ransomware_incidents(bot)] == [incident.id]         # one incident, not two
    room = wait_for(lambda: _channel_of(bot, incident.id), timeout=15, what="the incident channel")
    wait_for(lambda: [t for t in (all_text(m) for m in channel_by_id(emulator.state, room)["messages"])
                      if "canary-grid" in t and incident.key in t], timeout=15, what="the line in the incident channel")
    ops = wait_for(lambda: [t for t in (all_text(m) for m in channel_by_id(emulator.state, "C0OPS")["messages"])
                            if "more evidence" in t], timeout=15, what="the line in the ops channel")
    assert "canary-grid" in ops[0] and incident.key in ops[0]
    assert len([m for m in channel_by_id(emulator.state, "C0OPS")["messages"]
                if "CRITICAL" in all_text(m) and "detected by monitoring" in all_text(m)]) == 1   # paged once

    # the commander closes it (a false alarm, through Slack); the next signal opens a new incident
    walk = Walk(bot, emulator)
    walk.channel_id, walk.incident_id = room, require_id(incident)
    walk.click("U0IC", "aegis_claim_role", "incident_commander")
    wait_for(lambda: walk.incident().state != "detected", timeout=30, what="the incident assembled")
    close_with_modal(walk, emulator, "U0IC", "contained by the EDR")
    walk.store.dispose()
    assert _post(bot, _body(source="edr-falcon", detail="encryption resumed")).status_code == 202
    incidents = wait_for(lambda: [i for i in _ransomware_incidents(bot) if i.id != incident.id], timeout=20,
                         what="a new ransomware incident after the closing")
    assert len(incidents) == 1 and incidents[0].state != "closed"
    assert [e.data["monitor_condition"] for e in _audit_lines(bot, incidents[0].id)] == ["ransomware:signal edr-falcon"]


@pytest.mark.parametrize(("locale", "words"), [("en", "instead of opening a second one"),
                                               ("ko", "두 번째 인시던트를 열지 않고")])
def test_the_added_evidence_notice_names_the_source_and_the_incident_in_both_languages(locale: str, words: str) -> None:
    evidence = [{"check": "signal ransomware", "ok": False, "value": None, "unit": "", "threshold": None,
                 "reason": "canary-grid reported ransomware on files-02"}]
    message = monitor_notices.evidence_attached(key="ransomware:signal canary-grid", scenario="ransomware",
                                                source="canary-grid", summary="decoy share rewritten",
                                                evidence=evidence, incident_key="INC-7", locale=locale)
    for text in (message.text, json.dumps(message.blocks, ensure_ascii=False)):
        assert "canary-grid" in text and "INC-7" in text and words in text
    line = monitor_notices.timeline_attached_text(rule="ransomware", source="canary-grid", summary="decoy",
                                                  evidence=evidence, locale=locale)
    assert "canary-grid" in line and "signal ransomware" in line


def test_two_sources_seen_in_the_same_cycle_open_one_incident(tmp_path: Path, emulator: EmulatorServer) -> None:
    """Both signals are stored before the first cycle: both conditions open in one cycle, one incident."""
    tmp_path.chmod(0o755)
    url = f"sqlite:///{tmp_path}/aegis.db"
    store = Store(url)
    store.migrate()
    signals = SignalStore(store)
    for source in ("edr-falcon", "canary-grid"):
        signals.record(Signal(source, "ransomware", "files-01", "mass encryption", datetime.now(UTC)),
                       hashlib.sha256(source.encode()).hexdigest())
    store.dispose()
    process = AegisProcess(tmp_path, CONFIG, url, emulator.api_url)
    process.env[SECRET_ENV] = SECRET
    emulator.bot_url = process.url
    process.start()
    try:
        def linked() -> dict[str, int | None]:
            history = MonitorHistory(process.store())
            try:
                return {c.key: c.incident_id for c in history.conditions() if c.incident_id is not None}
            finally:
                history.store.dispose()

        both = wait_for(lambda: len(linked()) == 2 and linked(), timeout=20, what="both conditions with an incident")
        history = MonitorHistory(process.store())
        first_cycle = {c.since for c in history.conditions()}
        history.store.dispose()
        assert len(first_cycle) == 1, "both conditions should have opened in the same cycle"
        incidents = _ransomware_incidents(process)
        assert len(incidents) == 1 and set(both.values()) == {incidents[0].id}
        attached = [e for e in _audit_lines(process, incidents[0].id) if e.data.get("attached")]
        assert len(attached) == 1
    finally:
        process.stop()
