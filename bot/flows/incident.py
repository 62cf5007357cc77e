"""Incident flows: what each user action does, and what follows each committed change.

Each flow is: authorise (``statemachines.policy``) → one transaction in the store, which also
writes the outbox rows of what must be told (``svc.tell``; transitions write theirs themselves) →
after commit, the outbox dispatcher is woken (bot/slack/outbox.py delivers to Slack) and the follow-up
work (assessment, the engine) is handed to a worker. No flow calls the Slack Web API: a request
thread can run a decision to its commit before it acks (bot/slack/app.py), and a crash or a Slack outage
delays a message but never loses it. Every follow-up is also found again from durable state by
``sweep`` (at start and periodically): an ``assembled`` incident is assessed, an ``assessed`` one
whose plan was rejected or failed is re-assessed, a ``recovering`` one is advanced.
Refusals and user mistakes raise ``Refused`` with a message key; the Slack layer turns it into an
ephemeral reply.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from sqlmodel import Session

from bot import wiring
from bot.bounded import BoundedPool, queue_limit
from bot.config import Config
from bot.presenters import incident_view, objective_report
from bot.slack.gateway import SlackCallFailed, SlackGateway
from bot.slack.outbox import Dispatcher
from messages import render
from messages.blocks import incident as incident_blocks
from messages.blocks import kit as block_kit
from messages.blocks import modals as modal_blocks
from messages.views import IncidentView, Message, ObjectiveReport
from recovery import planner
from recovery.engine import Engine
from recovery.health import run_checks
from recovery.redact import redact
from statemachines import policy
from statemachines import service as svc
from statemachines.machine import IllegalTransition
from statemachines.models import Incident, PlanStep, require_id, utcnow
from statemachines.service import StaleVersion, Transition
from statemachines.store import Store
from statemachines.vocabulary import COMMANDER, ROLES

log = logging.getLogger("aegis.flows")
T = TypeVar("T")
# test hook: seconds a follow-up (assessment, engine) waits before it starts, so a crash can land
# between a decision's commit and its follow-up
FOLLOW_UP_DELAY_ENV = "AEGIS_TEST_FOLLOW_UP_DELAY"


class Refused(Exception):
    """A user action that is not allowed or not possible now; ``reason`` is a refusal key."""

    def __init__(self, reason: str, **ctx: Any) -> None:   # template context (Jinja), one link_of pair
        super().__init__(reason)
        self.reason = reason
        self.ctx = ctx


class Flows:
    def __init__(self, config: Config, store: Store, gateway: SlackGateway, *, owner: str,
                 workers: int = 8) -> None:
        self.config = config
        self.store = store
        self.gateway = gateway
        self.locale = config.locale
        # internal follow-up work: bounded, never dropped (waits, then runs in the caller; bot/bounded.py)
        self.pool = BoundedPool(workers, queue_limit(1000), thread_name_prefix="aegis-work")
        self._progress_guard = threading.Lock()
        self._last_plan_refresh: dict[int, float] = {}
        self.on_reminder_schedule: Callable[[int], None] = lambda _id: None
        self.on_reminder_cancel: Callable[[int], None] = lambda _id: None
        # its own gateway: few in-call retries, since the outbox retries a failed row with back-off
        self.outbox = Dispatcher(
            config, store, SlackGateway(gateway.token, gateway.base_url, attempts=2, backoff_seconds=0.2),
            owner=owner, on_room_opened=lambda incident_id: self.on_reminder_schedule(incident_id),
            lease_seconds=max(3 * config.engine.lease_seconds, 10.0))
        self.engine = Engine(
            store, lambda step, ctx: wiring.build_action(config, step, ctx), self, owner=owner,
            lease=timedelta(seconds=config.engine.lease_seconds),
        )
        self.follow_up_delay = float(os.environ.get(FOLLOW_UP_DELAY_ENV) or 0)
        # an approval is valid this long; the engine asks again for one that expired unused
        self.approval_ttl = timedelta(minutes=config.engine.approval_expiry_minutes)
        # every displayed time in the team's zone (config ``timezone``, default UTC)
        render.set_timezone(getattr(config, "timezone", "UTC"))

    # --- helpers -----------------------------------------------------------------------------

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn`` on a worker; an exception is logged, never lost silently."""
        def run() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("background work %s failed", getattr(fn, "__name__", fn))
        self.pool.submit(run)

    def committed(self, transition: Transition | None = None) -> None:
        """After a commit: wake the outbox, and start what a transition asks for next."""
        self.outbox.wake()
        if transition is not None:
            self._follow_up(transition)

    def _follow_up(self, transition: Transition) -> None:
        incident_id = transition.incident_id
        if transition.dest == "assembled":
            self.submit(self.assess, incident_id)
        elif transition.dest == "assessed" and transition.trigger in ("abort_recovery", "verification_failed"):
            self.submit(lambda: self.assess(incident_id, after_version=transition.version))
        elif transition.dest == "closed":
            self.on_reminder_cancel(incident_id)

    def _slack(self, incident_id: int | None, what: str, call: Callable[[], T]) -> T | None:
        """Make a Slack call (reminders only); on failure record it on the timeline instead of losing it."""
        try:
            return call()
        except SlackCallFailed as exc:
            log.error("slack call for %s failed: %s", what, exc)
            if incident_id is not None:
                with self.store.session() as session:
                    svc.add_event(session, incident_id=incident_id, kind="slack_error", actor="aegis",
                                  text=f"could not {what}: {exc.error}",
                                  data={"code": "slack_error", "error": exc.error})
            return None

    def view(self, session: Session, incident: Incident, *, timeline: bool = False) -> IncidentView:
        return incident_view(session, incident, self.config, with_timeline=timeline)

    def _incident_for_step(self, session: Session, step_id: int) -> tuple[Incident, PlanStep]:
        try:
            step = svc.get_step(session, step_id)
        except svc.NotFound:
            raise Refused("unknown_step") from None
        # the incident lock serialises decisions on one plan; re-read the step once we hold it
        incident = svc.lock(session, step.incident_id)
        return incident, svc.get_step(session, step_id)

    # --- declare -----------------------------------------------------------------------------

    def declare(self, *, user_id: str, scenario: str, severity: str, summary: str) -> Incident:
        with self.store.session() as session:
            incident = svc.declare(session, scenario=scenario, severity=severity, summary=summary,
                                   declared_by=user_id, locale=self.locale,
                                   stakeholder_channel=self.config.slack.stakeholder_channel)
            # the room: channel, invites, reminders (R1, P1), then the card and the stakeholder thread
            for kind in ("open_room", "card", "stakeholder_root"):
                svc.tell(session, incident_id=require_id(incident), kind=kind, version=incident.version)
        self.committed()
        return incident

    # --- roles -------------------------------------------------------------------------------

    def claim_role(self, *, user_id: str, incident_id: int, role: str) -> None:
        if role not in ROLES:
            raise Refused("not_on_roster", role=role)
        transition = None
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            if incident.state == "closed":
                raise Refused("wrong_state", action="claim", state=incident.state)
            decision = policy.may_claim(role, user_id, roster=self.config.roster, declared_by=incident.declared_by)
            if not decision.allowed:
                svc.add_event(session, incident_id=incident_id, kind="audit", actor=user_id,
                              text=f"refused: claim {role} (not on the roster)")
                session.commit()
                raise Refused("not_on_roster", role=role)
            try:
                svc.assign_role(session, incident_id=incident_id, role=role, user_id=user_id)
            except svc.RoleTaken as exc:
                raise Refused("role_taken", role=role, holder=exc.holder) from None
            svc.tell(session, incident_id=incident_id, kind="card")
            if role == COMMANDER and incident.state == "detected":
                transition = svc.transition(session, incident_id=incident_id, trigger="assemble", actor=user_id,
                                            reason="incident commander took command")
        self.committed(transition)

    # --- assessment --------------------------------------------------------------------------

    def assess(self, incident_id: int, *, after_version: int | None = None) -> None:
        """Health checks → classification → plan → ``assessed`` (C1). Read-only; safe to repeat.

        Without ``after_version`` this is the first assessment (state ``assembled``). With it, it is a
        re-assessment of an ``assessed`` incident, done only if nothing changed the incident since
        the abort/reject that asked for it — so a sweep or a second replica never re-plans twice.
        """
        self._wait_follow_up()
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
        if after_version is None and incident.state != "assembled":
            return
        if after_version is not None and (incident.state != "assessed" or incident.version != after_version):
            return
        results = run_checks(wiring.component_specs(self.config) + wiring.service_specs(self.config))
        plan = planner.propose(wiring.facts(self.config, incident.scenario, results))
        checks = [{"name": r.name, "kind": r.kind, "ok": r.ok, "detail": redact(r.detail)} for r in results]
        trigger = "assess" if incident.state == "assembled" else "reassess"
        try:
            with self.store.session() as session:
                transition = svc.transition(session, incident_id=incident_id, trigger=trigger, actor="aegis",
                                            reason=f"{plan.strategy}: {plan.rationale}",
                                            expected_version=incident.version, values={"checks": checks})
                svc.replace_plan(session, incident_id=incident_id, strategy=plan.strategy, specs=plan.steps)
                # the assessment, then the new plan as a message of its own (the old one is retired)
                svc.tell(session, incident_id=incident_id, kind="assessment", version=transition.version)
                svc.tell(session, incident_id=incident_id, kind="plan_new", version=transition.version)
        except (StaleVersion, IllegalTransition):
            return   # someone else assessed first
        self.committed(transition)

    def advance(self, incident_id: int) -> None:
        """Run the steps that may run now (the engine); the follow-up of approvals, retries, verifications."""
        self._wait_follow_up()
        self.engine.advance(incident_id)

    def _wait_follow_up(self) -> None:
        if self.follow_up_delay:
            time.sleep(self.follow_up_delay)

    def explain(self, exc: Refused) -> Message:
        """The refusal's reply. A button of a replaced plan gets a link to the current plan: Slack is
        asked for it here (after the ack, on the interaction pool), never inside a decision."""
        ctx = dict(exc.ctx)
        link_of = ctx.pop("link_of", None)
        if link_of is not None:
            ctx["link"] = self.outbox.permalink(*link_of)
        return block_kit.refusal(exc.reason, self.locale, **ctx)

    def _refuse_if_replaced(self, session: Session, incident: Incident, step: PlanStep) -> None:
        """A button of an older plan revision: say which revision to use instead (with a link, later)."""
        if step.revision != incident.plan_revision:
            raise Refused("plan_replaced", revision=incident.plan_revision,
                          link_of=(incident.channel_id, incident.plan_ts))

    # --- approvals ---------------------------------------------------------------------------

    def _authorise_step(self, session: Session, incident: Incident, step: PlanStep, user_id: str,
                        verb: str) -> policy.Decision:
        holders = svc.roles(session, require_id(incident))
        decision = policy.may_approve(list(step.approver_roles or []), user_id,
                                      roster=self.config.roster, holders=holders)
        if not decision.allowed:
            svc.add_event(session, incident_id=require_id(incident), kind="audit", actor=user_id,
                          text=f"refused: {verb} step {step.position} ({step.title}) — not an approver",
                          data={"step_id": step.id})
            session.commit()
            raise Refused("not_allowed_to_approve", step_title=step.title,
                          roles=sorted(set(step.approver_roles or []) | {COMMANDER}))
        return decision

    def approve(self, *, user_id: str, step_id: int) -> None:
        transition = None
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
            self._refuse_if_replaced(session, incident, step)
            if incident.state not in ("assessed", "recovering"):
                raise Refused("wrong_state", action="approve", state=incident.state)
            decision = self._authorise_step(session, incident, step, user_id, "approve")
            rejected = _rejected_step(session, incident)
            if rejected is not None:
                raise Refused("plan_rejected", step_title=step.title, rejected_position=rejected.position)
            if step.status != "awaiting_approval":
                if any(a.user_id == user_id for a in svc.approvals(session, step)):
                    raise Refused("already_approved", step_title=step.title)
                raise Refused("step_not_awaiting", step_title=step.title, status=step.status)
            if not svc.record_vote(session, step=step, user_id=user_id, decision="approve",
                                   roles_used=list(decision.roles), expires_in=self.approval_ttl):
                raise Refused("already_approved", step_title=step.title)
            svc.add_event(session, incident_id=require_id(incident), kind="approval", actor=user_id,
                          text=f"approved step {step.position}: {step.title}",
                          data={"step_id": step.id, **_step_event("step_approved", step)})
            votes = [(a.user_id, tuple(a.roles)) for a in svc.approvals(session, step) if a.decision == "approve"]
            satisfied = policy.approvals_satisfied(votes, step.approvals_required)
            if satisfied and not svc.move_step(session, step=step, to="approved",
                                               from_statuses=("awaiting_approval",)):
                raise Refused("already_approved", step_title=step.title)
            svc.tell(session, incident_id=require_id(incident), kind="plan")
            if incident.state == "assessed":
                transition = svc.transition(session, incident_id=require_id(incident), trigger="start_recovery",
                                            actor=user_id, reason=f"approved: {step.title}",
                                            expected_version=incident.version)
        self.committed(transition)
        if not satisfied:
            # the vote is recorded; a two-person step waits for its second approver
            raise Refused("second_approver_required", step_title=step.title)
        self.submit(self.advance, require_id(incident))

    def reject_modal(self, *, user_id: str, step_id: int) -> dict[str, Any]:
        """The reason form that Reject opens; refused (nothing opens) when the click could not reject."""
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
            self._refuse_if_replaced(session, incident, step)
            if incident.state not in ("assessed", "recovering"):
                raise Refused("wrong_state", action="reject", state=incident.state)
            self._authorise_step(session, incident, step, user_id, "reject")
            if step.status not in ("awaiting_approval", "failed"):
                raise Refused("step_not_awaiting", step_title=step.title, status=step.status)
            view = self.view(session, incident)
        step_view = next(s for s in view.steps if s.id == step_id)
        return modal_blocks.reject_modal(view, step_view, self.locale)

    def reject(self, *, user_id: str, step_id: int, reason: str = "") -> None:
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
            self._refuse_if_replaced(session, incident, step)
            if incident.state not in ("assessed", "recovering"):
                raise Refused("wrong_state", action="reject", state=incident.state)
            self._authorise_step(session, incident, step, user_id, "reject")
            running = _running_step(session, incident)
            if running is not None:
                raise Refused("step_running", running_title=running.title)
            if not svc.move_step(session, step=step, to="rejected", from_statuses=("awaiting_approval", "failed")):
                raise Refused("step_not_awaiting", step_title=step.title, status=step.status)
            svc.record_vote(session, step=step, user_id=user_id, decision="reject", roles_used=[], expires_in=None)
            svc.add_event(session, incident_id=require_id(incident), kind="approval", actor=user_id,
                          text=f"rejected step {step.position}: {step.title}" + (f" — {reason}" if reason else ""),
                          data={"step_id": step.id, **_step_event("step_rejected", step), "reason": reason})
            svc.tell(session, incident_id=require_id(incident), kind="plan")
            svc.tell(session, incident_id=require_id(incident), kind="rejection", step_id=step_id, user=user_id,
                     reason=reason)
            transition = self._back_to_assessed(session, incident, user_id, f"rejected: {step.title}")
        self.committed(transition)
        if transition is None:
            version = incident.version    # reject in ``assessed``: re-plan unless someone else moved first
            self.submit(lambda: self.assess(require_id(incident), after_version=version))

    def retry(self, *, user_id: str, step_id: int) -> None:
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
            self._refuse_if_replaced(session, incident, step)
            if incident.state != "recovering":
                raise Refused("wrong_state", action="retry", state=incident.state)
            decision = self._authorise_step(session, incident, step, user_id, "retry")
            if step.status != "failed":
                raise Refused("step_not_awaiting", step_title=step.title, status=step.status)
            needs_more = step.approvals_required > 1
            target = "awaiting_approval" if needs_more else ("approved" if step.approvals_required else "pending")
            if not svc.move_step(session, step=step, to=target, from_statuses=("failed",), new_attempt=True,
                                 detail=""):
                raise Refused("step_not_awaiting", step_title=step.title, status=step.status)
            step = svc.get_step(session, step_id)
            if step.approvals_required:
                svc.record_vote(session, step=step, user_id=user_id, decision="approve",
                                roles_used=list(decision.roles), expires_in=self.approval_ttl)
            svc.add_event(session, incident_id=require_id(incident), kind="approval", actor=user_id,
                          text=f"retry of step {step.position}: {step.title} (attempt {step.attempt})",
                          data={"step_id": step.id, **_step_event("step_retried", step), "attempt": step.attempt})
            svc.tell(session, incident_id=require_id(incident), kind="plan")
        self.committed()
        self.submit(self.advance, require_id(incident))

    def abort(self, *, user_id: str, step_id: int) -> None:
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
            self._refuse_if_replaced(session, incident, step)
            if incident.state != "recovering":
                raise Refused("wrong_state", action="abort", state=incident.state)
            self._authorise_step(session, incident, step, user_id, "abort")
            # only the failed step the plan is stuck on: an old Abort button of a step that was
            # retried and succeeded must not drop the incident to assessed while a later step runs
            current = _current_step(session, incident)
            if step.status != "failed" or current is None or current.id != step.id:
                raise Refused("abort_not_current", step_title=step.title, status=step.status)
            svc.add_event(session, incident_id=require_id(incident), kind="approval", actor=user_id,
                          text=f"aborted the recovery at step {step.position}: {step.title}",
                          data={"step_id": step.id, **_step_event("recovery_aborted", step)})
            svc.tell(session, incident_id=require_id(incident), kind="plan")
            transition = self._back_to_assessed(session, incident, user_id, f"aborted at: {step.title}")
        self.committed(transition)

    def _back_to_assessed(self, session: Session, incident: Incident, user_id: str,
                          reason: str) -> Transition | None:
        if incident.state != "recovering":
            return None
        return svc.transition(session, incident_id=require_id(incident), trigger="abort_recovery", actor=user_id,
                              reason=reason, expected_version=incident.version)

    # --- manual verification -----------------------------------------------------------------

    def _verification_roles(self, session: Session, step: PlanStep) -> list[str]:
        plan_roles = [r for s in svc.current_steps(session, step.incident_id) for r in s.approver_roles or []]
        return policy.verification_roles(list(step.approver_roles or []), plan_roles)

    def _authorise_verification(self, session: Session, incident: Incident, step: PlanStep,
                                user_id: str) -> policy.Decision:
        roles = self._verification_roles(session, step)
        decision = policy.may_approve(roles, user_id, roster=self.config.roster,
                                      holders=svc.roles(session, require_id(incident)))
        if not decision.allowed:
            svc.add_event(session, incident_id=require_id(incident), kind="audit", actor=user_id,
                          text=f"refused: verify step {step.position} ({step.title}) — not authorised",
                          data={"step_id": step.id})
            session.commit()
            raise Refused("not_allowed_to_verify", step_title=step.title, roles=roles)
        if step.status != "awaiting_verification" or incident.state != "recovering":
            raise Refused("not_awaiting_verification", step_title=step.title, status=step.status)
        return decision

    def verify_modal(self, *, user_id: str, step_id: int) -> dict[str, Any]:
        """The evidence form for a step waiting for manual verification (authorised users only)."""
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
            self._authorise_verification(session, incident, step, user_id)
            view = self.view(session, incident)
        step_view = next(s for s in view.steps if s.id == step_id)
        return modal_blocks.verify_modal(view, step_view, self.locale)

    def verify_manually(self, *, user_id: str, step_id: int, evidence: str) -> None:
        """Record "verified manually by @user: <evidence>"; the engine then marks the incident verified."""
        statement = redact(evidence.strip())[:2000]
        if not statement:
            raise Refused("evidence_required")
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
            decision = self._authorise_verification(session, incident, step, user_id)
            if not svc.record_manual_verification(session, step=step, user_id=user_id, statement=statement,
                                                  roles_used=list(decision.roles)):
                raise Refused("not_awaiting_verification", step_title=step.title, status=step.status)
            svc.tell(session, incident_id=require_id(incident), kind="plan")
        self.committed()
        self.submit(self.advance, require_id(incident))

    # --- close -------------------------------------------------------------------------------

    def close_modal(self, *, user_id: str, incident_id: int) -> dict[str, Any]:
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            self._authorise_close(session, incident, user_id)
            return modal_blocks.close_modal(self.view(session, incident), self.locale)

    def _authorise_close(self, session: Session, incident: Incident, user_id: str) -> None:
        if incident.state not in ("detected", "assembled", "assessed", "verified"):
            raise Refused("wrong_state", action="close", state=incident.state)
        holders = svc.roles(session, require_id(incident))
        decision = policy.may_close(user_id, holders=holders, declared_by=incident.declared_by,
                                    state=incident.state)
        if not decision.allowed:
            svc.add_event(session, incident_id=require_id(incident), kind="audit", actor=user_id,
                          text="refused: close (not the incident commander)")
            session.commit()
            raise Refused("not_commander", commander=holders.get(COMMANDER))

    def close(self, *, user_id: str, incident_id: int, summary: str) -> None:
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            self._authorise_close(session, incident, user_id)
            trigger = "close" if incident.state == "verified" else "close_false_alarm"
            transition = svc.transition(session, incident_id=incident_id, trigger=trigger, actor=user_id,
                                        reason=summary if trigger == "close" else f"false alarm: {summary}",
                                        expected_version=incident.version,
                                        values={"closed_at": utcnow(), "close_summary": summary})
        self.committed(transition)

    # --- the engine's listener interface: its transactions wrote the outbox rows --------------

    def transitioned(self, transition: Transition) -> None:
        self.committed(transition)

    def step_changed(self, incident_id: int, step_id: int, event: str, detail: str) -> None:
        if event != "progress":
            self.outbox.wake()
            return
        # progress lines re-render the plan at most once a second
        now = time.monotonic()
        with self._progress_guard:
            if now - self._last_plan_refresh.get(incident_id, 0) < 1.0:
                return
            self._last_plan_refresh[incident_id] = now
        with self.store.session() as session:
            svc.tell(session, incident_id=incident_id, kind="plan", step_id=step_id, event="progress")
        self.outbox.wake()

    def objective_report(self, incident: Incident) -> ObjectiveReport:
        with self.store.session() as session:
            return objective_report(session, incident, self.config)

    def _post_thread(self, incident: Incident, message: Message, what: str) -> None:
        self._slack(incident.id, what, lambda: self.gateway.post(
            incident.stakeholder_channel or "", message.text, message.blocks, thread_ts=incident.stakeholder_ts))

    # --- reminders and queries ---------------------------------------------------------------

    def remind(self, incident_id: int) -> bool:
        interval = timedelta(minutes=self.config.slack.reminder_minutes)
        with self.store.session() as session:
            if not svc.claim_reminder(session, incident_id=incident_id, not_before=utcnow() - interval / 2):
                return False
            incident = svc.get(session, incident_id)
            view = self.view(session, incident)
        open_seconds = (utcnow() - incident.declared_at).total_seconds()
        message = incident_blocks.reminder(view, open_seconds, self.locale)
        if incident.stakeholder_channel:
            self._post_thread(incident, message, "post a reminder")
        return True

    def status(self, *, key: str | None, channel_id: str | None) -> Message:
        with self.store.session() as session:
            incident = svc.find_by_key(session, key) if key else (
                svc.find_by_channel(session, channel_id) if channel_id else None)
            if incident is None:
                if key:
                    return block_kit.usage_error("incident_not_found", self.locale, key=key)
                return block_kit.usage_error("no_incident_here", self.locale)
            return incident_blocks.status_reply(self.view(session, incident), self.locale)

    def list_open(self) -> Message:
        with self.store.session() as session:
            views = [self.view(session, i) for i in svc.open_incidents(session)]
        return incident_blocks.incident_list(views, self.locale)

    # --- crash recovery ----------------------------------------------------------------------

    def sweep(self) -> None:
        """Finish what a crash or a lost worker left, from durable state alone: interrupted steps,
        an unassessed ``assembled`` incident, an ``assessed`` one whose plan was rejected or failed
        (re-assessed once: ``assess`` compares the version), a ``recovering`` one to advance."""
        self.engine.resume_interrupted()   # its transactions wrote their outbox rows
        self.outbox.wake()
        with self.store.session() as session:
            stalled = [(require_id(i), i.state, i.version, self._needs_replan(session, i))
                       for i in svc.open_incidents(session)]
        for incident_id, state, version, replan in stalled:
            if state == "assembled":
                self.assess(incident_id)
            elif state == "assessed" and replan:
                self.assess(incident_id, after_version=version)
            elif state == "recovering":
                self.advance(incident_id)

    @staticmethod
    def _needs_replan(session: Session, incident: Incident) -> bool:
        """An assessed plan with a rejected or failed step: a reject or an abort asked for a new one."""
        return incident.state == "assessed" and any(
            s.status in ("rejected", "failed") for s in svc.current_steps(session, require_id(incident)))


def _step_event(code: str, step: PlanStep) -> dict[str, Any]:
    """A timeline event's code and the step it names; ``timeline.j2`` words it per locale."""
    return {"code": code, "position": step.position, "title": step.title}


def _current_step(session: Session, incident: Incident) -> PlanStep | None:
    """The first step of the current plan that has not succeeded (or been skipped)."""
    return next((s for s in svc.current_steps(session, require_id(incident))
                 if s.status not in ("succeeded", "skipped")), None)


def _running_step(session: Session, incident: Incident) -> PlanStep | None:
    return next((s for s in svc.current_steps(session, require_id(incident)) if s.status == "running"), None)


def _rejected_step(session: Session, incident: Incident) -> PlanStep | None:
    return next((s for s in svc.current_steps(session, require_id(incident)) if s.status == "rejected"), None)


def reference() -> str:
    """An opaque id for an internal error, shown to the user and logged with the traceback."""
    return uuid.uuid4().hex[:8]

