"""Records the emulator keeps, and how each one looks in Slack's own JSON shapes.

The shapes follow the Web API responses the bot reads (users.info, conversations.info,
chat.postMessage ``message``, views.open ``view``) so that code written against the
emulator keeps working against real Slack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BOT_USER_ID = "U0AEGISBOT"
BOT_ID = "B0AEGIS"
APP_ID = "A0AEGIS"
TEAM_ID = "T0AEGIS"
TEAM_DOMAIN = "aegis-emulator"
TEAM_NAME = "Aegis Emulator"


class SlackError(Exception):
    """A Web API error: ``{"ok": false, "error": code, **extra}``."""

    def __init__(self, code: str, **extra: Any) -> None:
        super().__init__(code)
        self.code = code
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"ok": False, "error": self.code, **self.extra}


@dataclass
class User:
    id: str
    name: str
    real_name: str
    is_bot: bool = False

    def to_slack(self) -> dict[str, Any]:
        profile = {"real_name": self.real_name, "display_name": self.name}
        if self.is_bot:
            profile["bot_id"] = BOT_ID
        return {
            "id": self.id,
            "team_id": TEAM_ID,
            "name": self.name,
            "real_name": self.real_name,
            "deleted": False,
            "is_bot": self.is_bot,
            "is_app_user": False,
            "tz": "Asia/Seoul",
            "profile": profile,
        }


@dataclass
class Message:
    ts: str
    channel: str
    user: str
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    thread_ts: str | None = None
    edited_ts: str | None = None
    # Earlier versions, oldest first: each {"ts": when replaced, "text", "blocks"}.
    edits: list[dict[str, Any]] = field(default_factory=list)

    def to_slack(self, replies: list[Message] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "message", "user": self.user, "text": self.text, "ts": self.ts,
                               "team": TEAM_ID}
        if self.user == BOT_USER_ID:
            out.update(bot_id=BOT_ID, app_id=APP_ID)
        if self.blocks:
            out["blocks"] = self.blocks
        if self.edited_ts:
            out["edited"] = {"user": self.user, "ts": self.edited_ts}
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        if replies:
            users = sorted({r.user for r in replies})
            out.update(thread_ts=self.ts, reply_count=len(replies), reply_users=users,
                       reply_users_count=len(users), latest_reply=replies[-1].ts)
        return out


@dataclass
class Channel:
    id: str
    name: str
    is_private: bool
    created: int
    creator: str
    members: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    is_im: bool = False
    is_archived: bool = False
    topic: str = ""
    purpose: str = ""

    def _text_field(self, value: str) -> dict[str, Any]:
        return {"value": value, "creator": self.creator if value else "", "last_set": 0}

    def to_slack(self, viewer: str = BOT_USER_ID) -> dict[str, Any]:
        if self.is_im:
            other = next((m for m in self.members if m != BOT_USER_ID), BOT_USER_ID)
            return {"id": self.id, "is_im": True, "user": other, "created": self.created,
                    "is_member": viewer in self.members}
        return {
            "id": self.id,
            "name": self.name,
            "name_normalized": self.name,
            "is_channel": not self.is_private,
            "is_group": self.is_private,
            "is_im": False,
            "is_mpim": False,
            "is_private": self.is_private,
            "is_archived": self.is_archived,
            "is_general": False,
            "created": self.created,
            "creator": self.creator,
            "is_member": viewer in self.members,
            "num_members": len(self.members),
            "topic": self._text_field(self.topic),
            "purpose": self._text_field(self.purpose),
        }


@dataclass
class Ephemeral:
    """A message only one user sees: chat.postEphemeral, a response_url reply, or a slash ack."""

    message_ts: str
    channel: str
    user: str
    text: str
    blocks: list[dict[str, Any]]
    source: str
    thread_ts: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": "message", "is_ephemeral": True, "message_ts": self.message_ts, "ts": self.message_ts,
                "channel": self.channel, "user": self.user, "text": self.text, "blocks": self.blocks,
                "thread_ts": self.thread_ts, "source": self.source,
                "response_type": "ephemeral"}


@dataclass
class View:
    id: str
    user: str
    trigger_id: str
    payload: dict[str, Any]
    hash: str
    status: str = "open"  # open | closed
    errors: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    submissions: list[dict[str, Any]] = field(default_factory=list)
    previous_view_id: str | None = None

    def to_slack(self) -> dict[str, Any]:
        p = self.payload
        return {
            "id": self.id,
            "team_id": TEAM_ID,
            "type": p.get("type", "modal"),
            "title": p.get("title"),
            "submit": p.get("submit"),
            "close": p.get("close"),
            "blocks": p.get("blocks", []),
            "private_metadata": p.get("private_metadata", ""),
            "callback_id": p.get("callback_id", ""),
            "external_id": p.get("external_id", ""),
            "clear_on_close": bool(p.get("clear_on_close", False)),
            "notify_on_close": bool(p.get("notify_on_close", False)),
            "state": {"values": self.values},
            "hash": self.hash,
            "previous_view_id": self.previous_view_id,
            "root_view_id": self.id,
            "app_id": APP_ID,
            "app_installed_team_id": TEAM_ID,
            "bot_id": BOT_ID,
        }

    def to_dict(self) -> dict[str, Any]:
        """The inspection form: Slack's view plus who opened it and what happened since."""
        return {**self.to_slack(), "user": self.user, "trigger_id": self.trigger_id, "status": self.status,
                "errors": self.errors, "submissions": self.submissions}


@dataclass
class Interaction:
    """One thing a user did (slash command, click, submit): its trigger_id and response_url."""

    trigger_id: str
    response_id: str
    user: str
    channel: str | None
    message_ts: str | None = None
    trigger_used: bool = False
    responses_left: int = 5  # Slack accepts five posts per response_url
