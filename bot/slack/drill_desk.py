"""``/aegis drill run <name>`` and ``/aegis drill list`` from Slack.

- **Who may.** ``drill run`` restores production backups into scratch servers: only users the roster
  lists as incident commander, database lead or infrastructure lead (``statemachines.policy.
  may_run_drill``); ``drill list`` anyone on the roster. With an empty roster nobody may, from Slack.
- **Ack.** The name check, the authorisation and the one-at-a-time gate are in memory, so the ack
  answers at once ("started", or the refusal); the drill runs on a worker thread of its own, never on
  the interaction pool, like ``/aegis backup run`` (bot/slack/backup_desk.py).
- **Result.** Posted to ``slack.ops_channel`` with the figures, pass/fail per objective and the report
  location (``DrillDuty.run``), plus a notice per backup that failed its restore test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.bounded import BoundedPool, Busy, queue_limit
from bot.flows.drills import DrillDuty
from bot.flows.incident import reference
from bot.slack import commands
from bot.slack.replies import ephemeral
from messages import drill_notices
from messages.views import Message
from recovery.drills import runs
from recovery.drills.drills import DRILLS
from statemachines.policy import DRILL_ROLES, may_run_drill

log = logging.getLogger("aegis.drills")
Respond = Callable[..., object]
DrillCommand = commands.DrillRun | commands.DrillList


class DrillDesk:
    def __init__(self, duty: DrillDuty) -> None:
        self.duty = duty
        self.locale = duty.config.locale
        self.worker = BoundedPool(1, queue_limit(5), thread_name_prefix="aegis-drill")

    def handle(self, parsed: DrillCommand, *, user: str, respond: Respond,
               later: Callable[[Respond, Callable[[], None]], None]) -> Message | None:
        """Authorise and hand off; the returned message (if any) is the ephemeral ack."""
        roster = self.duty.config.roster
        if isinstance(parsed, commands.DrillList):
            if not any(user in users for users in roster.values()):
                return drill_notices.refusal("not_allowed", self.locale, roles=list(DRILL_ROLES))
            later(respond, lambda: ephemeral(respond, self.listing()))
            return None
        if parsed.name not in DRILLS:
            return drill_notices.refusal("unknown", self.locale, drill=parsed.name, names=list(DRILLS))
        if not may_run_drill(user, roster=roster).allowed:
            return drill_notices.refusal("not_allowed", self.locale, roles=list(DRILL_ROLES))
        what = f"drill run {parsed.name}"
        if not self.duty.gate.try_enter(what):
            return drill_notices.refusal("busy", self.locale, what=self.duty.gate.holder or what)
        try:
            self.worker.try_submit(lambda: self._run(parsed.name, user, respond))
        except Busy:
            self.duty.gate.leave()   # never started: it must not hold the gate
            raise
        return drill_notices.started(parsed.name, self.locale)

    def _run(self, name: str, user: str, respond: Respond) -> None:
        try:
            self.duty.run(name, trigger="slack", requested_by=user)
        except Exception:
            ref = reference()
            log.exception("drill %s failed to run (reference %s)", name, ref)
            from messages.blocks.kit import refusal

            ephemeral(respond, refusal("internal_error", self.locale, reference=ref))
        finally:
            self.duty.gate.leave()

    def listing(self) -> Message:
        rows = [{"id": r.id, "name": r.name, "status": r.status, "started_at": r.started_at, "trigger": r.trigger}
                for r in runs.recent(self.duty.store, 15)]
        return drill_notices.listing(rows, self.locale)

    def shutdown(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
