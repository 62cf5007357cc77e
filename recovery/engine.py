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
- a process never takes over its own running step; when its lease renewals fail for longer than
  the lease (a store outage) it says so in the log and stops renewing, and when the action ends its
  real outcome is recorded anyway. If a sweeper had meanwhile sent the step back for approval, the
  step takes the real outcome (succeeded / failed) instead, so nothing re-runs for nothing.
- a verification passes only on evidence (``[{check, observed, expected, ok}]``, stored on the
  step); with nothing automated to check, the step waits for a responder's manual verification.
  After the last step succeeds the incident becomes ``verified``; a failing verification step
  sends it back to ``assessed``, and so does a step that failed and undid its change
  (``RolledBack``, e.g. an in-place restore that put the saved data back): the plan no longer fits.

The engine claims and runs steps through the ledger and reports through the use cases
(``statemachines.usecases``: start step, finish step, finish plan, verification failed, an
interrupted step); they fire the transitions, write the timeline and the outbox rows, and store
the RPO the engine computed from a promotion's output (``recovery.objectives``). The engine knows
nothing about chat: it pokes an ``EngineListener`` after each commit so the rows are delivered at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session

from recovery import objectives
from recovery.actions.base import Action, ActionError, NeedsHuman, RolledBack, VerificationFailed
from recovery.objectives import rpo_from_promotion
from recovery.redact import redact, redact_data
from statemachines import service as svc
from statemachines import usecases
from statemachines.json_types import JsonObject
from statemachines.models import PlanStep, require_id, utcnow
from statemachines.service import Transition
from statemachines.store import Store
from statemachines.usecases import Recorded, Rpo

__all__ = ["ActionFactory", "Engine", "EngineListener", "Outcome", "rpo_from_promotion"]

log = logging.getLogger("aegis.engine")

ActionFactory = Callable[[PlanStep, dict[str, str]], Action]   # (step, {"incident": key, …})
T = TypeVar("T")
# errors that mean "the store is unreachable right now", worth waiting out
STORE_DOWN = (OperationalError, InterfaceError)
# what an action really did (succeeded, failed, needs_human): the use cases record it
Outcome = usecases.StepOutcome


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
        # ledger rows this process is executing right now: its own sweeper never takes them over
        self._active: set[int] = set()
        self._active_guard = threading.Lock()
        # how long a finished action waits for an unreachable store to record its outcome
        self.record_patience = max(300.0, self.lease.total_seconds() * 10)

    # --- driving ----------------------------------------------------------------------------

    def advance(self, incident_id: int) -> None:
        """Run every step that may run now, in order, until one waits, fails or the plan ends."""
        while True:
            claimed = self._claim_next(incident_id)
            if claimed is None:
                return
            with self._active_guard:
                self._active.add(claimed.entry_id)
            try:
                if not self._run(claimed.step, claimed.entry_id, claimed.context):
                    return
            finally:
                with self._active_guard:
                    self._active.discard(claimed.entry_id)

    def _claim_next(self, incident_id: int) -> usecases.Claimed | None:
        with self.store.session() as session:
            next_step = usecases.start_step(session, incident_id=incident_id, owner=self.owner, lease=self.lease)
            expired, verified = next_step.expired, next_step.verified
            if expired is not None:
                _on_commit(session, lambda: self._notify(expired.incident_id, expired.id, "expired",
                                                         "approval expired"))
            if verified is not None:
                _on_commit(session, lambda: self.listener.transitioned(verified))
            if next_step.aftercare_done is not None:   # an aftercare plan finished: its post is in the outbox
                _on_commit(session, lambda: self._notify(incident_id, None, "aftercare_done", "aftercare done"))
        return next_step.claimed

    # --- one step ----------------------------------------------------------------------------

    def _run(self, step: PlanStep, entry_id: int, context: dict[str, str]) -> bool:
        self._notify(step.incident_id, step.id, "started", step.title)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(entry_id, stop), daemon=True)
        beat.start()
        try:
            outcome = self._execute(step, context)
        finally:
            stop.set()
            beat.join()
        return self._with_store(lambda: self._record(step, entry_id, outcome),
                                what=f"record the outcome of step {step.id}")

    def _execute(self, step: PlanStep, context: dict[str, str]) -> Outcome:
        try:
            action = self.factory(step, context)
            action.precheck()
            output = action.execute(lambda line: self._progress(step, line))
            action.verify()
        except NeedsHuman as exc:
            return Outcome("needs_human", redact(str(exc)), {"manual_verification": redact(str(exc))})
        except VerificationFailed as exc:
            return Outcome("failed", redact(str(exc)), {"error": redact(str(exc))}, _redact_evidence(exc.evidence))
        except RolledBack as exc:
            kept = {"aside": _redact_output({"aside": exc.aside})["aside"]} if exc.aside else {}
            return Outcome("failed", redact(str(exc)), {"error": redact(str(exc)), "rolled_back": True, **kept},
                           _redact_evidence(exc.evidence) or None)
        except ActionError as exc:
            return Outcome("failed", redact(str(exc)), {"error": redact(str(exc))})
        except Exception as exc:  # an action bug must not leave the step running forever
            log.exception("step %s crashed", step.id)
            detail = redact(f"{type(exc).__name__}: {exc}")
            return Outcome("failed", detail, {"error": detail})
        safe = _redact_output(output)
        found = safe.get("evidence")
        return Outcome("succeeded", _summary(safe), safe, list(found) if isinstance(found, list) else None)

    def _with_store(self, work: Callable[[], T], *, what: str) -> T:
        """Run ``work`` (one transaction), waiting out a store outage for ``record_patience`` seconds."""
        deadline = time.monotonic() + self.record_patience
        pause = min(max(self.lease.total_seconds() / 3, 0.2), 2.0)
        failures = 0
        while True:
            try:
                result = work()
            except STORE_DOWN as exc:
                failures += 1
                if time.monotonic() > deadline:
                    log.error("could not %s: the store stayed unreachable (%s)", what, _one_line(exc))
                    raise
                if failures == 1:
                    log.warning("could not %s: store unreachable (%s); retrying", what, _one_line(exc))
                time.sleep(pause)
                continue
            if failures:
                log.info("%s: done after the store came back (%d failed tries)", what, failures)
            return result

    def _record(self, step: PlanStep, entry_id: int, outcome: Outcome) -> bool:
        """Report the outcome (usecases.finish_step), then tell the listener and react to it."""
        with self.store.session() as session:
            recorded = usecases.finish_step(session, step=step, entry_id=entry_id, owner=self.owner,
                                            outcome=outcome, rpo=_rpo_of(session, step, outcome))
        if recorded is Recorded.NOT_RECORDED:
            return False
        self._after_outcome(step, outcome)
        return outcome.status == "succeeded"

    def _after_outcome(self, step: PlanStep, outcome: Outcome) -> None:
        self._notify(step.incident_id, require_id(step), usecases.event_name(outcome), outcome.detail)
        rolled_back = outcome.status == "failed" and outcome.output.get("rolled_back") is True
        if (outcome.status == "failed" and step.action == "verify") or rolled_back:
            reason = f"{step.title}: {outcome.detail}" if rolled_back else f"verification failed: {outcome.detail}"
            with self.store.session() as session:
                transition = usecases.verification_failed(session, incident_id=step.incident_id, reason=reason)
                if transition is not None:
                    _on_commit(session, lambda: self.listener.transitioned(transition))

    def _heartbeat(self, entry_id: int, stop: threading.Event) -> None:
        """Renew the lease every lease/3; notice and log when renewals fail or the lease is lost.

        Once renewals have failed for longer than the lease, another replica may already have taken
        the step over, so this process stops renewing (a late renewal would race that takeover); the
        action goes on and its outcome is reconciled when it is recorded (usecases.finish_step).
        """
        lease = self.lease.total_seconds()
        interval = max(lease / 3, 0.2)
        held_until = time.monotonic() + lease
        failures = 0
        while not stop.wait(interval):
            asked_at = time.monotonic()
            try:
                with self.store.session() as session:
                    renewed = svc.ledger_renew(session, entry_id=entry_id, owner=self.owner, lease=self.lease)
            except Exception as exc:
                failures += 1
                log.warning("lease renewal of ledger row %s failed (%d in a row): %s", entry_id, failures,
                            _one_line(exc))
                if time.monotonic() > held_until:
                    log.error("lease of ledger row %s lapsed while the store was unreachable: another replica "
                              "may take the step over; its outcome will be recorded when it ends", entry_id)
                    return
                continue
            if not renewed:
                log.error("lease of ledger row %s was lost: a sweeper took the step over; its outcome will be "
                          "reconciled when it ends", entry_id)
                return
            if failures:
                log.info("lease renewal of ledger row %s works again after %d failures", entry_id, failures)
                failures = 0
            held_until = asked_at + lease

    def _progress(self, step: PlanStep, line: str) -> None:
        self._notify(step.incident_id, require_id(step), "progress", redact(line)[:300])

    def _notify(self, incident_id: int, step_id: int | None, event: str, detail: str) -> None:
        try:
            self.listener.step_changed(incident_id, step_id or 0, event, detail)
        except Exception:
            log.exception("listener failed for step %s", step_id)

    # --- after a crash -----------------------------------------------------------------------

    def running_here(self, entry_id: int) -> bool:
        with self._active_guard:
            return entry_id in self._active

    def resume_interrupted(self) -> list[int]:
        """Apply the ledger rule to steps whose process died; returns incidents to advance."""
        touched: list[int] = []
        now = utcnow()
        with self.store.session() as session:
            expired = svc.expired_running(session, now=now)
        for entry in expired:
            if entry.owner == self.owner and self.running_here(require_id(entry)):
                # our own step, still executing: its lease lapsed because the store was away, not
                # because we died; the outcome will be recorded when the action ends
                log.warning("ledger row %s: lease lapsed but this process is still running it; not taken over",
                            entry.id)
                continue
            with self.store.session() as session:
                if not svc.ledger_interrupt(session, entry_id=require_id(entry), now=now,
                                            note="lease lapsed: its process died or lost the store"):
                    continue   # renewed meanwhile, or another replica took it over first
                step = svc.get_step(session, entry.step_id)
                context = {"incident": f"INC-{entry.incident_id}", "step": str(step.id)}
                done = self._probe(step, context)
                # a promotion or restore confirmed done by its probe: what it recovered was never recorded
                lost = objectives.lost_rpo(step.action) if done else None
                rpo = Rpo(None, lost.text, lost.as_data()) if lost else None
                destructive = not done and self.factory(step, context).destructive
                interrupted = usecases.record_interruption(session, entry=entry, step=step, done=done,
                                                           destructive=destructive, rpo=rpo)
            touched.append(entry.incident_id)
            self._notify(entry.incident_id, entry.step_id, interrupted.event, interrupted.text)
        return touched

    def _probe(self, step: PlanStep, context: dict[str, str]) -> bool | None:
        try:
            return self.factory(step, context).is_done()
        except Exception:
            log.warning("is_done probe of step %s failed", step.id, exc_info=True)
            return None


def _rpo_of(session: Session, step: PlanStep, outcome: Outcome) -> Rpo | None:
    """The RPO a succeeded promotion or PostgreSQL restore measured (recovery/objectives.py), naming
    the step; other steps measure none. A restore's is the incident's failure time minus its
    ``recovered_to``."""
    if outcome.status != "succeeded":
        return None
    if step.action in objectives.PROMOTION_ACTIONS:
        seconds, basis = rpo_from_promotion(outcome.output)
    elif step.action in objectives.RESTORE_ACTIONS:
        incident = svc.get(session, step.incident_id)
        seconds, basis = objectives.rpo_from_restore(outcome.output, failure_at=incident.failure_at,
                                                     declared_at=incident.declared_at)
    else:
        return None
    named = objectives.measured_by(basis, step.position, step.title)
    return Rpo(seconds, named.text, named.as_data())


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)[:200]


def _redact_evidence(items: list[JsonObject]) -> list[JsonObject]:
    return [{k: redact(v) if isinstance(v, str) else v for k, v in item.items()} for item in items]


def _on_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has committed (never for a rollback)."""
    event.listen(session, "after_commit", lambda _s: callback(), once=True)


def _summary(output: JsonObject) -> str:
    if not output:
        return ""
    if isinstance(output.get("evidence"), list):
        return redact("; ".join(f"{e.get('check')}: {e.get('observed')}" for e in output["evidence"]))[:300]
    parts = [f"{k}={v}" for k, v in output.items() if k not in ("stdout_tail",) and v not in (None, "")]
    return redact(", ".join(parts))[:300]


def _redact_output(output: JsonObject) -> JsonObject:
    # every string, also nested ones (a verification's list of checks), goes to the ledger redacted
    return dict(redact_data(output))
