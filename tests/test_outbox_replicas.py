"""Two outbox dispatchers (two ``aegis serve`` processes on one PostgreSQL store) deliver every
outbox row exactly once and, per incident, in order: the incident row ``FOR UPDATE SKIP LOCKED``
while claiming, and the lease on claimed rows (bot/slack/outbox.py).

One replica waits after each claim (the test hook ``AEGIS_TEST_DISPATCH_DELAY``), so its claims
are still held while the other's dispatcher polls and while the other replica commits new rows of
the same incident: those must wait behind the held ones, never overtake them or be sent twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines.models import Incident, OutboxRow, require_id
from tests.harness.aegis_process import AegisProcess, wait_for
from tests.harness.pgcluster import PgSingle
from tests.harness.slack_reading import channel_by_id, message_with_button

INCIDENTS = 4
ROSTER = {"incident_commander": ["U0IC"], "database_lead": ["U0DB"], "infrastructure_lead": ["U0INFRA"],
          "application_lead": ["U0APP"], "security_lead": ["U0SEC"], "communication_manager": ["U0COMM"]}


def config(workdir: Path) -> dict[str, Any]:
    return {
        "locale": "en",
        "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 30},
        "roster": ROSTER,
        "hooks": {"fence_primary": {"command": ["touch", str(workdir / "fence.done")],
                                    "done_check": ["test", "-f", str(workdir / "fence.done")]}},
        "engine": {"lease_seconds": 3},   # outbox lease 10 s
    }


@pytest.fixture
def replicas(tmp_path: Path, emulator: EmulatorServer) -> Iterator[tuple[AegisProcess, AegisProcess]]:
    tmp_path.chmod(0o755)
    server = PgSingle.create()
    server.primary.sql("CREATE DATABASE aegis")
    node = server.primary
    url = f"postgresql+psycopg://postgres@/aegis?host={node.socket_dir}&port={node.port}"
    first = AegisProcess(tmp_path, config(tmp_path), url, emulator.api_url, name="first")
    second = AegisProcess(tmp_path, config(tmp_path), url, emulator.api_url, name="second")
    second.env["AEGIS_TEST_DISPATCH_DELAY"] = "1.5"   # holds each claim a while before delivering
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        first.stop()
        second.stop()
        server.destroy()


def incidents(bot: AegisProcess) -> list[Incident]:
    store = bot.store()
    try:
        with store.session() as session:
            return list(session.exec(select(Incident).order_by(Incident.id)))
    finally:
        store.dispose()


def rows(bot: AegisProcess) -> list[OutboxRow]:
    store = bot.store()
    try:
        with store.session() as session:
            return list(session.exec(select(OutboxRow).order_by(OutboxRow.id)))
    finally:
        store.dispose()


def all_delivered(bot: AegisProcess) -> bool:
    found = rows(bot)
    return bool(found) and all(r.done_at is not None for r in found)


def through(emulator: EmulatorServer, bot: AegisProcess) -> EmulatorServer:
    emulator.bot_url = bot.url
    return emulator


def test_two_dispatchers_deliver_each_row_once_and_in_order_per_incident(
    replicas: tuple[AegisProcess, AegisProcess], emulator: EmulatorServer,
) -> None:
    first, second = replicas
    # declarations alternate between the replicas: each wakes its own dispatcher, the other polls
    for n in range(INCIDENTS):
        bot = (first, second)[n % 2]
        response = through(emulator, bot).driver.slash("U0IC", f"incident database_failure critical outage {n}")
        assert response.status_code == 200, response.text
    wait_for(lambda: len(incidents(first)) == INCIDENTS and all(i.channel_id for i in incidents(first)),
             timeout=60, what="every incident's channel")
    cards: dict[int, dict[str, Any]] = {}
    for incident in incidents(first):
        chan = channel_by_id(emulator.state, incident.channel_id or "")
        cards[require_id(incident)] = wait_for(
            lambda c=chan["id"]: message_with_button(channel_by_id(emulator.state, c), "aegis_claim_role",
                                                     "incident_commander"), what="the incident card")

    # each claim goes through the replica that did not declare the incident, while rows of the
    # declaration may still be held by the other: assembled, then assessed (assessment + plan)
    for n, incident in enumerate(incidents(first)):
        bot = (second, first)[n % 2]
        response = through(emulator, bot).driver.click("U0IC", "aegis_claim_role", "incident_commander",
                                                       incident.channel_id or "", cards[require_id(incident)]["ts"])
        assert response.status_code == 200, response.text
    wait_for(lambda: all(i.state == "assessed" for i in incidents(first)), timeout=60, what="every assessment")
    wait_for(lambda: all_delivered(first), timeout=90, what="every outbox row delivered")

    assert len(emulator.state.calls("conversations.create")) == INCIDENTS
    # at the Web API: no message was posted twice (every post of this walk has its own text)
    posts = [(c["params"].get("channel"), c["params"].get("thread_ts"), c["params"].get("text"))
             for c in emulator.state.calls("chat.postMessage") if not c.get("faulted")]
    assert len(posts) == len(set(posts)), [p for p in posts if posts.count(p) > 1]
    stake = channel_by_id(emulator.state, "C0STAKE")["messages"]
    for incident in incidents(first):
        key = incident.key or ""
        messages = channel_by_id(emulator.state, incident.channel_id or "")["messages"]
        texts = [str(m.get("text") or "") for m in messages]
        card_at = [i for i, m in enumerate(messages) if message_with_button({"messages": [m]}, "aegis_claim_role")]
        assessments = [i for i, t in enumerate(texts) if t.startswith(f"{key} assessment")]
        plans = [i for i, m in enumerate(messages) if message_with_button({"messages": [m]}, "aegis_approve")]
        assert (len(card_at), len(assessments), len(plans)) == (1, 1, 1), (key, texts)
        assert card_at[0] < assessments[0] < plans[0], (key, texts)
        # stakeholders: one root per incident, its updates once each, in the order of the transitions
        roots = [m for m in stake if m.get("thread_ts") in (None, m["ts"]) and f"{key} (" in str(m.get("text") or "")]
        assert len(roots) == 1, (key, [m.get("text") for m in stake])
        replies = [str(m.get("text") or "") for m in stake
                   if m.get("thread_ts") == roots[0]["ts"] and m["ts"] != roots[0]["ts"]]
        dests = [next((s for s in ("assembled", "assessed") if f"to *{s}*" in t), t) for t in replies]
        assert dests == ["assembled", "assessed"], (key, replies)
    store = first.store()
    try:
        with store.session() as session:
            errors = [e.text for i in incidents(first) for e in svc.timeline(session, require_id(i))
                      if e.kind == "slack_error"]
    finally:
        store.dispose()
    assert errors == []   # nothing was refused by Slack, e.g. a second chat.update racing the first
    owners = {r.claimed_by for r in rows(first)}
    assert len(owners) == 2, f"one dispatcher delivered everything: {owners}"
