"""Reading what the bot posted to the emulator, the way a responder reads the channel."""

from __future__ import annotations

import json
from typing import Any

from slack_emulator.server import EmulatorServer
from slack_emulator.state import EmulatorState


def channel(state: EmulatorState, name_prefix: str) -> dict[str, Any] | None:
    return next((c for c in state.channels() if c["name"].startswith(name_prefix)), None)


def channel_by_id(state: EmulatorState, channel_id: str) -> dict[str, Any]:
    return next(c for c in state.channels() if c["id"] == channel_id)


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for block in message.get("blocks") or []:
        if block.get("type") == "actions":
            found += [e for e in block.get("elements", []) if e.get("type") == "button"]
        accessory = block.get("accessory")
        if accessory and accessory.get("type") == "button":
            found.append(accessory)
    return found


def message_with_button(chan: dict[str, Any], action_id: str, value: str | None = None) -> dict[str, Any] | None:
    for message in reversed(chan["messages"]):
        for b in buttons(message):
            if b.get("action_id") == action_id and (value is None or b.get("value") == value):
                return message
    return None


def all_text(message: dict[str, Any]) -> str:
    """Fallback text plus every text in the blocks, for content assertions."""
    parts = [message.get("text") or ""]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    parts.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(message.get("blocks") or [])
    return "\n".join(parts)


def replies_for(emulator: EmulatorServer, user: str) -> str:
    """Every response_url reply ``user`` got, as one JSON text (non-ASCII kept, for Korean)."""
    return json.dumps(emulator.state.responses_for(user), ensure_ascii=False)
