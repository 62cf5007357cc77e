"""The modals (declare, close, reject a step, verify a manual step, the recovery's infection time and
partial target) and the declare acknowledgement."""

from __future__ import annotations

from messages.blocks.kit import (
    CLOSE_CALLBACK,
    DECLARE_CALLBACK,
    INFECTION_CALLBACK,
    LABEL_CHARS,
    MODAL_TITLE_CHARS,
    OPTION_CHARS,
    PARTIAL_CALLBACK,
    PARTIAL_COMPONENTS,
    PLACEHOLDER_CHARS,
    REJECT_CALLBACK,
    VERIFY_CALLBACK,
    as_message,
    command_tokens,
    phrase,
    plain_text,
    section_block,
    select,
)
from messages.views import (
    Block,
    IncidentView,
    Message,
    StepView,
)

# ---------------------------------------------------------------------------------------------
# Modals


def _select(block_id: str, label: str, placeholder: str, options: list[tuple[str, str]]) -> Block:
    """A required static select; ``options`` are (value, label) pairs."""
    return {
        "type": "input",
        "block_id": block_id,
        "label": plain_text(label, LABEL_CHARS),
        "element": {
            "type": "static_select",
            "action_id": "value",
            "placeholder": plain_text(placeholder, PLACEHOLDER_CHARS),
            "options": [{"text": plain_text(text, OPTION_CHARS), "value": value} for value, text in options],
        },
    }


def _multiline(block_id: str, label: str, placeholder: str) -> Block:
    return {
        "type": "input",
        "block_id": block_id,
        "label": plain_text(label, LABEL_CHARS),
        "element": {
            "type": "plain_text_input",
            "action_id": "value",
            "multiline": True,
            "placeholder": plain_text(placeholder, PLACEHOLDER_CHARS),
        },
    }


def _modal(callback_id: str, locale: str, name: str, ctx: dict[str, object],
           blocks: list[Block]) -> Block:
    return {
        "type": "modal",
        "callback_id": callback_id,
        "title": plain_text(phrase(locale, name, "title", **ctx), MODAL_TITLE_CHARS),
        "submit": plain_text(phrase(locale, name, "submit", **ctx), MODAL_TITLE_CHARS),
        "close": plain_text(phrase(locale, name, "close", **ctx), MODAL_TITLE_CHARS),
        "blocks": blocks,
    }


def declare_modal(locale: str) -> Block:
    """``/aegis incident`` with no arguments: scenario, severity and summary as a form."""
    def part(name: str, **ctx: object) -> str:
        return phrase(locale, "declare_modal", name, **ctx)

    commands = command_tokens()
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
        section_block(phrase(locale, "close_modal", "intro", **ctx), "close_intro"),
        _multiline("summary", phrase(locale, "close_modal", "label", **ctx),
                   phrase(locale, "close_modal", "placeholder", **ctx)),
    ]
    view = _modal(CLOSE_CALLBACK, locale, "close_modal", ctx, blocks)
    view["private_metadata"] = str(v.id)
    return view


def _step_form(v: IncidentView, step: StepView, locale: str, *, name: str, callback: str, field: str,
               intro_block: str) -> Block:
    """A form about one plan step: an intro, one multi-line field, the step id in private_metadata."""
    ctx = {"v": v, "step": step}
    blocks = [
        section_block(phrase(locale, name, "intro", **ctx), intro_block),
        _multiline(field, phrase(locale, name, "label", **ctx), phrase(locale, name, "placeholder", **ctx)),
    ]
    view = _modal(callback, locale, name, ctx, blocks)
    view["private_metadata"] = str(step.id)
    return view


def reject_modal(v: IncidentView, step: StepView, locale: str) -> Block:
    """Reject asks for a reason: it is posted in the channel and kept in the timeline."""
    return _step_form(v, step, locale, name="reject_modal", callback=REJECT_CALLBACK, field="reason",
                      intro_block="reject_intro")


def declared_ack(key: str, locale: str, *, scenario: str, invited: list[str]) -> Message:
    """The declarer's ephemeral confirmation, sent before the channel exists: it names the users the
    roster invites (``invited``, the declarer left out), or says that nobody is and how to add a roster."""
    body = phrase(locale, "declared", key=key, scenario=scenario, invited=invited)
    return as_message(body, [section_block(body, "declared")], locale)


def verify_modal(v: IncidentView, step: StepView, locale: str) -> Block:
    """The manual verification form: what was checked and what was observed."""
    return _step_form(v, step, locale, name="verify_modal", callback=VERIFY_CALLBACK, field="evidence",
                      intro_block="verify_intro")


# ---------------------------------------------------------------------------------------------
# The recovery's inputs (issue 9): times are a date and a time of day in the team's zone (config
# ``timezone``), which the form names; the bot turns them into UTC.


def _picker(block_id: str, kind: str, label: str, initial: str | None, *, optional: bool = False) -> Block:
    """A ``datepicker`` (initial ``YYYY-MM-DD``) or ``timepicker`` (initial ``HH:MM``) input."""
    element: Block = {"type": kind, "action_id": "value"}
    if initial:
        element["initial_date" if kind == "datepicker" else "initial_time"] = initial
    return {"type": "input", "block_id": block_id, "optional": optional,
            "label": plain_text(label, LABEL_CHARS), "element": element}


def _line(block_id: str, label: str, placeholder: str, initial: str | None) -> Block:
    """An optional one-line text input."""
    element: Block = {"type": "plain_text_input", "action_id": "value",
                      "placeholder": plain_text(placeholder, PLACEHOLDER_CHARS)}
    if initial:
        element["initial_value"] = initial
    return {"type": "input", "block_id": block_id, "optional": True,
            "label": plain_text(label, LABEL_CHARS), "element": element}


def infection_time_modal(v: IncidentView, locale: str, *, date: str, time: str, zone: str) -> Block:
    """Ransomware: when the infection began (default: the detection time), in ``zone``."""
    def part(name: str) -> str:
        return phrase(locale, "infection_modal", name, v=v, zone=zone)

    blocks = [
        section_block(part("intro"), "infection_intro"),
        _picker("date", "datepicker", part("date_label"), date),
        _picker("time", "timepicker", part("time_label"), time),
    ]
    view = _modal(INFECTION_CALLBACK, locale, "infection_modal", {"v": v, "zone": zone}, blocks)
    view["private_metadata"] = str(v.id)
    return view


def partial_modal(v: IncidentView, locale: str, *, current: dict[str, str], zone: str) -> Block:
    """Partial recovery: one PostgreSQL database or table, one Neo4j database or one Milvus
    collection, to a target time (empty: the latest). ``current`` prefills what was chosen before."""
    def part(name: str, **ctx: object) -> str:
        return phrase(locale, "partial_modal", name, v=v, zone=zone, **ctx)

    components = [(key, part("component_option", key=key)) for key in PARTIAL_COMPONENTS]
    chooser = select(part("component_placeholder"), "value", components, initial=current.get("component"))
    blocks: list[Block] = [
        section_block(part("intro"), "partial_intro"),
        {"type": "input", "block_id": "component", "label": plain_text(part("component_label"), LABEL_CHARS),
         "element": chooser},
        _line("database", part("database_label"), part("database_placeholder"), current.get("database")),
        _line("table", part("table_label"), part("table_placeholder"), current.get("table")),
        _line("collection", part("collection_label"), part("collection_placeholder"), current.get("collection")),
        _picker("target_date", "datepicker", part("date_label"), current.get("date"), optional=True),
        _picker("target_time", "timepicker", part("time_label"), current.get("time"), optional=True),
    ]
    view = _modal(PARTIAL_CALLBACK, locale, "partial_modal", {"v": v, "zone": zone}, blocks)
    view["private_metadata"] = str(v.id)
    return view


def form_errors(locale: str, name: str, errors: dict[str, str], **ctx: object) -> dict[str, str]:
    """A form's ``response_action: errors`` texts: each block's error part of template ``name``
    (Slack shows at most 150 characters of one)."""
    return {block: phrase(locale, name, part, **ctx)[:150] for block, part in errors.items()}
