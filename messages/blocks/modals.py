"""The modals (declare, close, reject a step, verify a manual step) and the declare acknowledgement."""

from __future__ import annotations

from messages.blocks.kit import (
    CLOSE_CALLBACK,
    DECLARE_CALLBACK,
    LABEL_CHARS,
    MODAL_TITLE_CHARS,
    OPTION_CHARS,
    PLACEHOLDER_CHARS,
    REJECT_CALLBACK,
    VERIFY_CALLBACK,
    as_message,
    command_tokens,
    phrase,
    plain_text,
    section_block,
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
