"""The outbox (issue 8, Mechanism 1): what a committed change must tell reaches Slack once, in order,
across a Slack outage, a crash between the commit and the post, and a failed channel creation.

``aegis serve`` runs as a real process (SQLite store) with the in-process emulator as Slack; Slack
outages are emulator faults on every Web API method.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from slack_emulator.faults import Fault
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines.models import Incident, OutboxRow
from tests.harness.aegis_process import AegisProcess, wait_for
from tests.harness.slack_reading import all_text, channel, channel_by_id, message_with_button

ROSTER = {"incident_commander": ["U0IC"], "database_lead": ["U0DB"], "infrastructure_lead": ["U0INFRA"],
          "application_lead": ["U0APP"], "security_lead": ["U0SEC"], "communication_manager": ["U0COMM"]}


def config(workdir: Path) -> dict[str, Any]:
    # no database component: a database failure is planned as a restore, whose first step is the
    # fence_primary hook (fast here) and whose next steps are manual
    return {
        "locale": "en",
        "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 30},
        "roster": ROSTER,
        "hooks": {"fence_primary": {"command": ["touch", str(workdir / "fence.done")],
                                    "done_check": ["test", "-f", str(workdir / "fence.done")]}},
        "engine": {"lease_seconds": 3},   # the outbox lease is 10 s: a dead process's rows are taken over soon
    }


@pytest.fixture
def bot(tmp_path: Path, emulator: EmulatorServer) -> Iterator[AegisProcess]:
    tmp_path.chmod(0o755)
    process = AegisProcess(tmp_path, config(tmp_path), f"sqlite:///{tmp_path / 'aegis.db'}", emulator.api_url)
    emulator.bot_url = process.url
    try:
        yield process
    finally:
        process.stop()


def rows(bot: AegisProcess) -> list[OutboxRow]:
    store = bot.store()
    try:
        with store.session() as session:
            return list(session.exec(select(OutboxRow).order_by(OutboxRow.id)))
    finally:
        store.dispose()


def incident_of(bot: AegisProcess) -> Any:
    store = bot.store()
    try:
        with store.session() as session:
            return next(iter(svc.open_incidents(session)), None) or session.exec(select(Incident)).first()
    finally:
        store.dispose()


def events(bot: AegisProcess, incident_id: int) -> list[Any]:
    store = bot.store()
    try:
        with store.session() as session:
            return svc.timeline(session, incident_id)
    finally:
        store.dispose()


def all_delivered(bot: AegisProcess) -> bool:
    found = rows(bot)
    return bool(found) and all(r.done_at is not None for r in found)


def declare(bot: AegisProcess, emulator: EmulatorServer) -> None:
    response = emulator.driver.slash("U0IC", "incident database_failure critical primary database is down")
    assert response.status_code == 200, response.text


def click(emulator: EmulatorServer, chan: dict[str, Any], message: dict[str, Any], user: str, action_id: str,
          value: str) -> None:
    started = time.monotonic()
    response = emulator.driver.click(user, action_id, value, chan["id"], message["ts"])
    assert response.status_code == 200 and time.monotonic() - started < 3, response.text


def thread_replies(emulator: EmulatorServer) -> list[dict[str, Any]]:
    stake = channel_by_id(emulator.state, "C0STAKE")
    roots = [m for m in stake["messages"] if not m.get("thread_ts") or m.get("thread_ts") == m["ts"]]
    assert len(roots) == 1, f"expected one stakeholder thread, found {len(roots)}"
    return [m for m in stake["messages"] if m.get("thread_ts") == roots[0]["ts"] and m["ts"] != roots[0]["ts"]]


def test_slack_down_across_three_transitions_then_every_message_once_in_order(
    bot: AegisProcess, emulator: EmulatorServer,
) -> None:
    bot.start()
    declare(bot, emulator)
    chan = wait_for(lambda: channel(emulator.state, "inc-"), what="the incident channel")
    card = wait_for(lambda: message_with_button(channel_by_id(emulator.state, chan["id"]), "aegis_claim_role",
                                                "incident_commander"), what="the incident card")
    wait_for(lambda: all_delivered(bot), what="the room's rows delivered")

    # Slack's Web API is down: every method fails, for about 30 seconds
    down_at = time.monotonic()
    emulator.state.faults.add(Fault("*", 1_000_000, error="service_unavailable"))
    incident = incident_of(bot)
    click(emulator, chan, card, "U0IC", "aegis_claim_role", "incident_commander")      # → assembled → assessed
    wait_for(lambda: incident_of(bot).state == "assessed", what="the assessment, committed while Slack is down")
    assert message_with_button(channel_by_id(emulator.state, chan["id"]), "aegis_approve") is None
    store = bot.store()
    with store.session() as session:
        fence = next(s for s in svc.current_steps(session, incident.id) if s.action == "hook")
    store.dispose()
    # the plan was never posted: press Approve on the card's channel as Slack would show it later
    click(emulator, chan, card, "U0DB", "aegis_approve", str(fence.id))                # → recovering
    wait_for(lambda: incident_of(bot).state == "recovering", what="the approval, committed while Slack is down")
    wait_for(lambda: any(r.attempts >= 2 for r in rows(bot)), what="failed deliveries being retried")
    failures = [e for e in events(bot, incident.id) if e.kind == "slack_error"]
    assert failures and "service_unavailable" in failures[0].text
    time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))   # the outage lasts its 30 seconds
    emulator.state.faults.clear()

    wait_for(lambda: all_delivered(bot), timeout=40, what="every outbox row delivered after the outage")
    messages = channel_by_id(emulator.state, chan["id"])["messages"]
    texts = [str(m.get("text") or "") for m in messages]
    assessments = [i for i, t in enumerate(texts) if t.startswith(f"{incident.key} assessment")]
    plans = [i for i, m in enumerate(messages) if message_with_button({"messages": [m]}, "aegis_approve")]
    results = [i for i, t in enumerate(texts) if f"{incident.key} step 1. " in t]
    assert len(assessments) == 1, texts
    assert len(plans) == 1, "the plan was posted more than once (or never)"
    assert len(results) == 1, texts
    assert "succeeded" in texts[results[0]]
    assert assessments[0] < plans[0] < results[0], "channel messages out of order"
    # stakeholders: one post per transition, each once, in the order they happened
    replies = [str(m.get("text") or "") for m in thread_replies(emulator)]
    dests = [next((s for s in ("assembled", "assessed", "recovering") if f"to *{s}*" in t), t) for t in replies]
    assert dests == ["assembled", "assessed", "recovering"], replies
    # the card shows the state the incident is in now
    card_now = next(m for m in channel_by_id(emulator.state, chan["id"])["messages"] if m["ts"] == card["ts"])
    assert "recovering" in all_text(card_now).lower()


def test_kill_between_the_commit_and_the_post_then_posted_after_restart(
    bot: AegisProcess, emulator: EmulatorServer,
) -> None:
    bot.env["AEGIS_TEST_DISPATCH_DELAY"] = "60"   # the dispatcher claims, then waits: the crash lands there
    bot.start()
    declare(bot, emulator)
    wait_for(lambda: [r for r in rows(bot) if r.claimed_by], what="the dispatcher to claim the room's rows")
    assert channel(emulator.state, "inc-") is None     # claimed, waiting: nothing was posted yet
    bot.kill()

    del bot.env["AEGIS_TEST_DISPATCH_DELAY"]
    bot.start()
    wait_for(lambda: all_delivered(bot), timeout=40, what="the rows delivered by the restarted bot")
    channels = [c for c in emulator.state.channels() if c["name"].startswith("inc-")]
    assert len(channels) == 1
    cards = [m for m in channels[0]["messages"] if message_with_button({"messages": [m]}, "aegis_claim_role")]
    assert len(cards) == 1
    stake = channel_by_id(emulator.state, "C0STAKE")["messages"]
    assert len([m for m in stake if "INC-" in all_text(m)]) == 1


def test_a_failed_channel_creation_is_retried(bot: AegisProcess, emulator: EmulatorServer) -> None:
    emulator.state.faults.add(Fault("conversations.create", 1, error="restricted_action"))
    bot.start()
    declare(bot, emulator)
    chan = wait_for(lambda: channel(emulator.state, "inc-"), timeout=30, what="the channel, created on a retry")
    wait_for(lambda: message_with_button(channel_by_id(emulator.state, chan["id"]), "aegis_claim_role"),
             what="the incident card")
    incident = incident_of(bot)
    assert incident.channel_id == chan["id"]
    failures = [e for e in events(bot, incident.id) if e.kind == "slack_error"]
    assert len(failures) == 1 and "create the incident channel" in failures[0].text
    assert "restricted_action" in failures[0].text
    opened = next(r for r in rows(bot) if r.kind == "open_room")
    assert opened.attempts == 1 and opened.done_at is not None
    assert {"U0IC", "U0DB"} <= set(chan["members"])


def test_a_kill_while_slack_creates_the_channel_then_the_channel_is_adopted_not_made_twice(
    bot: AegisProcess, emulator: EmulatorServer,
) -> None:
    # Slack receives conversations.create and holds its answer: the bot dies before it learns the id
    emulator.state.faults.add(Fault("conversations.create", 1, hold_seconds=60))
    bot.start()
    declare(bot, emulator)
    wait_for(lambda: emulator.state.faults.held("conversations.create") == 1,
             what="Slack holding the bot's conversations.create")
    bot.kill()
    emulator.state.faults.release_holds()   # Slack creates the channel; its answer goes nowhere
    created = wait_for(lambda: channel(emulator.state, "inc-"), what="the channel, created for the dead process")
    assert incident_of(bot).channel_id is None

    bot.start()
    wait_for(lambda: all_delivered(bot), timeout=40, what="the room's rows delivered by the restarted bot")
    channels = [c for c in emulator.state.channels() if c["name"].startswith("inc-")]
    assert [c["id"] for c in channels] == [created["id"]], [c["name"] for c in channels]
    assert len(emulator.state.calls("conversations.create")) == 1
    assert emulator.state.calls("conversations.list"), "the restarted bot looked the recorded name up"
    assert incident_of(bot).channel_id == created["id"]
    room = channel_by_id(emulator.state, created["id"])
    assert message_with_button(room, "aegis_claim_role", "incident_commander") is not None
    assert {"U0IC", "U0DB"} <= set(room["members"])
