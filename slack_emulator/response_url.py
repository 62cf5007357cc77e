"""What Slack does with a post to an interaction's ``response_url`` (or a slash command's ack body).

Slack's rules, for the fields the bot sends: ``delete_original`` removes the message the user
clicked; ``replace_original`` rewrites it in place; otherwise ``response_type: in_channel``
posts a message everyone sees, and anything else is an ephemeral reply to that user only.
Every delivery is logged for ``GET /_emulator/ephemeral`` as well.
"""

from __future__ import annotations

from typing import Any

from slack_emulator.blockcheck import with_generated_ids
from slack_emulator.model import SlackError
from slack_emulator.state import EmulatorState


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


def deliver(state: EmulatorState, response_id: str, payload: dict[str, Any], *,
            source: str = "response_url") -> dict[str, Any]:
    """Apply one response; returns the log entry. Raises SlackError (expired_url, used_url, ...).

    A slash command's ack body (``source="slash_ack"``) is shown the same way but, as in Slack,
    does not use up one of the response_url's five posts.
    """
    inter = state.use_response_url(response_id, consume=source != "slash_ack")
    text = str(payload.get("text") or "")
    blocks = with_generated_ids(payload.get("blocks") or [])
    if not text and not blocks and not _flag(payload.get("delete_original")):
        raise SlackError("no_text")
    response_type = payload.get("response_type") or "ephemeral"
    original = inter.message_ts
    channel = inter.channel or ""
    is_ephemeral_original = bool(original and state.find_ephemeral(inter.user, original))

    if _flag(payload.get("delete_original")) and original:
        if is_ephemeral_original:
            state.delete_ephemeral(inter.user, original)
        else:
            state.delete_message(channel, original)
        outcome, ts = "deleted_original", original
    elif _flag(payload.get("replace_original")) and original:
        if is_ephemeral_original:
            state.replace_ephemeral(inter.user, original, text, blocks)
        else:
            state.update_message(channel, original, text, blocks)
        outcome, ts = "replaced_original", original
    elif response_type == "in_channel":
        _, message = state.post_message(channel, text, blocks, thread_ts=payload.get("thread_ts"))
        outcome, ts = "posted_in_channel", message["ts"]
    else:
        eph = state.post_ephemeral(channel, inter.user, text, blocks, source=source,
                                   thread_ts=payload.get("thread_ts"))
        outcome, ts = "posted_ephemeral", eph["message_ts"]

    entry = {"source": source, "user": inter.user, "channel": channel, "response_type": response_type,
             "replace_original": _flag(payload.get("replace_original")),
             "delete_original": _flag(payload.get("delete_original")),
             "text": text, "blocks": blocks, "outcome": outcome, "ts": ts, "payload": payload,
             "is_ephemeral": outcome == "posted_ephemeral" or is_ephemeral_original}
    state.record_response(entry)
    return entry
