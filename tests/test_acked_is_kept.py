"""Nothing acknowledged is lost (issue 8, Mechanism 1b).

A decision commits before its HTTP 200, and every follow-up of a committed change is found again
from durable state after a restart. ``AEGIS_TEST_FOLLOW_UP_DELAY`` holds the follow-ups (the
assessment, the engine) back, so the SIGKILL lands between the commit and the follow-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines.models import Approval, Incident, require_id
from tests.harness.aegis_process import AegisProcess, wait_for
from tests.harness.slack_reading import channel, channel_by_id, message_with_button

DELAY = "AEGIS_TEST_FOLLOW_UP_DELAY"
ROSTER = {"incident_commander": ["U0IC"], "database_lead": ["U0DB"], "infrastructure_lead": ["U0INFRA"],
          "application_lead": ["U0APP"], "security_lead": ["U0SEC"], "communication_manager": ["U0COMM"]}


@pytest.fixture
def bot(tmp_path: Path, emulator: EmulatorServer) -> Iterator[AegisProcess]:
    tmp_path.chmod(0o755)
    config = {
        "locale": "en",
        "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 30},
        "roster": ROSTER,
        # no database component: the plan's first step is this hook, approved by the database lead
        "hooks": {"fence_primary": {"command": ["sh", "-c", f"echo run >> {tmp_path}/fence.count"]}},
        "engine": {"lease_seconds": 3},
    }
    process = AegisProcess(tmp_path, config, f"sqlite:///{tmp_path / 'aegis.db'}", emulator.api_url)
    emulator.bot_url = process.url
    try:
        yield process
    finally:
        process.stop()


def read(bot: AegisProcess, query: Any) -> Any:
    store = bot.store()
    try:
        with store.session() as session:
            return query(session)
    finally:
        store.dispose()


def incident(bot: AegisProcess) -> Incident:
    found = read(bot, lambda s: s.exec(select(Incident)).first())
    assert found is not None
    return found


def open_room(bot: AegisProcess, emulator: EmulatorServer) -> tuple[dict[str, Any], dict[str, Any]]:
    assert emulator.driver.slash("U0IC", "incident database_failure critical primary is down").status_code == 200
    chan = wait_for(lambda: channel(emulator.state, "inc-"), what="the incident channel")
    card = wait_for(lambda: message_with_button(channel_by_id(emulator.state, chan["id"]), "aegis_claim_role",
                                                "incident_commander"), what="the incident card")
    return chan, card


def test_kill_between_a_claim_and_the_assessment_then_assessed_once_after_restart(
    bot: AegisProcess, emulator: EmulatorServer,
) -> None:
    bot.env[DELAY] = "60"
    bot.start()
    chan, card = open_room(bot, emulator)
    response = emulator.driver.click("U0IC", "aegis_claim_role", "incident_commander", chan["id"], card["ts"])
    assert response.status_code == 200
    bot.kill()   # right after the 200: the assessment had not started
    assert incident(bot).state == "assembled"

    del bot.env[DELAY]
    bot.start()
    wait_for(lambda: incident(bot).state == "assessed", what="the assessment after the restart")
    plan = wait_for(lambda: message_with_button(channel_by_id(emulator.state, chan["id"]), "aegis_approve"),
                    what="the plan posted after the restart")
    assert plan is not None
    found = incident(bot)
    events = read(bot, lambda s: svc.timeline(s, require_id(found)))
    assert [e.data.get("trigger") for e in events if e.kind == "transition" and e.source_state] == \
        ["assemble", "assess"], "assessed more than once (or not at all)"
    assert found.plan_revision == 1
    messages = channel_by_id(emulator.state, chan["id"])["messages"]
    assert len([m for m in messages if str(m.get("text", "")).startswith(f"{found.key} assessment")]) == 1


def test_kill_right_after_the_200_of_an_approve_then_the_approval_counts(
    bot: AegisProcess, emulator: EmulatorServer, tmp_path: Path,
) -> None:
    bot.start()
    chan, card = open_room(bot, emulator)
    emulator.driver.click("U0IC", "aegis_claim_role", "incident_commander", chan["id"], card["ts"])
    plan = wait_for(lambda: message_with_button(channel_by_id(emulator.state, chan["id"]), "aegis_approve"),
                    what="the plan")
    found = incident(bot)
    fence = next(s for s in read(bot, lambda s: svc.current_steps(s, require_id(found))) if s.action == "hook")
    bot.stop()
    bot.env[DELAY] = "60"      # the engine will not start before the kill
    bot.start()

    response = emulator.driver.click("U0DB", "aegis_approve", str(fence.id), chan["id"], plan["ts"])
    assert response.status_code == 200
    bot.kill()   # right after the 200
    votes = read(bot, lambda s: list(s.exec(select(Approval).where(Approval.step_id == fence.id))))
    assert [(v.user_id, v.decision) for v in votes] == [("U0DB", "approve")], "the acknowledged vote was lost"
    assert incident(bot).state == "recovering"
    assert not (tmp_path / "fence.count").exists()

    del bot.env[DELAY]
    bot.start()
    wait_for(lambda: read(bot, lambda s: svc.get_step(s, require_id(fence))).status == "succeeded",
             what="the approved step run after the restart")
    assert (tmp_path / "fence.count").read_text().splitlines() == ["run"]
    # the channel hears about it: the plan shows the approval, and the step result is posted
    wait_for(lambda: [m for m in channel_by_id(emulator.state, chan["id"])["messages"]
                      if f"{found.key} step 1. " in str(m.get("text", ""))], what="the step result")
