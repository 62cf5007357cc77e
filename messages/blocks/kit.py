"""The low-level Block Kit pieces every Aegis message is built from, the action contract with the bot,
Slack's limits, and the plain replies (help, usage errors, refusals, ops notices).

Every user-visible string comes from ``messages/templates/<locale>/`` through ``render.text`` (``phrase``);
these builders only decide structure and stay inside Slack's limits (section text 3000, header 150,
button 75, 50 blocks per message, modal title 24).

Button ``action_id``s and values are a contract with the bot (the constants below). Slack needs an
action_id to be unique within a block, not within a message, so buttons that share an action_id
(one "Claim" per role, one "Approve" per step) each live in their own ``actions`` block whose
``block_id`` names what it acts on (``claim_<role>``, ``step_<id>``).

Free text in views (summaries, step titles and output, timeline text) is escaped by the templates
(``esc``), so mentions in it are shown literally; people are mentioned through the actor/user id
fields, which render as ``<@U…>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict

from messages import render
from messages.views import (
    Block,
    Message,
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


# ---------------------------------------------------------------------------------------------
# Small builders


def clip(text: str, limit: int) -> str:
    """Cut to ``limit`` characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def phrase(locale: str, name: str, part: str | None = None, /, **ctx: object) -> str:
    if part is not None:
        ctx["part"] = part
    return render.text(locale, name, **ctx)


def plain_text(text: str, limit: int) -> Block:
    return {"type": "plain_text", "text": clip(text or "—", limit), "emoji": True}


def header_block(text: str, block_id: str) -> Block:
    return {"type": "header", "block_id": block_id, "text": plain_text(text, HEADER_CHARS)}


def section_block(text: str, block_id: str) -> Block:
    # Slack rejects an empty section text; "—" keeps a post alive if a template renders nothing.
    return {
        "type": "section",
        "block_id": block_id,
        "text": {"type": "mrkdwn", "text": clip(text or "—", SECTION_CHARS)},
    }


def context_block(text: str, block_id: str) -> Block:
    return {
        "type": "context",
        "block_id": block_id,
        "elements": [{"type": "mrkdwn", "text": clip(text or "—", CONTEXT_CHARS)}],
    }


def button(label: str, action_id: str, value: str, style: str | None = None) -> Block:
    button: Block = {
        "type": "button",
        "action_id": action_id,
        "value": value,
        "text": plain_text(label, BUTTON_CHARS),
    }
    if style:
        button["style"] = style
    return button


def actions_block(block_id: str, buttons: list[Block]) -> Block:
    return {"type": "actions", "block_id": block_id, "elements": buttons}


def _pack(lines: Iterable[str], limit: int = SECTION_CHARS) -> list[str]:
    """Join lines into as few chunks of at most ``limit`` characters as possible."""
    chunks: list[str] = []
    current = ""
    for raw in lines:
        line = clip(raw, limit)
        if current and len(current) + 1 + len(line) > limit:
            chunks.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        chunks.append(current)
    return chunks


def sections(lines: Iterable[str], block_prefix: str) -> list[Block]:
    chunks = _pack(lines)
    if len(chunks) == 1:
        return [section_block(chunks[0], block_prefix)]
    return [section_block(chunk, f"{block_prefix}_{i}") for i, chunk in enumerate(chunks, start=1)]


def as_message(fallback: str, blocks: list[Block], locale: str) -> Message:
    """Apply the message-wide limits; builders stay under them, this is the safety net."""
    if len(blocks) > MAX_BLOCKS:
        kept = blocks[: MAX_BLOCKS - 1]
        # Never leave a step's text without the buttons that belonged under it.
        if kept[-1]["type"] != "actions" and blocks[len(kept)]["type"] == "actions":
            kept.pop()
        dropped = len(blocks) - len(kept)
        blocks = kept + [context_block(phrase(locale, "common", "truncated", count=dropped), "truncated")]
    return Message(text=clip(fallback or "Aegis", FALLBACK_CHARS), blocks=blocks)


def safe_link(link: object) -> str | None:
    """A permalink goes inside ``<…|label>``: only an https URL with no markup characters."""
    if not isinstance(link, str) or not link or not link.startswith("https://") or any(c in link for c in "<>|& \n"):
        return None
    return link


class _Commands(TypedDict):
    scenarios: list[str]
    severities: list[str]


def command_tokens() -> _Commands:
    # The tokens users type are the table keys; templates show them verbatim.
    return {
        "scenarios": list(render.name_table("en", "scenarios")),
        "severities": list(render.name_table("en", "severities")),
    }


# ---------------------------------------------------------------------------------------------
# Plain replies (any command surface)


def help_text(locale: str) -> Message:
    """``/aegis help``: every command with its arguments."""
    body = phrase(locale, "help", "body", **command_tokens())
    return as_message(phrase(locale, "help", "text"), [section_block(body, "help")], locale)


def usage_error(problem: str, locale: str, **ctx: object) -> Message:
    """What was wrong with a command and what to type instead (ephemeral)."""
    body = phrase(locale, "usage_error", problem=problem, **command_tokens(), **ctx)
    # The notification shows what was wrong; the usage reference is in the blocks.
    return as_message(body.split("\n\n", 1)[0], [section_block(body, "usage_error")], locale)


def refusal(reason: str, locale: str, **ctx: object) -> Message:
    """Why a click or command was refused (ephemeral); nothing was changed."""
    if "link" in ctx:
        ctx["link"] = safe_link(ctx["link"])
    body = phrase(locale, "refusal", reason=reason, **ctx)
    return as_message(body, [section_block(body, "refusal")], locale)


def ops_notice(title: str, body: str, locale: str) -> Message:
    """A notice for the ops channel; ``title`` and ``body`` are already rendered by the caller."""
    ctx = {"title": title, "body": body}
    return as_message(phrase(locale, "ops_notice", "text", **ctx),
                    [section_block(phrase(locale, "ops_notice", "body", **ctx), "ops_notice")], locale)


def simple_message(locale: str, name: str, part: str, block_id: str, **ctx: object) -> Message:
    body = phrase(locale, name, part, **ctx)
    return as_message(body, [section_block(body, block_id)], locale)

# Manual verification (a verify step with no automated check: a responder states the evidence).
VERIFY_MANUAL = "aegis_verify_manual"      # value: str(step.id)
VERIFY_CALLBACK = "aegis_verify_submit"    # private_metadata: str(step.id)

# Recovery choices on the assessment message (issue 9): the strategy select and the two forms.
STRATEGY = "aegis_strategy"                    # static_select; selected_option.value: a strategy
SET_INFECTION_TIME = "aegis_infection_time"    # value: str(incident.id)
SET_PARTIAL_TARGET = "aegis_partial_target"    # value: str(incident.id)
INFECTION_CALLBACK = "aegis_infection_submit"  # private_metadata: str(incident.id)
PARTIAL_CALLBACK = "aegis_partial_submit"      # private_metadata: str(incident.id)
CHOOSABLE_STRATEGIES = ("failover", "restore_from_backup", "partial_recovery")
PARTIAL_COMPONENTS = ("postgres", "neo4j", "milvus")


def select(placeholder: str, action_id: str, options: list[tuple[str, str]], initial: str | None = None) -> Block:
    """A static select (in an actions block or a form); ``options`` are (value, label) pairs."""
    items: list[Block] = [{"text": plain_text(text, OPTION_CHARS), "value": value} for value, text in options]
    element: Block = {
        "type": "static_select",
        "action_id": action_id,
        "placeholder": plain_text(placeholder, PLACEHOLDER_CHARS),
        "options": items,
    }
    chosen = next((o for o in items if o["value"] == initial), None)
    if chosen is not None:
        element["initial_option"] = chosen   # Slack requires it to equal one of the options exactly
    return element
