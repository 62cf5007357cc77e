"""Prepare ahead of the approval (issue 9, "Speed"): the non-destructive part of a waiting step, done early.

While a plan step whose action ``prepares_ahead`` (today: the in-place ``postgres_restore``) waits for
its approval, this component calls the action's ``prepare`` on a worker thread — never in a Slack ack
path — so that the approval → done time is only what must wait for the approval (for a restore: the
downtime). ``recovery/actions/base.py`` defines the contract: ``prepare`` never touches the system the
step acts on (a restore streams, authenticates and verifies its backup into a staging directory beside
the data directory and stages the WAL, with the server still running), and the approved step's own
``precheck`` reuses it only after re-checking what can have changed since.

``sync(incident_id)`` is called after every change that can make a step start or stop waiting (a plan
proposed or re-planned, an approval, a rejection, an abort, the close; the sweep after a restart): a
waiting step of the current revision is prepared (once per process: a preparation in flight or done is
not started again; the action itself also says "already staged"); a step this process prepared that
will not run any more — a newer revision replaced it, it was rejected or skipped, the incident closed —
is withdrawn (the staging removed; the action checks its own journal, so only its own staging goes).
A step approved or running keeps its preparation: its execution takes it over (the action's lock makes
the execution wait for a preparation still running, so there is never a second writer). A crash leaves
a staging to the action's journal: reused when complete and matching, otherwise removed by the next
precheck.

When a preparation is ready, one line is posted in the incident channel through the outbox
(``step_prepared``, English and Korean) and recorded on the timeline. A preparation that fails is only
logged: the approved step's precheck fails the same way, before anything is stopped, and says why; one
refused because it would leave the running server's filesystem less than its reserve free
(``in_place.ahead_reserve``: 5 % of it, at least 1 GiB or a tenth) is simply done by the approved step.
The switch is per component (``components.postgres.primary.control.prepare_ahead``, default true).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from recovery.actions.base import Action, ActionError
from statemachines import service as svc
from statemachines.json_types import JsonObject
from statemachines.models import PlanStep, require_id
from statemachines.store import Store

log = logging.getLogger("aegis.prepare_ahead")

ActionFor = Callable[[PlanStep, dict[str, str]], Action]
# what the incident's state must be for a waiting step to be prepared
PREPARING_STATES = ("assessed", "recovering")
# a step in one of these keeps its preparation (its execution takes it over)
KEEPING = ("awaiting_approval", "approved", "running")


class PrepareAhead:
    def __init__(self, store: Store, action_for: ActionFor, submit: Callable[[Callable[[], None]], None],
                 told: Callable[[], None]) -> None:
        self.store = store
        self.action_for = action_for   # the engine's factory: the same action the approved step will run
        self.submit = submit           # a worker pool: preparations run there, never in the caller
        self.told = told               # an outbox row was written: wake the dispatcher
        self._guard = threading.Lock()
        self._busy: set[int] = set()              # step ids being prepared or withdrawn now
        self._prepared: dict[int, int] = {}       # step id → incident id, prepared by this process

    def sync(self, incident_id: int) -> None:
        """Prepare the incident's waiting steps, withdraw what no longer waits (both on workers)."""
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            state, revision, key = incident.state, incident.plan_revision, incident.key or str(incident.id)
            scenario = incident.scenario
            steps = svc.current_steps(session, incident_id) if state in PREPARING_STATES else []
            mine = {step_id for step_id, owner in self._prepared.items() if owner == incident_id}
            old = [svc.get_step(session, step_id) for step_id in sorted(mine)]
        context = {"incident": key, "scenario": scenario}
        jobs: list[tuple[PlanStep, dict[str, str], Callable[[PlanStep, dict[str, str]], None]]] = []
        # withdrawals first, on the same worker as the preparations after them: a re-plan's new step then
        # finds the staging lock free (a preparation refused by a busy lock would not be tried again)
        for step in old:
            keeps = state in PREPARING_STATES and step.revision == revision and step.status in KEEPING
            if not keeps:
                jobs.append((step, {**context, "step": str(step.id)}, self._withdraw))
        for step in steps:
            if step.status == "awaiting_approval" and step.revision == revision:
                jobs.append((step, {**context, "step": str(step.id)}, self._prepare))
        claimed = [job for job in jobs if self._claim(job[0], preparing=job[2] == self._prepare)]
        if claimed:
            self.submit(lambda: self._run_all(claimed))

    def _claim(self, step: PlanStep, *, preparing: bool) -> bool:
        step_id = require_id(step)
        with self._guard:
            if step_id in self._busy or (preparing and step_id in self._prepared):
                return False
            self._busy.add(step_id)
            return True

    def _run_all(self, jobs: list[tuple[PlanStep, dict[str, str], Callable[[PlanStep, dict[str, str]], None]]]) -> None:
        for step, context, work in jobs:
            try:
                work(step, context)
            except Exception:   # one step's surprise must not keep the others claimed for ever
                log.exception("preparing or withdrawing step %s ahead of its approval failed", step.id)
            finally:
                with self._guard:
                    self._busy.discard(require_id(step))

    def _prepare(self, step: PlanStep, context: dict[str, str]) -> None:
        try:
            action = self.action_for(step, context)
        except ActionError as exc:
            log.info("step %s cannot be prepared ahead: %s", step.id, exc)
            return
        if not action.prepares_ahead:
            return
        lines: list[str] = []
        try:
            ready = action.prepare(lines.append)
        except ActionError as exc:
            log.warning("step %s was not prepared ahead of its approval (the approved step prepares itself): %s",
                        step.id, exc)
            return
        with self._guard:
            self._prepared[require_id(step)] = step.incident_id
        if ready is not None:
            self._tell(step, ready)

    def _withdraw(self, step: PlanStep, context: dict[str, str]) -> None:
        try:
            self.action_for(step, context).withdraw()
        except Exception:   # a config that changed since: leave it to the journal's leftover removal
            log.warning("withdrawing the preparation of step %s failed", step.id, exc_info=True)
        with self._guard:
            self._prepared.pop(require_id(step), None)

    def _tell(self, step: PlanStep, ready: JsonObject) -> None:
        """One line in the incident channel (and the timeline): the step is prepared, if it still waits."""
        with self.store.session() as session:
            now = svc.get_step(session, require_id(step))
            if now.status != "awaiting_approval":
                return   # approved meanwhile: its execution already took the preparation over
            data: JsonObject = {"code": "step_prepared", "position": step.position, "title": step.title,
                                **{k: ready[k] for k in ("backup_id", "wal_files", "restored_bytes") if k in ready}}
            svc.add_event(session, incident_id=step.incident_id, kind="step_prepared", actor="aegis",
                          text=f"step {step.position} prepared ahead of its approval: {ready.get('backup_id')}",
                          data=data)
            svc.tell(session, incident_id=step.incident_id, kind="step_prepared", step_id=require_id(step),
                     **{k: v for k, v in data.items() if k != "code"})
        self.told()
