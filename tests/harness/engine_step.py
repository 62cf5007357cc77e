"""Run one action as the only step of a recovering incident's plan, through the real ``Engine``.

For the restore tests (issue 9): what a step's failure does to the incident (``RolledBack`` → back to
``assessed`` with the reason; a plain ``ActionError`` → the step failed, the incident stays
``recovering`` for Retry/Abort) is the engine's rule, so it is checked through the engine itself, with
the store the action uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from recovery.actions.base import Action
from recovery.engine import Engine
from statemachines import service as svc
from statemachines.models import PlanStep, require_id
from statemachines.service import StepSpec
from statemachines.store import Store
from tests.harness.incidents import recovering_incident


class _Listener:
    def step_changed(self, incident_id: int, step_id: int, event: str, detail: str) -> None:
        pass

    def transitioned(self, transition: Any) -> None:
        pass


@dataclass(frozen=True)
class StepRun:
    state: str          # the incident's state after the engine stopped
    step: PlanStep      # the step as the engine left it (status, detail, evidence)
    output: dict[str, Any]   # the ledger row's output (what a failed step left, e.g. "aside")


def through_the_engine(store: Store, action: Action, *, kind: str, scenario: str = "database_failure") -> StepRun:
    """Declare an incident, give it a one-step plan of ``kind`` (no approval needed), start the recovery
    and let the engine run ``action`` as that step."""
    with store.session() as session:
        incident_id = recovering_incident(session, [StepSpec(title=f"Run {kind}", action=kind, approvals_required=0)],
                                          scenario=scenario, summary="restore", actor="U1")
    engine = Engine(store, lambda _step, _ctx: action, _Listener(), owner="test", lease=timedelta(seconds=30))
    engine.advance(incident_id)
    with store.session() as session:
        [step] = svc.current_steps(session, incident_id)
        outputs = [entry.output for entry in svc.ledger_for_step(session, require_id(step))]
        return StepRun(svc.get(session, incident_id).state, step, dict(outputs[-1] if outputs else {}))
