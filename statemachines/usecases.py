"""Use cases: what a person or the engine does to an incident, and the only code (with the service
itself) that moves one.

Each use case takes an open session plus plain facts (user id, roster, step or incident id, …),
authorises through ``statemachines.policy``, records through ``statemachines.service`` (votes, step
moves, transitions, timeline events, outbox rows) and returns a plain result, or raises ``Refused``
with a reason code and the template context of its message. The caller owns the transaction: it
opens the session, and after the commit wakes whatever delivers the outbox and starts the
follow-up work (bot/flows/incident.py for people, recovery/engine.py for the engine). A refusal
that must leave an audit trail commits that event before it raises.

Every committed change also writes one operator log line (logger ``aegis.incident``, INFO, the
incident key first): transitions, step starts and results, votes, manual verifications. The line is
written after the commit, so a change that rolled back never appears in the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from sqlalchemy import event
from sqlmodel import Session

from statemachines import policy
from statemachines import service as svc
from statemachines.json_types import JsonObject
from statemachines.machine import IllegalTransition
from statemachines.models import Incident, LedgerEntry, PlanStep, require_id, utcnow
from statemachines.service import StaleVersion, StepSpec, Transition
from statemachines.vocabulary import (
    COMMANDER,
    DETAIL_APPROVAL_EXPIRED,
    DETAIL_CONFIRMED_AFTER_RESTART,
    DETAIL_INTERRUPTED,
    ROLES,
)

log = logging.getLogger("aegis.incident")
AEGIS = "aegis"   # the actor of what the engine and the assessment do


class Refused(Exception):
    """An action that is not allowed or not possible now; ``reason`` is a refusal key of the message
    layer and ``ctx`` its template context; ``link_of`` is a (channel, ts) pair the bot turns into a link."""

    def __init__(self, reason: str, *, link_of: tuple[str | None, str | None] | None = None,
                 **ctx: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.link_of = link_of
        self.ctx = ctx


# --- the operator log -------------------------------------------------------------------------

def _key(incident_id: int) -> str:
    return f"INC-{incident_id}"


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def _log_on_commit(session: Session, incident_id: int, message: str, **fields: object) -> None:
    """One INFO line on ``aegis.incident`` once this transaction commits (never for a rollback).

    The plain-text line reads on its own (the key first); the JSON formatter (bot/logs.py) also
    writes ``incident`` and ``fields`` as their own keys.
    """
    key = _key(incident_id)
    line = f"{key} {message}"
    extra = {"incident": key, "fields": fields}
    event.listen(session, "after_commit", lambda _s: log.info("%s", line, extra=extra), once=True)


def _fire(session: Session, *, incident_id: int, trigger: str, actor: str | None, reason: str,
          expected_version: int | None = None, values: dict[str, object] | None = None) -> Transition:
    """Fire one transition (service.transition) and log it once it commits."""
    done = svc.transition(session, incident_id=incident_id, trigger=trigger, actor=actor, reason=reason,
                          expected_version=expected_version, values=values)
    _log_on_commit(session, incident_id,
                   f"{done.source} → {done.dest} ({trigger}, by {actor or AEGIS})"
                   + (f": {_one_line(reason)}" if reason else ""),
                   event="transition", source=done.source, dest=done.dest, trigger=trigger, actor=actor,
                   reason=_one_line(reason), version=done.version)
    return done


def _step_log(step: PlanStep) -> JsonObject:
    return {"step_id": step.id, "position": step.position, "action": step.action, "attempt": step.attempt}


# --- helpers ------------------------------------------------------------------------------------

def _step_event(code: str, step: PlanStep) -> JsonObject:
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


def _audit_refusal(session: Session, incident: Incident, user_id: str, text: str,
                   data: JsonObject | None = None) -> None:
    """A refused attempt stays on the timeline: committed here, before the refusal is raised."""
    svc.add_event(session, incident_id=require_id(incident), kind="audit", actor=user_id, text=text, data=data)
    session.commit()


def step_of(session: Session, step_id: int) -> tuple[Incident, PlanStep]:
    """The step and its incident, holding the incident's lock (decisions on one plan run one at a time)."""
    try:
        step = svc.get_step(session, step_id)
    except svc.NotFound:
        raise Refused("unknown_step") from None
    incident = svc.lock(session, step.incident_id)
    return incident, svc.get_step(session, step_id)   # re-read once we hold the lock


def _refuse_if_replaced(incident: Incident, step: PlanStep) -> None:
    """A button of an older plan revision: say which revision to use instead (with a link, later)."""
    if step.revision != incident.plan_revision:
        raise Refused("plan_replaced", revision=incident.plan_revision,
                      link_of=(incident.channel_id, incident.plan_ts))


def _authorise_step(session: Session, incident: Incident, step: PlanStep, user_id: str,
                    roster: dict[str, list[str]], verb: str) -> policy.Decision:
    holders = svc.roles(session, require_id(incident))
    decision = policy.may_approve(list(step.approver_roles or []), user_id, roster=roster, holders=holders)
    if not decision.allowed:
        _audit_refusal(session, incident, user_id,
                       f"refused: {verb} step {step.position} ({step.title}) — not an approver",
                       {"step_id": step.id})
        raise Refused("not_allowed_to_approve", step_title=step.title,
                      roles=sorted(set(step.approver_roles or []) | {COMMANDER}))
    return decision


# --- declare and roles --------------------------------------------------------------------------

def declare(session: Session, *, scenario: str, severity: str, summary: str, declared_by: str, locale: str,
            stakeholder_channel: str | None, request_key: str | None = None) -> Incident:
    """Open an incident: the room (channel, invites, reminders), the card and the stakeholder thread.

    With ``request_key`` (the Slack request that asks for it), a request seen before gets the incident it
    declared then — Slack redelivering an envelope after a restart, a client retrying — and nothing new."""
    if request_key is not None:
        earlier = svc.find_by_request(session, request_key)
        if earlier is not None:
            _log_on_commit(session, require_id(earlier), f"declaration request seen again: answered with "
                           f"{earlier.key}, nothing declared", event="declare_repeated", actor=declared_by)
            return earlier
    incident = svc.declare(session, scenario=scenario, severity=severity, summary=summary,
                           declared_by=declared_by, locale=locale, stakeholder_channel=stakeholder_channel,
                           request_key=request_key)
    incident_id = require_id(incident)
    for kind in ("open_room", "card", "stakeholder_root"):
        svc.tell(session, incident_id=incident_id, kind=kind, version=incident.version)
    _log_on_commit(session, incident_id, f"declared: {scenario} / {severity} by {declared_by}: {_one_line(summary)}",
                   event="declared", scenario=scenario, severity=severity, actor=declared_by, dest="detected")
    return incident


def claim_role(session: Session, *, incident_id: int, role: str, user_id: str,
               roster: dict[str, list[str]]) -> Transition | None:
    """Take a role; the incident commander taking command assembles a ``detected`` incident."""
    if role not in ROLES:
        raise Refused("not_on_roster", role=role)
    incident = svc.get(session, incident_id)
    if incident.state == "closed":
        raise Refused("wrong_state", action="claim", state=incident.state)
    decision = policy.may_claim(role, user_id, roster=roster, declared_by=incident.declared_by)
    if not decision.allowed:
        _audit_refusal(session, incident, user_id, f"refused: claim {role} (not on the roster)")
        raise Refused("not_on_roster", role=role)
    try:
        taken = svc.assign_role(session, incident_id=incident_id, role=role, user_id=user_id)
    except svc.RoleTaken as exc:
        raise Refused("role_taken", role=role, holder=exc.holder) from None
    svc.tell(session, incident_id=incident_id, kind="card")
    if taken:
        _log_on_commit(session, incident_id, f"{user_id} took the role {role}", event="role_claimed",
                       role=role, actor=user_id)
    if role == COMMANDER and incident.state == "detected":
        return _fire(session, incident_id=incident_id, trigger="assemble", actor=user_id,
                     reason="incident commander took command")
    return None


# --- assessment ---------------------------------------------------------------------------------

def assess(session: Session, *, incident_id: int, expected_version: int, strategy: str, rationale: str,
           steps: list[StepSpec], checks: list[JsonObject], reason: str = "",
           reason_ctx: JsonObject | None = None) -> Transition | None:
    """Store an assessment and its plan (``assess`` from ``assembled``, ``reassess`` from ``assessed``).

    ``rationale`` (English) is the transition's reason on the timeline; ``reason`` + ``reason_ctx`` (the
    planner's code and params) ride in the assessment's outbox row, which words them per locale.
    None when someone else changed the incident since ``expected_version`` (they assessed first).
    """
    incident = svc.get(session, incident_id)
    trigger = "assess" if incident.state == "assembled" else "reassess"
    try:
        transition = _fire(session, incident_id=incident_id, trigger=trigger, actor=AEGIS,
                           reason=f"{strategy}: {rationale}", expected_version=expected_version,
                           values={"checks": checks})
    except (StaleVersion, IllegalTransition):
        return None
    svc.replace_plan(session, incident_id=incident_id, strategy=strategy, specs=steps)
    # the assessment, then the new plan as a message of its own (the old one is retired)
    svc.tell(session, incident_id=incident_id, kind="assessment", version=transition.version, reason=reason,
             reason_ctx=reason_ctx or {})
    svc.tell(session, incident_id=incident_id, kind="plan_new", version=transition.version)
    return transition


# --- recovery choices: strategy, infection time, partial target (issue 9) -------------------------

#: what a responder may choose from the assessment message (``manual`` is the planner's fallback only)
RECOVERY_STRATEGIES = ("failover", "restore_from_backup", "partial_recovery")
OPTION_KEYS = ("strategy", "infection_time", "partial")


@dataclass(frozen=True)
class OptionsSet:
    """A stored choice: the incident's version the re-plan is planned against, and the options now."""

    incident_id: int
    version: int
    options: JsonObject


def check_recovery_choice(session: Session, *, incident_id: int, user_id: str,
                          roster: dict[str, list[str]]) -> Incident:
    """Whether ``user_id`` may change the recovery's choices now (a form opens only then).

    Only while ``assessed``: a recovering incident runs its plan's steps, and a new plan under them
    would strand what already ran — abort first. Who: ``policy.may_choose_recovery``.
    """
    incident = svc.get(session, incident_id)
    if incident.state == "recovering":
        raise Refused("choice_while_recovering")
    if incident.state != "assessed":
        raise Refused("wrong_state", action="choose", state=incident.state)
    plan_roles = sorted({r for s in svc.current_steps(session, incident_id) for r in s.approver_roles or []})
    decision = policy.may_choose_recovery(user_id, plan_roles=plan_roles, roster=roster,
                                          holders=svc.roles(session, incident_id))
    if not decision.allowed:
        _audit_refusal(session, incident, user_id, "refused: change the recovery choices (not an approver)")
        raise Refused("not_allowed_to_choose", roles=sorted(set(plan_roles) | {COMMANDER}))
    return incident


def set_recovery_options(session: Session, *, incident_id: int, user_id: str, roster: dict[str, list[str]],
                         changes: JsonObject, failure_at: datetime | None = None) -> OptionsSet:
    """Store what a responder chose (merged into ``incident.recovery_options``; ``failure_at`` for a
    ransomware infection time) with a timeline event; the caller then re-plans (``replan``).

    Refused when nothing would change: a second click on the same choice does not re-plan twice.
    """
    unknown = set(changes) - set(OPTION_KEYS)
    if unknown:
        raise ValueError(f"unknown recovery options: {sorted(unknown)}")
    strategy = changes.get("strategy")
    if "strategy" in changes and strategy not in RECOVERY_STRATEGIES:
        raise Refused("unknown_strategy", strategy=str(strategy))
    svc.lock(session, incident_id)
    incident = check_recovery_choice(session, incident_id=incident_id, user_id=user_id, roster=roster)
    before: JsonObject = dict(incident.recovery_options or {})
    options: JsonObject = {**before, **changes}
    if options == before and (strategy is None or strategy == incident.strategy):
        raise Refused("choice_unchanged", strategy=incident.strategy or "")
    values: dict[str, object] = {"recovery_options": options}
    if failure_at is not None:
        values["failure_at"] = failure_at
    svc.set_fields(session, incident_id=incident_id, **values)
    summary = ", ".join(f"{k}={changes[k]}" for k in OPTION_KEYS if k in changes)
    svc.add_event(session, incident_id=incident_id, kind="note", actor=user_id,
                  text=f"changed the recovery choices: {summary}; re-planning",
                  data={"code": "recovery_options_set", **{k: changes[k] for k in OPTION_KEYS if k in changes}})
    svc.tell(session, incident_id=incident_id, kind="card")
    _log_on_commit(session, incident_id, f"{user_id} changed the recovery choices: {_one_line(summary)}",
                   event="recovery_options", actor=user_id, **{k: changes[k] for k in OPTION_KEYS if k in changes})
    return OptionsSet(incident_id, incident.version, options)


def replan(session: Session, *, incident_id: int, expected_version: int, options: JsonObject, strategy: str,
           rationale: str, steps: list[StepSpec], checks: list[JsonObject], reason: str = "",
           reason_ctx: JsonObject | None = None) -> Transition | None:
    """Store the plan a choice asked for as a new revision (``reassess``; the incident stays ``assessed``).

    None when the incident moved since ``expected_version``, or its options are no longer the ones
    this plan was made from (a later choice re-plans on its own): only a plan of the current choice lands.
    """
    incident = svc.lock(session, incident_id)
    if incident.state != "assessed" or incident.version != expected_version \
            or dict(incident.recovery_options or {}) != options:
        return None
    return assess(session, incident_id=incident_id, expected_version=expected_version, strategy=strategy,
                  rationale=rationale, steps=steps, checks=checks, reason=reason, reason_ctx=reason_ctx)


# --- approvals ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Approved:
    incident_id: int
    step_title: str
    satisfied: bool                  # False: a two-person step waits for its second approver
    transition: Transition | None    # start_recovery, for the first approval of an assessed plan


def approve(session: Session, *, step_id: int, user_id: str, roster: dict[str, list[str]],
            approval_ttl: timedelta) -> Approved:
    incident, step = step_of(session, step_id)
    _refuse_if_replaced(incident, step)
    if not decisions_open(incident):
        raise Refused("wrong_state", action="approve", state=incident.state)
    decision = _authorise_step(session, incident, step, user_id, roster, "approve")
    rejected = _rejected_step(session, incident)
    if rejected is not None:
        raise Refused("plan_rejected", step_title=step.title, rejected_position=rejected.position)
    if step.status != "awaiting_approval":
        if any(a.user_id == user_id for a in svc.approvals(session, step)):
            raise Refused("already_approved", step_title=step.title)
        raise Refused("step_not_awaiting", step_title=step.title, status=step.status)
    # a vote of this person that expired while the step waited is renewed: their click counts again
    if not svc.record_vote(session, step=step, user_id=user_id, decision="approve",
                           roles_used=list(decision.roles), expires_in=approval_ttl) \
            and not svc.renew_expired_vote(session, step=step, user_id=user_id, roles_used=list(decision.roles),
                                           expires_in=approval_ttl):
        raise Refused("already_approved", step_title=step.title)
    incident_id = require_id(incident)
    svc.add_event(session, incident_id=incident_id, kind="approval", actor=user_id,
                  text=f"approved step {step.position}: {step.title}",
                  data={"step_id": step.id, **_step_event("step_approved", step)})
    votes = _valid_votes(session, step)   # an expired first vote does not make a two-person step approved
    satisfied = policy.approvals_satisfied(votes, step.approvals_required)
    if satisfied and not svc.move_step(session, step=step, to="approved", from_statuses=("awaiting_approval",)):
        raise Refused("already_approved", step_title=step.title)
    svc.tell(session, incident_id=incident_id, kind="plan")
    _log_on_commit(session, incident_id,
                   f"step {step.position} approved by {user_id} ({len(votes)}/{step.approvals_required}"
                   f"{'' if satisfied else ', waits for another approver'}): {step.title}",
                   event="approval", decision="approve", actor=user_id, roles=list(decision.roles),
                   satisfied=satisfied, **_step_log(step))
    transition = None
    if incident.state == "assessed":
        transition = _fire(session, incident_id=incident_id, trigger="start_recovery", actor=user_id,
                           reason=f"approved: {step.title}", expected_version=incident.version)
    return Approved(incident_id, step.title, satisfied, transition)


def check_reject(session: Session, *, step_id: int, user_id: str, roster: dict[str, list[str]]) -> Incident:
    """Whether ``user_id`` could reject the step now (the reason form opens only then)."""
    incident, step = step_of(session, step_id)
    _refuse_if_replaced(incident, step)
    if not decisions_open(incident):
        raise Refused("wrong_state", action="reject", state=incident.state)
    _authorise_step(session, incident, step, user_id, roster, "reject")
    if step.status not in ("awaiting_approval", "failed"):
        raise Refused("step_not_awaiting", step_title=step.title, status=step.status)
    return incident


@dataclass(frozen=True)
class Rejected:
    incident_id: int
    seen_version: int                # the incident's version the rejection was decided on
    transition: Transition | None    # abort_recovery when it was recovering; else a re-plan is due


def reject(session: Session, *, step_id: int, user_id: str, roster: dict[str, list[str]],
           reason: str = "") -> Rejected:
    incident, step = step_of(session, step_id)
    _refuse_if_replaced(incident, step)
    if not decisions_open(incident):
        raise Refused("wrong_state", action="reject", state=incident.state)
    _authorise_step(session, incident, step, user_id, roster, "reject")
    running = _running_step(session, incident)
    if running is not None:
        raise Refused("step_running", running_title=running.title)
    if not svc.move_step(session, step=step, to="rejected", from_statuses=("awaiting_approval", "failed")):
        raise Refused("step_not_awaiting", step_title=step.title, status=step.status)
    incident_id = require_id(incident)
    svc.record_vote(session, step=step, user_id=user_id, decision="reject", roles_used=[], expires_in=None)
    svc.add_event(session, incident_id=incident_id, kind="approval", actor=user_id,
                  text=f"rejected step {step.position}: {step.title}" + (f" — {reason}" if reason else ""),
                  data={"step_id": step.id, **_step_event("step_rejected", step), "reason": reason})
    svc.tell(session, incident_id=incident_id, kind="plan")
    svc.tell(session, incident_id=incident_id, kind="rejection", step_id=step_id, user=user_id, reason=reason)
    _log_on_commit(session, incident_id, f"step {step.position} rejected by {user_id}: {step.title}"
                   + (f" — {_one_line(reason)}" if reason else ""),
                   event="approval", decision="reject", actor=user_id, reason=_one_line(reason), **_step_log(step))
    transition = back_to_assessed(session, incident, user_id, f"rejected: {step.title}")
    return Rejected(incident_id, incident.version, transition)


def retry(session: Session, *, step_id: int, user_id: str, roster: dict[str, list[str]],
          approval_ttl: timedelta) -> int:
    """A failed step gets a new attempt (approved by the one who retries it); returns the incident id."""
    incident, step = step_of(session, step_id)
    _refuse_if_replaced(incident, step)
    if not runs_now(incident):
        raise Refused("wrong_state", action="retry", state=incident.state)
    decision = _authorise_step(session, incident, step, user_id, roster, "retry")
    if step.status != "failed":
        raise Refused("step_not_awaiting", step_title=step.title, status=step.status)
    needs_more = step.approvals_required > 1
    target = "awaiting_approval" if needs_more else ("approved" if step.approvals_required else "pending")
    if not svc.move_step(session, step=step, to=target, from_statuses=("failed",), new_attempt=True, detail=""):
        raise Refused("step_not_awaiting", step_title=step.title, status=step.status)
    step = svc.get_step(session, step_id)
    if step.approvals_required:
        svc.record_vote(session, step=step, user_id=user_id, decision="approve",
                        roles_used=list(decision.roles), expires_in=approval_ttl)
    incident_id = require_id(incident)
    svc.add_event(session, incident_id=incident_id, kind="approval", actor=user_id,
                  text=f"retry of step {step.position}: {step.title} (attempt {step.attempt})",
                  data={"step_id": step.id, **_step_event("step_retried", step), "attempt": step.attempt})
    svc.tell(session, incident_id=incident_id, kind="plan")
    _log_on_commit(session, incident_id, f"step {step.position} retried by {user_id} (attempt {step.attempt}): "
                   f"{step.title}", event="approval", decision="retry", actor=user_id, **_step_log(step))
    return incident_id


def abort(session: Session, *, step_id: int, user_id: str, roster: dict[str, list[str]]) -> Transition | None:
    """Stop a recovery stuck on its failed step: back to ``assessed`` (a new plan follows)."""
    incident, step = step_of(session, step_id)
    _refuse_if_replaced(incident, step)
    if not runs_now(incident):
        raise Refused("wrong_state", action="abort", state=incident.state)
    _authorise_step(session, incident, step, user_id, roster, "abort")
    # only the failed step the plan is stuck on: an old Abort button of a step that was retried and
    # succeeded must not drop the incident to assessed while a later step runs
    current = _current_step(session, incident)
    if step.status != "failed" or current is None or current.id != step.id:
        raise Refused("abort_not_current", step_title=step.title, status=step.status)
    if incident.aftercare:
        abandon_aftercare(session, incident, step, user_id)
        return None
    svc.add_event(session, incident_id=require_id(incident), kind="approval", actor=user_id,
                  text=f"aborted the recovery at step {step.position}: {step.title}",
                  data={"step_id": step.id, **_step_event("recovery_aborted", step)})
    svc.tell(session, incident_id=require_id(incident), kind="plan")
    return back_to_assessed(session, incident, user_id, f"aborted at: {step.title}")


def back_to_assessed(session: Session, incident: Incident, user_id: str, reason: str) -> Transition | None:
    """A recovering incident goes back to ``assessed`` (abort, or a rejected step); else nothing."""
    if incident.state != "recovering":
        return None
    return _fire(session, incident_id=require_id(incident), trigger="abort_recovery", actor=user_id,
                 reason=reason, expected_version=incident.version)


# --- automatic recovery (monitoring.auto_recovery, pre_approved_actions) -------------------------

PRE_APPROVED = "pre-approved by config"


def action_name(step: PlanStep) -> str:
    """A step's name in ``monitoring.pre_approved_actions``: its action, and a hook's name (``hook.fence_primary``)."""
    hook = (step.params or {}).get("hook") if step.action == "hook" else None
    return f"hook.{hook}" if hook else step.action


def auto_assemble(session: Session, *, incident_id: int, basis: str) -> Transition | None:
    """An incident the monitor declared, with automatic recovery on: Aegis assembles it itself, so the
    assessment runs without waiting for an incident commander (a person may still take command).

    None when it is not Aegis's own ``detected`` incident any more (someone took command first).
    """
    incident = svc.lock(session, incident_id)
    if incident.state != "detected" or incident.declared_by != AEGIS:
        return None
    svc.add_event(session, incident_id=incident_id, kind="audit", actor=AEGIS,
                  text=f"automatic recovery ({basis}): assessed without waiting for an incident commander",
                  data={"code": "auto_recovery", "basis": basis})
    return _fire(session, incident_id=incident_id, trigger="assemble", actor=AEGIS,
                 reason=f"automatic recovery ({basis})", expected_version=incident.version)


def pre_approve(session: Session, *, step_id: int, basis: str) -> bool:
    """Approve a step on the config's word: an approval row of Aegis carrying ``basis`` and an audit event.

    Never a person's vote, and never for a two-person step (P3): such a step keeps waiting for its
    approvers. False when the step was not awaiting approval or is a two-person step.
    """
    incident, step = step_of(session, step_id)
    incident_id = require_id(incident)
    if step.approvals_required >= 2:
        svc.add_event(session, incident_id=incident_id, kind="audit", actor=AEGIS,
                      text=f"not pre-approved: step {step.position} ({step.title}) needs two approvers",
                      data={"step_id": step.id})
        return False
    if step.status != "awaiting_approval" or not svc.record_vote(
            session, step=step, user_id=AEGIS, decision="approve", roles_used=[], expires_in=None):
        return False
    vote = next(a for a in svc.approvals(session, step) if a.user_id == AEGIS)
    vote.basis = basis
    session.add(vote)
    if not svc.move_step(session, step=step, to="approved", from_statuses=("awaiting_approval",)):
        return False
    svc.add_event(session, incident_id=incident_id, kind="approval", actor=AEGIS,
                  text=f"{basis}: step {step.position}: {step.title}",
                  data={"step_id": step.id, **_step_event("step_pre_approved", step), "basis": basis})
    _log_on_commit(session, incident_id, f"step {step.position} {basis}: {step.title}", event="approval",
                   decision="pre_approve", actor=AEGIS, basis=basis, **_step_log(step))
    return True


def auto_start(session: Session, *, incident_id: int, expected_version: int, pre_approved: frozenset[str],
               scenario_basis: str) -> Transition | None:
    """Start the recovery of an assessed incident under automatic recovery: the steps whose action the
    config lists are pre-approved, then ``start_recovery`` — read-only steps run, the others wait.

    None when the incident moved since the assessment (a person approved, or it was re-planned).
    """
    incident = svc.lock(session, incident_id)
    if incident.state != "assessed" or incident.version != expected_version:
        return None
    for step in svc.current_steps(session, incident_id):
        name = action_name(step)
        if step.status == "awaiting_approval" and name in pre_approved:
            basis = f"{PRE_APPROVED} (monitoring.pre_approved_actions: {name})"
            pre_approve(session, step_id=require_id(step), basis=basis)
    svc.tell(session, incident_id=incident_id, kind="plan")
    return _fire(session, incident_id=incident_id, trigger="start_recovery", actor=AEGIS,
                 reason=f"automatic recovery ({scenario_basis}): read-only and pre-approved steps run")


# --- manual verification ------------------------------------------------------------------------

def check_verification(session: Session, *, step_id: int, user_id: str,
                       roster: dict[str, list[str]]) -> tuple[Incident, policy.Decision]:
    """Whether ``user_id`` may state the evidence of the step's manual verification now."""
    incident, step = step_of(session, step_id)
    plan_roles = [r for s in svc.current_steps(session, step.incident_id) for r in s.approver_roles or []]
    roles = policy.verification_roles(list(step.approver_roles or []), plan_roles)
    decision = policy.may_approve(roles, user_id, roster=roster, holders=svc.roles(session, require_id(incident)))
    if not decision.allowed:
        _audit_refusal(session, incident, user_id,
                       f"refused: verify step {step.position} ({step.title}) — not authorised", {"step_id": step.id})
        raise Refused("not_allowed_to_verify", step_title=step.title, roles=roles)
    if step.status != "awaiting_verification" or not runs_now(incident):
        raise Refused("not_awaiting_verification", step_title=step.title, status=step.status)
    return incident, decision


def verify_manually(session: Session, *, step_id: int, user_id: str, roster: dict[str, list[str]],
                    statement: str) -> int:
    """Record "verified manually by @user: <statement>" (already redacted); returns the incident id."""
    if not statement:
        raise Refused("evidence_required")
    incident, decision = check_verification(session, step_id=step_id, user_id=user_id, roster=roster)
    step = svc.get_step(session, step_id)
    if not svc.record_manual_verification(session, step=step, user_id=user_id, statement=statement,
                                          roles_used=list(decision.roles)):
        raise Refused("not_awaiting_verification", step_title=step.title, status=step.status)
    incident_id = require_id(incident)
    svc.tell(session, incident_id=incident_id, kind="plan")
    _log_on_commit(session, incident_id, f"step {step.position} verified manually by {user_id}: {step.title}",
                   event="manual_verification", actor=user_id, roles=list(decision.roles), **_step_log(step))
    return incident_id


# --- close --------------------------------------------------------------------------------------

def check_close(session: Session, *, incident_id: int, user_id: str) -> Incident:
    """Whether ``user_id`` may close the incident now (the close form opens only then)."""
    incident = svc.get(session, incident_id)
    if incident.state not in ("detected", "assembled", "assessed", "verified"):
        raise Refused("wrong_state", action="close", state=incident.state)
    holders = svc.roles(session, incident_id)
    decision = policy.may_close(user_id, holders=holders, declared_by=incident.declared_by, state=incident.state)
    if not decision.allowed:
        _audit_refusal(session, incident, user_id, "refused: close (not the incident commander)")
        raise Refused("not_commander", commander=holders.get(COMMANDER))
    return incident


def close(session: Session, *, incident_id: int, user_id: str, summary: str) -> Transition:
    """Close a verified incident, or one never recovered as a false alarm."""
    incident = check_close(session, incident_id=incident_id, user_id=user_id)
    trigger = "close" if incident.state == "verified" else "close_false_alarm"
    return _fire(session, incident_id=incident_id, trigger=trigger, actor=user_id,
                 reason=summary if trigger == "close" else f"false alarm: {summary}",
                 expected_version=incident.version, values={"closed_at": utcnow(), "close_summary": summary})


# --- the engine: start a step, finish a step, finish the plan ----------------------------------

@dataclass(frozen=True)
class StepOutcome:
    """What an action really did: ``succeeded``, ``failed`` or ``needs_human`` (values already redacted)."""

    status: str
    detail: str
    output: JsonObject = field(default_factory=dict)
    evidence: list[JsonObject] | None = None


@dataclass(frozen=True)
class Rpo:
    """The RPO to store with a step's outcome (recovery/objectives.py computes it): its basis in English
    and as ``{"code", "params"}`` for the channel's language."""

    seconds: float | None
    basis: str
    basis_data: JsonObject | None = None


@dataclass(frozen=True)
class Claimed:
    step: PlanStep
    entry_id: int
    context: dict[str, str]          # {"incident": key, "step": id, "scenario": …} for the action


@dataclass(frozen=True)
class NextStep:
    """What ``start_step`` did: claimed a step, sent one back for approval, or verified the plan."""

    claimed: Claimed | None = None
    expired: PlanStep | None = None          # its approval expired: it waits for a new one
    verified: Transition | None = None       # every step succeeded: the incident is verified
    aftercare_done: str | None = None        # every step of an aftercare plan succeeded (its kind)


def start_step(session: Session, *, incident_id: int, owner: str, lease: timedelta) -> NextStep:
    """The engine's claim of the next step that may run now: pending, or approved and still approved.

    The ledger row is written in this transaction, before the action starts, so a step is claimed by
    exactly one thread of one process. An expired approval sends the step back for a new one. A
    plan whose steps all succeeded while the incident is still recovering (a crash before verify)
    is verified here.
    """
    incident = svc.get(session, incident_id)
    if not runs_now(incident):
        return NextStep()
    for step in svc.current_steps(session, incident_id):
        if step.status in ("succeeded", "skipped"):
            continue
        if step.status == "approved" and not _still_approved(session, step):
            return NextStep(expired=step if _sent_back_for_approval(session, step) else None)
        if step.status not in ("pending", "approved"):
            return NextStep()   # awaiting approval, running elsewhere, failed or rejected: wait
        try:
            entry = svc.ledger_start(session, step=step, owner=owner, lease=lease)
        except StaleVersion:
            return NextStep()
        if entry is None:
            return NextStep()
        svc.tell_step(session, incident_id=incident_id, step_id=require_id(step), event="started")
        _log_on_commit(session, incident_id, f"step {step.position} started (attempt {step.attempt}): {step.title}",
                       event="step_started", **_step_log(step))
        context = {"incident": incident.key or str(incident.id), "step": str(step.id), "scenario": incident.scenario}
        return NextStep(claimed=Claimed(step, require_id(entry), context))
    if incident.aftercare:
        return NextStep(aftercare_done=finish_aftercare(session, incident_id=incident_id))
    return NextStep(verified=finish_plan(session, incident_id=incident_id))


def _valid_votes(session: Session, step: PlanStep) -> list[tuple[str, tuple[str, ...]]]:
    """The approvals of the step's current attempt that have not expired: (user, roles used)."""
    now = utcnow()
    return [(a.user_id, tuple(a.roles)) for a in svc.approvals(session, step)
            if a.decision == "approve" and (a.expires_at is None or a.expires_at > now)]


def _still_approved(session: Session, step: PlanStep) -> bool:
    """Whether the step's valid (unexpired) votes still satisfy the approval policy."""
    return policy.approvals_satisfied(_valid_votes(session, step), step.approvals_required)


def _sent_back_for_approval(session: Session, step: PlanStep) -> bool:
    """An approved step whose approvals expired waits for new ones (False: someone moved it first)."""
    if not svc.move_step(session, step=step, to="awaiting_approval", from_statuses=("approved",),
                         new_attempt=True, detail=DETAIL_APPROVAL_EXPIRED):
        return False
    svc.add_event(session, incident_id=step.incident_id, kind="step", actor=AEGIS,
                  text=f"approval of step {step.position} expired",
                  data={"step_id": step.id, "code": "approval_expired", "position": step.position})
    svc.tell_step(session, incident_id=step.incident_id, step_id=require_id(step), event="expired")
    _log_on_commit(session, step.incident_id, f"step {step.position} approval expired: approve again",
                   event="approval_expired", **_step_log(step))
    return True


class Recorded(Enum):
    """How ``finish_step`` recorded an outcome."""

    RECORDED = "recorded"          # the step took the outcome
    LATE = "late"                  # after a sweeper's takeover, the untouched step took it anyway
    NOT_RECORDED = "not_recorded"  # the step had moved on (or the row is no longer ours): nothing more


_STEP_STATUS = {"succeeded": "succeeded", "failed": "failed", "needs_human": "awaiting_verification"}


def finish_step(session: Session, *, step: PlanStep, entry_id: int, owner: str, outcome: StepOutcome,
                rpo: Rpo | None = None) -> Recorded:
    """Record an action's outcome: ledger finish, step move, timeline event, outbox, and the RPO."""
    if not svc.ledger_finish(session, entry_id=entry_id, status=outcome.status, output=outcome.output,
                             only_if_owner=owner):
        return _finish_late(session, step, entry_id, owner, outcome, rpo)
    current = svc.get_step(session, require_id(step))
    svc.move_step(session, step=current, to=_STEP_STATUS[outcome.status], detail=outcome.detail,
                  evidence=outcome.evidence)
    svc.add_event(session, incident_id=step.incident_id, kind="step", actor=AEGIS, text=_step_text(step, outcome),
                  data={"step_id": step.id, "attempt": step.attempt, "outcome": outcome.status,
                        "evidence": outcome.evidence or [], **_event_code(step, outcome)})
    svc.tell_step(session, incident_id=step.incident_id, step_id=require_id(step), event=event_name(outcome))
    _store_rpo(session, step.incident_id, rpo)
    _log_result(session, step, outcome)
    return Recorded.RECORDED


def _finish_late(session: Session, step: PlanStep, entry_id: int, owner: str, outcome: StepOutcome,
                 rpo: Rpo | None) -> Recorded:
    """A sweeper took the step over while it still ran: record what really happened.

    The sweeper had to decide without knowing the outcome; now it is known. The ledger row gets
    the real outcome, and a step the sweeper sent back (for approval, or to run again) takes it
    too — unless someone already acted on the new attempt, whose decision then stands.
    """
    entry = svc.get_ledger(session, entry_id)
    key = _key(step.incident_id)
    if not svc.ledger_finish_late(session, entry_id=entry_id, owner=owner, status=outcome.status,
                                  output=outcome.output):
        log.warning("%s ledger row %s is %s and no longer ours; not recording this result", key, entry_id,
                    entry.status)
        return Recorded.NOT_RECORDED
    current = svc.get_step(session, require_id(step))
    untouched = (current.attempt == entry.attempt + 1 and current.status in ("awaiting_approval", "pending")
                 and not svc.approvals(session, current))
    log.warning("%s ledger row %s finished (%s) after a sweeper took it over; step %s is %s", key, entry_id,
                outcome.status, step.id, current.status)
    if not untouched:
        svc.add_event(session, incident_id=step.incident_id, kind="step", actor=AEGIS,
                      text=f"step {step.position} attempt {entry.attempt} finished late ({outcome.status}) "
                           f"after its lease lapsed; the step had moved on ({current.status})",
                      data={"step_id": step.id, "attempt": entry.attempt, "outcome": outcome.status, "late": True})
        return Recorded.NOT_RECORDED
    detail = f"finished after its lease lapsed: {outcome.detail}".rstrip(": ")
    svc.move_step(session, step=current, to=_STEP_STATUS[outcome.status], detail=detail,
                  evidence=outcome.evidence, from_statuses=("awaiting_approval", "pending"))
    svc.add_event(session, incident_id=step.incident_id, kind="step", actor=AEGIS,
                  text=_step_text(step, outcome) + " (recorded after its lease lapsed; not re-run)",
                  data={"step_id": step.id, "attempt": entry.attempt, "outcome": outcome.status,
                        "late": True, "evidence": outcome.evidence or []})
    svc.tell_step(session, incident_id=step.incident_id, step_id=require_id(step), event=event_name(outcome))
    _store_rpo(session, step.incident_id, rpo)
    _log_result(session, step, outcome, late=True)
    return Recorded.LATE


def _store_rpo(session: Session, incident_id: int, rpo: Rpo | None) -> None:
    if rpo is not None:
        svc.set_fields(session, incident_id=incident_id, rpo_seconds=rpo.seconds, rpo_basis=rpo.basis,
                       rpo_basis_data=rpo.basis_data)


def _log_result(session: Session, step: PlanStep, outcome: StepOutcome, *, late: bool = False) -> None:
    verb = {"succeeded": "succeeded", "failed": "failed", "needs_human": "waits for a manual verification"}
    _log_on_commit(session, step.incident_id,
                   f"step {step.position} {verb[outcome.status]}{' (late)' if late else ''}: {step.title}"
                   + (f" — {_one_line(outcome.detail, 200)}" if outcome.detail else ""),
                   event="step_result", status=outcome.status, detail=_one_line(outcome.detail, 200), late=late,
                   **_step_log(step))


def finish_plan(session: Session, *, incident_id: int) -> Transition | None:
    """Every step succeeded: ``verify`` — only on the evidence the verification steps stored."""
    steps = svc.current_steps(session, incident_id)
    checks = [item for s in steps if s.action == "verify" for item in (s.evidence or [])]
    if any(s.action == "verify" and not s.evidence for s in steps):
        log.error("%s a verification step succeeded without evidence; not verified", _key(incident_id))
        return None
    reason = (f"all steps succeeded; verified on {len(checks)} check(s)" if checks
              else "all steps succeeded (no verification step in this plan)")
    values: dict[str, object] = {"verified_at": utcnow()}
    if failed_over(steps):
        values["protected"] = False   # the promoted standby runs alone until a re-protect (aftercare)
    try:
        return _fire(session, incident_id=incident_id, trigger="verify", actor=AEGIS, reason=reason,
                     values=values)
    except (StaleVersion, IllegalTransition):
        return None


def verification_failed(session: Session, *, incident_id: int, reason: str) -> Transition | None:
    """A failing verification step sends the incident back to ``assessed`` (a new plan follows)."""
    if svc.get(session, incident_id).aftercare:
        return None   # a verified (or closed) incident's aftercare failing does not undo its recovery
    try:
        return _fire(session, incident_id=incident_id, trigger="verification_failed", actor=AEGIS, reason=reason)
    except (StaleVersion, IllegalTransition):
        return None


@dataclass(frozen=True)
class Interrupted:
    event: str     # succeeded | reapproval | requeued (the step event the outbox tells)
    text: str


def record_interruption(session: Session, *, entry: LedgerEntry, step: PlanStep, done: bool | None,
                        destructive: bool, rpo: Rpo | None = None) -> Interrupted:
    """A step whose process died (its ledger row was just marked interrupted): by the ``is_done`` probe,
    done → succeeded; otherwise a read-only step runs again and a destructive one waits for a new approval."""
    if done:
        svc.move_step(session, step=step, to="succeeded", from_statuses=("running",),
                      detail=DETAIL_CONFIRMED_AFTER_RESTART)
        _store_rpo(session, entry.incident_id, rpo)
        result = Interrupted("succeeded", "confirmed done after a restart")
    else:
        again = "awaiting_approval" if destructive else "pending"
        svc.move_step(session, step=step, to=again, from_statuses=("running",), new_attempt=True,
                      detail=DETAIL_INTERRUPTED)
        result = Interrupted("reapproval" if destructive else "requeued", "interrupted by a restart; " + (
            "approve again to run it" if destructive else "will run again"))
    svc.add_event(session, incident_id=entry.incident_id, kind="step", actor=AEGIS,
                  text=f"step {step.position} {result.text}",
                  data={"step_id": step.id, "is_done": done, "code": "step_interrupted", "position": step.position,
                        "done": bool(done), "again": result.event == "reapproval"})
    svc.tell_step(session, incident_id=entry.incident_id, step_id=require_id(step), event=result.event)
    _log_on_commit(session, entry.incident_id, f"step {step.position} {result.text}: {step.title}",
                   event="step_interrupted", status=result.event, **_step_log(step))
    return result


def event_name(outcome: StepOutcome) -> str:
    """The step event an outcome is reported as (the engine listener's and the outbox's vocabulary)."""
    return "manual_verification" if outcome.status == "needs_human" else outcome.status


def _step_text(step: PlanStep, outcome: StepOutcome) -> str:
    verb = {"succeeded": "succeeded", "failed": "failed", "needs_human": "waits for a manual verification"}
    return f"step {step.position} {verb[outcome.status]}: {step.title}" + (
        f" — {outcome.detail}" if outcome.detail else "")


def _event_code(step: PlanStep, outcome: StepOutcome) -> JsonObject:
    """The timeline event's code and parameters, which the message layer words per locale."""
    params: JsonObject = {"code": f"step_{outcome.status}", "position": step.position, "title": step.title}
    if outcome.status == "failed":
        params["detail"] = outcome.detail   # the error; a success's raw output flags stay out of it
    return params



# --- aftercare: plans that run after the recovery, without moving the state (issue 9) -------------
# A plan revision with ``incident.aftercare`` set ("reprotect" after a failover reached ``verified``,
# "cleanup" once a closed incident's restores left something aside) runs its steps under the same
# approvals, ledger and outbox as a recovery plan, while the incident stays ``verified`` (or
# ``closed``). The planner builds these plans (recovery/planner.py); the bot proposes them
# (bot/flows/aftercare.py) because they need the config. Decided here: aborting (or rejecting) a
# failed aftercare step abandons that plan (the step is marked rejected), and a failing step never
# moves the state. Neither plan is ever lost to the other or to the close: a re-protect plan may
# still be approved and run after the incident is closed (closing does not make the system
# protected, and the card keeps saying so), and the clean-up plan comes only once the re-protect
# plan has *settled* — finished, or abandoned — so proposing it never skips a re-protect step, and
# it also removes what the re-protect put aside. ``aftercare_settled`` is that test.

REPROTECT, CLEANUP = "reprotect", "cleanup"
#: the states in which an aftercare plan's steps may be decided on and run
AFTERCARE_STATES = {REPROTECT: ("verified", "closed"), CLEANUP: ("verified", "closed")}


def runs_now(incident: Incident) -> bool:
    """Whether the current plan's steps may run: a recovery while ``recovering``, an aftercare plan in its states."""
    if incident.aftercare:
        return incident.state in AFTERCARE_STATES.get(incident.aftercare, ())
    return incident.state == "recovering"


def decisions_open(incident: Incident) -> bool:
    """Whether the current plan's steps may be approved or rejected now."""
    return runs_now(incident) or (not incident.aftercare and incident.state == "assessed")


def failed_over(steps: list[PlanStep]) -> bool:
    """A plan that promoted a standby: afterwards the system runs without one."""
    return any(s.action == "postgres_promote" and s.status == "succeeded" for s in steps)


def aftercare_settled(session: Session, incident: Incident) -> bool:
    """Whether the current aftercare plan is over: every step succeeded (or was skipped), or one was
    rejected (aborted: the plan is abandoned there). True when there is no aftercare plan."""
    if not incident.aftercare:
        return True
    steps = svc.current_steps(session, require_id(incident))
    if any(s.status == "running" for s in steps):
        return False
    return any(s.status == "rejected" for s in steps) or all(s.status in ("succeeded", "skipped") for s in steps)


def propose_aftercare(session: Session, *, incident_id: int, kind: str, steps: list[StepSpec],
                      rationale: str) -> int | None:
    """Store an aftercare plan as the incident's next revision (its own plan message); the revision,
    or None when it does not apply now (wrong state, already proposed, a step running, no steps, or —
    for the clean-up — a re-protect plan that has not settled yet)."""
    incident = svc.lock(session, incident_id)
    if not steps or incident.state not in AFTERCARE_STATES.get(kind, ()) or incident.aftercare == kind:
        return None
    if kind == REPROTECT and (incident.protected is not False or incident.aftercare is not None):
        return None
    if any(s.status == "running" for s in svc.current_steps(session, incident_id)):
        return None   # never replace a plan under a running step
    if not aftercare_settled(session, incident):
        return None   # the clean-up waits until the re-protect plan finished or was abandoned
    revision = svc.replace_plan(session, incident_id=incident_id, strategy=incident.strategy or kind, specs=steps)
    svc.set_fields(session, incident_id=incident_id, aftercare=kind)
    svc.add_event(session, incident_id=incident_id, kind="aftercare", actor=AEGIS,
                  text=f"proposed the {kind} plan (revision {revision}): {rationale}",
                  data={"code": "aftercare_proposed", "aftercare": kind, "revision": revision,
                        "reason": rationale})
    svc.tell(session, incident_id=incident_id, kind="card")
    svc.tell(session, incident_id=incident_id, kind="plan_new")
    _log_on_commit(session, incident_id, f"{kind} plan proposed (revision {revision}): {_one_line(rationale)}",
                   event="aftercare_proposed", aftercare=kind, revision=revision)
    return revision


def _aftercare_recorded(session: Session, incident: Incident) -> bool:
    done = [e.data or {} for e in svc.timeline(session, require_id(incident))]
    return any(d.get("code") == "aftercare_done" and d.get("revision") == incident.plan_revision for d in done)


def finish_aftercare(session: Session, *, incident_id: int) -> str | None:
    """Every step of the aftercare plan succeeded: record it once (re-protect: ``protected``), post it."""
    incident = svc.lock(session, incident_id)
    kind = incident.aftercare
    if kind is None or _aftercare_recorded(session, incident):
        return None
    if kind == REPROTECT:
        svc.set_fields(session, incident_id=incident_id, protected=True)
    svc.add_event(session, incident_id=incident_id, kind="aftercare", actor=AEGIS,
                  text=f"the {kind} plan is done", data={"code": "aftercare_done", "aftercare": kind,
                                                         "revision": incident.plan_revision})
    svc.tell(session, incident_id=incident_id, kind="card")
    svc.tell(session, incident_id=incident_id, kind="plan")
    svc.tell(session, incident_id=incident_id, kind="aftercare_done", aftercare=kind, revision=incident.plan_revision)
    _log_on_commit(session, incident_id, f"{kind} plan done", event="aftercare_done", aftercare=kind)
    return kind


def abandon_aftercare(session: Session, incident: Incident, step: PlanStep, user_id: str) -> None:
    """Abort on a failed aftercare step: that plan stops there (the step is marked rejected); the state stays."""
    if not svc.move_step(session, step=step, to="rejected", from_statuses=("failed",),
                         detail=f"aborted by <@{user_id}>: {step.detail}".rstrip(": ")):
        raise Refused("abort_not_current", step_title=step.title, status=step.status)
    incident_id = require_id(incident)
    svc.add_event(session, incident_id=incident_id, kind="approval", actor=user_id,
                  text=f"aborted the {incident.aftercare} plan at step {step.position}: {step.title}",
                  data={"step_id": step.id, **_step_event("aftercare_aborted", step), "aftercare": incident.aftercare})
    svc.tell(session, incident_id=incident_id, kind="plan")
    svc.tell(session, incident_id=incident_id, kind="card")
    _log_on_commit(session, incident_id, f"{incident.aftercare} plan aborted by {user_id} at step {step.position}",
                   event="aftercare_aborted", actor=user_id, **_step_log(step))


def aside_items(session: Session, incident_id: int) -> list[JsonObject]:
    """What the incident's steps put aside (the ``aside`` of succeeded steps, and of failed steps that rolled
    back: an in-place restore keeps its failed attempt's directory) and no clean-up removed yet."""
    found: dict[tuple[str, str], JsonObject] = {}
    removed: set[str] = set()
    for step, status, output in svc.finished_outputs(session, incident_id):
        if status == "failed" and not output.get("rolled_back"):
            continue
        if step.action == "discard_aside":
            removed.update(str(x) for x in output.get("removed") or [])
        for item in output.get("aside") or []:
            if isinstance(item, dict) and item.get("kind") and item.get("location"):
                found[(str(item["kind"]), str(item["location"]))] = {
                    "kind": str(item["kind"]), "location": str(item["location"]),
                    "component": str(item.get("component") or "")}
    return [item for (_kind, location), item in found.items() if location not in removed]


def replication_after_reprotect(session: Session, incident_id: int) -> JsonObject | None:
    """The replication lag the last succeeded re-protect measured: {"lag_bytes", "lag_seconds", "standby"}."""
    last = None
    for step, output in svc.succeeded_outputs(session, incident_id):
        if step.action == "postgres_reprotect":
            last = output
    if last is None:
        return None
    return {"lag_bytes": last.get("lag_bytes"), "lag_seconds": last.get("lag_seconds"),
            "standby": last.get("standby"), "method": last.get("method")}
