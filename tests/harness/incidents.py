"""Store-level incidents for tests: one declared, given a plan and walked to ``recovering`` in one call."""

from __future__ import annotations

from sqlmodel import Session

from statemachines import service as svc
from statemachines.models import require_id
from statemachines.service import StepSpec


def recovering_incident(session: Session, specs: list[StepSpec], *, scenario: str = "database_failure",
                        strategy: str = "restore_from_backup", summary: str = "x", actor: str = "U0IC") -> int:
    """Declare an incident (severity high, English, no stakeholder channel) by ``actor``, give it a plan of
    ``specs`` and walk it through assemble → assess → start_recovery; its id."""
    incident = svc.declare(session, scenario=scenario, severity="high", summary=summary,
                           declared_by=actor, locale="en", stakeholder_channel=None)
    incident_id = require_id(incident)
    svc.replace_plan(session, incident_id=incident_id, strategy=strategy, specs=specs)
    for trigger in ("assemble", "assess", "start_recovery"):
        svc.transition(session, incident_id=incident_id, trigger=trigger, actor=actor)
    return incident_id
