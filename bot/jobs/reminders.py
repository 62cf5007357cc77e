"""The ``reminder`` job: one stakeholder reminder for an open incident (registered in ``bot.jobs.registry``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # the registry imports this module
    from bot.jobs.registry import JobContext

log = logging.getLogger("aegis.jobs")


def send_reminder(context: JobContext, job_id: str, incident_id: int) -> bool:
    """Post the reminder; ``Flows.remind``'s compare-and-set keeps it to one per interval."""
    if context.flows is None:
        log.warning("%s fired in a process without flows wired; not run", job_id)
        return False
    posted = bool(context.flows.remind(incident_id))
    log.info("%s fired: %s", job_id, "reminder posted" if posted else "no reminder due")
    return posted
