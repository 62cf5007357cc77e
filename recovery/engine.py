"""The recovery engine: runs an incident's approved steps in order, through the action ledger.

Rules (DESIGN.md, "Actions and the ledger"):
- a step runs only when the incident is ``recovering``, every earlier step succeeded, and the
  step needs no approval or has enough valid ones;
- the ledger row (unique idempotency key ``incident:step:attempt``) is written in the same
  transaction that moves the step to ``running``, *before* the action starts, so a step can be
  claimed by exactly one thread of one process;
- while it runs, the row's lease is renewed; a row whose lease ran out belongs to a process that
  died. ``resume_interrupted`` asks the action's ``is_done`` probe: done → succeeded; a read-only
  step → run again; otherwise → back to ``awaiting_approval``. A destructive step is never re-run
  without a new approval.
- after the last step succeeds the incident becomes ``verified``; a failing verification step
  sends it back to ``assessed``.

The engine knows nothing about chat: it reports through an ``EngineListener``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import event

from recovery.actions.base import Action, ActionError
from recovery.redact import redact
from statemachines import policy
from statemachines import service as svc
from statemachines.machine import IllegalTransition
from statemachines.models import PlanStep, utcnow
from statemachines.service import StaleVersion, Transition
from statemachines.store import Store

log = logging.getLogger("aegis.engine")

ActionFactory = Callable[[PlanStep, dict[str, str]], Action]   # (step, {"incident": key, …})


class EngineListener(Protocol):
    def step_changed(self, incident_id: int, step_id: int, event: str, detail: str) -> None: ...
    def transitioned(self, transition: Transition) -> None: ...


class Engine:
    def __init__(
        self, store: Store, factory: ActionFactory, listener: EngineListener, *, owner: str,
        lease: timedelta,
    ) -> None:
        self.store = store
        self.factory = factory
        self.listener = listener
        self.owner = owner
        self.lease = lease

    # --- driving ----------------------------------------------------------------------------

    def advance(self, incident_id: int) -> None:
        """Run every step that may run now, in order, until one waits, fails or the plan ends."""
        while True:
            claimed = self._claim_next(incident_id)
            if claimed is None:
                return
            step, entry_id, context = claimed
            if not self._run(step, entry_id, context):
                return

    def _claim_next(self, incident_id: int) -> tuple[PlanStep, int, dict[str, str]] | None:
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            if incident.state != "recovering":
                return None
            for step in svc.current_steps(session, incident_id):
                if step.status in ("succeeded", "skipped"):
                    continue
                if step.status == "pending" or (step.status == "approved" and self._still_approved(session, step)):
                    try:
                        entry = svc.ledger_start(session, step=step, owner=self.owner, lease=self.lease)
                    except StaleVersion:
                        return None
                    if entry is None:
                        return None
                    context = {"incident": incident.key or str(incident.id), "step": str(step.id),
                               "scenario": incident.scenario}
                    return step, int(entry.id or 0), context
                return None   # awaiting approval, running elsewhere, failed or rejected: wait
            # every step succeeded but the incident is still recovering (e.g. crash before verify)
            self._finish_plan(session, incident_id)
            return None

    def _still_approved(self, session: Any, step: PlanStep) -> bool:
        """Expired approvals send the step back for a fresh approval rather than running it."""
        now = utcnow()
        votes = [a for a in svc.approvals(session, step) if a.decision == "approve"]
        valid = [(a.user_id, tuple(a.roles)) for a in votes if a.expires_at is None or a.expires_at > now]
        if policy.approvals_satisfied(valid, step.approvals_required):
            return True
        if svc.move_step(session, step=step, to="awaiting_approval", from_statuses=("approved",),
                         new_attempt=True, detail="approval expired: approve again"):
            svc.add_event(session, incident_id=step.incident_id, kind="step", actor="aegis",
                          text=f"approval of step {step.position} expired")
            _on_commit(session, lambda: self._notify(step.incident_id, step.id, "expired", "approval expired"))
        return False

    # --- one step ----------------------------------------------------------------------------

    def _run(self, step: PlanStep, entry_id: int, context: dict[str, str]) -> bool:
        self._notify(step.incident_id, step.id, "started", step.title)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(entry_id, stop), daemon=True)
        beat.start()
        output: dict[str, Any] = {}
        try:
            action = self.factory(step, context)
            action.precheck()
            output = action.execute(lambda line: self._progress(step, line))
            action.verify()
            ok, detail = True, _summary(output)
        except ActionError as exc:
            ok, detail = False, redact(str(exc))
        except Exception as exc:  # an action bug must not leave the step running forever
            log.exception("step %s crashed", step.id)
            ok, detail = False, redact(f"{type(exc).__name__}: {exc}")
        finally:
            stop.set()
            beat.join()
        return self._record(step, entry_id, ok, detail, output)

    def _record(self, step: PlanStep, entry_id: int, ok: bool, detail: str, output: dict[str, Any]) -> bool:
        with self.store.session() as session:
            safe_output = _redact_output(output) if ok else {"error": detail}
            if not svc.ledger_finish(session, entry_id=entry_id, status="succeeded" if ok else "failed",
                                     output=safe_output, only_if_owner=self.owner):
                log.warning("ledger row %s was taken over; not recording this result", entry_id)
                return False
            current = svc.get_step(session, step.id or 0)
            svc.move_step(session, step=current, to="succeeded" if ok else "failed", detail=detail)
            svc.add_event(session, incident_id=step.incident_id, kind="step", actor="aegis",
                          text=f"step {step.position} {'succeeded' if ok else 'failed'}: {step.title}"
                               + (f" — {detail}" if detail else ""),
                          data={"step_id": step.id, "attempt": step.attempt})
            if ok and step.action == "postgres_promote":
                self._record_rpo(session, step.incident_id, output)
        self._notify(step.incident_id, step.id or 0, "succeeded" if ok else "failed", detail)
        if not ok and step.action == "verify":
            self._fire(step.incident_id, "verification_failed", f"verification failed: {detail}")
        return ok

    def _record_rpo(self, session: Any, incident_id: int, output: dict[str, Any]) -> None:
        lag = output.get("replay_lag_seconds")
        unreplayed = output.get("unreplayed_bytes")
        if output.get("already_promoted"):
            return
        rpo = 0.0 if not unreplayed else float(lag or 0.0)
        svc.set_fields(session, incident_id=incident_id, rpo_seconds=rpo,
                       rpo_basis=f"replication lag at failover ({unreplayed or 0} bytes unreplayed)")

    def _finish_plan(self, session: Any, incident_id: int) -> None:
        try:
            transition = svc.transition(session, incident_id=incident_id, trigger="verify", actor="aegis",
                                        reason="all steps succeeded and verification passed",
                                        values={"verified_at": utcnow()})
        except (StaleVersion, IllegalTransition):
            return
        self._after_commit(session, transition)

    def _fire(self, incident_id: int, trigger: str, reason: str) -> None:
        with self.store.session() as session:
            try:
                transition = svc.transition(session, incident_id=incident_id, trigger=trigger,
                                            actor="aegis", reason=reason)
            except (StaleVersion, IllegalTransition):
                return
            self._after_commit(session, transition)

    def _after_commit(self, session: Any, transition: Transition) -> None:
        _on_commit(session, lambda: self.listener.transitioned(transition))

    def _heartbeat(self, entry_id: int, stop: threading.Event) -> None:
        interval = max(self.lease.total_seconds() / 3, 0.5)
        while not stop.wait(interval):
            try:
                with self.store.session() as session:
                    svc.ledger_renew(session, entry_id=entry_id, owner=self.owner, lease=self.lease)
            except Exception:  # a missed beat is retried; only a lapsed lease matters
                log.warning("lease renewal of ledger row %s failed", entry_id, exc_info=True)

    def _progress(self, step: PlanStep, line: str) -> None:
        self._notify(step.incident_id, step.id or 0, "progress", redact(line)[:300])

    def _notify(self, incident_id: int, step_id: int | None, event: str, detail: str) -> None:
        try:
            self.listener.step_changed(incident_id, step_id or 0, event, detail)
        except Exception:
            log.exception("listener failed for step %s", step_id)

    # --- after a crash -----------------------------------------------------------------------

    def resume_interrupted(self) -> list[int]:
        """Apply the ledger rule to steps whose process died; returns incidents to advance."""
        touched: list[int] = []
        with self.store.session() as session:
            expired = svc.expired_running(session, now=utcnow())
        for entry in expired:
            with self.store.session() as session:
                if not svc.ledger_finish(session, entry_id=entry.id or 0, status="interrupted",
                                         output={"note": "process died while the step ran"}):
                    continue   # another replica took it over first
                step = svc.get_step(session, entry.step_id)
                context = {"incident": f"INC-{entry.incident_id}", "step": str(step.id)}
                done = self._probe(step, context)
                if done:
                    svc.move_step(session, step=step, to="succeeded", from_statuses=("running",),
                                  detail="confirmed done after a restart (is_done)")
                    event, text = "succeeded", "confirmed done after a restart"
                else:
                    action = self.factory(step, context)
                    again = "pending" if not action.destructive else "awaiting_approval"
                    svc.move_step(session, step=step, to=again, from_statuses=("running",),
                                  new_attempt=True,
                                  detail="interrupted by a restart; outcome unknown — not re-run")
                    event = "reapproval" if again == "awaiting_approval" else "requeued"
                    text = "interrupted by a restart; " + (
                        "approve again to run it" if again == "awaiting_approval" else "will run again")
                svc.add_event(session, incident_id=entry.incident_id, kind="step", actor="aegis",
                              text=f"step {step.position} {text}", data={"step_id": step.id, "is_done": done})
            touched.append(entry.incident_id)
            self._notify(entry.incident_id, entry.step_id, event, text)
        return touched

    def _probe(self, step: PlanStep, context: dict[str, str]) -> bool | None:
        try:
            return self.factory(step, context).is_done()
        except Exception:
            log.warning("is_done probe of step %s failed", step.id, exc_info=True)
            return None


def _on_commit(session: Any, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has committed (never for a rollback)."""
    event.listen(session, "after_commit", lambda _s: callback(), once=True)


def _summary(output: dict[str, Any]) -> str:
    if not output:
        return ""
    parts = [f"{k}={v}" for k, v in output.items() if k not in ("stdout_tail",) and v not in (None, "")]
    return redact(", ".join(parts))[:300]


def _redact_output(output: dict[str, Any]) -> dict[str, Any]:
    return {k: redact(v) if isinstance(v, str) else v for k, v in output.items()}
