"""Incident flows: what each user action does, and the side effects of each committed change.

Each flow is: authorise (``statemachines.policy``) → one transaction in the store → after commit,
side effects (Slack posts, assessment, the engine) handed to a worker. Refusals and user mistakes
raise ``Refused`` with a message key; the Slack layer turns it into an ephemeral reply. Side effects
go through ``on_transition``, the single dispatcher from a state change to what follows it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlmodel import Session

from bot import wiring
from bot.bounded import BoundedPool, queue_limit
from bot.config import ROLES, Config
from bot.presenters import incident_view, objective_report
from bot.slack_gateway import SlackCallFailed, SlackGateway
from messages import blocks, render
from messages.views import Message, ObjectiveReport, ReplacedView, TransitionView
from recovery import planner
from recovery.engine import Engine
from recovery.health import run_checks
from recovery.redact import redact
from statemachines import policy
from statemachines import service as svc
from statemachines.machine import IllegalTransition
from statemachines.models import Incident, PlanStep, utcnow
from statemachines.service import StaleVersion, Transition
from statemachines.store import Store

log = logging.getLogger("aegis.flows")


class Refused(Exception):
    """A user action that is not allowed or not possible now; ``reason`` is a refusal key."""

    def __init__(self, reason: str, **ctx: Any) -> None:
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
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._last_plan_refresh: dict[int, float] = {}
        self.on_reminder_schedule: Callable[[int], None] = lambda _id: None
        self.on_reminder_cancel: Callable[[int], None] = lambda _id: None
        self.engine = Engine(
            store, lambda step, ctx: wiring.build_action(config, step, ctx), self, owner=owner,
            lease=timedelta(seconds=config.engine.lease_seconds),
        )
        # an approval is valid this long; the engine asks again for one that expired unused
        self.approval_ttl = timedelta(minutes=config.engine.approval_expiry_minutes)
        # every displayed time in the team's zone (config ``timezone``, default UTC)
        render.set_timezone(getattr(config, "timezone", "UTC"))

    # --- helpers -----------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on a worker; an exception is logged, never lost silently."""
        def run() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("background work %s failed", getattr(fn, "__name__", fn))
        self.pool.submit(run)

    def _lock(self, incident_id: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(incident_id, threading.Lock())

    def _slack(self, incident_id: int | None, what: str, call: Callable[[], Any]) -> Any:
        """Make a Slack call; on final failure record it on the timeline instead of losing it."""
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

    def view(self, session: Session, incident: Incident, *, timeline: bool = False) -> Any:
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
        self.submit(self._open_incident_room, incident.id)
        return incident

    def _open_incident_room(self, incident_id: int) -> None:
        """Channel, invites, incident card, stakeholder thread, reminder job (R1, P1)."""
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
        name = f"{self.config.slack.incident_channel_prefix}-{incident.id}-{incident.scenario.replace('_', '-')}"
        channel = self._slack(incident_id, "create the incident channel", lambda: self.gateway.create_channel(name))
        if channel:
            with self.store.session() as session:
                svc.set_fields(session, incident_id=incident_id, channel_id=channel)
            self._slack(incident_id, "invite the response team",
                        lambda: self.gateway.invite(channel, self._team(incident)))
        self.refresh_card(incident_id)
        self._stakeholder_root(incident_id)
        self.on_reminder_schedule(incident_id)

    def _team(self, incident: Incident) -> list[str]:
        roles = self.config.slack.scenario_roles.get(incident.scenario) or list(ROLES)
        users = [incident.declared_by] if incident.declared_by.startswith("U") else []
        for role in roles:
            users += self.config.roster.get(role, [])
        return list(dict.fromkeys(users))

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
            if role == policy.COMMANDER and incident.state == "detected":
                transition = svc.transition(session, incident_id=incident_id, trigger="assemble", actor=user_id,
                                            reason="incident commander took command")
        self.refresh_card(incident_id)
        if transition:
            self.on_transition(transition)

    # --- assessment --------------------------------------------------------------------------

    def assess(self, incident_id: int, *, after_version: int | None = None) -> None:
        """Health checks → classification → plan → ``assessed`` (C1). Read-only; safe to repeat.

        Without ``after_version`` this is the first assessment (state ``assembled``). With it, it is a
        re-assessment of an ``assessed`` incident, done only if nothing changed the incident since
        the abort/reject that asked for it — so a sweep or a second replica never re-plans twice.
        """
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
        except (StaleVersion, IllegalTransition):
            return   # someone else assessed first
        self._post_assessment(incident_id)
        self.on_transition(transition)

    def _post_assessment(self, incident_id: int) -> None:
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            view = self.view(session, incident)
        if not incident.channel_id:
            return
        message = blocks.assessment(view, self.locale)
        self._slack(incident_id, "post the assessment", lambda: self.gateway.post(
            incident.channel_id or "", message.text, message.blocks))
        plan = blocks.plan_message(view, self.locale)
        ts = self._slack(incident_id, "post the plan", lambda: self.gateway.post(
            incident.channel_id or "", plan.text, plan.blocks))
        if ts:
            with self.store.session() as session:
                svc.set_fields(session, incident_id=incident_id, plan_ts=ts)
            if incident.plan_ts and incident.plan_ts != ts:
                # plan_ts still names the previous revision's message: retire its buttons
                self._retire_plan(incident, incident.plan_ts, ts)

    def _retire_plan(self, incident: Incident, old_ts: str, new_ts: str) -> None:
        """Update a replaced plan message in place: no buttons, "replaced by revision N" and a link."""
        incident_id = incident.id or 0
        with self.store.session() as session:
            current = svc.get(session, incident_id)
            old_view = incident_view(session, current, self.config, revision=current.plan_revision - 1)
        replaced = ReplacedView(current.plan_revision - 1, current.plan_revision,
                                self._permalink(current.channel_id, new_ts))
        message = blocks.plan_replaced(old_view, replaced, self.locale)
        self._slack(incident_id, "mark the old plan as replaced", lambda: self.gateway.update(
            current.channel_id or "", old_ts, message.text, message.blocks))

    def _permalink(self, channel_id: str | None, ts: str | None) -> str | None:
        """The message's permalink (``chat.getPermalink``); None when Slack cannot say."""
        if not channel_id or not ts:
            return None
        try:
            return str(self.gateway.call("chat.getPermalink", channel=channel_id, message_ts=ts)["permalink"])
        except (SlackCallFailed, KeyError):
            return None

    def _refuse_if_replaced(self, step_id: int) -> None:
        """A button of an older plan revision: say which revision to use instead, with a link.

        Checked before the decision's transaction, so the Slack call for the link holds no lock."""
        with self.store.session() as session:
            try:
                step = svc.get_step(session, step_id)
            except svc.NotFound:
                return   # the decision itself refuses it as unknown
            incident = svc.get(session, step.incident_id)
        if step.revision != incident.plan_revision:
            raise Refused("plan_replaced", revision=incident.plan_revision,
                          link=self._permalink(incident.channel_id, incident.plan_ts))

    # --- approvals ---------------------------------------------------------------------------

    def _authorise_step(self, session: Session, incident: Incident, step: PlanStep, user_id: str,
                        verb: str) -> policy.Decision:
        holders = svc.roles(session, incident.id or 0)
        decision = policy.may_approve(list(step.approver_roles or []), user_id,
                                      roster=self.config.roster, holders=holders)
        if not decision.allowed:
            svc.add_event(session, incident_id=incident.id or 0, kind="audit", actor=user_id,
                          text=f"refused: {verb} step {step.position} ({step.title}) — not an approver",
                          data={"step_id": step.id})
            session.commit()
            raise Refused("not_allowed_to_approve", step_title=step.title,
                          roles=sorted(set(step.approver_roles or []) | {policy.COMMANDER}))
        return decision

    def approve(self, *, user_id: str, step_id: int) -> None:
        transition = None
        self._refuse_if_replaced(step_id)
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
            if step.revision != incident.plan_revision:   # re-planned since the check above
                raise Refused("plan_replaced", revision=incident.plan_revision, link=None)
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
            svc.add_event(session, incident_id=incident.id or 0, kind="approval", actor=user_id,
                          text=f"approved step {step.position}: {step.title}",
                          data={"step_id": step.id, **_step_event("step_approved", step)})
            votes = [(a.user_id, tuple(a.roles)) for a in svc.approvals(session, step) if a.decision == "approve"]
            satisfied = policy.approvals_satisfied(votes, step.approvals_required)
            if satisfied and not svc.move_step(session, step=step, to="approved",
                                               from_statuses=("awaiting_approval",)):
                raise Refused("already_approved", step_title=step.title)
            if incident.state == "assessed":
                transition = svc.transition(session, incident_id=incident.id or 0, trigger="start_recovery",
                                            actor=user_id, reason=f"approved: {step.title}",
                                            expected_version=incident.version)
        self.refresh_plan(incident.id or 0)
        if transition:
            self.on_transition(transition)
        if not satisfied:
            # the vote is recorded; a two-person step waits for its second approver
            raise Refused("second_approver_required", step_title=step.title)
        self.submit(self.engine.advance, incident.id)

    def reject_modal(self, *, user_id: str, step_id: int) -> dict[str, Any]:
        """The reason form that Reject opens; refused (nothing opens) when the click could not reject."""
        self._refuse_if_replaced(step_id)
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
            if incident.state not in ("assessed", "recovering"):
                raise Refused("wrong_state", action="reject", state=incident.state)
            self._authorise_step(session, incident, step, user_id, "reject")
            if step.status not in ("awaiting_approval", "failed"):
                raise Refused("step_not_awaiting", step_title=step.title, status=step.status)
            view = self.view(session, incident)
        step_view = next(s for s in view.steps if s.id == step_id)
        return blocks.reject_modal(view, step_view, self.locale)

    def reject(self, *, user_id: str, step_id: int, reason: str = "") -> None:
        self._refuse_if_replaced(step_id)
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
            if incident.state not in ("assessed", "recovering"):
                raise Refused("wrong_state", action="reject", state=incident.state)
            self._authorise_step(session, incident, step, user_id, "reject")
            running = _running_step(session, incident)
            if running is not None:
                raise Refused("step_running", running_title=running.title)
            if not svc.move_step(session, step=step, to="rejected", from_statuses=("awaiting_approval", "failed")):
                raise Refused("step_not_awaiting", step_title=step.title, status=step.status)
            svc.record_vote(session, step=step, user_id=user_id, decision="reject", roles_used=[], expires_in=None)
            svc.add_event(session, incident_id=incident.id or 0, kind="approval", actor=user_id,
                          text=f"rejected step {step.position}: {step.title}" + (f" — {reason}" if reason else ""),
                          data={"step_id": step.id, **_step_event("step_rejected", step), "reason": reason})
            transition = self._back_to_assessed(session, incident, user_id, f"rejected: {step.title}")
        self.refresh_plan(incident.id or 0)
        self._post_rejection(incident.id or 0, step_id, user_id, reason)
        if transition:
            self.on_transition(transition)
        else:
            version = incident.version    # reject in ``assessed``: re-plan unless someone else moved first
            self.submit(lambda: self.assess(incident.id or 0, after_version=version))

    def retry(self, *, user_id: str, step_id: int) -> None:
        self._refuse_if_replaced(step_id)
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
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
            svc.add_event(session, incident_id=incident.id or 0, kind="approval", actor=user_id,
                          text=f"retry of step {step.position}: {step.title} (attempt {step.attempt})",
                          data={"step_id": step.id, **_step_event("step_retried", step), "attempt": step.attempt})
        self.refresh_plan(incident.id or 0)
        self.submit(self.engine.advance, incident.id)

    def abort(self, *, user_id: str, step_id: int) -> None:
        self._refuse_if_replaced(step_id)
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
            if incident.state != "recovering":
                raise Refused("wrong_state", action="abort", state=incident.state)
            self._authorise_step(session, incident, step, user_id, "abort")
            # only the failed step the plan is stuck on: an old Abort button of a step that was
            # retried and succeeded must not drop the incident to assessed while a later step runs
            current = _current_step(session, incident)
            if step.status != "failed" or current is None or current.id != step.id:
                raise Refused("abort_not_current", step_title=step.title, status=step.status)
            svc.add_event(session, incident_id=incident.id or 0, kind="approval", actor=user_id,
                          text=f"aborted the recovery at step {step.position}: {step.title}",
                          data={"step_id": step.id, **_step_event("recovery_aborted", step)})
            transition = self._back_to_assessed(session, incident, user_id, f"aborted at: {step.title}")
        self.refresh_plan(incident.id or 0)
        if transition:
            self.on_transition(transition)

    def _post_rejection(self, incident_id: int, step_id: int, user_id: str, reason: str) -> None:
        """The rejection and its reason, in the incident channel for everyone to see."""
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            # the rejected step's own revision: a re-plan may already have replaced it
            view = incident_view(session, incident, self.config, revision=svc.get_step(session, step_id).revision)
        step_view = next((s for s in view.steps if s.id == step_id), None)
        if step_view is None or not incident.channel_id:
            return
        message = blocks.step_rejected(view, step_view, user_id, reason, self.locale)
        self._slack(incident_id, "post the rejection", lambda: self.gateway.post(
            incident.channel_id or "", message.text, message.blocks))

    def _back_to_assessed(self, session: Session, incident: Incident, user_id: str,
                          reason: str) -> Transition | None:
        if incident.state != "recovering":
            return None
        return svc.transition(session, incident_id=incident.id or 0, trigger="abort_recovery", actor=user_id,
                              reason=reason, expected_version=incident.version)

    # --- manual verification -----------------------------------------------------------------

    def _verification_roles(self, session: Session, step: PlanStep) -> list[str]:
        plan_roles = [r for s in svc.current_steps(session, step.incident_id) for r in s.approver_roles or []]
        return policy.verification_roles(list(step.approver_roles or []), plan_roles)

    def _authorise_verification(self, session: Session, incident: Incident, step: PlanStep,
                                user_id: str) -> policy.Decision:
        roles = self._verification_roles(session, step)
        decision = policy.may_approve(roles, user_id, roster=self.config.roster,
                                      holders=svc.roles(session, incident.id or 0))
        if not decision.allowed:
            svc.add_event(session, incident_id=incident.id or 0, kind="audit", actor=user_id,
                          text=f"refused: verify step {step.position} ({step.title}) — not authorised",
                          data={"step_id": step.id})
            session.commit()
            raise Refused("not_allowed_to_verify", step_title=step.title, roles=roles)
        if step.status != "awaiting_verification" or incident.state != "recovering":
            raise Refused("not_awaiting_verification", step_title=step.title, status=step.status)
        return decision

    def _ask_manual_verification(self, incident_id: int, step_id: int) -> None:
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            view = self.view(session, incident)
            roles = self._verification_roles(session, svc.get_step(session, step_id))
        step = next((s for s in view.steps if s.id == step_id), None)
        if step is None or not incident.channel_id:
            return
        message = blocks.manual_verification_request(view, step, roles, self.locale)
        self._slack(incident_id, "ask for a manual verification", lambda: self.gateway.post(
            incident.channel_id or "", message.text, message.blocks))

    def verify_modal(self, *, user_id: str, step_id: int) -> dict[str, Any]:
        """The evidence form for a step waiting for manual verification (authorised users only)."""
        with self.store.session() as session:
            incident, step = self._incident_for_step(session, step_id)
            self._authorise_verification(session, incident, step, user_id)
            view = self.view(session, incident)
        step_view = next(s for s in view.steps if s.id == step_id)
        return blocks.verify_modal(view, step_view, self.locale)

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
        self.refresh_plan(incident.id or 0)
        self.submit(self.engine.advance, incident.id)

    # --- close -------------------------------------------------------------------------------

    def close_modal(self, *, user_id: str, incident_id: int) -> dict[str, Any]:
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            self._authorise_close(session, incident, user_id)
            return blocks.close_modal(self.view(session, incident), self.locale)

    def _authorise_close(self, session: Session, incident: Incident, user_id: str) -> None:
        if incident.state not in ("detected", "assembled", "assessed", "verified"):
            raise Refused("wrong_state", action="close", state=incident.state)
        holders = svc.roles(session, incident.id or 0)
        decision = policy.may_close(user_id, holders=holders, declared_by=incident.declared_by,
                                    state=incident.state)
        if not decision.allowed:
            svc.add_event(session, incident_id=incident.id or 0, kind="audit", actor=user_id,
                          text="refused: close (not the incident commander)")
            session.commit()
            raise Refused("not_commander", commander=holders.get(policy.COMMANDER))

    def close(self, *, user_id: str, incident_id: int, summary: str) -> None:
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            self._authorise_close(session, incident, user_id)
            trigger = "close" if incident.state == "verified" else "close_false_alarm"
            transition = svc.transition(session, incident_id=incident_id, trigger=trigger, actor=user_id,
                                        reason=summary if trigger == "close" else f"false alarm: {summary}",
                                        expected_version=incident.version,
                                        values={"closed_at": utcnow(), "close_summary": summary})
        self.on_transition(transition)

    # --- the dispatcher: committed transition → side effects --------------------------------

    def on_transition(self, transition: Transition) -> None:
        incident_id = transition.incident_id
        self.refresh_card(incident_id)
        self._stakeholder_root(incident_id)
        if transition.source != transition.dest:
            self._stakeholder_update(transition)
        if transition.dest == "assembled":
            self.submit(self.assess, incident_id)
        elif transition.dest == "assessed" and transition.trigger in ("abort_recovery", "verification_failed"):
            self.submit(lambda: self.assess(incident_id, after_version=transition.version))
        elif transition.dest in ("recovering", "verified"):
            self.refresh_plan(incident_id)   # the plan's header follows the incident
        elif transition.dest == "closed":
            self.refresh_plan(incident_id)
            self.on_reminder_cancel(incident_id)
            self._closing_report(incident_id)

    # the engine's listener interface
    def transitioned(self, transition: Transition) -> None:
        self.on_transition(transition)

    def step_changed(self, incident_id: int, step_id: int, event: str, detail: str) -> None:
        if event == "progress":
            self.refresh_plan(incident_id, throttle=True)
            return
        self.refresh_plan(incident_id)
        if event == "manual_verification":
            self._ask_manual_verification(incident_id, step_id)
            return
        if event in ("succeeded", "failed", "reapproval"):
            with self.store.session() as session:
                incident = svc.get(session, incident_id)
                view = self.view(session, incident)
            step = next((s for s in view.steps if s.id == step_id), None)
            if step is None or not incident.channel_id:
                return
            message = (blocks.reapproval_request(view, step, self.locale) if event == "reapproval"
                       else blocks.step_result(view, step, self.locale))
            self._slack(incident_id, "post a step result", lambda: self.gateway.post(
                incident.channel_id or "", message.text, message.blocks))

    # --- messages kept up to date ------------------------------------------------------------

    def refresh_card(self, incident_id: int) -> None:
        with self._lock(incident_id):
            with self.store.session() as session:
                incident = svc.get(session, incident_id)
                message = blocks.incident_card(self.view(session, incident), self.locale)
            if not incident.channel_id:
                return
            if incident.card_ts:
                self._slack(incident_id, "update the incident card", lambda: self.gateway.update(
                    incident.channel_id or "", incident.card_ts or "", message.text, message.blocks))
                return
            ts = self._slack(incident_id, "post the incident card", lambda: self.gateway.post(
                incident.channel_id or "", message.text, message.blocks))
            if ts:
                with self.store.session() as session:
                    svc.set_fields(session, incident_id=incident_id, card_ts=ts)

    def refresh_plan(self, incident_id: int, *, throttle: bool = False) -> None:
        """Re-render the plan message in place; progress lines update it at most once a second."""
        now = time.monotonic()
        if throttle and now - self._last_plan_refresh.get(incident_id, 0) < 1.0:
            return
        with self._lock(incident_id):
            self._last_plan_refresh[incident_id] = now
            with self.store.session() as session:
                incident = svc.get(session, incident_id)
                message = blocks.plan_message(self.view(session, incident), self.locale)
            if incident.channel_id and incident.plan_ts:
                self._slack(incident_id, "update the plan", lambda: self.gateway.update(
                    incident.channel_id or "", incident.plan_ts or "", message.text, message.blocks))

    def _stakeholder_root(self, incident_id: int) -> None:
        with self._lock(incident_id):
            with self.store.session() as session:
                incident = svc.get(session, incident_id)
                message = blocks.stakeholder_root(self.view(session, incident), self.locale)
            channel = incident.stakeholder_channel
            if not channel:
                return
            if incident.stakeholder_ts:
                self._slack(incident_id, "update the stakeholder post", lambda: self.gateway.update(
                    channel, incident.stakeholder_ts or "", message.text, message.blocks))
                return
            ts = self._slack(incident_id, "start the stakeholder thread",
                             lambda: self.gateway.post(channel, message.text, message.blocks))
            if ts:
                with self.store.session() as session:
                    svc.set_fields(session, incident_id=incident_id, stakeholder_ts=ts)

    def _stakeholder_update(self, transition: Transition) -> None:
        with self.store.session() as session:
            incident = svc.get(session, transition.incident_id)
            view = self.view(session, incident)
        if not incident.stakeholder_channel:
            return
        t = TransitionView(transition.source, transition.dest, transition.actor, transition.reason, transition.at,
                           transition.trigger)
        message = blocks.stakeholder_update(view, t, self.locale)
        self._post_thread(incident, message, "post a stakeholder update")

    def _post_thread(self, incident: Incident, message: Message, what: str) -> None:
        self._slack(incident.id, what, lambda: self.gateway.post(
            incident.stakeholder_channel or "", message.text, message.blocks, thread_ts=incident.stakeholder_ts))

    def objective_report(self, incident: Incident) -> ObjectiveReport:
        with self.store.session() as session:
            return objective_report(session, incident, self.config)

    def _closing_report(self, incident_id: int) -> None:
        with self.store.session() as session:
            incident = svc.get(session, incident_id)
            message = blocks.closing_report(self.view(session, incident, timeline=True),
                                            objective_report(session, incident, self.config), self.locale)
        if incident.channel_id:
            self._slack(incident_id, "post the closing report", lambda: self.gateway.post(
                incident.channel_id or "", message.text, message.blocks))
        if incident.stakeholder_channel:
            self._post_thread(incident, message, "post the closing report to stakeholders")

    # --- reminders and queries ---------------------------------------------------------------

    def remind(self, incident_id: int) -> bool:
        interval = timedelta(minutes=self.config.slack.reminder_minutes)
        with self.store.session() as session:
            if not svc.claim_reminder(session, incident_id=incident_id, not_before=utcnow() - interval / 2):
                return False
            incident = svc.get(session, incident_id)
            view = self.view(session, incident)
        open_seconds = (utcnow() - incident.declared_at).total_seconds()
        message = blocks.reminder(view, open_seconds, self.locale)
        if incident.stakeholder_channel:
            self._post_thread(incident, message, "post a reminder")
        return True

    def status(self, *, key: str | None, channel_id: str | None) -> Message:
        with self.store.session() as session:
            incident = svc.find_by_key(session, key) if key else (
                svc.find_by_channel(session, channel_id) if channel_id else None)
            if incident is None:
                if key:
                    return blocks.usage_error("incident_not_found", self.locale, key=key)
                return blocks.usage_error("no_incident_here", self.locale)
            return blocks.status_reply(self.view(session, incident), self.locale)

    def list_open(self) -> Message:
        with self.store.session() as session:
            views = [self.view(session, i) for i in svc.open_incidents(session)]
        return blocks.incident_list(views, self.locale)

    # --- crash recovery ----------------------------------------------------------------------

    def sweep(self) -> None:
        """Pick up what a crash or a lost worker left: interrupted steps, stalled incidents."""
        for incident_id in set(self.engine.resume_interrupted()):
            self.refresh_plan(incident_id)
        with self.store.session() as session:
            stalled = [(i.id, i.state) for i in svc.open_incidents(session)]
        for incident_id, state in stalled:
            if state == "assembled":
                self.assess(incident_id or 0)
            elif state == "recovering":
                self.engine.advance(incident_id or 0)


def _step_event(code: str, step: PlanStep) -> dict[str, Any]:
    """A timeline event's code and the step it names; ``timeline.j2`` words it per locale."""
    return {"code": code, "position": step.position, "title": step.title}


def _current_step(session: Session, incident: Incident) -> PlanStep | None:
    """The first step of the current plan that has not succeeded (or been skipped)."""
    return next((s for s in svc.current_steps(session, incident.id or 0)
                 if s.status not in ("succeeded", "skipped")), None)


def _running_step(session: Session, incident: Incident) -> PlanStep | None:
    return next((s for s in svc.current_steps(session, incident.id or 0) if s.status == "running"), None)


def _rejected_step(session: Session, incident: Incident) -> PlanStep | None:
    return next((s for s in svc.current_steps(session, incident.id or 0) if s.status == "rejected"), None)


def reference() -> str:
    """An opaque id for an internal error, shown to the user and logged with the traceback."""
    return uuid.uuid4().hex[:8]

