"""Proposing the aftercare plans (issue 9): re-protect after a failover, clean-up after close.

The plans come from the planner (``recovery.planner.reprotect_plan`` / ``cleanup_plan``) and are
stored by ``statemachines.usecases.propose_aftercare``, which refuses what does not apply (wrong
state, already proposed, a step running, a re-protect plan not settled), so proposing again is
harmless. ``propose_due`` decides which plan is due now; the rule that never loses either plan:

- ``reprotect``: once a failover plan reached ``verified`` (``incident.protected`` is False) and
  no aftercare plan exists yet — also after the incident was closed (closing does not make the
  system protected), so a close that races the proposal does not drop it. Its steps may still be
  approved and run after the close;
- ``cleanup``: once the incident is closed *and* the re-protect plan (if any) has settled —
  succeeded, or abandoned by Abort/Reject — from what the incident's succeeded steps put aside
  (a re-protect's moved-aside data directory included). Closing is never blocked by it.

It is asked at each moment one of those can become true: the ``verify`` follow-up, the close (in the
close's own transaction), the end of an aftercare plan (the engine's ``aftercare_done``), an Abort or
Reject of an aftercare step, and the sweep (``pending_ids``: closed incidents whose aftercare may
still be due or may have an approved step a crash left unrun).
"""

from __future__ import annotations

import logging

from sqlmodel import Session, col, or_, select

from bot import wiring
from bot.config import Config
from recovery import planner
from statemachines import service as svc
from statemachines import usecases
from statemachines.models import Incident, require_id
from statemachines.store import Store

log = logging.getLogger("aegis.flows")


def wants_reprotect(incident: Incident) -> bool:
    """A verified (or since closed) failover still running without a standby, with no aftercare plan yet."""
    return incident.state in ("verified", "closed") and incident.protected is False and incident.aftercare is None


def propose_due(config: Config, session: Session, incident_id: int) -> str | None:
    """In the caller's transaction: store the aftercare plan due now; its kind, or None when none is."""
    incident = svc.get(session, incident_id)
    if wants_reprotect(incident):
        plan = planner.reprotect_plan(wiring.facts(config, incident.scenario, []))
        if usecases.propose_aftercare(session, incident_id=incident_id, kind=usecases.REPROTECT,
                                      steps=plan.steps, rationale=plan.rationale) is not None:
            return usecases.REPROTECT
        incident = svc.get(session, incident_id)
    if incident.state != "closed" or incident.aftercare == usecases.CLEANUP:
        return None
    if not usecases.aftercare_settled(session, incident):
        return None   # the re-protect plan still waits or runs: the clean-up follows it
    return usecases.CLEANUP if propose_cleanup(session, incident_id) else None


def propose(config: Config, store: Store, incident_id: int) -> str | None:
    """``propose_due`` in a transaction of its own."""
    with store.session() as session:
        return propose_due(config, session, incident_id)


def propose_cleanup(session: Session, incident_id: int) -> bool:
    """The clean-up plan for what the recovery (and re-protect) put aside, if anything."""
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


def pending_ids(session: Session) -> list[int]:
    """Closed incidents whose aftercare may not be over: a failover not re-protected, or an aftercare
    plan that has not settled, or a re-protect that settled with no clean-up proposed after it."""
    found = session.exec(select(Incident).where(
        Incident.state == "closed", or_(col(Incident.aftercare).is_not(None), col(Incident.protected).is_(False))))
    return [require_id(i) for i in found
            if i.aftercare != usecases.CLEANUP or not usecases.aftercare_settled(session, i)]
