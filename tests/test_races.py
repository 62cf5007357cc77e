"""Races that used to strand an incident, and the lease rule under a store outage.

Real components only: the flows run in-process against a real store (SQLite file or a PostgreSQL
server from tests.harness.pgcluster) with the built-in emulator as Slack; hooks are real subprocesses; the
store outage is a real one (the PostgreSQL role the bot logs in as is locked out and its sessions
are terminated, while a second "replica" keeps its access).

The in-process harness is tests/harness/flows_harness.py.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from recovery.actions.base import Action
from recovery.actions.hook import HookAction
from recovery.actions.verify import VerifyRecovery
from recovery.engine import Engine
from recovery.health import HealthSpec
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines.models import LedgerEntry, PlanStep, require_id, utcnow
from statemachines.service import StepSpec
from statemachines.store import Store
from tests.harness.aegis_process import wait_for
from tests.harness.concurrency import at_once
from tests.harness.flows_harness import harness_for, new_store, outcome_of, pg_url
from tests.harness.incidents import recovering_incident
from tests.harness.pgcluster import PgSingle

# --- 2a: a rejection and an approval of the same plan revision ------------------------------------

def test_reject_step_1_and_approve_step_2_at_once_never_strand_the_incident(
    store: Store, emulator: EmulatorServer, tmp_path: Path,
) -> None:
    harness = harness_for(store, emulator, tmp_path)
    try:
        harness.walk_to_assessed()
        first, second = harness.steps()[:2]
        results: dict[str, str] = {}
        at_once(
            lambda: results.__setitem__("reject", outcome_of(lambda: harness.flows.reject(
                user_id="U0DB", step_id=require_id(first), reason="wrong server"))),
            lambda: results.__setitem__("approve", outcome_of(lambda: harness.flows.approve(
                user_id="U0DB", step_id=require_id(second)))),
        )
        assert results["reject"] == "accepted", results
        # the approval either came first (and the rejection then sent the incident back), or it
        # came second and was refused with the reason; never both "through" and stranded
        assert results["approve"] in ("accepted", "plan_rejected", "plan_replaced"), results
        harness.wait_state("assessed")
        wait_for(lambda: harness.incident().plan_revision == 2, what="the new plan after the rejection")
        assert harness.step(require_id(first)).status == "rejected"
        assert any(s.status == "awaiting_approval" for s in harness.steps()), "no button left on the new plan"
        with store.session() as session:
            votes = [a for a in svc.all_approvals(session, harness.incident_id) if a.step_id == second.id]
        assert len(votes) == (1 if results["approve"] == "accepted" else 0)
    finally:
        harness.stop()


def test_an_approval_right_after_a_rejection_is_refused_with_the_reason(
    store: Store, emulator: EmulatorServer, tmp_path: Path,
) -> None:
    harness = harness_for(store, emulator, tmp_path)
    try:
        harness.walk_to_assessed()
        first, second = harness.steps()[:2]
        harness.flows.reject(user_id="U0DB", step_id=require_id(first), reason="wrong server")
        refused = outcome_of(lambda: harness.flows.approve(user_id="U0DB", step_id=require_id(second)))
        assert refused in ("plan_rejected", "plan_replaced")
        assert harness.step(require_id(second)).status in ("awaiting_approval", "skipped")
        wait_for(lambda: harness.incident().plan_revision == 2, what="the new plan")
        assert harness.incident().state == "assessed"
    finally:
        harness.stop()


# --- 2b: Abort of an earlier step while a later one runs --------------------------------------------

FLAKY_FENCE = """#!/usr/bin/env bash
# fails on its first run, works afterwards
if [ -f "{dir}/fence.tried" ]; then echo fenced; exit 0; fi
touch "{dir}/fence.tried"; echo 'fence API refused' >&2; exit 2
"""
SLOW_START = """#!/usr/bin/env bash
# runs until the test releases it
touch "{dir}/start.running"
while [ ! -f "{dir}/start.release" ]; do sleep 0.05; done
echo started
"""


def _hook(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.sh"
    path.write_text(body.format(dir=tmp_path))
    path.chmod(0o755)
    return str(path)


def test_abort_of_an_earlier_retried_step_is_refused_while_a_later_step_runs(
    emulator: EmulatorServer, tmp_path: Path,
) -> None:
    store = new_store("sqlite", tmp_path, None)
    harness = harness_for(store, emulator, tmp_path, {"hooks": {
        "fence_primary": {"command": [_hook(tmp_path, "fence", FLAKY_FENCE)], "timeout_seconds": 30},
        "start_services": {"command": [_hook(tmp_path, "start", SLOW_START)], "timeout_seconds": 60},
    }})
    try:
        harness.walk_to_assessed()
        fence, restore, start = harness.steps()[:3]
        assert (fence.action, restore.action, start.action) == ("hook", "manual", "hook")
        harness.flows.approve(user_id="U0DB", step_id=require_id(fence))
        harness.wait_step(require_id(fence), "failed")
        harness.flows.retry(user_id="U0DB", step_id=require_id(fence))
        harness.wait_step(require_id(fence), "succeeded")
        harness.flows.approve(user_id="U0DB", step_id=require_id(restore))
        harness.wait_step(require_id(restore), "succeeded")
        harness.flows.approve(user_id="U0APP", step_id=require_id(start))
        wait_for(lambda: (tmp_path / "start.running").exists(), what="the start_services hook to run")
        harness.wait_step(require_id(start), "running")

        # the Abort button of step 1's failure is still in the channel: pressing it now is refused
        assert outcome_of(lambda: harness.flows.abort(user_id="U0DB", step_id=require_id(fence))) == "abort_not_current"
        # and Abort on the running step is no abort either
        assert outcome_of(lambda: harness.flows.abort(user_id="U0APP", step_id=require_id(start))) \
            == "abort_not_current"
        assert harness.incident().state == "recovering"
        assert harness.step(require_id(start)).status == "running"
        # a Reject meanwhile would re-plan under the running hook: refused too
        verify = harness.steps()[3]
        assert outcome_of(lambda: harness.flows.reject(user_id="U0IC", step_id=require_id(verify),
                                                       reason="x")) == "step_running"

        (tmp_path / "start.release").touch()
        harness.wait_step(require_id(start), "succeeded")
        assert harness.incident().state == "recovering" and harness.incident().plan_revision == 1
        assert not [e for e in harness.events() if e.kind == "transition" and e.dest_state == "assessed"
                    and e.source_state == "recovering"]
    finally:
        harness.stop()
        store.dispose()


# --- 3: the lease rule under a store outage ----------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []

    def step_changed(self, incident_id: int, step_id: int, event: str, detail: str) -> None:
        self.events.append((step_id, event))

    def transitioned(self, transition: Any) -> None:
        pass


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


@pytest.fixture
def engine_log() -> Iterator[LogLines]:
    handler = LogLines()
    logger = logging.getLogger("aegis.engine")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


@pytest.fixture
def listening() -> Iterator[str]:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


WAITING_HOOK = 'echo run >> "{dir}/hook.count"; while [ ! -f "{dir}/hook.release" ]; do sleep 0.05; done; echo done'


def _engine(store: Store, tmp_path: Path, owner: str, lease: float, listening: str) -> Engine:
    def factory(step: PlanStep, ctx: dict[str, str]) -> Action:
        if step.action == "hook":      # destructive, no done_check: after a takeover it needs approval
            return HookAction("h", command=["bash", "-c", WAITING_HOOK.format(dir=tmp_path)], timeout_seconds=60)
        return VerifyRecovery([HealthSpec("svc", "tcp", listening)])
    return Engine(store, factory, Recorder(), owner=owner, lease=timedelta(seconds=lease))


def _recovering_incident(store: Store) -> tuple[int, int]:
    """An incident in ``recovering`` whose destructive hook step is approved, then a verification."""
    with store.session() as session:
        incident_id = recovering_incident(session, [
            StepSpec(title="fence", action="hook", risk="high", approver_roles=["database_lead"]),
            StepSpec(title="verify", action="verify", approvals_required=0),
        ], strategy="failover")
        hook = svc.current_steps(session, incident_id)[0]
        svc.record_vote(session, step=hook, user_id="U0DB", decision="approve", roles_used=["database_lead"],
                        expires_in=None)
        svc.move_step(session, step=hook, to="approved", from_statuses=("awaiting_approval",))
    return incident_id, require_id(hook)


def _hook_runs(tmp_path: Path) -> int:
    path = tmp_path / "hook.count"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_process_never_takes_over_its_own_running_step(
    tmp_path: Path, listening: str, engine_log: LogLines,
) -> None:
    store = new_store("sqlite", tmp_path, None)
    engine = _engine(store, tmp_path, "replica-a", 30, listening)
    incident_id, hook_id = _recovering_incident(store)
    runner = threading.Thread(target=engine.advance, args=(incident_id,))
    runner.start()
    try:
        wait_for(lambda: _hook_runs(tmp_path) == 1, what="the hook to start")
        # the lease lapses (as if renewals had been lost) while this process still runs the step
        with store.session() as session:
            session.execute(update(LedgerEntry).values(lease_until=utcnow() - timedelta(seconds=5)))
        assert engine.resume_interrupted() == []
        assert engine_log.having("not taken over")
        with store.session() as session:
            (entry,) = svc.ledger_for_step(session, hook_id)
            assert (entry.status, entry.owner) == ("running", "replica-a")
            assert svc.get_step(session, hook_id).status == "running"
    finally:
        (tmp_path / "hook.release").touch()
        runner.join(30)
    with store.session() as session:
        assert svc.get_step(session, hook_id).status == "succeeded"
        assert svc.get(session, incident_id).state == "verified"
    assert _hook_runs(tmp_path) == 1
    store.dispose()


def test_store_outage_longer_than_the_lease_is_logged_and_the_real_outcome_reconciled(
    pg_server: PgSingle, tmp_path: Path, listening: str, engine_log: LogLines,
) -> None:
    node = pg_server.primary
    database, role = f"aegis_{uuid.uuid4().hex[:8]}", f"replica_a_{uuid.uuid4().hex[:6]}"
    node.sql(f"CREATE ROLE {role} LOGIN")
    node.sql(f"CREATE DATABASE {database} OWNER {role}")
    store_a = Store(pg_url(pg_server, database, role))     # the replica that runs the step
    store_a.migrate()
    store_b = Store(pg_url(pg_server, database))            # another replica, which keeps its access
    a = _engine(store_a, tmp_path, "replica-a", 1.5, listening)
    b = _engine(store_b, tmp_path, "replica-b", 1.5, listening)
    a.record_patience = 60
    incident_id, hook_id = _recovering_incident(store_a)
    runner = threading.Thread(target=a.advance, args=(incident_id,))
    runner.start()
    try:
        wait_for(lambda: _hook_runs(tmp_path) == 1, what="the hook to start")
        # the store becomes unreachable for replica A: no login, and its sessions are cut
        node.sql(f"ALTER ROLE {role} NOLOGIN")
        node.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", role)
        wait_for(lambda: engine_log.having("lapsed while the store was unreachable"), timeout=20,
                 what="A noticing that its lease lapsed")
        assert engine_log.having("lease renewal of ledger row")

        # replica B's sweeper sees a lapsed lease and applies the ledger rule: approval again
        assert b.resume_interrupted() == [incident_id]
        with store_b.session() as session:
            step = svc.get_step(session, hook_id)
            assert (step.status, step.attempt) == ("awaiting_approval", 2)

        # the hook really finishes while A still cannot reach the store: A keeps its outcome
        (tmp_path / "hook.release").touch()
        wait_for(lambda: engine_log.having("could not record the outcome"), timeout=20,
                 what="A retrying to record the outcome")
        node.sql(f"ALTER ROLE {role} LOGIN")
        runner.join(60)
        assert not runner.is_alive()
    finally:
        (tmp_path / "hook.release").touch()
        node.sql(f"ALTER ROLE {role} LOGIN")
        runner.join(60)

    with store_b.session() as session:
        step = svc.get_step(session, hook_id)
        (entry,) = svc.ledger_for_step(session, hook_id)
        events = [e.text for e in svc.timeline(session, incident_id)]
        incident = svc.get(session, incident_id)
    # recorded truthfully: it ran once and succeeded; it was not left waiting to run again
    assert _hook_runs(tmp_path) == 1
    assert entry.status == "succeeded" and "lease lapsed" in entry.output.get("note", "")
    assert step.status == "succeeded"
    assert any("not re-run" in t for t in events)
    assert incident.state == "verified"
    store_a.dispose()
    store_b.dispose()


# --- 4: roles that gate approvals come from the roster ------------------------------------------------

def test_an_unlisted_security_lead_cannot_be_claimed_to_pass_the_two_person_rule(
    emulator: EmulatorServer, tmp_path: Path,
) -> None:
    store = new_store("sqlite", tmp_path, None)
    harness = harness_for(store, emulator, tmp_path, {"roster": {
        "incident_commander": ["U0IC"], "database_lead": ["U0DB"]}})     # no security lead listed
    try:
        harness.walk_to_assessed("ransomware")
        refused = outcome_of(lambda: harness.flows.claim_role(user_id="U0DB", incident_id=harness.incident_id,
                                                              role="security_lead"))
        assert refused == "not_on_roster"
        with store.session() as session:
            assert "security_lead" not in svc.roles(session, harness.incident_id)
            audits = [e for e in svc.timeline(session, harness.incident_id) if e.kind == "audit"]
        assert audits and audits[-1].actor == "U0DB"
        restore = next(s for s in harness.steps() if s.approvals_required == 2)
        # the database lead and the commander together still are not "one of them the security lead"
        for user in ("U0DB", "U0IC"):
            outcome_of(lambda u=user: harness.flows.approve(user_id=u, step_id=require_id(restore)))
        assert harness.step(require_id(restore)).status == "awaiting_approval"
    finally:
        harness.stop()
        store.dispose()
