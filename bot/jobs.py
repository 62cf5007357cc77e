"""Functions APScheduler stores by import path (``bot.jobs:send_reminder``).

A persisted job holds only the function's path and plain arguments; the live ``Flows`` object is
installed here at start-up, so jobs survive restarts and still reach the running bot.
"""

from __future__ import annotations

import logging

from bot.flows import Flows

log = logging.getLogger("aegis.jobs")
runtime: Flows | None = None


def send_reminder(incident_id: int) -> None:
    if runtime is None:
        log.warning("reminder for incident %s fired before the bot was ready", incident_id)
        return
    runtime.remind(incident_id)
