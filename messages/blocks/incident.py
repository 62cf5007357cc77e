"""The incident's messages: the card, the plan, step results, the stakeholder thread, the closing
report, reminders, status and the incident list, built from ``messages.views`` with ``messages.blocks.kit``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from messages.blocks.kit import (
    ABORT,
    APPROVE,
    CHOOSABLE_STRATEGIES,
    CLAIM_ROLE,
    CLOSE,
    LINE_CHARS,
    MAX_BLOCKS,
    REJECT,
    RETRY,
    SET_INFECTION_TIME,
    SET_PARTIAL_TARGET,
    STRATEGY,
    VERIFY_MANUAL,
    actions_block,
    as_message,
    button,
    clip,
    context_block,
    header_block,
    phrase,
    safe_link,
    section_block,
    sections,
    select,
)
from messages.blocks.plan_reason import plan_reason
from messages.views import (
    Block,
    IncidentView,
    Message,
    ObjectiveReport,
    ReplacedView,
    StepView,
    TimelineItem,
    TransitionView,
)

TIMELINE_CAP = 40              # closing report shows the first and last TIMELINE_CAP // 2 events

CLOSED = "closed"
REPORT_HIDDEN_KINDS = ("audit",)   # refused clicks: in the audit trail, not in the stakeholders' report


@dataclass(frozen=True)
class StepRow:
    """A step plus who voted on it, so templates need no list gymnastics."""

    step: StepView
    approved_by: list[str] = field(default_factory=list)
    rejected_by: list[str] = field(default_factory=list)


def _step_rows(steps: list[StepView]) -> list[StepRow]:
    rows = []
    for step in sorted(steps, key=lambda s: s.position):
        approved = _distinct(a.user_id for a in step.approvals if a.decision == "approve")
        rejected = _distinct(a.user_id for a in step.approvals if a.decision == "reject")
        rows.append(StepRow(step, approved, rejected))
    return rows


def _distinct(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _progress(row: StepRow, locale: str) -> str:
    """"1 of 2 approvals — the security lead must be one of them", or who approved."""
    return phrase(locale, "plan", "progress", row=row)


def _step_buttons(step: StepView, locale: str) -> list[Block]:
    """Buttons a step offers in its current status; none unless someone has to decide."""
    value = str(step.id)
    if step.status == "awaiting_approval":
        label = phrase(locale, "buttons", "mark_done" if step.manual else "approve")
        return [
            button(label, APPROVE, value, "primary"),
            button(phrase(locale, "buttons", "reject"), REJECT, value, "danger"),
        ]
    if step.status == "failed":
        return [
            button(phrase(locale, "buttons", "retry"), RETRY, value),
            button(phrase(locale, "buttons", "abort"), ABORT, value, "danger"),
        ]
    return []


def _last_update(v: IncidentView) -> datetime:
    return v.updated_at or v.declared_at


# ---------------------------------------------------------------------------------------------
# Incident channel


def incident_card(v: IncidentView, locale: str) -> Message:
    """The incident's pinned card: what, how bad, state, who holds which role, and Close."""
    blocks = [
        header_block(phrase(locale, "incident_card", "header", v=v), "incident_header"),
        section_block(phrase(locale, "incident_card", "summary", v=v), "incident_summary"),
        section_block(phrase(locale, "incident_card", "roles", v=v), "incident_roles"),
    ]
    for role in v.roles if v.state != CLOSED else []:   # a closed incident takes no claims
        if role.user_id is None:
            label = phrase(locale, "buttons", "claim", role=role.role)
            blocks.append(actions_block(f"claim_{role.role}", [button(label, CLAIM_ROLE, role.role)]))
    if v.state != CLOSED:
        close = button(phrase(locale, "buttons", "close"), CLOSE, str(v.id), "danger")
        blocks.append(actions_block("incident_actions", [close]))
    blocks.append(context_block(phrase(locale, "incident_card", "context", v=v, updated_at=_last_update(v)),
                           "incident_context"))
    return as_message(phrase(locale, "incident_card", "text", v=v), blocks, locale)


def _step_text(row: StepRow, locale: str, *, inline_detail: bool) -> tuple[str, str]:
    """(section text, detail text); the detail is folded into the section when ``inline_detail``."""
    text = phrase(locale, "plan", "step", row=row, progress=_progress(row, locale))
    detail = phrase(locale, "plan", "detail", step=row.step) if row.step.detail else ""
    if inline_detail and detail:
        return f"{text}\n{detail}", ""
    return text, detail


def _plan_body(rows: list[StepRow], intro: str, layout: str, locale: str) -> list[Block]:
    """Blocks after the header, in one of three layouts, roomiest first:
    ``full`` (detail in its own context block), ``compact`` (detail inline), and ``dense`` (steps
    without buttons share a section with the next step that has buttons, so a plan costs about
    two blocks per step awaiting a decision)."""
    if layout != "dense":
        blocks = [section_block(intro, "plan_intro")]
        for row in rows:
            step = row.step
            text, detail = _step_text(row, locale, inline_detail=layout == "compact")
            blocks.append(section_block(text, f"step_{step.id}_text"))
            if detail:
                blocks.append(context_block(detail, f"step_{step.id}_detail"))
            if buttons := _step_buttons(step, locale):
                blocks.append(actions_block(f"step_{step.id}", buttons))
        return blocks
    blocks = []
    pending = [intro]
    for row in rows:
        pending.append(_step_text(row, locale, inline_detail=True)[0])
        if buttons := _step_buttons(row.step, locale):
            blocks.extend(sections(pending, f"step_{row.step.id}_text"))
            blocks.append(actions_block(f"step_{row.step.id}", buttons))
            pending = []
    if pending:
        blocks.extend(sections(pending, "plan_tail"))
    return blocks


def plan_message(v: IncidentView, locale: str) -> Message:
    """The recovery plan with one Approve/Reject (or Retry/Abort) pair per step that needs it."""
    rows = _step_rows(v.steps)
    counts = {
        "total": len(rows),
        "awaiting": sum(r.step.status == "awaiting_approval" for r in rows),
        "failed": sum(r.step.status == "failed" for r in rows),
    }
    intro = phrase(locale, "plan", "intro", v=v, **counts)
    blocks = [header_block(phrase(locale, "plan", "header", v=v), "plan_header")]
    if v.revision is not None:
        blocks.append(section_block(phrase(locale, "plan", "revision", v=v), "plan_revision"))
    if not rows:
        empty = phrase(locale, "plan", "empty", v=v)
        blocks += [section_block(intro, "plan_intro"), section_block(empty, "plan_empty")]
    else:
        for layout in ("full", "compact", "dense"):
            body = _plan_body(rows, intro, layout, locale)
            if len(blocks) + len(body) <= MAX_BLOCKS:
                break
        # Still too long (dozens of steps awaiting a decision): as_message cuts it cleanly.
        blocks.extend(body)
    return as_message(phrase(locale, "plan", "text", v=v, **counts), blocks, locale)


def plan_replaced(v: IncidentView, old: ReplacedView, locale: str) -> Message:
    """An old plan message once a new revision exists: no buttons, its steps as text, a link to the new one.

    ``v.steps`` are the steps of the old revision.
    """
    old = ReplacedView(old.revision, old.current_revision, safe_link(old.link))
    lines = [phrase(locale, "plan", "replaced_body", v=v, old=old)]
    lines += [clip(phrase(locale, "plan", "replaced_step", step=s), LINE_CHARS)
              for s in sorted(v.steps, key=lambda s: s.position)]
    blocks = [header_block(phrase(locale, "plan", "replaced_header", v=v, old=old), "plan_header"),
              *sections(lines, "plan_replaced")[: MAX_BLOCKS - 1]]
    return as_message(phrase(locale, "plan", "replaced_text", v=v, old=old), blocks, locale)


def step_rejected(v: IncidentView, step: StepView, user_id: str, reason: str, locale: str) -> Message:
    """The channel post of a rejection: who, which step, and the reason they gave."""
    ctx = {"v": v, "step": step, "user": user_id, "reason": reason}
    return as_message(phrase(locale, "plan", "rejected_text", **ctx),
                    [section_block(phrase(locale, "plan", "rejected", **ctx), f"step_{step.id}_rejected")], locale)


def assessment(v: IncidentView, locale: str, options: Mapping[str, object] | None = None, *,
               rationale: str = "", reason: str = "", reason_ctx: Mapping[str, object] | None = None) -> Message:
    """Health check results, the strategy chosen from them and why (``reason`` + ``reason_ctx``, the
    planner's code and params, worded per locale by plan_reason.j2; else ``rationale``, English), and the
    controls to choose otherwise (``options``: the incident's ``recovery_options``)."""
    failing = sum(not c.ok for c in v.checks)
    counts = {"failing": failing, "total": len(v.checks)}
    blocks = [header_block(phrase(locale, "assessment", "header", v=v), "assessment_header")]
    if v.checks:
        lines = [clip(phrase(locale, "assessment", "check", check=c), LINE_CHARS) for c in v.checks]
        blocks.extend(sections(lines, "assessment_checks")[: MAX_BLOCKS - 3])
    else:
        blocks.append(section_block(phrase(locale, "assessment", "no_checks"), "assessment_checks"))
    why = plan_reason(locale, reason, reason_ctx)
    blocks.append(section_block(phrase(locale, "assessment", "strategy", v=v, rationale=rationale, why=why,
                                       **counts), "assessment_strategy"))
    blocks += _choice_blocks(v, options or {}, locale)
    return as_message(phrase(locale, "assessment", "text", v=v, **counts), blocks, locale)


def _choice_blocks(v: IncidentView, options: Mapping[str, object], locale: str) -> list[Block]:
    """What the responders chose so far, and the controls to change it: the strategy select, the
    partial-recovery form and, for ransomware, the infection-time form. Choosing re-plans (a new
    revision); the bot refuses it once the recovery runs, so the controls stay on older messages."""
    infection = _parse_time(options.get("infection_time"))
    found = options.get("partial")
    partial = found if isinstance(found, dict) else None
    ransomware = v.scenario == "ransomware"
    blocks: list[Block] = []
    if infection is not None or partial or ransomware:
        text = phrase(locale, "assessment", "choices", v=v, infection=infection, partial=partial,
                      partial_time=_parse_time((partial or {}).get("target_time")), ransomware=ransomware)
        blocks.append(context_block(text, "assessment_choices"))
    chooser = select(phrase(locale, "assessment", "strategy_placeholder"), STRATEGY,
                     [(key, phrase(locale, "assessment", "strategy_option", key=key)) for key in CHOOSABLE_STRATEGIES],
                     initial=v.strategy)
    switch = section_block(phrase(locale, "assessment", "strategy_switch", v=v), "assessment_switch")
    switch["accessory"] = chooser
    blocks.append(switch)
    controls = []
    if ransomware:
        controls.append(button(phrase(locale, "assessment", "infection_button"), SET_INFECTION_TIME, str(v.id)))
    controls.append(button(phrase(locale, "assessment", "partial_button"), SET_PARTIAL_TARGET, str(v.id)))
    blocks.append(actions_block("assessment_actions", controls))
    blocks.append(context_block(phrase(locale, "assessment", "choices_hint", v=v), "assessment_hint"))
    return blocks


def _parse_time(value: object) -> datetime | None:
    """An ISO-8601 time from the options JSON; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def reapproval_request(v: IncidentView, step: StepView, locale: str) -> Message:
    """After a crash: the step's outcome is unknown, it was not re-run, approve again to run it."""
    blocks = [
        section_block(phrase(locale, "reapproval", "body", v=v, step=step), f"step_{step.id}_reapproval"),
        actions_block(f"step_{step.id}", [
            button(phrase(locale, "buttons", "mark_done" if step.manual else "approve"),
                    APPROVE, str(step.id), "primary"),
            button(phrase(locale, "buttons", "reject"), REJECT, str(step.id), "danger"),
        ]),
    ]
    return as_message(phrase(locale, "reapproval", "text", v=v, step=step), blocks, locale)


def step_result(v: IncidentView, step: StepView, locale: str) -> Message:
    """A short channel post when a step finished (success, failure, or another end state)."""
    body = phrase(locale, "step_result", "body", v=v, step=step)
    return as_message(phrase(locale, "step_result", "text", v=v, step=step),
                    [section_block(body, f"step_{step.id}_result")], locale)


def step_prepared(v: IncidentView, step: StepView, ready: Mapping[str, object], locale: str) -> Message:
    """A waiting step was prepared ahead of its approval (e.g. a restore's backup staged and verified)."""
    body = phrase(locale, "step_result", "prepared", v=v, step=step, ready=ready)
    return as_message(phrase(locale, "step_result", "prepared_text", v=v, step=step, ready=ready),
                      [section_block(body, f"step_{step.id}_prepared")], locale)


def reminder(v: IncidentView, open_seconds: float, locale: str) -> Message:
    """Periodic nudge: still open, for how long, and what the incident is waiting for."""
    waiting, step = _waiting_for(v)
    waiting_text = phrase(locale, "reminder", "waiting", v=v, waiting=waiting, step=step)
    ctx = {"v": v, "open_seconds": open_seconds, "waiting_text": waiting_text}
    blocks = [section_block(phrase(locale, "reminder", "body", **ctx), "reminder")]
    return as_message(phrase(locale, "reminder", "text", **ctx), blocks, locale)


def _waiting_for(v: IncidentView) -> tuple[str, StepView | None]:
    """What blocks progress, most urgent first: a failed step needs a decision before anything."""
    steps = sorted(v.steps, key=lambda s: s.position)
    for status, kind in (("failed", "failed_step"), ("awaiting_approval", "approval"),
                         ("running", "running"), ("approved", "running")):
        for step in steps:
            if step.status == status:
                return kind, step
    commander = next((r.user_id for r in v.roles if r.role == "incident_commander"), None)
    by_state = {
        "detected": "commander" if commander is None else "assembly",
        "assembled": "assessment",
        "assessed": "plan",
        "recovering": "verification",
        "verified": "close",
    }
    return by_state.get(v.state, "nothing"), None


def status_reply(v: IncidentView, locale: str) -> Message:
    """``/aegis status``: state, every step with its status and approvers, and the roles. Once an
    aftercare plan exists, the recovery plan that reached ``verified`` is listed first and each
    aftercare plan after it under its own title (``v.plans``)."""
    rows = _step_rows(v.steps)
    blocks = [section_block(phrase(locale, "status_reply", "head", v=v, updated_at=_last_update(v)), "status_head")]
    if v.plans:   # aftercare: the recovery plan that reached verified, then each aftercare plan, labelled
        lines = []
        for plan in v.plans:
            lines.append(phrase(locale, "status_reply", "plan_title", plan=plan))
            lines += [clip(phrase(locale, "status_reply", "step", row=r, progress=_progress(r, locale)), LINE_CHARS)
                      for r in _step_rows(plan.steps)]
        blocks.extend(sections(lines, "status_steps")[: MAX_BLOCKS - 3])
    elif rows:
        lines = [phrase(locale, "status_reply", "steps_title")]
        lines += [clip(phrase(locale, "status_reply", "step", row=r, progress=_progress(r, locale)), LINE_CHARS)
                  for r in rows]
        blocks.extend(sections(lines, "status_steps")[: MAX_BLOCKS - 3])
    else:
        blocks.append(section_block(phrase(locale, "status_reply", "no_steps"), "status_steps"))
    if v.objectives is not None:
        blocks.append(section_block(objective_lines(v.objectives, locale, closing=False), "status_objectives"))
    blocks.append(section_block(phrase(locale, "status_reply", "roles", v=v), "status_roles"))
    return as_message(phrase(locale, "status_reply", "text", v=v), blocks, locale)


# ---------------------------------------------------------------------------------------------
# Stakeholders


def stakeholder_root(v: IncidentView, locale: str) -> Message:
    """Root of the stakeholder thread; edited in place at every transition, so it shows the
    current state."""
    ctx = {"v": v, "updated_at": _last_update(v)}
    blocks = [
        section_block(phrase(locale, "stakeholder_root", "body", **ctx), "stakeholder_root"),
        context_block(phrase(locale, "stakeholder_root", "context", **ctx), "stakeholder_root_context"),
    ]
    return as_message(phrase(locale, "stakeholder_root", "text", **ctx), blocks, locale)


def stakeholder_update(v: IncidentView, t: TransitionView, locale: str) -> Message:
    """A thread reply for one transition: from, to, by whom, why."""
    body = phrase(locale, "stakeholder_update", "text", v=v, t=t)
    blocks = [
        section_block(body, "stakeholder_update"),
        context_block(phrase(locale, "stakeholder_update", "context", v=v, t=t), "stakeholder_update_context"),
    ]
    return as_message(body, blocks, locale)


def closing_report(v: IncidentView, report: ObjectiveReport, locale: str) -> Message:
    """Closed summary, objectives achieved versus target (O1-O3), and the timeline."""
    blocks = [
        header_block(phrase(locale, "closing_report", "header", v=v), "report_header"),
        section_block(phrase(locale, "closing_report", "summary", v=v), "report_summary"),
        section_block(objective_lines(report, locale, closing=True) + "\n"
                      + phrase(locale, "closing_report", "verification", r=report), "report_objectives"),
    ]
    items = sorted((i for i in v.timeline if i.kind not in REPORT_HIDDEN_KINDS), key=lambda item: item.at)
    lines = [phrase(locale, "closing_report", "timeline_title", count=len(items))]
    if items:
        lines += _timeline_lines(v, items, locale)
    else:
        lines.append(phrase(locale, "closing_report", "no_timeline"))
    # 40 lines of at most LINE_CHARS fit in ~9 sections: well inside the block budget.
    blocks.extend(sections(lines, "report_timeline")[: MAX_BLOCKS - len(blocks) - 1])
    blocks.append(context_block(phrase(locale, "closing_report", "context", v=v, updated_at=_last_update(v)),
                           "report_context"))
    return as_message(phrase(locale, "closing_report", "text", v=v, r=report), blocks, locale)


def objective_lines(r: ObjectiveReport, locale: str, *, closing: bool) -> str:
    """RTO and RPO (and MTTR once closed), each against its objective (O1-O3) and the scenario's
    range (S1-S3), with the evidence it came from (``objectives.j2``)."""
    parts = ("title", "rto", "rpo", "mttr") if closing else ("title", "rto", "rpo")
    return "\n".join(phrase(locale, "objectives", part, r=r, closing=closing) for part in parts)


def timeline_event(v: IncidentView, item: TimelineItem, locale: str) -> str:
    """One event in the locale's words, from its code and parameters (``timeline.j2``)."""
    return phrase(locale, "timeline", v=v, item=item)


def _timeline_lines(v: IncidentView, items: list[TimelineItem], locale: str) -> list[str]:
    def line(item: TimelineItem) -> str:
        event = timeline_event(v, item, locale)
        return clip(phrase(locale, "closing_report", "line", item=item, event=event), LINE_CHARS)

    if len(items) <= TIMELINE_CAP:
        return [line(i) for i in items]
    # How it started and how it ended matter most; the middle is summarised.
    half = TIMELINE_CAP // 2
    omitted = len(items) - 2 * half
    return ([line(i) for i in items[:half]]
            + [phrase(locale, "closing_report", "more", count=omitted)]
            + [line(i) for i in items[-half:]])


# ---------------------------------------------------------------------------------------------
# The incident list


def incident_list(items: list[IncidentView], locale: str) -> Message:
    """``/aegis list``: open incidents one per line (closed ones are left out)."""
    open_items = [v for v in items if v.state != CLOSED]
    if not open_items:
        empty = phrase(locale, "incident_list", "empty")
        return as_message(empty, [section_block(empty, "incident_list")], locale)
    lines = [phrase(locale, "incident_list", "title", count=len(open_items))]
    lines += [clip(phrase(locale, "incident_list", "line", v=v), LINE_CHARS) for v in open_items]
    blocks = sections(lines, "incident_list")
    return as_message(phrase(locale, "incident_list", "text", count=len(open_items), items=open_items),
                    blocks, locale)


def manual_verification_request(v: IncidentView, step: StepView, roles: list[str], locale: str) -> Message:
    """Nothing automated can verify the recovery: ask an authorised responder to check and say what they saw."""
    ctx = {"v": v, "step": step, "roles": roles}
    blocks = [
        section_block(phrase(locale, "verify_modal", "request_body", **ctx), f"step_{step.id}_verify"),
        actions_block(f"step_{step.id}_verify_actions", [
            button(phrase(locale, "verify_modal", "button", **ctx), VERIFY_MANUAL, str(step.id), "primary"),
        ]),
    ]
    return as_message(phrase(locale, "verify_modal", "request_text", **ctx), blocks, locale)


def aftercare_done(v: IncidentView, kind: str, locale: str) -> Message:
    """The channel post when an aftercare plan finished: re-protected (with the new lag) or cleaned up."""
    return as_message(phrase(locale, "aftercare", "done_text", v=v, kind=kind),
                      [section_block(phrase(locale, "aftercare", "done", v=v, kind=kind), "aftercare_done")], locale)
