"""Block Kit rendering of every Aegis message, from the plain views in ``messages.views``.

Every user-visible string comes from ``messages/templates/<locale>/`` through ``render.text``;
this module only decides structure: which blocks, which buttons, and how to stay inside Slack's
limits (section text 3000, header 150, button 75, 50 blocks per message, modal title 24).

Button ``action_id``s and values are a contract with the bot (see the constants below). Slack needs
an action_id to be unique within a block, not within a message, so buttons that share an action_id
(one "Claim" per role, one "Approve" per step) each live in their own ``actions`` block whose
``block_id`` names what it acts on (``claim_<role>``, ``step_<id>``).

Free text in views (summaries, step titles and output, timeline text) is escaped by the templates
(``esc``), so mentions in it are shown literally; people are mentioned through the actor/user id
fields, which render as ``<@U…>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypedDict

from messages import render
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

# Action contract with the bot.
CLAIM_ROLE = "aegis_claim_role"   # value: role id
APPROVE = "aegis_approve"         # value: str(step.id)
REJECT = "aegis_reject"           # value: str(step.id)
RETRY = "aegis_retry"             # value: str(step.id)
ABORT = "aegis_abort"             # value: str(step.id)
CLOSE = "aegis_close"             # value: str(incident.id)
DECLARE_CALLBACK = "aegis_declare"
CLOSE_CALLBACK = "aegis_close_submit"
REJECT_CALLBACK = "aegis_reject_submit"   # private_metadata: str(step.id)

# Slack limits.
MAX_BLOCKS = 50
SECTION_CHARS = 3000
CONTEXT_CHARS = 2000
HEADER_CHARS = 150
BUTTON_CHARS = 75
FALLBACK_CHARS = 3000          # notifications show the start only; keep the payload modest
MODAL_TITLE_CHARS = 24
LABEL_CHARS = 2000
PLACEHOLDER_CHARS = 150
OPTION_CHARS = 75
LINE_CHARS = 600               # one timeline/list line, so that one long line cannot crowd out the rest
TIMELINE_CAP = 40              # closing report shows the first and last TIMELINE_CAP // 2 events

CLOSED = "closed"
REPORT_HIDDEN_KINDS = ("audit",)   # refused clicks: in the audit trail, not in the stakeholders' report


@dataclass(frozen=True)
class StepRow:
    """A step plus who voted on it, so templates need no list gymnastics."""

    step: StepView
    approved_by: list[str] = field(default_factory=list)
    rejected_by: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Small builders


def _clip(text: str, limit: int) -> str:
    """Cut to ``limit`` characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _t(locale: str, name: str, part: str | None = None, /, **ctx: object) -> str:
    if part is not None:
        ctx["part"] = part
    return render.text(locale, name, **ctx)


def _plain(text: str, limit: int) -> Block:
    return {"type": "plain_text", "text": _clip(text or "—", limit), "emoji": True}


def _header(text: str, block_id: str) -> Block:
    return {"type": "header", "block_id": block_id, "text": _plain(text, HEADER_CHARS)}


def _section(text: str, block_id: str) -> Block:
    # Slack rejects an empty section text; "—" keeps a post alive if a template renders nothing.
    return {
        "type": "section",
        "block_id": block_id,
        "text": {"type": "mrkdwn", "text": _clip(text or "—", SECTION_CHARS)},
    }


def _context(text: str, block_id: str) -> Block:
    return {
        "type": "context",
        "block_id": block_id,
        "elements": [{"type": "mrkdwn", "text": _clip(text or "—", CONTEXT_CHARS)}],
    }


def _button(label: str, action_id: str, value: str, style: str | None = None) -> Block:
    button: Block = {
        "type": "button",
        "action_id": action_id,
        "value": value,
        "text": _plain(label, BUTTON_CHARS),
    }
    if style:
        button["style"] = style
    return button


def _actions(block_id: str, buttons: list[Block]) -> Block:
    return {"type": "actions", "block_id": block_id, "elements": buttons}


def _pack(lines: Iterable[str], limit: int = SECTION_CHARS) -> list[str]:
    """Join lines into as few chunks of at most ``limit`` characters as possible."""
    chunks: list[str] = []
    current = ""
    for raw in lines:
        line = _clip(raw, limit)
        if current and len(current) + 1 + len(line) > limit:
            chunks.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        chunks.append(current)
    return chunks


def _sections(lines: Iterable[str], block_prefix: str) -> list[Block]:
    chunks = _pack(lines)
    if len(chunks) == 1:
        return [_section(chunks[0], block_prefix)]
    return [_section(chunk, f"{block_prefix}_{i}") for i, chunk in enumerate(chunks, start=1)]


def _message(fallback: str, blocks: list[Block], locale: str) -> Message:
    """Apply the message-wide limits; builders stay under them, this is the safety net."""
    if len(blocks) > MAX_BLOCKS:
        kept = blocks[: MAX_BLOCKS - 1]
        # Never leave a step's text without the buttons that belonged under it.
        if kept[-1]["type"] != "actions" and blocks[len(kept)]["type"] == "actions":
            kept.pop()
        dropped = len(blocks) - len(kept)
        blocks = kept + [_context(_t(locale, "common", "truncated", count=dropped), "truncated")]
    return Message(text=_clip(fallback or "Aegis", FALLBACK_CHARS), blocks=blocks)


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
    return _t(locale, "plan", "progress", row=row)


def _safe_link(link: object) -> str | None:
    """A permalink goes inside ``<…|label>``: only an https URL with no markup characters."""
    if not isinstance(link, str) or not link or not link.startswith("https://") or any(c in link for c in "<>|& \n"):
        return None
    return link


def _step_buttons(step: StepView, locale: str) -> list[Block]:
    """Buttons a step offers in its current status; none unless someone has to decide."""
    value = str(step.id)
    if step.status == "awaiting_approval":
        label = _t(locale, "buttons", "mark_done" if step.manual else "approve")
        return [
            _button(label, APPROVE, value, "primary"),
            _button(_t(locale, "buttons", "reject"), REJECT, value, "danger"),
        ]
    if step.status == "failed":
        return [
            _button(_t(locale, "buttons", "retry"), RETRY, value),
            _button(_t(locale, "buttons", "abort"), ABORT, value, "danger"),
        ]
    return []


def _last_update(v: IncidentView) -> datetime:
    return v.updated_at or v.declared_at


class _Commands(TypedDict):
    scenarios: list[str]
    severities: list[str]


def _commands() -> _Commands:
    # The tokens users type are the table keys; templates show them verbatim.
    return {
        "scenarios": list(render.name_table("en", "scenarios")),
        "severities": list(render.name_table("en", "severities")),
    }


# ---------------------------------------------------------------------------------------------
# Incident channel


def incident_card(v: IncidentView, locale: str) -> Message:
    """The incident's pinned card: what, how bad, state, who holds which role, and Close."""
    blocks = [
        _header(_t(locale, "incident_card", "header", v=v), "incident_header"),
        _section(_t(locale, "incident_card", "summary", v=v), "incident_summary"),
        _section(_t(locale, "incident_card", "roles", v=v), "incident_roles"),
    ]
    for role in v.roles if v.state != CLOSED else []:   # a closed incident takes no claims
        if role.user_id is None:
            label = _t(locale, "buttons", "claim", role=role.role)
            blocks.append(_actions(f"claim_{role.role}", [_button(label, CLAIM_ROLE, role.role)]))
    if v.state != CLOSED:
        close = _button(_t(locale, "buttons", "close"), CLOSE, str(v.id), "danger")
        blocks.append(_actions("incident_actions", [close]))
    blocks.append(_context(_t(locale, "incident_card", "context", v=v, updated_at=_last_update(v)),
                           "incident_context"))
    return _message(_t(locale, "incident_card", "text", v=v), blocks, locale)


def _step_text(row: StepRow, locale: str, *, inline_detail: bool) -> tuple[str, str]:
    """(section text, detail text); the detail is folded into the section when ``inline_detail``."""
    text = _t(locale, "plan", "step", row=row, progress=_progress(row, locale))
    detail = _t(locale, "plan", "detail", step=row.step) if row.step.detail else ""
    if inline_detail and detail:
        return f"{text}\n{detail}", ""
    return text, detail


def _plan_body(rows: list[StepRow], intro: str, layout: str, locale: str) -> list[Block]:
    """Blocks after the header, in one of three layouts, roomiest first:
    ``full`` (detail in its own context block), ``compact`` (detail inline), and ``dense`` (steps
    without buttons share a section with the next step that has buttons, so a plan costs about
    two blocks per step awaiting a decision)."""
    if layout != "dense":
        blocks = [_section(intro, "plan_intro")]
        for row in rows:
            step = row.step
            text, detail = _step_text(row, locale, inline_detail=layout == "compact")
            blocks.append(_section(text, f"step_{step.id}_text"))
            if detail:
                blocks.append(_context(detail, f"step_{step.id}_detail"))
            if buttons := _step_buttons(step, locale):
                blocks.append(_actions(f"step_{step.id}", buttons))
        return blocks
    blocks = []
    pending = [intro]
    for row in rows:
        pending.append(_step_text(row, locale, inline_detail=True)[0])
        if buttons := _step_buttons(row.step, locale):
            blocks.extend(_sections(pending, f"step_{row.step.id}_text"))
            blocks.append(_actions(f"step_{row.step.id}", buttons))
            pending = []
    if pending:
        blocks.extend(_sections(pending, "plan_tail"))
    return blocks


def plan_message(v: IncidentView, locale: str) -> Message:
    """The recovery plan with one Approve/Reject (or Retry/Abort) pair per step that needs it."""
    rows = _step_rows(v.steps)
    counts = {
        "total": len(rows),
        "awaiting": sum(r.step.status == "awaiting_approval" for r in rows),
        "failed": sum(r.step.status == "failed" for r in rows),
    }
    intro = _t(locale, "plan", "intro", v=v, **counts)
    blocks = [_header(_t(locale, "plan", "header", v=v), "plan_header")]
    if v.revision is not None:
        blocks.append(_section(_t(locale, "plan", "revision", v=v), "plan_revision"))
    if not rows:
        blocks += [_section(intro, "plan_intro"), _section(_t(locale, "plan", "empty", v=v), "plan_empty")]
    else:
        for layout in ("full", "compact", "dense"):
            body = _plan_body(rows, intro, layout, locale)
            if len(blocks) + len(body) <= MAX_BLOCKS:
                break
        # Still too long (dozens of steps awaiting a decision): _message cuts it cleanly.
        blocks.extend(body)
    return _message(_t(locale, "plan", "text", v=v, **counts), blocks, locale)


def plan_replaced(v: IncidentView, old: ReplacedView, locale: str) -> Message:
    """An old plan message once a new revision exists: no buttons, its steps as text, a link to the new one.

    ``v.steps`` are the steps of the old revision.
    """
    old = ReplacedView(old.revision, old.current_revision, _safe_link(old.link))
    lines = [_t(locale, "plan", "replaced_body", v=v, old=old)]
    lines += [_clip(_t(locale, "plan", "replaced_step", step=s), LINE_CHARS)
              for s in sorted(v.steps, key=lambda s: s.position)]
    blocks = [_header(_t(locale, "plan", "replaced_header", v=v, old=old), "plan_header"),
              *_sections(lines, "plan_replaced")[: MAX_BLOCKS - 1]]
    return _message(_t(locale, "plan", "replaced_text", v=v, old=old), blocks, locale)


def step_rejected(v: IncidentView, step: StepView, user_id: str, reason: str, locale: str) -> Message:
    """The channel post of a rejection: who, which step, and the reason they gave."""
    ctx = {"v": v, "step": step, "user": user_id, "reason": reason}
    return _message(_t(locale, "plan", "rejected_text", **ctx),
                    [_section(_t(locale, "plan", "rejected", **ctx), f"step_{step.id}_rejected")], locale)


def assessment(v: IncidentView, locale: str) -> Message:
    """Health check results and the strategy chosen from them."""
    failing = sum(not c.ok for c in v.checks)
    counts = {"failing": failing, "total": len(v.checks)}
    blocks = [_header(_t(locale, "assessment", "header", v=v), "assessment_header")]
    if v.checks:
        lines = [_clip(_t(locale, "assessment", "check", check=c), LINE_CHARS) for c in v.checks]
        blocks.extend(_sections(lines, "assessment_checks")[: MAX_BLOCKS - 3])
    else:
        blocks.append(_section(_t(locale, "assessment", "no_checks"), "assessment_checks"))
    blocks.append(_section(_t(locale, "assessment", "strategy", v=v, **counts), "assessment_strategy"))
    return _message(_t(locale, "assessment", "text", v=v, **counts), blocks, locale)


def reapproval_request(v: IncidentView, step: StepView, locale: str) -> Message:
    """After a crash: the step's outcome is unknown, it was not re-run, approve again to run it."""
    blocks = [
        _section(_t(locale, "reapproval", "body", v=v, step=step), f"step_{step.id}_reapproval"),
        _actions(f"step_{step.id}", [
            _button(_t(locale, "buttons", "mark_done" if step.manual else "approve"),
                    APPROVE, str(step.id), "primary"),
            _button(_t(locale, "buttons", "reject"), REJECT, str(step.id), "danger"),
        ]),
    ]
    return _message(_t(locale, "reapproval", "text", v=v, step=step), blocks, locale)


def step_result(v: IncidentView, step: StepView, locale: str) -> Message:
    """A short channel post when a step finished (success, failure, or another end state)."""
    body = _t(locale, "step_result", "body", v=v, step=step)
    return _message(_t(locale, "step_result", "text", v=v, step=step),
                    [_section(body, f"step_{step.id}_result")], locale)


def reminder(v: IncidentView, open_seconds: float, locale: str) -> Message:
    """Periodic nudge: still open, for how long, and what the incident is waiting for."""
    waiting, step = _waiting_for(v)
    waiting_text = _t(locale, "reminder", "waiting", v=v, waiting=waiting, step=step)
    ctx = {"v": v, "open_seconds": open_seconds, "waiting_text": waiting_text}
    blocks = [_section(_t(locale, "reminder", "body", **ctx), "reminder")]
    return _message(_t(locale, "reminder", "text", **ctx), blocks, locale)


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
    """``/aegis status``: state, every step with its status and approvers, and the roles."""
    rows = _step_rows(v.steps)
    blocks = [_section(_t(locale, "status_reply", "head", v=v, updated_at=_last_update(v)), "status_head")]
    if rows:
        lines = [_t(locale, "status_reply", "steps_title")]
        lines += [_clip(_t(locale, "status_reply", "step", row=r, progress=_progress(r, locale)), LINE_CHARS)
                  for r in rows]
        blocks.extend(_sections(lines, "status_steps")[: MAX_BLOCKS - 2])
    else:
        blocks.append(_section(_t(locale, "status_reply", "no_steps"), "status_steps"))
    blocks.append(_section(_t(locale, "status_reply", "roles", v=v), "status_roles"))
    return _message(_t(locale, "status_reply", "text", v=v), blocks, locale)


# ---------------------------------------------------------------------------------------------
# Stakeholders


def stakeholder_root(v: IncidentView, locale: str) -> Message:
    """Root of the stakeholder thread; edited in place at every transition, so it shows the
    current state."""
    ctx = {"v": v, "updated_at": _last_update(v)}
    blocks = [
        _section(_t(locale, "stakeholder_root", "body", **ctx), "stakeholder_root"),
        _context(_t(locale, "stakeholder_root", "context", **ctx), "stakeholder_root_context"),
    ]
    return _message(_t(locale, "stakeholder_root", "text", **ctx), blocks, locale)


def stakeholder_update(v: IncidentView, t: TransitionView, locale: str) -> Message:
    """A thread reply for one transition: from, to, by whom, why."""
    body = _t(locale, "stakeholder_update", "text", v=v, t=t)
    blocks = [
        _section(body, "stakeholder_update"),
        _context(_t(locale, "stakeholder_update", "context", v=v, t=t), "stakeholder_update_context"),
    ]
    return _message(body, blocks, locale)


def closing_report(v: IncidentView, report: ObjectiveReport, locale: str) -> Message:
    """Closed summary, objectives achieved versus target (O1-O3), and the timeline."""
    blocks = [
        _header(_t(locale, "closing_report", "header", v=v), "report_header"),
        _section(_t(locale, "closing_report", "summary", v=v), "report_summary"),
        _section(_t(locale, "closing_report", "objectives", r=report), "report_objectives"),
    ]
    items = sorted((i for i in v.timeline if i.kind not in REPORT_HIDDEN_KINDS), key=lambda item: item.at)
    lines = [_t(locale, "closing_report", "timeline_title", count=len(items))]
    if items:
        lines += _timeline_lines(v, items, locale)
    else:
        lines.append(_t(locale, "closing_report", "no_timeline"))
    # 40 lines of at most LINE_CHARS fit in ~9 sections: well inside the block budget.
    blocks.extend(_sections(lines, "report_timeline")[: MAX_BLOCKS - len(blocks) - 1])
    blocks.append(_context(_t(locale, "closing_report", "context", v=v, updated_at=_last_update(v)),
                           "report_context"))
    return _message(_t(locale, "closing_report", "text", v=v, r=report), blocks, locale)


def timeline_event(v: IncidentView, item: TimelineItem, locale: str) -> str:
    """One event in the locale's words, from its code and parameters (``timeline.j2``)."""
    return _t(locale, "timeline", v=v, item=item)


def _timeline_lines(v: IncidentView, items: list[TimelineItem], locale: str) -> list[str]:
    def line(item: TimelineItem) -> str:
        event = timeline_event(v, item, locale)
        return _clip(_t(locale, "closing_report", "line", item=item, event=event), LINE_CHARS)

    if len(items) <= TIMELINE_CAP:
        return [line(i) for i in items]
    # How it started and how it ended matter most; the middle is summarised.
    half = TIMELINE_CAP // 2
    omitted = len(items) - 2 * half
    return ([line(i) for i in items[:half]]
            + [_t(locale, "closing_report", "more", count=omitted)]
            + [line(i) for i in items[-half:]])


# ---------------------------------------------------------------------------------------------
# Commands and replies


def incident_list(items: list[IncidentView], locale: str) -> Message:
    """``/aegis list``: open incidents one per line (closed ones are left out)."""
    open_items = [v for v in items if v.state != CLOSED]
    if not open_items:
        empty = _t(locale, "incident_list", "empty")
        return _message(empty, [_section(empty, "incident_list")], locale)
    lines = [_t(locale, "incident_list", "title", count=len(open_items))]
    lines += [_clip(_t(locale, "incident_list", "line", v=v), LINE_CHARS) for v in open_items]
    blocks = _sections(lines, "incident_list")
    return _message(_t(locale, "incident_list", "text", count=len(open_items), items=open_items),
                    blocks, locale)


def help_text(locale: str) -> Message:
    """``/aegis help``: every command with its arguments."""
    body = _t(locale, "help", "body", **_commands())
    return _message(_t(locale, "help", "text"), [_section(body, "help")], locale)


def usage_error(problem: str, locale: str, **ctx: object) -> Message:
    """What was wrong with a command and what to type instead (ephemeral)."""
    body = _t(locale, "usage_error", problem=problem, **_commands(), **ctx)
    # The notification shows what was wrong; the usage reference is in the blocks.
    return _message(body.split("\n\n", 1)[0], [_section(body, "usage_error")], locale)


def refusal(reason: str, locale: str, **ctx: object) -> Message:
    """Why a click or command was refused (ephemeral); nothing was changed."""
    if "link" in ctx:
        ctx["link"] = _safe_link(ctx["link"])
    body = _t(locale, "refusal", reason=reason, **ctx)
    return _message(body, [_section(body, "refusal")], locale)


def ops_notice(title: str, body: str, locale: str) -> Message:
    """A notice for the ops channel; ``title`` and ``body`` are already rendered by the caller."""
    ctx = {"title": title, "body": body}
    return _message(_t(locale, "ops_notice", "text", **ctx),
                    [_section(_t(locale, "ops_notice", "body", **ctx), "ops_notice")], locale)


# ---------------------------------------------------------------------------------------------
# Modals


def _select(block_id: str, label: str, placeholder: str, options: list[tuple[str, str]]) -> Block:
    """A required static select; ``options`` are (value, label) pairs."""
    return {
        "type": "input",
        "block_id": block_id,
        "label": _plain(label, LABEL_CHARS),
        "element": {
            "type": "static_select",
            "action_id": "value",
            "placeholder": _plain(placeholder, PLACEHOLDER_CHARS),
            "options": [{"text": _plain(text, OPTION_CHARS), "value": value} for value, text in options],
        },
    }


def _multiline(block_id: str, label: str, placeholder: str) -> Block:
    return {
        "type": "input",
        "block_id": block_id,
        "label": _plain(label, LABEL_CHARS),
        "element": {
            "type": "plain_text_input",
            "action_id": "value",
            "multiline": True,
            "placeholder": _plain(placeholder, PLACEHOLDER_CHARS),
        },
    }


def _modal(callback_id: str, locale: str, name: str, ctx: dict[str, object],
           blocks: list[Block]) -> Block:
    return {
        "type": "modal",
        "callback_id": callback_id,
        "title": _plain(_t(locale, name, "title", **ctx), MODAL_TITLE_CHARS),
        "submit": _plain(_t(locale, name, "submit", **ctx), MODAL_TITLE_CHARS),
        "close": _plain(_t(locale, name, "close", **ctx), MODAL_TITLE_CHARS),
        "blocks": blocks,
    }


def declare_modal(locale: str) -> Block:
    """``/aegis incident`` with no arguments: scenario, severity and summary as a form."""
    def part(name: str, **ctx: object) -> str:
        return _t(locale, "declare_modal", name, **ctx)

    commands = _commands()
    scenarios = [(key, part("scenario_option", key=key)) for key in commands["scenarios"]]
    severities = [(key, part("severity_option", key=key)) for key in commands["severities"]]
    blocks = [
        _select("scenario", part("scenario_label"), part("scenario_placeholder"), scenarios),
        _select("severity", part("severity_label"), part("severity_placeholder"), severities),
        _multiline("summary", part("summary_label"), part("summary_placeholder")),
    ]
    return _modal(DECLARE_CALLBACK, locale, "declare_modal", {}, blocks)


def close_modal(v: IncidentView, locale: str) -> Block:
    """Close form: a closing summary once verified, otherwise the false-alarm reason."""
    ctx = {"v": v, "false_alarm": v.state != "verified"}
    blocks = [
        _section(_t(locale, "close_modal", "intro", **ctx), "close_intro"),
        _multiline("summary", _t(locale, "close_modal", "label", **ctx),
                   _t(locale, "close_modal", "placeholder", **ctx)),
    ]
    view = _modal(CLOSE_CALLBACK, locale, "close_modal", ctx, blocks)
    view["private_metadata"] = str(v.id)
    return view


def _step_form(v: IncidentView, step: StepView, locale: str, *, name: str, callback: str, field: str,
               intro_block: str) -> Block:
    """A form about one plan step: an intro, one multi-line field, the step id in private_metadata."""
    ctx = {"v": v, "step": step}
    blocks = [
        _section(_t(locale, name, "intro", **ctx), intro_block),
        _multiline(field, _t(locale, name, "label", **ctx), _t(locale, name, "placeholder", **ctx)),
    ]
    view = _modal(callback, locale, name, ctx, blocks)
    view["private_metadata"] = str(step.id)
    return view


def reject_modal(v: IncidentView, step: StepView, locale: str) -> Block:
    """Reject asks for a reason: it is posted in the channel and kept in the timeline."""
    return _step_form(v, step, locale, name="reject_modal", callback=REJECT_CALLBACK, field="reason",
                      intro_block="reject_intro")


def declared_ack(key: str, locale: str) -> Message:
    """The declarer's ephemeral confirmation, sent before the channel exists."""
    body = _t(locale, "declared", key=key)
    return _message(body, [_section(body, "declared")], locale)


# ---------------------------------------------------------------------------------------------
# Backups (views are plain data built by bot/backup_slack.py from the catalog; no ORM rows here)


@dataclass(frozen=True)
class BackupTargetView:
    name: str
    ok: bool
    error: str | None = None
    removed: bool = False          # a staging copy deleted once two remote targets held it (B6)


@dataclass(frozen=True)
class BackupObjectView:
    run_id: str
    object_name: str
    kind: str                      # pg_full | neo4j | milvus | …
    status: str                    # running | ok | failed | deleted
    stored_size: int
    started_at: datetime | None
    targets: list[BackupTargetView] = field(default_factory=list)
    reason: str = ""

    @property
    def size_text(self) -> str:
        size = float(self.stored_size)
        for unit in ("B", "KiB", "MiB", "GiB"):
            if size < 1024 or unit == "GiB":
                return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
            size /= 1024
        return f"{size:.1f} TiB"


@dataclass(frozen=True)
class BackupRunView:
    run_id: str
    kind: str                      # what was asked for: full | postgresql | neo4j | milvus
    status: str                    # ok | warning (a target failed, the backup is held elsewhere) | failed
    objects: list[BackupObjectView] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)       # run-level errors (already redacted)
    failed_targets: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)      # "s3: connection refused", run errors
    started_by: str | None = None  # Slack user id; None for a scheduled run
    schedule: str | None = None    # scheduled job id
    previous_good: BackupObjectView | None = None
    local_kept: bool = False


@dataclass(frozen=True)
class BackupCheckView:
    run_id: str
    object_name: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    reread: list[str] = field(default_factory=list)


def _simple(locale: str, name: str, part: str, block_id: str, **ctx: object) -> Message:
    body = _t(locale, name, part, **ctx)
    return _message(body, [_section(body, block_id)], locale)


def backup_started(kind: str, locale: str) -> Message:
    """The ephemeral ack of ``/aegis backup run``."""
    return _simple(locale, "backup", "started", "backup_started", kind=kind)


def backup_verify_started(ident: str, locale: str) -> Message:
    return _simple(locale, "backup", "verify_started", "backup_verify_started", ident=ident)


def backup_result(run: BackupRunView, locale: str) -> Message:
    """The result of a run, posted in the channel where it was started."""
    header = _t(locale, "backup", "result_header", run=run)
    lines = [_clip(_t(locale, "backup", "object_line", o=o), LINE_CHARS * 2) for o in run.objects]
    lines += [_t(locale, "backup", "error_line", error=e) for e in run.errors]
    blocks = [_section(header, "backup_result")]
    if lines:
        blocks += _sections(lines, "backup_objects")
    if run.status == "failed":
        blocks.append(_section(_t(locale, "backup", "previous_good", good=run.previous_good), "backup_previous"))
    blocks.append(_context(_t(locale, "backup", "origin", run=run), "backup_origin"))
    return _message(header, blocks, locale)


def backup_ops_alert(run: BackupRunView, locale: str) -> Message:
    """The ops channel's notice of a failed run, or of a run that lost one target (``status`` warning)."""
    if run.status == "failed":
        title = _t(locale, "backup", "ops_failed_title", run=run)
        body = "\n".join([_t(locale, "backup", "ops_failed_body", run=run),
                          _t(locale, "backup", "previous_good", good=run.previous_good),
                          _t(locale, "backup", "origin", run=run)])
    else:
        title = _t(locale, "backup", "ops_warning_title", run=run)
        body = "\n".join([_t(locale, "backup", "ops_warning_body", run=run), _t(locale, "backup", "origin", run=run)])
    return ops_notice(title, body, locale)


def backup_list(objects: list[BackupObjectView], locale: str) -> Message:
    """``/aegis backup list``: newest first, one line per stored object."""
    if not objects:
        return _simple(locale, "backup", "list_empty", "backup_list")
    lines = [_t(locale, "backup", "list_title", count=len(objects))]
    lines += [_clip(_t(locale, "backup", "list_line", o=o), LINE_CHARS) for o in objects]
    return _message(lines[0], _sections(lines, "backup_list"), locale)


def backup_verify_result(ident: str, checks: list[BackupCheckView], goods: list[BackupObjectView | None],
                         locale: str) -> Message:
    """``/aegis backup verify ID``: each object, what is wrong where (target, chunk), the previous good one."""
    ok = all(c.ok for c in checks)
    header = _t(locale, "backup", "verify_header", ident=ident, ok=ok, count=len(checks))
    lines = [_t(locale, "backup", "verify_line", c=c) for c in checks]
    blocks = [_section(header, "backup_verify"), *_sections(lines, "backup_verify_objects")]
    if not ok:
        seen: set[str] = set()
        for check, good in zip(checks, goods, strict=True):
            key = good.object_name if good else ""
            if not check.ok and key not in seen:
                seen.add(key)
                text = _t(locale, "backup", "previous_good", good=good)
                blocks.append(_section(text, f"backup_previous_{len(seen)}"))
    return _message(header, blocks, locale)


def backup_job_alert(problem: str, job_id: str, error: str, locale: str) -> Message:
    """The ops channel's notice that a scheduled job could not do its work (``not_run``, ``wal_failed``,
    ``prune_failed``); ``error`` is already redacted."""
    title = _t(locale, "backup", f"{problem}_title", job=job_id)
    body = _t(locale, "backup", f"{problem}_body", job=job_id, error=error)
    return ops_notice(title, body, locale)


# ---------------------------------------------------------------------------------------------
# Manual verification (a verify step with no automated check: a responder states the evidence)

VERIFY_MANUAL = "aegis_verify_manual"      # value: str(step.id)
VERIFY_CALLBACK = "aegis_verify_submit"    # private_metadata: str(step.id)


def manual_verification_request(v: IncidentView, step: StepView, roles: list[str], locale: str) -> Message:
    """Nothing automated can verify the recovery: ask an authorised responder to check and say what they saw."""
    ctx = {"v": v, "step": step, "roles": roles}
    blocks = [
        _section(_t(locale, "verify_modal", "request_body", **ctx), f"step_{step.id}_verify"),
        _actions(f"step_{step.id}_verify_actions", [
            _button(_t(locale, "verify_modal", "button", **ctx), VERIFY_MANUAL, str(step.id), "primary"),
        ]),
    ]
    return _message(_t(locale, "verify_modal", "request_text", **ctx), blocks, locale)


def verify_modal(v: IncidentView, step: StepView, locale: str) -> Block:
    """The manual verification form: what was checked and what was observed."""
    return _step_form(v, step, locale, name="verify_modal", callback=VERIFY_CALLBACK, field="evidence",
                      intro_block="verify_intro")
