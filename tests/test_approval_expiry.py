"""Approval expiry (``engine.approval_expiry_minutes``): an approval that aged past the expiry before
the engine reached its step is not used.

End to end: ``aegis serve`` as a process on SQLite, the built-in emulator as Slack, clicks as signed
HTTP. The expiry is checked when the engine reaches a step (``usecases.start_step``), so a step is
made to wait behind an earlier hook that blocks on a gate file the test creates: both are approved
at once, the test waits until the later step's vote has aged past the expiry (read from the store),
then opens the gate. The destructive step is a hook that appends to a marker file.

The same walk with the default expiry (60 min) is the control: the same vote, as old, runs the step.
A two-person step (ransomware: two approvers, one the security lead) gets one vote that expired and
one fresh: not enough until the expired vote's owner clicks again, which renews it. A store-level
case also covers what the e2e cannot reach: a pre-approval (no expiry) never expires, the new
attempt starts with no votes, a valid vote is not doubled by a second click.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config
from bot.presenters import incident_view
from messages.blocks.incident import timeline_event
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines import usecases
from statemachines.models import Approval, TimelineEvent, require_id, utcnow
from statemachines.service import StepSpec
from statemachines.store import Store
from tests.harness.aegis_process import AegisProcess, start_on_sqlite, wait_for
from tests.harness.incidents import recovering_incident
from tests.harness.slack_reading import all_text, message_with_button
from tests.harness.team import ROSTER, SERVE_CONFIG
from tests.harness.walk import Walk

SHORT_EXPIRY_MINUTES = 0.05          # 3 s: long enough for a click to reach the engine on a loaded machine
SHORT_EXPIRY = timedelta(minutes=SHORT_EXPIRY_MINUTES)
EXPIRED_DETAIL = "approval expired: approve again"   # the step's detail (statemachines/usecases.py)


# --- helpers --------------------------------------------------------------------------------------

def votes(walk: Walk, step_id: int, attempt: int | None = None) -> list[Approval]:
    with walk.store.session() as session:
        return [a for a in svc.all_approvals(session, walk.incident_id)
                if a.step_id == step_id and (attempt is None or a.attempt == attempt)]


def expired_events(walk: Walk) -> list[TimelineEvent]:
    with walk.store.session() as session:
        return [e for e in svc.timeline(session, walk.incident_id) if (e.data or {}).get("code") == "approval_expired"]


def runs(marker: Path) -> int:
    return marker.read_text().count("run") if marker.exists() else 0


def wait_aged(walk: Walk, vote: Approval, age: timedelta) -> None:
    """Wait (by polling the clock against the stored vote) until ``vote`` is older than ``age``."""
    wait_for(lambda: utcnow() - vote.at > age + timedelta(milliseconds=200), timeout=age.total_seconds() + 30,
             interval=0.05, what=f"the vote of {vote.user_id} to be older than {age}")


def datacenter_bot(tmp_path: Path, emulator: EmulatorServer, gate: Path, marker: Path,
                   engine: dict[str, Any]) -> AegisProcess:
    """A datacenter plan whose first step blocks on ``gate`` and whose fence step records a run in ``marker``."""
    hooks = {
        # blocks until the test opens the gate (bounded by the hook timeout)
        "activate_standby_environment": {
            "command": ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo activated"],
            "timeout_seconds": 120},
        "fence_primary": {"command": ["sh", "-c", f"echo run >> {marker}"], "timeout_seconds": 30},
    }
    return start_on_sqlite(tmp_path, emulator, {**SERVE_CONFIG, "hooks": hooks, "engine": engine})


def approve_both_behind_the_gate(walk: Walk, gate: Path) -> tuple[Any, Any, Approval]:
    """Approve the gated first step and the fence at once; open the gate once the fence's vote is older
    than SHORT_EXPIRY. Returns (activate, fence, the fence's vote) after the first step succeeded."""
    walk.declare("incident datacenter_outage critical region A is dark")
    walk.assemble_and_assess()
    activate, fence = walk.step("hook", "activate_standby_environment"), walk.step("hook", "fence_primary")
    assert activate.position < fence.position and fence.approvals_required == 1
    walk.click("U0INFRA", "aegis_approve", str(activate.id))
    walk.wait_step(activate.id, "running")
    walk.click("U0DB", "aegis_approve", str(fence.id))
    walk.wait_step(fence.id, "approved")
    [vote] = votes(walk, fence.id)
    wait_aged(walk, vote, SHORT_EXPIRY)
    assert walk.step("hook", "activate_standby_environment").status == "running"   # the engine has not reached it
    gate.touch()
    walk.wait_step(activate.id, "succeeded")
    return activate, fence, vote


# --- 1. an expired approval is not used; a fresh one runs the step once -------------------------

def test_an_approval_older_than_the_expiry_is_not_used_and_a_fresh_one_runs_the_step_once(
    tmp_path: Path, emulator: EmulatorServer,
) -> None:
    gate, marker = tmp_path / "gate", tmp_path / "fence.count"
    bot = datacenter_bot(tmp_path, emulator, gate, marker, {"approval_expiry_minutes": SHORT_EXPIRY_MINUTES})
    try:
        walk = Walk(bot, emulator)
        _, fence, vote = approve_both_behind_the_gate(walk, gate)
        assert vote.expires_at is not None and abs(vote.expires_at - vote.at - SHORT_EXPIRY) < timedelta(seconds=1)
        assert vote.expires_at < utcnow()

        # the engine reached the fence with an expired approval: back to awaiting approval, a new attempt
        sent_back = walk.wait_step(fence.id, "awaiting_approval")
        assert sent_back.attempt == 2 and sent_back.detail == EXPIRED_DETAIL
        assert runs(marker) == 0 and walk.ledger(fence.id) == []      # the destructive hook did not run
        assert walk.incident().state == "recovering"
        [event] = expired_events(walk)
        assert event.data["step_id"] == fence.id and event.data["position"] == fence.position
        assert votes(walk, fence.id, attempt=2) == []                 # the old vote does not carry over

        # the plan message in the incident channel asks for the approval again
        plan = wait_for(lambda: (m := message_with_button(walk.chan(), "aegis_approve", str(fence.id)))
                        and EXPIRED_DETAIL in all_text(m) and m, what="the plan asking to approve the fence again")
        assert "awaiting approval" in all_text(plan)
        assert "approval expired" in bot.log()                       # the operator log line

        # the timeline line, in the catalogue's words, exists in English and in Korean
        config = Config.model_validate({"roster": ROSTER})
        with walk.store.session() as session:
            view = incident_view(session, walk.incident(), config, with_timeline=True)
        [item] = [i for i in view.timeline if i.code == "approval_expired"]
        english, korean = timeline_event(view, item, "en"), timeline_event(view, item, "ko")
        assert english.strip() == f"the approval of step {fence.position} expired; it must be approved again"
        assert korean.strip() == f"{fence.position}단계 승인 만료 — 다시 승인해야 합니다"

        # a fresh approval runs it, exactly once
        walk.click("U0DB", "aegis_approve", str(fence.id))
        done = walk.wait_step(fence.id, "succeeded")
        assert done.attempt == 2 and runs(marker) == 1
        assert [e.attempt for e in walk.ledger(fence.id)] == [2]
        assert len(expired_events(walk)) == 1
    finally:
        bot.stop()


# --- 2. control: the same walk with the default expiry runs the step ------------------------------

def test_a_still_valid_approval_of_the_same_age_runs_the_step(tmp_path: Path, emulator: EmulatorServer) -> None:
    gate, marker = tmp_path / "gate", tmp_path / "fence.count"
    bot = datacenter_bot(tmp_path, emulator, gate, marker, {})   # approval_expiry_minutes: the default, 60
    try:
        walk = Walk(bot, emulator)
        _, fence, vote = approve_both_behind_the_gate(walk, gate)
        assert vote.expires_at is not None and vote.expires_at - vote.at > timedelta(minutes=59)
        done = walk.wait_step(fence.id, "succeeded")
        assert done.attempt == 1 and runs(marker) == 1
        assert [e.attempt for e in walk.ledger(fence.id)] == [1]
        assert expired_events(walk) == []
    finally:
        bot.stop()


# --- 3. a two-person step: one expired vote and one fresh are not enough --------------------------

def test_a_two_person_step_with_one_expired_and_one_fresh_vote_waits_until_the_expired_one_is_renewed(
    tmp_path: Path, emulator: EmulatorServer,
) -> None:
    marker = tmp_path / "isolate.count"
    hooks = {"isolate_systems": {"command": ["sh", "-c", f"echo run >> {marker}"], "timeout_seconds": 30}}
    bot = start_on_sqlite(tmp_path, emulator, {**SERVE_CONFIG, "hooks": hooks,
                                               "engine": {"approval_expiry_minutes": SHORT_EXPIRY_MINUTES}})
    try:
        walk = Walk(bot, emulator)
        walk.declare("incident ransomware critical file servers encrypted")
        walk.assemble_and_assess()
        isolate = walk.step("hook", "isolate_systems")
        assert isolate.position == 1 and isolate.approvals_required == 2

        walk.click("U0INFRA", "aegis_approve", str(isolate.id))
        [first] = wait_for(lambda: votes(walk, isolate.id), what="the first vote")
        assert first.expires_at is not None
        wait_aged(walk, first, SHORT_EXPIRY)
        assert first.expires_at < utcnow() and walk.step("hook", "isolate_systems").status == "awaiting_approval"

        # the security lead's fresh vote makes two, but only one of them is still valid: not approved
        walk.click("U0SEC", "aegis_approve", str(isolate.id))
        wait_for(lambda: len(votes(walk, isolate.id)) == 2, what="the security lead's vote")
        waiting = walk.step("hook", "isolate_systems")
        assert (waiting.status, waiting.attempt) == ("awaiting_approval", 1)
        assert runs(marker) == 0 and walk.ledger(isolate.id) == [] and expired_events(walk) == []

        # the infrastructure lead clicks again: the expired vote is renewed, and the two valid votes run it once
        walk.click("U0INFRA", "aegis_approve", str(isolate.id))
        done = walk.wait_step(isolate.id, "succeeded")
        assert done.attempt == 1 and runs(marker) == 1
        renewed = next(a for a in votes(walk, isolate.id, attempt=1) if a.user_id == "U0INFRA")
        assert renewed.expires_at is not None and renewed.expires_at > first.expires_at
    finally:
        bot.stop()


# --- store level: what the expiry check does with each kind of vote ---------------------------------

@pytest.fixture
def recovering(store: Store) -> Iterator[tuple[Store, int, list[int]]]:
    """A recovering incident with a one-person and a two-person step (no approvals yet)."""
    with store.session() as session:
        incident_id = recovering_incident(session, [
            StepSpec(title="one", action="manual", risk="high", approver_roles=["incident_commander"]),
            StepSpec(title="two", action="manual", risk="critical", approvals_required=2,
                     approver_roles=["security_lead", "incident_commander"])], scenario="ransomware", summary="expiry")
        step_ids = [require_id(s) for s in svc.current_steps(session, incident_id)]
    yield store, incident_id, step_ids


def _claim(store: Store, incident_id: int) -> usecases.NextStep:
    with store.session() as session:
        return usecases.start_step(session, incident_id=incident_id, owner="test", lease=timedelta(seconds=30))


def _age_votes(store: Store, step_id: int, users: set[str]) -> None:
    with store.session() as session:
        for vote in svc.approvals(session, svc.get_step(session, step_id)):
            if vote.user_id in users:
                vote.expires_at = utcnow() - timedelta(seconds=1)
                session.add(vote)


def test_the_expiry_check_at_the_step_counts_only_unexpired_votes(recovering: tuple[Store, int, list[int]]) -> None:
    store, incident_id, (one, two) = recovering
    roster = ROSTER
    # a pre-approval carries no expiry and is never sent back
    with store.session() as session:
        assert usecases.pre_approve(session, step_id=one, basis="pre-approved by config (test)")
        [pre] = svc.approvals(session, svc.get_step(session, one))
        assert pre.expires_at is None
    claimed = _claim(store, incident_id).claimed
    assert claimed is not None and claimed.step.id == one
    with store.session() as session:
        usecases.finish_step(session, step=svc.get_step(session, one), entry_id=claimed.entry_id, owner="test",
                             outcome=usecases.StepOutcome("succeeded", "done", {}))

    # two votes, one of them expired: the step goes back for a new attempt with no votes
    for user in ("U0IC", "U0SEC"):
        with store.session() as session:
            usecases.approve(session, step_id=two, user_id=user, roster=roster, approval_ttl=timedelta(hours=1))
    _age_votes(store, two, {"U0IC"})
    result = _claim(store, incident_id)
    assert result.claimed is None and result.expired is not None and result.expired.id == two
    with store.session() as session:
        step = svc.get_step(session, two)
        assert (step.status, step.attempt, step.detail) == ("awaiting_approval", 2, EXPIRED_DETAIL)
        assert svc.approvals(session, step) == [] and svc.ledger_for_step(session, two) == []
    assert _claim(store, incident_id) == usecases.NextStep()      # waits for approvals; nothing expires twice

    # two unexpired votes on the new attempt: claimed
    for user in ("U0SEC", "U0IC"):
        with store.session() as session:
            usecases.approve(session, step_id=two, user_id=user, roster=roster, approval_ttl=timedelta(hours=1))
    claimed = _claim(store, incident_id).claimed
    assert claimed is not None and claimed.step.id == two and claimed.step.attempt == 2



def test_an_expired_vote_is_renewed_by_a_new_click_and_a_valid_one_is_not_doubled(
    recovering: tuple[Store, int, list[int]],
) -> None:
    store, incident_id, (_one, two) = recovering
    with store.session() as session:
        usecases.approve(session, step_id=two, user_id="U0IC", roster=ROSTER, approval_ttl=timedelta(hours=1))
    with store.session() as session, pytest.raises(usecases.Refused):   # still valid: already approved
        usecases.approve(session, step_id=two, user_id="U0IC", roster=ROSTER, approval_ttl=timedelta(hours=1))
    _age_votes(store, two, {"U0IC"})
    with store.session() as session:   # the second person's vote with the first one expired: not enough
        result = usecases.approve(session, step_id=two, user_id="U0SEC", roster=ROSTER, approval_ttl=timedelta(hours=1))
        assert not result.satisfied
    with store.session() as session:   # the first person clicks again: renewed, and now two valid votes
        result = usecases.approve(session, step_id=two, user_id="U0IC", roster=ROSTER, approval_ttl=timedelta(hours=1))
        assert result.satisfied
        step = svc.get_step(session, two)
        assert step.status == "approved" and len(svc.approvals(session, step)) == 2
        assert all(a.expires_at is not None and a.expires_at > utcnow() for a in svc.approvals(session, step))
