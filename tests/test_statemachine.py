"""The state machine, the store's compare-and-set, the ledger's uniqueness and the approval policy."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect

from statemachines import policy
from statemachines import service as svc
from statemachines.json_types import JsonObject
from statemachines.machine import STATES, IllegalTransition, next_state, triggers_from
from statemachines.models import PlanStep, require_id
from statemachines.service import StaleVersion, StepSpec
from statemachines.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path}/aegis.db")
    s.migrate()
    return s


def _declare(store: Store) -> int:
    with store.session() as session:
        return require_id(svc.declare(session, scenario="database_failure", severity="critical",
                                      summary="db down", declared_by="U1", locale="en",
                                      stakeholder_channel="C0STAKE"))


def test_happy_path_and_false_alarm_rules() -> None:
    state = "detected"
    for trigger in ("assemble", "assess", "start_recovery", "verify", "close"):
        state = next_state(state, trigger)
    assert state == "closed"
    assert next_state("recovering", "abort_recovery") == "assessed"
    assert next_state("recovering", "verification_failed") == "assessed"
    for before in ("detected", "assembled", "assessed"):
        assert next_state(before, "close_false_alarm") == "closed"
    for late in ("recovering", "verified", "closed"):
        with pytest.raises(IllegalTransition):
            next_state(late, "close_false_alarm")
    with pytest.raises(IllegalTransition):
        next_state("detected", "start_recovery")
    assert triggers_from("closed") == []
    assert STATES[0] == "detected"


def test_migrations_create_every_table_and_are_idempotent(store: Store) -> None:
    store.migrate()   # a second run is a no-op
    tables = set(inspect(store.engine).get_table_names())
    assert {"incident", "timeline_event", "role_assignment", "plan_step", "approval", "action_ledger",
            "alembic_version"} <= tables


def test_transition_writes_state_version_and_timeline_together(store: Store) -> None:
    incident_id = _declare(store)
    with store.session() as session:
        t = svc.transition(session, incident_id=incident_id, trigger="assemble", actor="U1", reason="IC")
    assert (t.source, t.dest, t.version) == ("detected", "assembled", 2)
    with store.session() as session:
        incident = svc.get(session, incident_id)
        events = svc.timeline(session, incident_id)
    assert incident.key == f"INC-{incident_id}" and incident.state == "assembled" and incident.version == 2
    assert [(e.source_state, e.dest_state) for e in events] == [(None, "detected"), ("detected", "assembled")]


def test_stale_version_loses_and_changes_nothing(store: Store) -> None:
    incident_id = _declare(store)
    with store.session() as session:
        svc.transition(session, incident_id=incident_id, trigger="assemble", actor="U1")
    with pytest.raises(StaleVersion), store.session() as session:
        svc.transition(session, incident_id=incident_id, trigger="assess", actor="U2", expected_version=1)
    with store.session() as session:
        assert svc.get(session, incident_id).state == "assembled"
        assert len(svc.timeline(session, incident_id)) == 2


def test_concurrent_transitions_one_winner(store: Store) -> None:
    incident_id = _declare(store)
    results: list[str] = []
    barrier = threading.Barrier(8)

    def fire() -> None:
        barrier.wait()
        try:
            with store.session() as session:
                svc.transition(session, incident_id=incident_id, trigger="assemble", actor="U1",
                               expected_version=1)
            results.append("won")
        except (StaleVersion, IllegalTransition):
            results.append("lost")

    threads = [threading.Thread(target=fire) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("won") == 1
    with store.session() as session:
        assert len([e for e in svc.timeline(session, incident_id) if e.dest_state == "assembled"]) == 1


def test_votes_and_ledger_claims_are_unique(store: Store) -> None:
    incident_id = _declare(store)
    with store.session() as session:
        svc.replace_plan(session, incident_id=incident_id, strategy="failover", specs=[
            StepSpec(title="promote", action="postgres_promote", risk="critical", approver_roles=["database_lead"]),
        ])
    with store.session() as session:
        step = svc.current_steps(session, incident_id)[0]
        assert step.status == "awaiting_approval"
        assert svc.record_vote(session, step=step, user_id="U1", decision="approve", roles_used=[], expires_in=None)
        assert not svc.record_vote(session, step=step, user_id="U1", decision="approve", roles_used=[],
                                   expires_in=None)
        assert svc.move_step(session, step=step, to="approved", from_statuses=("awaiting_approval",))
    with store.session() as session:
        step = svc.get_step(session, require_id(step))
        first = svc.ledger_start(session, step=step, owner="a", lease=timedelta(seconds=30))
    with store.session() as session:
        again = svc.ledger_start(session, step=svc.get_step(session, require_id(step)), owner="b",
                                 lease=timedelta(seconds=30))
    assert first is not None and again is None
    with store.session() as session:
        assert svc.get_step(session, require_id(step)).status == "running"
        assert len(svc.ledger_for_step(session, require_id(step))) == 1


def test_a_claim_of_a_step_that_moved_meanwhile_leaves_no_ledger_row(store: Store) -> None:
    incident_id = _declare(store)
    with store.session() as session:
        svc.replace_plan(session, incident_id=incident_id, strategy="failover",
                         specs=[StepSpec(title="check", action="manual")])
    with store.session() as session:
        stale = svc.current_steps(session, incident_id)[0]   # read here, moved by someone else below
        assert stale.status == "awaiting_approval"
    with store.session() as session:
        assert svc.move_step(session, step=svc.get_step(session, require_id(stale)), to="approved")
    with store.session() as session:   # the claimant's transaction commits after losing, as the engine's does
        with pytest.raises(StaleVersion):
            svc.ledger_start(session, step=stale, owner="a", lease=timedelta(seconds=30))
    with store.session() as session:
        assert svc.ledger_for_step(session, require_id(stale)) == []
        fresh = svc.get_step(session, require_id(stale))
        claimed = svc.ledger_start(session, step=fresh, owner="b", lease=timedelta(seconds=30))
    assert claimed is not None   # the attempt's idempotency key was not left taken by the lost claim


def test_new_plan_revision_supersedes_unfinished_steps(store: Store) -> None:
    incident_id = _declare(store)
    spec = StepSpec(title="x", action="manual")
    with store.session() as session:
        svc.replace_plan(session, incident_id=incident_id, strategy="failover", specs=[spec, spec])
        old = [s.id for s in svc.current_steps(session, incident_id)]
        svc.replace_plan(session, incident_id=incident_id, strategy="failover", specs=[spec])
    with store.session() as session:
        assert [svc.get_step(session, i or 0).status for i in old] == ["skipped", "skipped"]
        assert len(svc.current_steps(session, incident_id)) == 1


def test_policy_roster_commander_and_two_person_rule() -> None:
    roster = {"database_lead": ["UDB"], "security_lead": ["USEC"]}
    assert policy.may_claim("incident_commander", "U1", roster={}, declared_by="U1").allowed
    assert not policy.may_claim("incident_commander", "U2", roster={}, declared_by="U1").allowed
    assert not policy.may_claim("database_lead", "U2", roster=roster, declared_by="U1").allowed
    assert policy.may_approve(["database_lead"], "UDB", roster=roster, holders={}).allowed
    assert policy.may_approve(["database_lead"], "UIC", roster=roster,
                              holders={"incident_commander": "UIC"}).allowed
    refused = policy.may_approve(["database_lead"], "UOUT", roster=roster, holders={})
    assert not refused.allowed and refused.reason == "not_allowed_to_approve"
    assert not policy.approvals_satisfied([("UDB", ("database_lead",))], 2)
    assert not policy.approvals_satisfied([("UDB", ("database_lead",)), ("UIC", ("incident_commander",))], 2)
    assert policy.approvals_satisfied([("UDB", ("database_lead",)), ("USEC", ("security_lead",))], 2)
    assert policy.may_close("UIC", holders={"incident_commander": "UIC"}, declared_by="U1", state="verified").allowed
    assert not policy.may_close("U1", holders={"incident_commander": "UIC"}, declared_by="U1",
                                state="assessed").allowed


def test_gating_roles_are_claimed_only_from_the_roster_when_one_exists() -> None:
    # a roster that lists only the database lead: nobody may self-appoint the security lead (and so
    # satisfy the ransomware two-person rule alone), nor the infrastructure lead
    roster = {"database_lead": ["UDB"], "incident_commander": ["UIC"]}
    for role in ("security_lead", "infrastructure_lead"):
        for user in ("UDB", "UIC", "UOUT"):
            decision = policy.may_claim(role, user, roster=roster, declared_by="UIC")
            assert not decision.allowed and decision.reason == "not_on_roster", (role, user)
    assert policy.may_claim("database_lead", "UDB", roster=roster, declared_by="UIC").allowed
    assert not policy.may_claim("database_lead", "UOUT", roster=roster, declared_by="UIC").allowed
    # roles that gate no approval stay open to the channel
    assert policy.may_claim("communication_manager", "UOUT", roster=roster, declared_by="UIC").allowed
    assert not policy.roles_open(roster)
    # no roster at all (the demo): every role is open, and the card is told so
    empty: dict[str, list[str]] = {}
    assert policy.roles_open(empty) and policy.roles_open({"security_lead": []})
    assert policy.may_claim("security_lead", "UOUT", roster=empty, declared_by="U1").allowed
    assert not policy.may_claim("security_lead", "UOUT", roster={"database_lead": ["UDB"]}, declared_by="U1").allowed


def test_the_clean_up_sees_what_a_rolled_back_step_kept_aside_but_not_a_plain_failure(store: Store) -> None:
    from statemachines import usecases

    incident_id = _declare(store)
    with store.session() as session:
        svc.replace_plan(session, incident_id=incident_id, strategy="restore_from_backup", specs=[
            StepSpec(title=f"restore {n}", action="postgres_restore", risk="critical", approver_roles=["database_lead"])
            for n in (1, 2)])
    outputs: list[tuple[str, JsonObject]] = [
        ("failed", {"error": "rolled back: start failed", "rolled_back": True,
                    "aside": [{"kind": "postgres_data_dir", "location": "/pg/main.aegis-failed-1",
                               "component": "postgres"}]}),
        ("failed", {"error": "backup missing", "aside": [{"kind": "postgres_data_dir", "location": "/pg/never"}]}),
    ]
    for (status, output), step_id in zip(outputs, [require_id(s) for s in _steps(store, incident_id)], strict=True):
        with store.session() as session:
            step = svc.get_step(session, step_id)
            assert svc.move_step(session, step=step, to="approved", from_statuses=("awaiting_approval",))
        with store.session() as session:
            entry = svc.ledger_start(session, step=svc.get_step(session, step_id), owner="a",
                                     lease=timedelta(seconds=30))
            assert entry is not None
            assert svc.ledger_finish(session, entry_id=require_id(entry), status=status, output=output)
    with store.session() as session:
        assert [i["location"] for i in usecases.aside_items(session, incident_id)] == ["/pg/main.aegis-failed-1"]


def _steps(store: Store, incident_id: int) -> list[PlanStep]:
    with store.session() as session:
        return list(svc.current_steps(session, incident_id))
