"""The engine in-process with a real store and real actions (hooks as real subprocesses)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import select

from recovery.actions.base import Action
from recovery.actions.hook import HookAction
from recovery.actions.manual import ManualStep
from recovery.actions.verify import VerifyRecovery
from recovery.engine import Engine
from recovery.health import HealthSpec
from statemachines import service as svc
from statemachines.models import Approval, LedgerEntry, PlanStep, require_id, utcnow
from statemachines.service import StepSpec
from statemachines.store import Store
from tests.harness.incidents import recovering_incident


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []
        self.transitions: list[tuple[str, str]] = []

    def step_changed(self, incident_id: int, step_id: int, event: str, detail: str) -> None:
        self.events.append((step_id, event))

    def transitioned(self, transition: Any) -> None:
        self.transitions.append((transition.source, transition.dest))


@pytest.fixture
def listening() -> Iterator[str]:
    """A real TCP listener, so the verification step has something to observe."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


@pytest.fixture
def setup(tmp_path: Path, listening: str) -> tuple[Store, Engine, Recorder, int, Path]:
    store = Store(f"sqlite:///{tmp_path}/e.db")
    store.migrate()
    count = tmp_path / "count"

    def factory(step: PlanStep, ctx: dict[str, str]) -> Action:
        if step.action == "hook":
            return HookAction("h", command=["bash", "-c", f"echo x >> {count}"])
        if step.action == "verify":
            return VerifyRecovery([HealthSpec("svc", "tcp", listening)])   # read-only, no is_done probe
        return ManualStep(step.title)

    recorder = Recorder()
    engine = Engine(store, factory, recorder, owner="me", lease=timedelta(seconds=30))
    with store.session() as session:
        incident_id = recovering_incident(session, [
            StepSpec(title="hook", action="hook", risk="high", approver_roles=["database_lead"]),
            StepSpec(title="check", action="verify", approvals_required=0),
        ], strategy="failover", actor="U1")
    return store, engine, recorder, incident_id, count


def _approve(store: Store, step_id: int, expires_in: timedelta) -> None:
    with store.session() as session:
        step = svc.get_step(session, step_id)
        svc.record_vote(session, step=step, user_id="U1", decision="approve", roles_used=["database_lead"],
                        expires_in=expires_in)
        svc.move_step(session, step=step, to="approved", from_statuses=("awaiting_approval",))


def test_runs_in_order_and_verifies(setup: tuple[Store, Engine, Recorder, int, Path]) -> None:
    store, engine, recorder, incident_id, count = setup
    engine.advance(incident_id)                       # step 1 awaits approval: nothing runs
    assert not count.exists()
    with store.session() as session:
        first, second = svc.current_steps(session, incident_id)
    _approve(store, require_id(first), timedelta(minutes=5))
    engine.advance(incident_id)
    assert count.read_text().count("x") == 1
    with store.session() as session:
        assert [s.status for s in svc.current_steps(session, incident_id)] == ["succeeded", "succeeded"]
        assert svc.get(session, incident_id).state == "verified"
    assert ("recovering", "verified") in recorder.transitions
    engine.advance(incident_id)                       # idempotent: nothing runs twice
    assert count.read_text().count("x") == 1


def test_expired_approval_is_asked_for_again(setup: tuple[Store, Engine, Recorder, int, Path]) -> None:
    store, engine, recorder, incident_id, count = setup
    with store.session() as session:
        first = svc.current_steps(session, incident_id)[0]
    _approve(store, require_id(first), timedelta(minutes=5))
    with store.session() as session:
        session.execute(update(Approval).values(expires_at=utcnow() - timedelta(seconds=1)))
    engine.advance(incident_id)
    assert not count.exists()
    with store.session() as session:
        step = svc.get_step(session, require_id(first))
    assert (step.status, step.attempt) == ("awaiting_approval", 2)
    assert (first.id, "expired") in recorder.events


def test_lapsed_lease_destructive_waits_readonly_reruns(setup: tuple[Store, Engine, Recorder, int, Path]) -> None:
    store, engine, recorder, incident_id, count = setup
    with store.session() as session:
        first, second = svc.current_steps(session, incident_id)
        # simulate a process that died: both steps claimed by "ghost", leases already lapsed
        for step in (first, second):
            if step.status == "awaiting_approval":
                svc.move_step(session, step=step, to="approved")
                step = svc.get_step(session, require_id(step))
            svc.ledger_start(session, step=step, owner="ghost", lease=timedelta(seconds=-1))
    touched = engine.resume_interrupted()
    assert touched == [incident_id, incident_id]
    with store.session() as session:
        hook_step, check_step = (svc.get_step(session, require_id(first)), svc.get_step(session, require_id(second)))
        entries = session.exec(select(LedgerEntry)).all()
    assert (hook_step.status, hook_step.attempt) == ("awaiting_approval", 2)   # destructive, no probe
    assert (check_step.status, check_step.attempt) == ("pending", 2)          # read-only: may run again
    assert {e.status for e in entries} == {"interrupted"}
    assert not count.exists()
    assert engine.resume_interrupted() == []                                  # taken over exactly once
