"""Every write of a transition is one transaction — on SQLite (pysqlite's SAVEPOINT trap) and PostgreSQL.

The stores are real: a SQLite file and a PostgreSQL server from tests.harness.pgcluster. The approval race
goes through ``Flows.approve`` (what the Approve button runs) with the built-in emulator as Slack.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from bot.flows.incident import Refused
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines.models import require_id
from statemachines.service import StepSpec
from statemachines.store import Store
from tests.harness.concurrency import at_once
from tests.harness.flows_harness import Harness, harness_for

SPECS = [
    StepSpec(title="fence", action="manual", risk="high", approver_roles=["database_lead"]),
    StepSpec(title="promote", action="manual", risk="critical", approver_roles=["database_lead"]),
]


def _incident_with_plan(store: Store) -> tuple[int, list[int]]:
    with store.session() as session:
        incident = svc.declare(session, scenario="database_failure", severity="high", summary="x",
                               declared_by="U1", locale="en", stakeholder_channel=None)
        svc.replace_plan(session, incident_id=require_id(incident), strategy="failover", specs=SPECS)
        steps = [require_id(s) for s in svc.current_steps(session, require_id(incident))]
    return require_id(incident), steps


def test_a_rolled_back_transaction_leaves_no_claim_vote_or_ledger_row(store: Store) -> None:
    incident_id, (step_id, _) = _incident_with_plan(store)
    with pytest.raises(RuntimeError, match="after the writes"), store.session() as session:
        assert svc.assign_role(session, incident_id=incident_id, role="incident_commander", user_id="U1")
        step = svc.get_step(session, step_id)
        assert svc.record_vote(session, step=step, user_id="U1", decision="approve", roles_used=["database_lead"],
                               expires_in=None)
        assert svc.move_step(session, step=step, to="approved", from_statuses=("awaiting_approval",))
        assert svc.ledger_start(session, step=svc.get_step(session, step_id), owner="me",
                                lease=timedelta(seconds=30)) is not None
        raise RuntimeError("the request failed after the writes")
    with store.session() as session:
        assert svc.roles(session, incident_id) == {}
        assert svc.all_approvals(session, incident_id) == []
        assert svc.ledger_for_step(session, step_id) == []
        assert svc.get_step(session, step_id).status == "awaiting_approval"
        assert [e.kind for e in svc.timeline(session, incident_id)] == ["transition"]   # the declaration only


KILLED_AFTER_CLAIM = textwrap.dedent("""
    import os, signal, sys
    from statemachines import service as svc
    from statemachines.store import Store

    store = Store(sys.argv[1])
    with store.session() as session:
        # what Flows.claim_role does first; the assemble transition would follow in this transaction
        svc.assign_role(session, incident_id=int(sys.argv[2]), role="incident_commander", user_id="U1")
        session.flush()
        print("claimed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_sigkill_after_a_claim_leaves_neither_commander_nor_a_stuck_incident(store: Store, tmp_path: Path) -> None:
    incident_id, _ = _incident_with_plan(store)
    script = tmp_path / "claim_then_die.py"
    script.write_text(KILLED_AFTER_CLAIM)
    proc = subprocess.run([sys.executable, str(script), store.url, str(incident_id)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert proc.returncode == -9 and "claimed" in proc.stdout, proc.stderr
    with store.session() as session:
        assert svc.roles(session, incident_id) == {}, "a claim outlived the transaction it was part of"
        assert svc.get(session, incident_id).state == "detected"
    # the claim can be made again, together with its transition, as one commit
    with store.session() as session:
        assert svc.assign_role(session, incident_id=incident_id, role="incident_commander", user_id="U1")
        svc.transition(session, incident_id=incident_id, trigger="assemble", actor="U1")
    with store.session() as session:
        assert svc.roles(session, incident_id) == {"incident_commander": "U1"}
        assert svc.get(session, incident_id).state == "assembled"


def test_two_steps_approved_at_once_both_count_and_leave_exactly_their_votes(
    store: Store, emulator: EmulatorServer, tmp_path: Path,
) -> None:
    harness = harness_for(store, emulator, tmp_path)
    try:
        first, second = _two_manual_steps(harness)
        outcomes: dict[int, str] = {}

        def approve(step_id: int) -> None:
            try:
                harness.flows.approve(user_id="U0DB", step_id=step_id)
                outcomes[step_id] = "approved"
            except Refused as exc:
                outcomes[step_id] = exc.reason

        at_once(lambda: approve(first), lambda: approve(second))
        assert outcomes == {first: "approved", second: "approved"}
        with store.session() as session:
            votes = svc.all_approvals(session, harness.incident_id)
            statuses = {s: svc.get_step(session, s).status for s in (first, second)}
            starts = [e for e in svc.timeline(session, harness.incident_id)
                      if e.kind == "transition" and e.dest_state == "recovering"]
        assert sorted((v.step_id, v.user_id, v.decision) for v in votes) == [
            (first, "U0DB", "approve"), (second, "U0DB", "approve")]
        assert "awaiting_approval" not in statuses.values(), statuses
        assert len(starts) == 1
    finally:
        harness.stop()


def _two_manual_steps(harness: Harness) -> tuple[int, int]:
    harness.walk_to_assessed()
    steps = [s for s in harness.steps() if s.status == "awaiting_approval" and "database_lead" in s.approver_roles]
    return require_id(steps[0]), require_id(steps[1])
