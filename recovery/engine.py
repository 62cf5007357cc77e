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
  sends it back to ``assessed``.

The engine knows nothing about chat: each of its transactions writes what must be told as outbox
rows (``svc.tell_step``; transitions write theirs), and it pokes an ``EngineListener`` after the
commit so that the rows are delivered at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import InterfaceError, OperationalError

from recovery.actions.base import Action, ActionError, NeedsHuman, VerificationFailed
from recovery.redact import redact, redact_data
from statemachines import policy
from statemachines import service as svc
from statemachines.machine import IllegalTransition
from statemachines.models import PlanStep, require_id, utcnow
from statemachines.service import StaleVersion, Transition
from statemachines.store import Store

log = logging.getLogger("aegis.engine")

ActionFactory = Callable[[PlanStep, dict[str, str]], Action]   # (step, {"incident": key, …})
T = TypeVar("T")
# errors that mean "the store is unreachable right now", worth waiting out
STORE_DOWN = (OperationalError, InterfaceError)


@dataclass
class Outcome:
    """What an action really did: ``succeeded``, ``failed`` or ``needs_human``."""

    status: str
    detail: str
    output: dict[str, Any] = field(default_factory=dict)
    evidence: list[dict[str, Any]] | None = None


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
            step, entry_id, context = claimed
            with self._active_guard:
                self._active.add(entry_id)
            try:
                if not self._run(step, entry_id, context):
                    return
            finally:
                with self._active_guard:
                    self._active.discard(entry_id)

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
                    svc.tell_step(session, incident_id=incident_id, step_id=require_id(step), event="started")
                    context = {"incident": incident.key or str(incident.id), "step": str(step.id),
                               "scenario": incident.scenario}
                    return step, require_id(entry), context
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
                          text=f"approval of step {step.position} expired",
                          data={"step_id": step.id, "code": "approval_expired", "position": step.position})
            svc.tell_step(session, incident_id=step.incident_id, step_id=require_id(step), event="expired")
            _on_commit(session, lambda: self._notify(step.incident_id, step.id, "expired", "approval expired"))
        return False

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

    _STEP_STATUS = {"succeeded": "succeeded", "failed": "failed", "needs_human": "awaiting_verification"}

    def _record(self, step: PlanStep, entry_id: int, outcome: Outcome) -> bool:
        with self.store.session() as session:
            if not svc.ledger_finish(session, entry_id=entry_id, status=outcome.status, output=outcome.output,
                                     only_if_owner=self.owner):
                return self._reconcile(session, step, entry_id, outcome)
            current = svc.get_step(session, require_id(step))
            svc.move_step(session, step=current, to=self._STEP_STATUS[outcome.status], detail=outcome.detail,
                          evidence=outcome.evidence)
            svc.add_event(session, incident_id=step.incident_id, kind="step", actor="aegis",
                          text=_step_text(step, outcome),
                          data={"step_id": step.id, "attempt": step.attempt, "outcome": outcome.status,
                                "evidence": outcome.evidence or [], **_event_code(step, outcome)})
            svc.tell_step(session, incident_id=step.incident_id, step_id=require_id(step), event=_event_name(outcome))
            if outcome.status == "succeeded" and step.action == "postgres_promote":
                self._record_rpo(session, step.incident_id, outcome.output)
        self._after_outcome(step, outcome)
        return outcome.status == "succeeded"

    def _after_outcome(self, step: PlanStep, outcome: Outcome) -> None:
        self._notify(step.incident_id, require_id(step), _event_name(outcome), outcome.detail)
        if outcome.status == "failed" and step.action == "verify":
            self._fire(step.incident_id, "verification_failed", f"verification failed: {outcome.detail}")

    def _reconcile(self, session: Any, step: PlanStep, entry_id: int, outcome: Outcome) -> bool:
        """A sweeper took the step over while it still ran here: record what really happened.

        The sweeper had to decide without knowing the outcome; now it is known. The ledger row gets
        the real outcome, and a step the sweeper sent back (for approval, or to run again) takes it
        too — unless someone already acted on the new attempt, whose decision then stands.
        """
        entry = svc.get_ledger(session, entry_id)
        if not svc.ledger_finish_late(session, entry_id=entry_id, owner=self.owner, status=outcome.status,
                                      output=outcome.output):
            log.warning("ledger row %s is %s and no longer ours; not recording this result", entry_id,
                        entry.status)
            return False
        current = svc.get_step(session, require_id(step))
        untouched = (current.attempt == entry.attempt + 1 and current.status in ("awaiting_approval", "pending")
                     and not svc.approvals(session, current))
        log.warning("ledger row %s finished (%s) after a sweeper took it over; step %s is %s", entry_id,
                    outcome.status, step.id, current.status)
        if not untouched:
            svc.add_event(session, incident_id=step.incident_id, kind="step", actor="aegis",
                          text=f"step {step.position} attempt {entry.attempt} finished late ({outcome.status}) "
                               f"after its lease lapsed; the step had moved on ({current.status})",
                          data={"step_id": step.id, "attempt": entry.attempt, "outcome": outcome.status,
                                "late": True})
            return False
        detail = f"finished after its lease lapsed: {outcome.detail}".rstrip(": ")
        svc.move_step(session, step=current, to=self._STEP_STATUS[outcome.status], detail=detail,
                      evidence=outcome.evidence, from_statuses=("awaiting_approval", "pending"))
        svc.add_event(session, incident_id=step.incident_id, kind="step", actor="aegis",
                      text=_step_text(step, outcome) + " (recorded after its lease lapsed; not re-run)",
                      data={"step_id": step.id, "attempt": entry.attempt, "outcome": outcome.status,
                            "late": True, "evidence": outcome.evidence or []})
        svc.tell_step(session, incident_id=step.incident_id, step_id=require_id(step), event=_event_name(outcome))
        if outcome.status == "succeeded" and step.action == "postgres_promote":
            self._record_rpo(session, step.incident_id, outcome.output)
        _on_commit(session, lambda: self._after_outcome(step, outcome))
        return outcome.status == "succeeded"

    def _record_rpo(self, session: Any, incident_id: int, output: dict[str, Any]) -> None:
        rpo, basis = rpo_from_promotion(output)
        svc.set_fields(session, incident_id=incident_id, rpo_seconds=rpo, rpo_basis=basis)

    def _finish_plan(self, session: Any, incident_id: int) -> None:
        steps = svc.current_steps(session, incident_id)
        checks = [item for s in steps if s.action == "verify" for item in (s.evidence or [])]
        if any(s.action == "verify" and not s.evidence for s in steps):
            log.error("incident %s: a verification step succeeded without evidence; not verified", incident_id)
            return
        reason = (f"all steps succeeded; verified on {len(checks)} check(s)" if checks
                  else "all steps succeeded (no verification step in this plan)")
        try:
            transition = svc.transition(session, incident_id=incident_id, trigger="verify", actor="aegis",
                                        reason=reason, values={"verified_at": utcnow()})
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
        """Renew the lease every lease/3; notice and log when renewals fail or the lease is lost.

        Once renewals have failed for longer than the lease, another replica may already have taken
        the step over, so this process stops renewing (a late renewal would race that takeover); the
        action goes on and its outcome is reconciled in ``_record``.
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
                if done:
                    svc.move_step(session, step=step, to="succeeded", from_statuses=("running",),
                                  detail="confirmed done after a restart (is_done)")
                    event, text = "succeeded", "confirmed done after a restart"
                    if step.action == "postgres_promote":
                        svc.set_fields(session, incident_id=entry.incident_id, rpo_seconds=None,
                                       rpo_basis="unknown: the process running the promotion died, so the "
                                                 "replication lag at failover was not recorded")
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
                              text=f"step {step.position} {text}",
                              data={"step_id": step.id, "is_done": done, "code": "step_interrupted",
                                    "position": step.position, "done": bool(done),
                                    "again": event == "reapproval"})
                svc.tell_step(session, incident_id=entry.incident_id, step_id=require_id(step), event=event)
            touched.append(entry.incident_id)
            self._notify(entry.incident_id, entry.step_id, event, text)
        return touched

    def _probe(self, step: PlanStep, context: dict[str, str]) -> bool | None:
        try:
            return self.factory(step, context).is_done()
        except Exception:
            log.warning("is_done probe of step %s failed", step.id, exc_info=True)
            return None


def rpo_from_promotion(output: dict[str, Any]) -> tuple[float | None, str]:
    """RPO of a promotion from what the standby reported just before it: seconds, or None + why.

    Unknown stays unknown (None with the reason); it is never reported as 0.
    """
    if output.get("already_promoted"):
        return None, ("unknown: the standby was already a primary when the promotion step ran, so its "
                      "replication lag at failover was not observed")
    unreplayed = output.get("unreplayed_bytes")
    lag = output.get("replay_lag_seconds")
    if unreplayed is None:
        return None, "unknown: the standby's received WAL position was not known at failover"
    if int(unreplayed) == 0:
        return 0.0, "replication lag at failover (all WAL the standby had received was replayed)"
    if lag is None:
        return None, f"unknown: {unreplayed} bytes were unreplayed at failover and no replay time was known"
    return float(lag), f"replication lag at failover ({unreplayed} bytes unreplayed)"


def _event_name(outcome: Outcome) -> str:
    """The step event an outcome is reported as (the listener's and the outbox's vocabulary)."""
    return "manual_verification" if outcome.status == "needs_human" else outcome.status


def _step_text(step: PlanStep, outcome: Outcome) -> str:
    verb = {"succeeded": "succeeded", "failed": "failed", "needs_human": "waits for a manual verification"}
    return f"step {step.position} {verb[outcome.status]}: {step.title}" + (
        f" — {outcome.detail}" if outcome.detail else "")


def _event_code(step: PlanStep, outcome: Outcome) -> dict[str, Any]:
    """The timeline event's code and parameters, which the message layer words per locale."""
    params: dict[str, Any] = {"code": f"step_{outcome.status}", "position": step.position, "title": step.title}
    if outcome.status == "failed":
        params["detail"] = outcome.detail   # the error; a success's raw output flags stay out of it
    return params


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)[:200]


def _redact_evidence(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: redact(v) if isinstance(v, str) else v for k, v in item.items()} for item in items]


def _on_commit(session: Any, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has committed (never for a rollback)."""
    event.listen(session, "after_commit", lambda _s: callback(), once=True)


def _summary(output: dict[str, Any]) -> str:
    if not output:
        return ""
    if isinstance(output.get("evidence"), list):
        return redact("; ".join(f"{e.get('check')}: {e.get('observed')}" for e in output["evidence"]))[:300]
    parts = [f"{k}={v}" for k, v in output.items() if k not in ("stdout_tail",) and v not in (None, "")]
    return redact(", ".join(parts))[:300]


def _redact_output(output: dict[str, Any]) -> dict[str, Any]:
    # every string, also nested ones (a verification's list of checks), goes to the ledger redacted
    return dict(redact_data(output))
