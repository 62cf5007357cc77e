"""Block Kit limits that real Slack enforces, so the bot meets them in tests instead of production.

Only the limits for the elements the bot uses are checked (documented at
https://api.slack.com/reference/block-kit). Each problem reads like Slack's own
``response_metadata.messages`` entry: ``[ERROR] <what> [json-pointer:/blocks/0/text]``.
"""

from __future__ import annotations

import secrets
from typing import Any

MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_MESSAGE_TEXT = 40_000
KNOWN_BLOCKS = {"header", "section", "context", "divider", "actions", "image", "input", "rich_text"}
KNOWN_INPUTS = {"plain_text_input", "static_select", "multi_static_select", "users_select",
                "multi_users_select", "conversations_select", "datepicker", "timepicker", "checkboxes", "radio_buttons",
                "number_input"}


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, pointer: str, what: str) -> None:
        self.problems.append(f"[ERROR] {what} [json-pointer:{pointer}]")

    def text(self, obj: Any, pointer: str, *, max_len: int, plain_only: bool = False) -> None:
        if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
            self.fail(pointer, "must be a text object of type plain_text or mrkdwn")
            return
        if plain_only and obj["type"] != "plain_text":
            self.fail(pointer + "/type", "must be plain_text")
        value = obj.get("text")
        if not isinstance(value, str) or not value:
            self.fail(pointer + "/text", "must be more than 0 characters")
        elif len(value) > max_len:
            self.fail(pointer + "/text", f"must be less than {max_len + 1} characters")

    def element(self, el: Any, pointer: str, action_ids: set[str]) -> None:
        if not isinstance(el, dict) or "type" not in el:
            self.fail(pointer, "must be an element object")
            return
        action_id = el.get("action_id")
        if action_id is not None:
            if not isinstance(action_id, str) or len(action_id) > 255:
                self.fail(pointer + "/action_id", "must be a string of at most 255 characters")
            elif action_id in action_ids:
                self.fail(pointer + "/action_id", "must be unique within the block")
            action_ids.add(str(action_id))
        kind = el["type"]
        if kind == "button":
            self.text(el.get("text"), pointer + "/text", max_len=75, plain_only=True)
            if len(str(el.get("value", ""))) > 2000:
                self.fail(pointer + "/value", "must be less than 2001 characters")
            if el.get("style") not in (None, "primary", "danger"):
                self.fail(pointer + "/style", "must be one of primary, danger")
        elif kind in ("static_select", "multi_static_select"):
            groups = el.get("option_groups") or []
            options = el.get("options") or [o for g in groups for o in g.get("options", [])]
            if not options or len(options) > 100:
                self.fail(pointer + "/options", "must provide between 1 and 100 options")
            for i, option in enumerate(options):
                self.text(option.get("text"), f"{pointer}/options/{i}/text", max_len=75, plain_only=True)
                if not isinstance(option.get("value"), str) or len(option["value"]) > 150:
                    self.fail(f"{pointer}/options/{i}/value", "must be a string of at most 150 characters")

    def block(self, block: Any, pointer: str, block_ids: set[str]) -> None:
        if not isinstance(block, dict) or block.get("type") not in KNOWN_BLOCKS:
            kind = block.get("type") if isinstance(block, dict) else block
            self.fail(pointer + "/type", f"unsupported type: {kind}")
            return
        block_id = block.get("block_id")
        if block_id is not None:
            if not isinstance(block_id, str) or len(block_id) > 255:
                self.fail(pointer + "/block_id", "must be a string of at most 255 characters")
            elif block_id in block_ids:
                self.fail(pointer + "/block_id", "must be unique within the message or view")
            block_ids.add(str(block_id))
        action_ids: set[str] = set()
        kind = block["type"]
        if kind == "header":
            self.text(block.get("text"), pointer + "/text", max_len=150, plain_only=True)
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                self.fail(pointer, "must have text or fields")
            if "text" in block:
                self.text(block["text"], pointer + "/text", max_len=3000)
            fields = block.get("fields") or []
            if len(fields) > 10:
                self.fail(pointer + "/fields", "must have at most 10 items")
            for i, f in enumerate(fields):
                self.text(f, f"{pointer}/fields/{i}", max_len=2000)
            if "accessory" in block:
                self.element(block["accessory"], pointer + "/accessory", action_ids)
        elif kind == "context":
            elements = block.get("elements") or []
            if not 1 <= len(elements) <= 10:
                self.fail(pointer + "/elements", "must have between 1 and 10 items")
            for i, el in enumerate(elements):
                if isinstance(el, dict) and el.get("type") in ("plain_text", "mrkdwn"):
                    self.text(el, f"{pointer}/elements/{i}", max_len=3000)
        elif kind == "actions":
            elements = block.get("elements") or []
            if not 1 <= len(elements) <= 25:
                self.fail(pointer + "/elements", "must have between 1 and 25 items")
            for i, el in enumerate(elements):
                self.element(el, f"{pointer}/elements/{i}", action_ids)
        elif kind == "input":
            self.text(block.get("label"), pointer + "/label", max_len=2000, plain_only=True)
            element = block.get("element")
            if not isinstance(element, dict) or element.get("type") not in KNOWN_INPUTS:
                self.fail(pointer + "/element", "must be an input element")
            else:
                self.element(element, pointer + "/element", action_ids)

    def blocks(self, blocks: Any, *, limit: int) -> None:
        if not isinstance(blocks, list):
            self.fail("/blocks", "must be an array")
            return
        if len(blocks) > limit:
            self.fail("/blocks", f"must have at most {limit} items")
        block_ids: set[str] = set()
        for i, block in enumerate(blocks):
            self.block(block, f"/blocks/{i}", block_ids)


def message_problems(blocks: Any) -> list[str]:
    checker = _Checker()
    checker.blocks(blocks, limit=MAX_MESSAGE_BLOCKS)
    return checker.problems


def view_problems(view: Any) -> list[str]:
    checker = _Checker()
    if not isinstance(view, dict):
        return ["[ERROR] must be a view object [json-pointer:/view]"]
    if view.get("type") not in ("modal", "home"):
        checker.fail("/view/type", "must be modal or home")
    if view.get("type") == "modal":
        checker.text(view.get("title"), "/view/title", max_len=24, plain_only=True)
        for key in ("submit", "close"):
            if key in view:
                checker.text(view[key], f"/view/{key}", max_len=24, plain_only=True)
        blocks = view.get("blocks") or []
        if any(isinstance(b, dict) and b.get("type") == "input" for b in blocks) and "submit" not in view:
            checker.fail("/view/submit", "is required when the view has input blocks")
    if len(str(view.get("private_metadata", ""))) > 3000:
        checker.fail("/view/private_metadata", "must be less than 3001 characters")
    if len(str(view.get("callback_id", ""))) > 255:
        checker.fail("/view/callback_id", "must be less than 256 characters")
    checker.blocks(view.get("blocks", []), limit=MAX_VIEW_BLOCKS)
    return [p.replace("[json-pointer:/blocks", "[json-pointer:/view/blocks") for p in checker.problems]


def _generated_id() -> str:
    return secrets.token_urlsafe(4)[:5]


def _with_action_id(element: dict[str, Any]) -> dict[str, Any]:
    return {**element, "action_id": element.get("action_id") or _generated_id()}


def with_generated_ids(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Slack fills in a random block_id (and action_id) where the app gave none; so do we."""
    out = []
    for block in blocks:
        block = {**block, "block_id": block.get("block_id") or _generated_id()}
        accessory = block.get("accessory")
        if isinstance(accessory, dict) and accessory.get("type") != "image":
            block["accessory"] = _with_action_id(accessory)
        if block.get("type") == "actions":
            block["elements"] = [_with_action_id(el) for el in block.get("elements") or []]
        if block.get("type") == "input" and isinstance(block.get("element"), dict):
            block["element"] = _with_action_id(block["element"])
        out.append(block)
    return out
