"""The Slack Web API subset the bot uses, served at ``POST /api/<method>``.

Requests arrive the way slack_sdk sends them: ``Authorization: Bearer xoxb-…`` and either a
JSON body or a form body whose nested fields (``blocks``, ``view``) are JSON strings. Responses
use Slack's shapes and error codes; failures are HTTP 200 with ``ok: false`` except injected
rate limits. Every call, faulted or not, is recorded without its token.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import Blueprint, Request, Response, request

from slack_emulator.blockcheck import MAX_MESSAGE_TEXT, message_problems, view_problems, with_generated_ids
from slack_emulator.model import BOT_ID, BOT_USER_ID, TEAM_DOMAIN, TEAM_ID, TEAM_NAME, SlackError
from slack_emulator.state import EmulatorState

JSON_FIELDS = ("blocks", "attachments", "view", "metadata")
CHANNEL_NAME = re.compile(r"[a-z0-9_\-\u0080-\uffff]+")


class Params:
    """Request parameters with Slack's coercions (``"true"``/``"1"`` flags, JSON-string fields)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def text(self, key: str, default: str = "") -> str:
        value = self.values.get(key)
        return default if value is None else str(value)

    def required(self, key: str, error: str) -> str:
        value = self.text(key).strip()
        if not value:
            raise SlackError(error)
        return value

    def flag(self, key: str) -> bool:
        return str(self.values.get(key, "")).lower() in ("1", "true")

    def number(self, key: str, default: int) -> int:
        try:
            return int(self.values.get(key, default))
        except (TypeError, ValueError):
            return default

    def blocks(self) -> list[dict[str, Any]] | None:
        """The ``blocks`` field, or None when absent; malformed JSON is Slack's invalid_blocks_format."""
        if "blocks" not in self.values or self.values["blocks"] in (None, ""):
            return None
        blocks = self.values["blocks"]
        if not isinstance(blocks, list):
            raise SlackError("invalid_blocks_format")
        problems = message_problems(blocks)
        if problems:
            raise SlackError("invalid_blocks", errors=[p.removeprefix("[ERROR] ") for p in problems],
                             response_metadata={"messages": problems})
        return with_generated_ids(blocks)

    def view(self) -> dict[str, Any]:
        view = self.values.get("view")
        if not isinstance(view, dict):
            missing = ["[ERROR] missing required field: view"]
            raise SlackError("invalid_arguments", response_metadata={"messages": missing})
        problems = view_problems(view)
        if problems:
            raise SlackError("invalid_arguments", response_metadata={"messages": problems})
        return {**view, "blocks": with_generated_ids(view.get("blocks") or [])}


def read_params(req: Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(req.args.items())
    if req.is_json:
        body = req.get_json(silent=True)
        if isinstance(body, dict):
            params.update(body)
    else:
        params.update(req.form.items())
    for key in JSON_FIELDS:
        if isinstance(params.get(key), str) and params[key]:
            try:
                params[key] = json.loads(params[key])
            except json.JSONDecodeError:
                pass  # left as a string; the handler reports Slack's error for it
    return params


def _message_text(p: Params, blocks: list[dict[str, Any]] | None) -> str:
    text = p.text("text")
    if not text and not blocks:
        raise SlackError("no_text")
    if len(text) > MAX_MESSAGE_TEXT:
        raise SlackError("msg_too_long")
    return text


# ---- handlers: each takes (state, params) and returns the ok body or raises SlackError -------

def auth_test(state: EmulatorState, p: Params) -> dict[str, Any]:
    return {"ok": True, "url": f"https://{TEAM_DOMAIN}.slack.com/", "team": TEAM_NAME, "user": "aegis",
            "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID, "is_enterprise_install": False}


def chat_post_message(state: EmulatorState, p: Params) -> dict[str, Any]:
    channel = p.required("channel", "channel_not_found")
    blocks = p.blocks()
    text = _message_text(p, blocks)
    thread_ts = p.text("thread_ts") or None
    channel_id, message = state.post_message(channel, text, blocks or [], thread_ts=thread_ts)
    return {"ok": True, "channel": channel_id, "ts": message["ts"], "message": message}


def chat_update(state: EmulatorState, p: Params) -> dict[str, Any]:
    channel = p.required("channel", "channel_not_found")
    ts = p.required("ts", "message_not_found")
    blocks = p.blocks()
    text = p.text("text") if "text" in p.values else None
    if text is None and blocks is None:
        raise SlackError("no_text")
    channel_id, message = state.update_message(channel, ts, text, blocks)
    return {"ok": True, "channel": channel_id, "ts": ts, "text": message["text"], "message": message}


def chat_delete(state: EmulatorState, p: Params) -> dict[str, Any]:
    channel_id = state.channel_id(p.required("channel", "channel_not_found"))
    ts = p.required("ts", "message_not_found")
    if not state.delete_message(channel_id, ts):
        raise SlackError("message_not_found")
    return {"ok": True, "channel": channel_id, "ts": ts}


def chat_post_ephemeral(state: EmulatorState, p: Params) -> dict[str, Any]:
    channel = p.required("channel", "channel_not_found")
    user = p.required("user", "user_not_found")
    blocks = p.blocks()
    text = _message_text(p, blocks)
    eph = state.post_ephemeral(channel, user, text, blocks or [], source="chat.postEphemeral",
                               thread_ts=p.text("thread_ts") or None)
    return {"ok": True, "message_ts": eph["message_ts"]}


def chat_get_permalink(state: EmulatorState, p: Params) -> dict[str, Any]:
    channel_id = state.channel_id(p.required("channel", "channel_not_found"))
    ts = p.required("message_ts", "message_not_found")
    if state.find_message(channel_id, ts) is None:
        raise SlackError("message_not_found")
    link = f"https://{TEAM_DOMAIN}.slack.com/archives/{channel_id}/p{ts.replace('.', '')}"
    return {"ok": True, "channel": channel_id, "permalink": link}


def conversations_create(state: EmulatorState, p: Params) -> dict[str, Any]:
    name = p.text("name")
    if not name:
        raise SlackError("invalid_name_required")
    if len(name) > 80:
        raise SlackError("invalid_name_maxlength")
    if not CHANNEL_NAME.fullmatch(name):
        raise SlackError("invalid_name_specials")
    if not re.search(r"[^\-_]", name):
        raise SlackError("invalid_name_punctuation")
    return {"ok": True, "channel": state.create_channel(name, is_private=p.flag("is_private"))}


def conversations_invite(state: EmulatorState, p: Params) -> dict[str, Any]:
    channel = p.required("channel", "channel_not_found")
    users = [u.strip() for u in p.text("users").split(",") if u.strip()]
    return {"ok": True, "channel": state.invite(channel, users)}


def conversations_info(state: EmulatorState, p: Params) -> dict[str, Any]:
    return {"ok": True, "channel": state.channel_info(p.required("channel", "channel_not_found"))}


def conversations_list(state: EmulatorState, p: Params) -> dict[str, Any]:
    """The channels the bot can see (public ones, private ones it is in), a page at a time."""
    wanted = {t.strip() for t in (p.text("types") or "public_channel").split(",") if t.strip()}
    start = 0
    if p.text("cursor"):
        try:
            start = int(base64.b64decode(p.text("cursor"), validate=True).decode().removeprefix("offset:"))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise SlackError("invalid_cursor") from None
    visible = [c for c in state.channels() if not c["is_im"]
               and ("private_channel" if c["is_private"] else "public_channel") in wanted
               and (c["is_member"] or not c["is_private"])
               and not (c["is_archived"] and p.flag("exclude_archived"))]
    limit = max(1, min(1000, p.number("limit", 100)))
    page = [{k: v for k, v in c.items() if k not in ("members", "messages")} for c in visible[start:start + limit]]
    more = start + limit < len(visible)
    next_cursor = base64.b64encode(f"offset:{start + limit}".encode()).decode() if more else ""
    return {"ok": True, "channels": page, "response_metadata": {"next_cursor": next_cursor}}


def conversations_join(state: EmulatorState, p: Params) -> dict[str, Any]:
    channel, already = state.join(p.required("channel", "channel_not_found"))
    body: dict[str, Any] = {"ok": True, "channel": channel}
    if already:
        body.update(warning="already_in_channel", response_metadata={"warnings": ["already_in_channel"]})
    return body


def conversations_members(state: EmulatorState, p: Params) -> dict[str, Any]:
    members = state.members(p.required("channel", "channel_not_found"))
    return {"ok": True, "members": members, "response_metadata": {"next_cursor": ""}}


def conversations_open(state: EmulatorState, p: Params) -> dict[str, Any]:
    users = [u.strip() for u in p.text("users").split(",") if u.strip()]
    if len(users) != 1:
        raise SlackError("not_implemented" if users else "users_list_not_supplied")
    return {"ok": True, "channel": state.open_dm(users[0])}


def _set_channel_text(which: str) -> Callable[[EmulatorState, Params], dict[str, Any]]:
    def handler(state: EmulatorState, p: Params) -> dict[str, Any]:
        channel = p.required("channel", "channel_not_found")
        return {"ok": True, "channel": state.set_channel_text(channel, which, p.text(which))}
    return handler


def conversations_archive(state: EmulatorState, p: Params) -> dict[str, Any]:
    state.archive(p.required("channel", "channel_not_found"))
    return {"ok": True}


def _decimal_ts(value: str, error: str) -> str | None:
    if not value:
        return None
    try:
        Decimal(value)
    except InvalidOperation:
        raise SlackError(error) from None
    return value


def conversations_history(state: EmulatorState, p: Params) -> dict[str, Any]:
    channel = p.required("channel", "channel_not_found")
    limit = max(1, min(p.number("limit", 100), 999))
    latest = _decimal_ts(p.text("latest"), "invalid_ts_latest")
    cursor = p.text("cursor")
    if cursor:
        # The cursor carries the oldest ts already returned; the next page is strictly older.
        try:
            latest = base64.b64decode(cursor, validate=True).decode().removeprefix("ts:")
            Decimal(latest)
        except (binascii.Error, UnicodeDecodeError, InvalidOperation):
            raise SlackError("invalid_cursor") from None
    oldest = _decimal_ts(p.text("oldest"), "invalid_ts_oldest")
    messages, has_more = state.history(channel, limit=limit, latest=latest, oldest=oldest,
                                       inclusive=p.flag("inclusive") and not cursor)
    next_cursor = base64.b64encode(f"ts:{messages[-1]['ts']}".encode()).decode() if has_more else ""
    return {"ok": True, "messages": messages, "has_more": has_more, "pin_count": 0,
            "response_metadata": {"next_cursor": next_cursor}}


def conversations_replies(state: EmulatorState, p: Params) -> dict[str, Any]:
    channel = p.required("channel", "channel_not_found")
    ts = p.required("ts", "thread_not_found")
    return {"ok": True, "messages": state.replies(channel, ts), "has_more": False,
            "response_metadata": {"next_cursor": ""}}


def views_open(state: EmulatorState, p: Params) -> dict[str, Any]:
    trigger_id = p.required("trigger_id", "invalid_trigger_id")
    return {"ok": True, "view": state.open_view(trigger_id, p.view())}


def views_update(state: EmulatorState, p: Params) -> dict[str, Any]:
    view_id, external_id = p.text("view_id") or None, p.text("external_id") or None
    if not view_id and not external_id:
        raise SlackError("not_found")
    view = state.update_view(p.view(), view_id=view_id, external_id=external_id, hash=p.text("hash") or None)
    return {"ok": True, "view": view}


def users_info(state: EmulatorState, p: Params) -> dict[str, Any]:
    return {"ok": True, "user": state.user(p.required("user", "user_not_found"))}


def users_list(state: EmulatorState, p: Params) -> dict[str, Any]:
    return {"ok": True, "members": state.users(include_bots=True), "response_metadata": {"next_cursor": ""}}


HANDLERS: dict[str, Callable[[EmulatorState, Params], dict[str, Any]]] = {
    "auth.test": auth_test,
    "chat.postMessage": chat_post_message,
    "chat.update": chat_update,
    "chat.delete": chat_delete,
    "chat.postEphemeral": chat_post_ephemeral,
    "chat.getPermalink": chat_get_permalink,
    "conversations.create": conversations_create,
    "conversations.invite": conversations_invite,
    "conversations.info": conversations_info,
    "conversations.join": conversations_join,
    "conversations.list": conversations_list,
    "conversations.members": conversations_members,
    "conversations.open": conversations_open,
    "conversations.setTopic": _set_channel_text("topic"),
    "conversations.setPurpose": _set_channel_text("purpose"),
    "conversations.archive": conversations_archive,
    "conversations.history": conversations_history,
    "conversations.replies": conversations_replies,
    "views.open": views_open,
    "views.update": views_update,
    "users.info": users_info,
    "users.list": users_list,
}


def _json_response(body: dict[str, Any], status: int = 200,
                   headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {},
                    content_type="application/json; charset=utf-8")


def _bearer(req: Request) -> str | None:
    auth = req.headers.get("Authorization", "")
    return auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else None


def create_webapi_blueprint(state: EmulatorState, bot_token: str, *,
                            connections_open: Callable[[str | None], dict[str, Any]] | None = None) -> Blueprint:
    """``connections_open``: the Socket Mode server's ``apps.connections.open`` (app-level token);
    without it (HTTP mode) the method answers Slack's error for an app without Socket Mode."""
    bp = Blueprint("slack_webapi", __name__)

    @bp.route("/api/<method>", methods=["GET", "POST"])
    def call(method: str) -> Response:
        params = read_params(request)
        token = _bearer(request) or params.get("token")
        params.pop("token", None)

        fault = state.faults.take(method)
        if fault is not None:
            if fault.delay_seconds:
                time.sleep(fault.delay_seconds)
            status, body, headers = fault.response()
            state.record_call(method, params, body, http_status=status, faulted=True)
            return _json_response(body, status, headers)

        handler = HANDLERS.get(method)
        if method == "apps.connections.open":   # the one method called with the app-level token
            try:
                if connections_open is None:
                    raise SlackError("socket_mode_not_enabled" if token else "not_authed")
                body = connections_open(str(token) if token else None)
            except SlackError as err:
                body = err.body()
        elif not token:
            body = {"ok": False, "error": "not_authed"}
        elif not hmac.compare_digest(str(token).encode(), bot_token.encode()):
            body = {"ok": False, "error": "invalid_auth"}
        elif handler is None:
            body = {"ok": False, "error": "unknown_method", "req_method": method}
        else:
            try:
                body = handler(state, Params(params))
            except SlackError as err:
                body = err.body()
        state.record_call(method, params, body, http_status=200, faulted=False)
        return _json_response(body)

    return bp
