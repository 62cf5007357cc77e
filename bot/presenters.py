"""Store rows → the plain views that ``messages`` renders.

Internal identifiers stop here: an action's raw output flag (``confirmed_by_human=True``) is not a
step detail, timeline events become (code, parameters) that the locale's ``timeline.j2`` words, and
the policy's two-person rule becomes the role the message names.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from bot.config import Config
from messages.views import (
    ApprovalView,
    CheckView,
    EvidenceView,
    ExpectedView,
    IncidentView,
    ObjectiveReport,
    PlanView,
    RevisionView,
    RoleView,
    StepView,
    TimelineItem,
)
from recovery import objectives
from statemachines import policy, usecases
from statemachines import service as svc
from statemachines.json_types import JsonObject
from statemachines.models import Incident, PlanStep, TimelineEvent, require_id
from statemachines.vocabulary import ROLES, SECURITY_LEAD

# Events that explain why a plan was replaced, newest wins.
_REPLAN_CAUSES = {"step_rejected": "rejected", "recovery_aborted": "aborted",
                  "recovery_options_set": "options_changed"}
# What a manual step's action reports; the plan shows who marked it done instead.
_INTERNAL_DETAILS = {"confirmed_by_human=True"}


def incident_view(session: Session, incident: Incident, config: Config, *, with_timeline: bool = False,
                  revision: int | None = None) -> IncidentView:
    """The view of an incident; ``revision`` picks an older plan revision's steps (for its old message)."""
    incident_id = require_id(incident)
    holders = svc.roles(session, incident_id)
    wanted = config.slack.scenario_roles.get(incident.scenario) or list(ROLES)
    role_names = [r for r in ROLES if r in wanted or r in holders]
    rows = svc.current_steps(session, incident_id) if revision is None else _steps(session, incident_id, revision)
    events = svc.timeline(session, incident_id)
    lag = usecases.replication_after_reprotect(session, incident_id) if incident.protected else None
    return IncidentView(
        key=incident.key or f"INC-{incident.id}", id=incident_id, scenario=incident.scenario,
        severity=incident.severity, summary=incident.summary, state=incident.state,
        declared_by=incident.declared_by, declared_at=incident.declared_at, channel_id=incident.channel_id,
        roles=[RoleView(r, holders.get(r)) for r in role_names], steps=[_step(session, s) for s in rows],
        strategy=incident.strategy,
        checks=[CheckView(c["name"], c["kind"], bool(c["ok"]), c["detail"]) for c in incident.checks or []],
        timeline=[_timeline_item(e, incident) for e in events] if with_timeline else [],
        close_summary=incident.close_summary, updated_at=incident.updated_at,
        roles_open=_roles_open(config), plan_revision=max(incident.plan_revision, 1),
        revision=_revision(session, incident, rows, events) if revision is None and not incident.aftercare else None,
        objectives=objective_report(session, incident, config) if revision is None else None,
        # aftercare (issue 9): the plan that runs after the recovery, and whether a standby protects again
        aftercare=incident.aftercare if revision is None else None, protected=incident.protected,
        standby_lag_bytes=int(lag["lag_bytes"]) if lag and _is_number(lag.get("lag_bytes")) else None,
        standby_lag_seconds=float(lag["lag_seconds"]) if lag and _is_number(lag.get("lag_seconds")) else None,
        plans=_plans(session, incident, events) if revision is None else [],
    )


def _plans(session: Session, incident: Incident, events: list[TimelineEvent]) -> list[PlanView]:
    """With aftercare: the recovery plan (the newest revision no aftercare proposal made — the one that
    reached ``verified``), then each aftercare plan by revision, so status keeps who approved the recovery."""
    if not incident.aftercare:
        return []
    incident_id = require_id(incident)
    kinds = {int(d["revision"]): str(d.get("aftercare") or "") for d in (e.data or {} for e in events)
             if d.get("code") == "aftercare_proposed" and isinstance(d.get("revision"), int)}
    recovery = max((r for r in range(1, incident.plan_revision + 1) if r not in kinds), default=None)
    found = [] if recovery is None else [(recovery, "recovery")]
    found += sorted(kinds.items())
    return [PlanView(r, kind, [_step(session, s) for s in _steps(session, incident_id, r)]) for r, kind in found]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _steps(session: Session, incident_id: int, revision: int) -> list[PlanStep]:
    return list(session.exec(
        select(PlanStep).where(PlanStep.incident_id == incident_id, PlanStep.revision == revision)
        .order_by(col(PlanStep.position))
    ))


def _step(session: Session, step: PlanStep) -> StepView:
    votes = [ApprovalView(a.user_id, a.decision, a.at, tuple(a.roles or ())) for a in svc.approvals(session, step)]
    detail = "" if (step.detail or "") in _INTERNAL_DETAILS else step.detail or ""
    return StepView(
        id=require_id(step), position=step.position, title=step.title, action=step.action, risk=step.risk,
        approver_roles=list(step.approver_roles or []), approvals_required=step.approvals_required,
        status=step.status, approvals=votes, detail=detail, manual=step.action == "manual",
        required_role=SECURITY_LEAD if step.approvals_required >= 2 else None,
    )


def _roles_open(config: Config) -> bool:
    """No roster at all (the demo): every role is open to everyone in the channel."""
    roles_open = getattr(policy, "roles_open", None)   # the incident-core engineer's rule, once it exists
    if callable(roles_open):
        return bool(roles_open(config.roster))
    return not config.roster


def _revision(session: Session, incident: Incident, current: list[PlanStep],
              events: list[TimelineEvent]) -> RevisionView | None:
    """What the current revision changed against the previous one, and why it was made."""
    if incident.plan_revision < 2:
        return None
    previous = [s.title for s in _steps(session, require_id(incident), incident.plan_revision - 1)]
    titles = [s.title for s in current]
    cause, by, reason = "", None, ""
    for event in reversed(events):
        data = event.data or {}
        code = data.get("code", "")
        if code in _REPLAN_CAUSES:
            cause, by, reason = _REPLAN_CAUSES[code], event.actor, str(data.get("reason") or "")
            break
        if event.kind == "transition" and data.get("trigger") == "verification_failed":
            cause = "verification_failed"
            break
    return RevisionView(
        revision=incident.plan_revision,
        added=[t for t in titles if t not in previous], removed=[t for t in previous if t not in titles],
        cause=cause, by=by, reason=reason,
    )


def _timeline_item(event: TimelineEvent, incident: Incident) -> TimelineItem:
    data: JsonObject = dict(event.data or {})
    code = str(data.get("code") or "")
    if event.kind == "transition":
        # transitions are written by the state machine's service: their code comes from the states
        code = "declared" if event.source_state is None else "transition"
        data.update(source=event.source_state, dest=event.dest_state)
        if data.get("trigger") in ("close", "close_false_alarm"):
            data["summary"] = incident.close_summary or ""
    elif event.kind == "slack_error" and not code:
        code = "slack_error"
        data.setdefault("error", event.text.rsplit(": ", 1)[-1])
    return TimelineItem(event.at, event.kind, event.actor, event.text, code, data)


# --- objectives and evidence (the closing report) ---------------------------------------------


def verifying_step(session: Session, incident: Incident) -> PlanStep | None:
    """The verification step that made the incident ``verified``: the newest succeeded one that
    finished by ``verified_at`` (an aftercare plan's later checks do not count); None before that."""
    if incident.verified_at is None:
        return None
    found = session.exec(
        select(PlanStep).where(PlanStep.incident_id == require_id(incident), PlanStep.action == "verify",
                               PlanStep.status == "succeeded", col(PlanStep.updated_at) <= incident.verified_at)
        .order_by(col(PlanStep.revision).desc(), col(PlanStep.position).desc())
    ).first()
    return found


def verification_evidence(session: Session, incident: Incident) -> list[EvidenceView]:
    """What the verification step checked, each with the value it observed."""
    return _evidence_of(verifying_step(session, incident))


def _evidence_of(step: PlanStep | None) -> list[EvidenceView]:
    return [] if step is None else [
        EvidenceView(str(e.get("check", "")), str(e.get("observed", "")), str(e.get("expected", "")),
                     bool(e.get("ok")), e.get("by")) for e in step.evidence or []]


def objective_report(session: Session, incident: Incident, config: Config) -> ObjectiveReport:
    """Achieved versus target (O1-O3) and the scenario's range (S1-S3); the maths is
    recovery/objectives.py. RTO counts as met only when the incident was verified *on evidence*;
    the RPO is what the engine stored from the step that measured it, with that basis."""
    targets = config.objectives
    step = verifying_step(session, incident)
    evidence = _evidence_of(step)
    figures = objectives.incident_figures(
        declared_at=incident.declared_at, verified_at=incident.verified_at, closed_at=incident.closed_at,
        rpo_seconds=incident.rpo_seconds,
        rpo_basis=objectives.Basis.stored(incident.rpo_basis, incident.rpo_basis_data),
        evidence_ok=bool(evidence) and all(e.ok for e in evidence),
        targets=objectives.Targets(targets.rto_minutes * 60, targets.rpo_minutes * 60, targets.mttr_minutes * 60),
        scenario=incident.scenario)
    return ObjectiveReport(
        rto_seconds=figures.rto.seconds, rto_target_seconds=figures.rto.target_seconds,
        rpo_seconds=figures.rpo.seconds, rpo_target_seconds=figures.rpo.target_seconds,
        rpo_basis=figures.rpo.basis.text, rpo_basis_data=figures.rpo.basis.as_data(),
        mttr_seconds=figures.mttr.seconds, mttr_target_seconds=figures.mttr.target_seconds,
        evidence=evidence,
        verified_manually_by=next((e.by for e in evidence if e.by), None),
        rto_met=figures.rto.met,
        rto_expected=_expected(figures.rto.expected), rpo_expected=_expected(figures.rpo.expected),
        declared_at=incident.declared_at, verified_at=incident.verified_at,
        verify_step=step.position if step is not None else None,
    )


def _expected(found: objectives.Expected | None) -> ExpectedView | None:
    if found is None:
        return None
    return ExpectedView(found.range.requirement, found.range.low_seconds, found.range.high_seconds, found.verdict)
