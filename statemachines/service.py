"""Domain service of the incident store: plain operations with keyword-only arguments.

Every state change is one transaction: an ``UPDATE … WHERE version = :seen`` compare-and-set
plus the timeline event that explains it. A caller holding a stale version loses with
``StaleVersion`` and changes nothing; that is what makes Slack retries, double clicks and two bot
replicas safe. Nothing here performs side effects outside the database: what a change must tell
the team is written as outbox rows (``tell``) in the same transaction, and delivered later by the
bot's dispatcher (bot/slack/outbox.py), so a crash or a chat outage delays a message but never loses it.

``transition`` is called only by ``statemachines.usecases`` (the domain operations people and the
engine perform); tests/test_layout_rules.py fails if any other module fires one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import CursorResult, Update, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from statemachines.json_types import JsonObject
from statemachines.machine import OPEN_STATES, next_state
from statemachines.models import (
    Approval,
    Incident,
    LedgerEntry,
    OutboxRow,
    PlanStep,
    RoleAssignment,
    TimelineEvent,
    require_id,
    utcnow,
)


class StaleVersion(Exception):
    """Someone else changed the row first; reload and decide again."""


class NotFound(Exception):
    pass


def _updated_one(session: Session, statement: Update) -> bool:
    """Whether an UPDATE matched exactly one row: the verdict of every compare-and-set here."""
    # an UPDATE always yields a CursorResult (of no columns: no RETURNING); Session.execute is typed
    # with the general Result
    result = cast("CursorResult[tuple[()]]", session.execute(statement))
    return result.rowcount == 1


class RoleTaken(Exception):
    def __init__(self, role: str, holder: str) -> None:
        super().__init__(f"{role} is held by {holder}")
        self.role = role
        self.holder = holder


@dataclass(frozen=True)
class Transition:
    incident_id: int
    trigger: str
    source: str
    dest: str
    actor: str | None
    reason: str
    at: datetime
    version: int


@dataclass
class StepSpec:
    """A step as the planner proposes it (before it is stored)."""

    title: str
    action: str
    risk: str = "low"
    approver_roles: list[str] = field(default_factory=list)
    approvals_required: int = 1
    params: JsonObject = field(default_factory=dict)


# --- incidents -------------------------------------------------------------------------------

def declare(
    session: Session, *, scenario: str, severity: str, summary: str, declared_by: str,
    locale: str, stakeholder_channel: str | None, request_key: str | None = None,
) -> Incident:
    incident = Incident(
        scenario=scenario, severity=severity, summary=summary, declared_by=declared_by,
        locale=locale, stakeholder_channel=stakeholder_channel, request_key=request_key,
    )
    session.add(incident)
    session.flush()
    incident.key = f"INC-{incident.id}"
    session.add(TimelineEvent(
        incident_id=require_id(incident), kind="transition", actor=declared_by, dest_state="detected",
        text=f"declared: {scenario} / {severity}: {summary}",
    ))
    session.flush()
    return incident


def find_by_request(session: Session, request_key: str) -> Incident | None:
    """The incident a request (``Incident.request_key``) declared, if any."""
    return session.exec(select(Incident).where(Incident.request_key == request_key)).first()


def get(session: Session, incident_id: int) -> Incident:
    incident = session.get(Incident, incident_id, populate_existing=True)
    if incident is None:
        raise NotFound(f"incident {incident_id}")
    return incident


def lock(session: Session, incident_id: int) -> Incident:
    """Read the incident and hold its row until this transaction ends.

    Step decisions (approve, reject, retry, abort, manual verification) take this lock first, so
    two clicks on one plan revision are applied one after the other, each seeing what the other
    did: a rejection and an approval can no longer both pass and strand the incident. PostgreSQL:
    ``SELECT … FOR UPDATE``; SQLite: every transaction already holds the database's write lock
    (``BEGIN IMMEDIATE``, see ``statemachines.store``).
    """
    incident = session.exec(
        select(Incident).where(Incident.id == incident_id).with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if incident is None:
        raise NotFound(f"incident {incident_id}")
    return incident


def find_by_key(session: Session, key: str) -> Incident | None:
    key = key.strip().upper()
    if key.isdigit():
        key = f"INC-{key}"
    return session.exec(select(Incident).where(Incident.key == key)).first()


def find_by_channel(session: Session, channel_id: str) -> Incident | None:
    return session.exec(
        select(Incident).where(Incident.channel_id == channel_id).order_by(col(Incident.id).desc())
    ).first()


def open_incidents(session: Session) -> list[Incident]:
    return list(session.exec(
        select(Incident).where(col(Incident.state).in_(OPEN_STATES)).order_by(col(Incident.id))
    ))


def transition(
    session: Session, *, incident_id: int, trigger: str, actor: str | None, reason: str = "",
    expected_version: int | None = None, values: dict[str, object] | None = None,
) -> Transition:
    """Fire ``trigger``; write state, version+1 and a timeline event in this transaction."""
    incident = get(session, incident_id)
    seen = incident.version if expected_version is None else expected_version
    source = incident.state
    dest = next_state(source, trigger)
    now = utcnow()
    moved = _updated_one(session, (
        update(Incident)
        .where(col(Incident.id) == incident_id, col(Incident.version) == seen,
               col(Incident.state) == source)
        .values(state=dest, version=seen + 1, updated_at=now, **(values or {}))
    ))
    if not moved:
        raise StaleVersion(f"{incident.key} changed while {trigger} was being applied")
    session.add(TimelineEvent(
        incident_id=incident_id, at=now, kind="transition", actor=actor, source_state=source,
        dest_state=dest, text=reason or trigger, data={"trigger": trigger},
    ))
    done = Transition(incident_id, trigger, source, dest, actor, reason, now, seen + 1)
    tell_transition(session, done)
    session.flush()
    return done


def set_fields(session: Session, *, incident_id: int, **values: object) -> None:
    """Update bookkeeping columns (message refs, RPO) without touching state or version."""
    session.execute(update(Incident).where(col(Incident.id) == incident_id).values(**values))


def add_event(
    session: Session, *, incident_id: int, kind: str, actor: str | None, text: str,
    data: JsonObject | None = None,
) -> None:
    session.add(TimelineEvent(incident_id=incident_id, kind=kind, actor=actor, text=text, data=data or {}))
    session.flush()


def timeline(session: Session, incident_id: int) -> list[TimelineEvent]:
    return list(session.exec(
        select(TimelineEvent).where(TimelineEvent.incident_id == incident_id)
        .order_by(col(TimelineEvent.at), col(TimelineEvent.id))
    ))


def claim_reminder(session: Session, *, incident_id: int, not_before: datetime) -> bool:
    """Compare-and-set on ``last_reminder_at`` so that two replicas post one reminder."""
    incident = get(session, incident_id)
    if incident.state not in OPEN_STATES:
        return False
    last = incident.last_reminder_at
    if last is not None and last > not_before:
        return False
    query = update(Incident).where(col(Incident.id) == incident_id)
    query = query.where(col(Incident.last_reminder_at).is_(None) if last is None
                        else col(Incident.last_reminder_at) == last)
    return _updated_one(session, query.values(last_reminder_at=utcnow()))


# --- the outbox: what a committed change must tell ---------------------------------------------

# Kinds whose delivery re-renders one message in place: several in one batch are delivered once.
REFRESH_KINDS = frozenset({"card", "plan", "stakeholder_root"})
# What each step event must tell, besides the plan re-rendered in place.
_STEP_EVENT_KINDS = {"succeeded": "step_result", "failed": "step_result", "reapproval": "reapproval",
                     "manual_verification": "manual_verification"}


def tell(session: Session, *, incident_id: int, kind: str, version: int | None = None,
         **payload: object) -> None:
    """Write one outbox row in this transaction: it commits (or rolls back) with the change it reports."""
    if version is None:
        version = int(session.execute(
            select(Incident.version).where(col(Incident.id) == incident_id)).scalar_one_or_none() or 0)
    session.add(OutboxRow(incident_id=incident_id, kind=kind, version=version, payload=payload))


def tell_transition(session: Session, transition: Transition) -> None:
    """Every transition updates the card and the stakeholder post, and tells what it means."""
    base = {"incident_id": transition.incident_id, "version": transition.version}
    tell(session, kind="card", **base)
    tell(session, kind="stakeholder_root", **base)
    if transition.source != transition.dest:
        tell(session, kind="stakeholder_update", **base, source=transition.source, dest=transition.dest,
             actor=transition.actor, reason=transition.reason, at=transition.at.isoformat(),
             trigger=transition.trigger)
    if transition.dest in ("recovering", "verified", "closed"):
        tell(session, kind="plan", **base)   # the plan's header follows the incident
    if transition.dest == "closed":
        tell(session, kind="closing_report", **base)
        tell(session, kind="closing_report_stakeholders", **base)


def tell_step(session: Session, *, incident_id: int, step_id: int, event: str) -> None:
    """A step moved (started, succeeded, failed, needs approval again, …): re-render the plan, and
    post what the event means in the channel."""
    tell(session, incident_id=incident_id, kind="plan", step_id=step_id, event=event)
    kind = _STEP_EVENT_KINDS.get(event)
    if kind:
        tell(session, incident_id=incident_id, kind=kind, step_id=step_id, event=event)


# --- roles -----------------------------------------------------------------------------------

def roles(session: Session, incident_id: int) -> dict[str, str]:
    rows = session.exec(select(RoleAssignment).where(RoleAssignment.incident_id == incident_id))
    return {row.role: row.user_id for row in rows}


def assign_role(session: Session, *, incident_id: int, role: str, user_id: str) -> bool:
    """Give ``role`` to ``user_id``. Returns False when they already hold it; RoleTaken otherwise."""
    holder = roles(session, incident_id).get(role)
    if holder == user_id:
        return False
    if holder is not None:
        raise RoleTaken(role, holder)
    try:
        with session.begin_nested():
            session.add(RoleAssignment(incident_id=incident_id, role=role, user_id=user_id))
    except IntegrityError:
        holder = roles(session, incident_id).get(role) or "someone else"
        if holder == user_id:
            return False
        raise RoleTaken(role, holder) from None
    add_event(session, incident_id=incident_id, kind="role", actor=user_id, text=f"took the role {role}",
              data={"code": "role_claimed", "role": role})
    return True


# --- plan steps ------------------------------------------------------------------------------

def replace_plan(session: Session, *, incident_id: int, strategy: str, specs: list[StepSpec]) -> int:
    """Store a new plan revision; unfinished steps of older revisions become ``skipped``."""
    incident = get(session, incident_id)
    revision = incident.plan_revision + 1
    session.execute(
        update(PlanStep)
        .where(col(PlanStep.incident_id) == incident_id,
               col(PlanStep.status).in_(("pending", "awaiting_approval", "approved", "failed")))
        .values(status="skipped", version=PlanStep.version + 1, updated_at=utcnow())
    )
    for position, spec in enumerate(specs, start=1):
        session.add(PlanStep(
            incident_id=incident_id, revision=revision, position=position, title=spec.title,
            action=spec.action, params=spec.params, risk=spec.risk, approver_roles=spec.approver_roles,
            approvals_required=spec.approvals_required,
            status="awaiting_approval" if spec.approvals_required > 0 else "pending",
        ))
    set_fields(session, incident_id=incident_id, plan_revision=revision, strategy=strategy)
    session.flush()
    return revision


def current_steps(session: Session, incident_id: int) -> list[PlanStep]:
    incident = get(session, incident_id)
    return list(session.exec(
        select(PlanStep).where(PlanStep.incident_id == incident_id,
                               PlanStep.revision == incident.plan_revision)
        .order_by(col(PlanStep.position))
    ))


def get_step(session: Session, step_id: int) -> PlanStep:
    step = session.get(PlanStep, step_id, populate_existing=True)
    if step is None:
        raise NotFound(f"step {step_id}")
    return step


def move_step(
    session: Session, *, step: PlanStep, to: str, detail: str | None = None,
    from_statuses: tuple[str, ...] | None = None, new_attempt: bool = False,
    evidence: list[JsonObject] | None = None,
) -> bool:
    """Compare-and-set a step's status; False when another request moved it first."""
    values: dict[str, object] = {"status": to, "version": step.version + 1, "updated_at": utcnow()}
    if detail is not None:
        values["detail"] = detail
    if evidence is not None:
        values["evidence"] = evidence
    if new_attempt:
        values["attempt"] = step.attempt + 1
    query = update(PlanStep).where(col(PlanStep.id) == step.id, col(PlanStep.version) == step.version)
    if from_statuses:
        query = query.where(col(PlanStep.status).in_(from_statuses))
    return _updated_one(session, query.values(**values))


def approvals(session: Session, step: PlanStep, *, attempt: int | None = None) -> list[Approval]:
    return list(session.exec(
        select(Approval).where(Approval.step_id == step.id,
                               Approval.attempt == (step.attempt if attempt is None else attempt))
        .order_by(col(Approval.at))
    ))


def all_approvals(session: Session, incident_id: int) -> list[Approval]:
    return list(session.exec(
        select(Approval).where(Approval.incident_id == incident_id).order_by(col(Approval.at))
    ))


def record_vote(
    session: Session, *, step: PlanStep, user_id: str, decision: str, roles_used: list[str],
    expires_in: timedelta | None,
) -> bool:
    """Record one user's vote on the step's current attempt; False when they already voted."""
    try:
        with session.begin_nested():
            session.add(Approval(
                incident_id=step.incident_id, step_id=require_id(step), attempt=step.attempt, user_id=user_id,
                decision=decision, roles=roles_used,
                expires_at=utcnow() + expires_in if expires_in else None,
            ))
    except IntegrityError:
        return False
    return True


def renew_expired_vote(session: Session, *, step: PlanStep, user_id: str, roles_used: list[str],
                       expires_in: timedelta | None) -> bool:
    """Renew this user's approval of the step's current attempt if it has expired (True); False when they
    have no such vote (none, a valid one, or a rejection, which is never turned into an approval)."""
    now = utcnow()
    # one compare-and-set: two clicks of the same person racing renew it once
    renewed = _updated_one(session, update(Approval).where(
        col(Approval.step_id) == step.id, col(Approval.attempt) == step.attempt, col(Approval.user_id) == user_id,
        col(Approval.decision) == "approve", col(Approval.expires_at).is_not(None), col(Approval.expires_at) <= now,
    ).values(roles=roles_used, at=now, expires_at=now + expires_in if expires_in else None))
    if renewed:   # Approval rows loaded before the UPDATE are stale now: the next read reloads them
        for loaded in list(session.identity_map.values()):
            if isinstance(loaded, Approval):
                session.expire(loaded)
    return renewed


# --- the action ledger (the narrow interface recovery/ uses) ----------------------------------

def ledger_start(
    session: Session, *, step: PlanStep, owner: str, lease: timedelta,
) -> LedgerEntry | None:
    """Claim the step for execution: ledger row first, then status. None = someone else has it."""
    key = f"{step.incident_id}:{step.id}:{step.attempt}"
    entry = LedgerEntry(
        incident_id=step.incident_id, step_id=require_id(step), idempotency_key=key, attempt=step.attempt,
        action=step.action, owner=owner, lease_until=utcnow() + lease,
    )
    try:
        # one savepoint for both: a step that moved meanwhile leaves no ledger row behind, which would
        # otherwise hold this attempt's idempotency key and keep the step from ever being claimed
        with session.begin_nested():
            session.add(entry)
            session.flush()
            if not move_step(session, step=step, to="running", from_statuses=("pending", "approved")):
                raise StaleVersion(f"step {step.id} moved while it was being claimed")
    except IntegrityError:
        return None
    return entry


def ledger_renew(session: Session, *, entry_id: int, owner: str, lease: timedelta) -> bool:
    return _updated_one(session,
        update(LedgerEntry)
        .where(col(LedgerEntry.id) == entry_id, col(LedgerEntry.owner) == owner,
               col(LedgerEntry.status) == "running")
        .values(lease_until=utcnow() + lease)
    )


def ledger_finish(
    session: Session, *, entry_id: int, status: str, output: JsonObject,
    only_if_owner: str | None = None,
) -> bool:
    query = update(LedgerEntry).where(col(LedgerEntry.id) == entry_id, col(LedgerEntry.status) == "running")
    if only_if_owner is not None:
        query = query.where(col(LedgerEntry.owner) == only_if_owner)
    return _updated_one(session,
        query.values(status=status, output=output, finished_at=utcnow())
    )


def ledger_interrupt(session: Session, *, entry_id: int, now: datetime, note: str) -> bool:
    """The sweeper's takeover: only of a row still running whose lease is still lapsed *now*.

    Checking the lease again in the UPDATE (not just in the SELECT that found the row) means a
    renewal that lands in between wins over the sweeper.
    """
    return _updated_one(session,
        update(LedgerEntry)
        .where(col(LedgerEntry.id) == entry_id, col(LedgerEntry.status) == "running",
               col(LedgerEntry.lease_until) < now)
        .values(status="interrupted", output={"note": note}, finished_at=now)
    )


def ledger_finish_late(
    session: Session, *, entry_id: int, owner: str, status: str, output: JsonObject,
) -> bool:
    """The real outcome of a row a sweeper marked ``interrupted`` while its owner was still running it."""
    return _updated_one(session,
        update(LedgerEntry)
        .where(col(LedgerEntry.id) == entry_id, col(LedgerEntry.owner) == owner,
               col(LedgerEntry.status) == "interrupted")
        .values(status=status, finished_at=utcnow(),
                output={**output, "note": "finished after its lease lapsed; a sweeper had taken it over"})
    )


def get_ledger(session: Session, entry_id: int) -> LedgerEntry:
    entry = session.get(LedgerEntry, entry_id, populate_existing=True)
    if entry is None:
        raise NotFound(f"ledger row {entry_id}")
    return entry


def record_manual_verification(
    session: Session, *, step: PlanStep, user_id: str, statement: str, roles_used: list[str],
) -> bool:
    """A responder's stated evidence completes a step waiting for manual verification."""
    observed = [{"check": "manual verification", "observed": statement, "expected": "stated by a responder",
                 "ok": True, "by": user_id, "roles": roles_used}]
    if not move_step(session, step=step, to="succeeded", from_statuses=("awaiting_verification",),
                     detail=f"verified manually by <@{user_id}>: {statement}", evidence=observed):
        return False
    add_event(session, incident_id=step.incident_id, kind="verification", actor=user_id,
              text=f"verified manually: {statement}",
              data={"step_id": step.id, "manual": True, "evidence": observed, "code": "verified_manually",
                    "position": step.position, "title": step.title, "statement": statement})
    return True


def ledger_for_step(session: Session, step_id: int) -> list[LedgerEntry]:
    return list(session.exec(
        select(LedgerEntry).where(LedgerEntry.step_id == step_id).order_by(col(LedgerEntry.attempt))
    ))


def expired_running(session: Session, *, now: datetime) -> list[LedgerEntry]:
    """Ledger rows still ``running`` whose lease ran out: their process died mid-step."""
    return list(session.exec(
        select(LedgerEntry).where(LedgerEntry.status == "running", col(LedgerEntry.lease_until) < now)
    ))


def succeeded_outputs(session: Session, incident_id: int) -> list[tuple[PlanStep, JsonObject]]:
    """Each succeeded execution of the incident's steps with its ledger output, oldest first (every revision)."""
    return [(step, output) for step, status, output in finished_outputs(session, incident_id) if status == "succeeded"]


def finished_outputs(session: Session, incident_id: int) -> list[tuple[PlanStep, str, JsonObject]]:
    """Each succeeded or failed execution of the incident's steps: (step, ledger status, output), oldest first."""
    rows = session.exec(
        select(PlanStep, LedgerEntry).where(LedgerEntry.incident_id == incident_id,
                                            LedgerEntry.step_id == PlanStep.id,
                                            col(LedgerEntry.status).in_(("succeeded", "failed")))
        .order_by(col(LedgerEntry.id))
    )
    return [(step, entry.status, dict(entry.output or {})) for step, entry in rows]
