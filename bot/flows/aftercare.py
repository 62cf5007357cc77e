"""Proposing the aftercare plans (issue 9): re-protect after a failover, clean-up after close.

The plans come from the planner (``recovery.planner.reprotect_plan`` / ``cleanup_plan``) and are
stored by ``statemachines.usecases.propose_aftercare``, which refuses what does not apply (wrong
state, already proposed, a step running), so proposing again is harmless:

- ``reprotect``: after a failover plan reached ``verified`` (``incident.protected`` is False) — the
  follow-up of the ``verify`` transition, and found again by the sweep after a crash;
- ``cleanup``: in the close's own transaction (``propose_cleanup`` takes the open session), from
  what the incident's succeeded steps put aside. Closing is never blocked by it: no aside items,
  or a plan that cannot be replaced now, just means no clean-up plan.
"""

from __future__ import annotations

import logging

from sqlmodel import Session

from bot import wiring
from bot.config import Config
from recovery import planner
from statemachines import service as svc
from statemachines import usecases
from statemachines.models import Incident
from statemachines.store import Store

log = logging.getLogger("aegis.flows")


def wants_reprotect(incident: Incident) -> bool:
    """A verified failover still running without a standby, with no aftercare plan yet."""
    return incident.state == "verified" and incident.protected is False and incident.aftercare is None


def propose_reprotect(config: Config, store: Store, incident_id: int) -> bool:
    """Store the re-protect plan as the incident's next revision; False when it does not apply."""
    with store.session() as session:
        incident = svc.get(session, incident_id)
        if not wants_reprotect(incident):
            return False
        plan = planner.reprotect_plan(wiring.facts(config, incident.scenario, []))
        revision = usecases.propose_aftercare(session, incident_id=incident_id, kind=usecases.REPROTECT,
                                              steps=plan.steps, rationale=plan.rationale)
    return revision is not None


def propose_cleanup(session: Session, incident_id: int) -> bool:
    """In the close's transaction: the clean-up plan for what the recovery put aside, if anything."""
    items = usecases.aside_items(session, incident_id)
    if not items:
        return False
    plan = planner.cleanup_plan(items)
    revision = usecases.propose_aftercare(session, incident_id=incident_id, kind=usecases.CLEANUP,
                                          steps=plan.steps, rationale=plan.rationale)
    if revision is None:
        log.warning("INC-%s: %d aside item(s) but no clean-up plan now (a step is still running)",
                    incident_id, len(items))
    return revision is not None
