"""Store rows → the plain views that ``messages`` renders."""

from __future__ import annotations

from sqlmodel import Session

from bot.config import ROLES, Config
from messages.views import ApprovalView, CheckView, IncidentView, RoleView, StepView, TimelineItem
from statemachines import service as svc
from statemachines.models import Incident


def incident_view(session: Session, incident: Incident, config: Config, *, with_timeline: bool = False) -> IncidentView:
    holders = svc.roles(session, incident.id or 0)
    wanted = config.slack.scenario_roles.get(incident.scenario) or list(ROLES)
    role_names = [r for r in ROLES if r in wanted or r in holders]
    steps = []
    for step in svc.current_steps(session, incident.id or 0):
        votes = [ApprovalView(a.user_id, a.decision, a.at) for a in svc.approvals(session, step)]
        steps.append(StepView(
            id=step.id or 0, position=step.position, title=step.title, action=step.action, risk=step.risk,
            approver_roles=list(step.approver_roles or []), approvals_required=step.approvals_required,
            status=step.status, approvals=votes, detail=step.detail or "", manual=step.action == "manual",
        ))
    timeline = []
    if with_timeline:
        timeline = [TimelineItem(e.at, e.kind, e.actor, e.text) for e in svc.timeline(session, incident.id or 0)]
    return IncidentView(
        key=incident.key or f"INC-{incident.id}", id=incident.id or 0, scenario=incident.scenario,
        severity=incident.severity, summary=incident.summary, state=incident.state,
        declared_by=incident.declared_by, declared_at=incident.declared_at, channel_id=incident.channel_id,
        roles=[RoleView(r, holders.get(r)) for r in role_names], steps=steps, strategy=incident.strategy,
        checks=[CheckView(c["name"], c["kind"], bool(c["ok"]), c["detail"]) for c in incident.checks or []],
        timeline=timeline, close_summary=incident.close_summary, updated_at=incident.updated_at,
    )
