"""Thread-safe Slack workspace: users, channels, messages, ephemerals, views, calls.

Every public method takes the one lock and returns plain dicts (copies), so Web API handler
threads, the web page and tests can share one instance. Errors a real workspace would report
are raised as :class:`SlackError` with Slack's error codes.

Every change a user could see bumps a sequence number and wakes :meth:`wait_for_change`, which
the live page's long-poll waits on. With a ``database_path`` the workspace (users, channels,
messages, ephemerals) is written through to SQLite (slack_emulator/persist.py) and loaded back
on the next start; without one it lives in memory only (the tests' emulators).
"""

from __future__ import annotations

import copy
import secrets
import threading
import time
import uuid
from collections import deque
from decimal import Decimal
from typing import Any

from slack_emulator.blockcheck import with_generated_ids
from slack_emulator.faults import FaultInjector
from slack_emulator.model import (
    BOT_USER_ID,
    Channel,
    Ephemeral,
    Interaction,
    Message,
    SlackError,
    User,
    View,
)
from slack_emulator.persist import MemoryWorkspace, open_workspace

STAKEHOLDER_CHANNEL_ID = "C0STAKE"
OPS_CHANNEL_ID = "C0OPS"
SEEDED_CHANNEL_IDS = (STAKEHOLDER_CHANNEL_ID, OPS_CHANNEL_ID)

DEFAULT_USERS: tuple[tuple[str, str, str], ...] = (
    ("U0IC", "ic.kim", "Kim (Incident Commander)"),
    ("U0DB", "db.lee", "Lee (Database Lead)"),
    ("U0INFRA", "infra.park", "Park (Infrastructure Lead)"),
    ("U0APP", "app.choi", "Choi (Application Lead)"),
    ("U0SEC", "sec.jung", "Jung (Security Lead)"),
    ("U0COMM", "comm.han", "Han (Communication Manager)"),
    ("U0OUT", "outsider", "Outsider (no role)"),
)

# Long-running `aegis serve` sessions must not grow without bound; tests never get near this.
MAX_RECORDED_CALLS = 20_000
MAX_INTERACTIONS = 10_000


def _view_payload(view: Any) -> dict[str, Any]:
    """A view the bot returned in a submission answer, with the ids Slack would fill in."""
    view = copy.deepcopy(view) if isinstance(view, dict) else {}
    return {**view, "blocks": with_generated_ids(view.get("blocks") or [])}


class EmulatorState:
    def __init__(self, database_path: str | None = None) -> None:
        self._lock = threading.RLock()
        self._changes = threading.Condition(self._lock)
        self._seq = 0
        self._waiting = 0
        self._closing = False
        # a new epoch per start: a page that polled the previous process knows to take everything anew
        self.epoch = uuid.uuid4().hex[:12]
        self._last_ts_us = 0
        self.faults = FaultInjector()
        self._users: dict[str, User] = {}
        self._channels: dict[str, Channel] = {}
        self._ephemerals: list[Ephemeral] = []
        self._views: dict[str, View] = {}
        self._interactions: dict[str, Interaction] = {}  # by trigger_id
        self._responses: dict[str, Interaction] = {}  # by response_url id
        self._response_log: list[dict[str, Any]] = []
        self._calls: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDED_CALLS)
        self._store = open_workspace(database_path)
        self._seed()
        self._load()

    @property
    def database_path(self) -> str | None:
        return self._store.path

    def _load(self) -> None:
        """Take back a stored workspace; a new file gets the seeded users and channels written."""
        snapshot = self._store.load()
        if snapshot is None:
            for user in self._users.values():
                self._store.save_user(user)
            for channel in self._channels.values():
                self._store.save_channel(channel)
            return
        self._users.update({u.id: u for u in snapshot.users})
        self._channels.update({c.id: c for c in snapshot.channels})
        self._ephemerals = snapshot.ephemerals
        self._last_ts_us = snapshot.last_ts_us()

    def close(self) -> None:
        """Wake every waiting long-poll (they answer at once) and close the workspace file."""
        with self._lock:
            self._closing = True
            self._changes.notify_all()
            self._store.close()
            self._store = MemoryWorkspace()   # a request still finishing must not write to a closed file

    # ---- the change feed the live page waits on ------------------------------------------------

    def _changed(self) -> None:
        self._seq += 1
        self._changes.notify_all()

    @property
    def seq(self) -> int:
        with self._lock:
            return self._seq

    def wait_for_change(self, since: int, timeout: float) -> int:
        """Block until something changed after ``since`` (or ``timeout`` passed, or closing); the seq now."""
        with self._changes:
            self._waiting += 1
            try:
                self._changes.wait_for(lambda: self._seq > since or self._closing, timeout)
            finally:
                self._waiting -= 1
            return self._seq

    @property
    def waiting(self) -> int:
        """How many long-polls are waiting for a change right now."""
        with self._lock:
            return self._waiting

    def stop_waiters(self) -> None:
        """Let every long-poll answer now, before the server stops (waitress joins its threads)."""
        with self._lock:
            self._closing = True
            self._changes.notify_all()

    def _seed(self) -> None:
        self._users[BOT_USER_ID] = User(BOT_USER_ID, "aegis", "Aegis", is_bot=True)
        for user_id, name, real_name in DEFAULT_USERS:
            self._users[user_id] = User(user_id, name, real_name)
        # The bot is installed in both seeded channels, as an admin would do once.
        members = [BOT_USER_ID] + [u for u, _, _ in DEFAULT_USERS]
        now = int(time.time())
        for channel_id, name in ((STAKEHOLDER_CHANNEL_ID, "stakeholders"), (OPS_CHANNEL_ID, "ops")):
            self._channels[channel_id] = Channel(channel_id, name, False, now, "U0IC", list(members))

    def reset(self) -> None:
        """Forget messages, ephemerals, views, interactions, calls and faults; keep users."""
        with self._lock:
            seeded = {cid: self._channels[cid] for cid in SEEDED_CHANNEL_IDS}
            for channel_id in self._channels:
                if channel_id not in seeded:
                    self._store.delete_channel(channel_id)
            for channel in seeded.values():
                channel.messages.clear()
                channel.topic = channel.purpose = ""
                self._store.delete_messages(channel.id)
                self._store.save_channel(channel)
            self._channels = seeded
            self._store.delete_all_ephemerals()
            self._ephemerals.clear()
            self._views.clear()
            self._interactions.clear()
            self._responses.clear()
            self._response_log.clear()
            self._calls.clear()
            self.faults.clear()
            self._changed()

    def next_ts(self) -> str:
        """A message timestamp: wall-clock seconds.micros, strictly increasing, hence unique."""
        with self._lock:
            self._last_ts_us = max(int(time.time() * 1_000_000), self._last_ts_us + 1)
            seconds, micros = divmod(self._last_ts_us, 1_000_000)
            return f"{seconds}.{micros:06d}"

    # ---- users -------------------------------------------------------------------------------

    def add_user(self, user_id: str, name: str, real_name: str | None = None, *,
                 join_default_channels: bool = True) -> dict[str, Any]:
        with self._lock:
            user = User(user_id, name, real_name or name)
            self._users[user_id] = user
            self._store.save_user(user)
            if join_default_channels:
                for channel_id in SEEDED_CHANNEL_IDS:
                    members = self._channels[channel_id].members
                    if user_id not in members:
                        members.append(user_id)
                        self._store.save_channel(self._channels[channel_id])
            self._changed()
            return user.to_slack()

    def user(self, user_id: str) -> dict[str, Any]:
        with self._lock:
            if user_id not in self._users:
                raise SlackError("user_not_found")
            return self._users[user_id].to_slack()

    def users(self, *, include_bots: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            return [u.to_slack() for u in self._users.values() if include_bots or not u.is_bot]

    def user_name(self, user_id: str) -> str | None:
        with self._lock:
            user = self._users.get(user_id)
            return user.name if user else None

    # ---- channels ----------------------------------------------------------------------------

    def _channel(self, ref: str) -> Channel:
        """Resolve a channel id, a name ("ops" or "#ops"), or a user id (their DM with the bot)."""
        if ref in self._channels:
            return self._channels[ref]
        if ref.startswith(("U", "W")) and ref in self._users:
            return self._dm_with(ref)
        name = ref.removeprefix("#")
        for channel in self._channels.values():
            if not channel.is_im and channel.name == name:
                return channel
        raise SlackError("channel_not_found")

    def _dm_with(self, user_id: str) -> Channel:
        dm_id = "D" + user_id[1:]
        if dm_id not in self._channels:
            self._channels[dm_id] = Channel(dm_id, user_id, True, int(time.time()), user_id,
                                            [user_id, BOT_USER_ID], is_im=True)
            self._channel_changed(self._channels[dm_id])
        return self._channels[dm_id]

    def _channel_changed(self, channel: Channel) -> None:
        self._store.save_channel(channel)
        self._changed()

    def channel_label(self, channel_id: str) -> str | None:
        """A channel's name for ``<#C…>`` links; None for an unknown channel or a DM."""
        with self._lock:
            channel = self._channels.get(channel_id)
            return channel.name if channel is not None and not channel.is_im else None

    def channel_id(self, ref: str) -> str:
        with self._lock:
            return self._channel(ref).id

    def channel_name(self, ref: str) -> str:
        """The name Slack puts in payloads: the channel's name, or "directmessage" for a DM."""
        with self._lock:
            try:
                channel = self._channel(ref)
            except SlackError:
                return ref
            return "directmessage" if channel.is_im else channel.name

    def create_channel(self, name: str, *, is_private: bool, creator: str = BOT_USER_ID) -> dict[str, Any]:
        with self._lock:
            if any(c.name == name and not c.is_im for c in self._channels.values()):
                raise SlackError("name_taken")
            channel_id = ("G" if is_private else "C") + secrets.token_hex(5).upper()
            channel = Channel(channel_id, name, is_private, int(time.time()), creator, [creator])
            self._channels[channel_id] = channel
            self._channel_changed(channel)
            return channel.to_slack(creator)

    def channel_info(self, ref: str, viewer: str = BOT_USER_ID) -> dict[str, Any]:
        with self._lock:
            channel = self._visible_channel(ref, viewer)
            return channel.to_slack(viewer)

    def _visible_channel(self, ref: str, viewer: str) -> Channel:
        # Private channels are invisible (not "forbidden") to non-members, as in Slack.
        channel = self._channel(ref)
        if channel.is_private and viewer not in channel.members:
            raise SlackError("channel_not_found")
        return channel

    def invite(self, ref: str, user_ids: list[str], inviter: str = BOT_USER_ID) -> dict[str, Any]:
        with self._lock:
            channel = self._visible_channel(ref, inviter)
            if not user_ids:
                raise SlackError("no_user")
            if channel.is_archived:
                raise SlackError("is_archived")
            if inviter not in channel.members:
                raise SlackError("not_in_channel")
            if inviter in user_ids:
                raise SlackError("cant_invite_self")
            unknown = [u for u in user_ids if u not in self._users]
            if unknown:
                raise SlackError("user_not_found", errors=[
                    {"user": u, "ok": False, "error": "user_not_found"} for u in unknown])
            new = [u for u in dict.fromkeys(user_ids) if u not in channel.members]
            if not new:
                raise SlackError("already_in_channel")
            channel.members.extend(new)
            self._channel_changed(channel)
            return channel.to_slack(inviter)

    def join(self, ref: str, user_id: str = BOT_USER_ID) -> tuple[dict[str, Any], bool]:
        """Join a public channel; returns (channel, was_already_member)."""
        with self._lock:
            channel = self._visible_channel(ref, user_id)
            if channel.is_private or channel.is_im:
                raise SlackError("method_not_supported_for_channel_type")
            if channel.is_archived:
                raise SlackError("is_archived")
            already = user_id in channel.members
            if not already:
                channel.members.append(user_id)
                self._channel_changed(channel)
            return channel.to_slack(user_id), already

    def set_channel_text(self, ref: str, which: str, value: str, user: str = BOT_USER_ID) -> dict[str, Any]:
        """Set a channel's topic or purpose (``which`` is "topic" or "purpose")."""
        with self._lock:
            channel = self._writable_channel(ref, user)
            if user not in channel.members:
                raise SlackError("not_in_channel")
            setattr(channel, which, value)
            self._channel_changed(channel)
            return channel.to_slack(user)

    def archive(self, ref: str, user: str = BOT_USER_ID) -> None:
        with self._lock:
            channel = self._visible_channel(ref, user)
            if channel.is_im:
                raise SlackError("method_not_supported_for_channel_type")
            if channel.id in SEEDED_CHANNEL_IDS:
                raise SlackError("cant_archive_general")
            if channel.is_archived:
                raise SlackError("already_archived")
            channel.is_archived = True
            self._channel_changed(channel)

    def members(self, ref: str, viewer: str = BOT_USER_ID) -> list[str]:
        with self._lock:
            return list(self._visible_channel(ref, viewer).members)

    def open_dm(self, user_id: str) -> dict[str, Any]:
        with self._lock:
            if user_id not in self._users:
                raise SlackError("user_not_found")
            return self._dm_with(user_id).to_slack()

    def channels(self) -> list[dict[str, Any]]:
        """Inspection form: every channel with members and all messages (replies included)."""
        with self._lock:
            out = []
            for channel in self._channels.values():
                messages = [self._message_dict(channel, m, inspect=True) for m in channel.messages]
                entry = channel.to_slack()
                entry.update(name=channel.name, members=list(channel.members), messages=messages)
                out.append(entry)
            return copy.deepcopy(out)

    # ---- messages ----------------------------------------------------------------------------

    def _message_dict(self, channel: Channel, message: Message, *, inspect: bool = False) -> dict[str, Any]:
        """Slack's message shape; ``inspect`` adds the channel id and the edit history for tests."""
        is_root = message.thread_ts in (None, message.ts)
        out = message.to_slack(self._replies_to(channel, message) if is_root else [])
        parent = None if is_root else self._find(channel, message.thread_ts or "")
        if parent is not None:
            out["parent_user_id"] = parent.user
        if inspect:
            out.update(channel=channel.id, edits=message.edits)
        return out

    @staticmethod
    def _replies_to(channel: Channel, parent: Message) -> list[Message]:
        return [m for m in channel.messages if m.thread_ts == parent.ts and m.ts != parent.ts]

    @staticmethod
    def _find(channel: Channel, ts: str) -> Message | None:
        return next((m for m in channel.messages if m.ts == ts), None)

    def _writable_channel(self, ref: str, user: str) -> Channel:
        # Public channels accept posts from any app with chat:write.public; private ones need membership.
        channel = self._visible_channel(ref, user)
        if channel.is_im and user not in channel.members:
            raise SlackError("channel_not_found")
        if channel.is_archived:
            raise SlackError("is_archived")
        return channel

    def post_message(self, ref: str, text: str, blocks: list[dict[str, Any]], *, thread_ts: str | None = None,
                     user: str = BOT_USER_ID) -> tuple[str, dict[str, Any]]:
        with self._lock:
            channel = self._writable_channel(ref, user)
            if thread_ts:
                parent = self._find(channel, thread_ts)
                # A reply to a reply lands in the parent's thread, as in Slack.
                thread_ts = (parent.thread_ts or parent.ts) if parent else None
            message = Message(self.next_ts(), channel.id, user, text, copy.deepcopy(blocks), thread_ts)
            channel.messages.append(message)
            self._message_changed(message)
            return channel.id, copy.deepcopy(message.to_slack())

    def update_message(self, ref: str, ts: str, text: str | None, blocks: list[dict[str, Any]] | None, *,
                       user: str = BOT_USER_ID) -> tuple[str, dict[str, Any]]:
        with self._lock:
            channel = self._writable_channel(ref, user)
            message = self._find(channel, ts)
            if message is None:
                raise SlackError("message_not_found")
            if message.user != user:
                raise SlackError("cant_update_message")
            message.edits.append({"ts": self.next_ts(), "text": message.text, "blocks": message.blocks})
            message.edited_ts = message.edits[-1]["ts"]
            if text is not None:
                message.text = text
            if blocks is not None:
                message.blocks = copy.deepcopy(blocks)
            self._message_changed(message)
            return channel.id, copy.deepcopy(message.to_slack())

    def delete_message(self, ref: str, ts: str) -> bool:
        with self._lock:
            channel = self._channel(ref)
            message = self._find(channel, ts)
            if message is not None:
                channel.messages.remove(message)
                self._store.delete_message(channel.id, ts)
                self._changed()
            return message is not None

    def _message_changed(self, message: Message) -> None:
        self._store.save_message(message)
        self._changed()

    def find_message(self, ref: str, ts: str) -> dict[str, Any] | None:
        with self._lock:
            try:
                channel = self._channel(ref)
            except SlackError:
                return None
            message = self._find(channel, ts)
            return copy.deepcopy(self._message_dict(channel, message, inspect=True)) if message else None

    def history(self, ref: str, *, limit: int, latest: str | None = None, oldest: str | None = None,
                inclusive: bool = False, viewer: str = BOT_USER_ID) -> tuple[list[dict[str, Any]], bool]:
        """Top-level messages newest first (thread replies stay in their thread), and has_more."""
        with self._lock:
            channel = self._visible_channel(ref, viewer)
            # Decimal, not float: sixteen significant digits would blur neighbouring timestamps.
            lo = Decimal(oldest) if oldest else None
            hi = Decimal(latest) if latest else None

            def in_range(ts: Decimal) -> bool:
                above = lo is None or ts > lo or (inclusive and ts == lo)
                below = hi is None or ts < hi or (inclusive and ts == hi)
                return above and below

            top = [m for m in channel.messages if m.thread_ts in (None, m.ts) and in_range(Decimal(m.ts))]
            top.reverse()
            page = [self._message_dict(channel, m) for m in top[:limit]]
            return copy.deepcopy(page), len(top) > limit

    def replies(self, ref: str, ts: str, *, viewer: str = BOT_USER_ID) -> list[dict[str, Any]]:
        """The thread's parent followed by its replies, oldest first."""
        with self._lock:
            channel = self._visible_channel(ref, viewer)
            message = self._find(channel, ts)
            if message is None:
                raise SlackError("thread_not_found")
            parent = self._find(channel, message.thread_ts) if message.thread_ts else message
            parent = parent or message
            thread = [parent, *self._replies_to(channel, parent)]
            return copy.deepcopy([self._message_dict(channel, m) for m in thread])

    # ---- ephemeral messages ------------------------------------------------------------------

    def post_ephemeral(self, ref: str, user: str, text: str, blocks: list[dict[str, Any]], *, source: str,
                       thread_ts: str | None = None) -> dict[str, Any]:
        with self._lock:
            channel = self._channel(ref)
            if user not in self._users:
                raise SlackError("user_not_found")
            if source == "chat.postEphemeral" and user not in channel.members:
                raise SlackError("user_not_in_channel")
            eph = Ephemeral(self.next_ts(), channel.id, user, text, copy.deepcopy(blocks), source, thread_ts)
            self._ephemerals.append(eph)
            self._store.save_ephemeral(eph)
            self._changed()
            return eph.to_dict()

    def _find_ephemeral(self, user: str, message_ts: str) -> Ephemeral | None:
        return next((e for e in self._ephemerals if e.user == user and e.message_ts == message_ts), None)

    def find_ephemeral(self, user: str, message_ts: str) -> dict[str, Any] | None:
        with self._lock:
            eph = self._find_ephemeral(user, message_ts)
            return eph.to_dict() if eph else None

    def replace_ephemeral(self, user: str, message_ts: str, text: str, blocks: list[dict[str, Any]]) -> bool:
        with self._lock:
            eph = self._find_ephemeral(user, message_ts)
            if eph is not None:
                eph.text, eph.blocks = text, copy.deepcopy(blocks)
                self._store.save_ephemeral(eph)
                self._changed()
            return eph is not None

    def delete_ephemeral(self, user: str, message_ts: str) -> bool:
        with self._lock:
            eph = self._find_ephemeral(user, message_ts)
            if eph is not None:
                self._ephemerals.remove(eph)
                self._store.delete_ephemeral(user, message_ts)
                self._changed()
            return eph is not None

    def ephemeral_for(self, user: str, channel: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e.to_dict() for e in self._ephemerals
                    if e.user == user and (channel is None or e.channel == channel)]

    # ---- interactions: trigger_id and response_url -------------------------------------------

    def new_interaction(self, user: str, channel: str | None, message_ts: str | None = None) -> Interaction:
        with self._lock:
            trigger_id = f"{int(time.time())}.{secrets.randbelow(10**10)}.{uuid.uuid4().hex}"
            inter = Interaction(trigger_id, uuid.uuid4().hex, user, channel, message_ts)
            self._interactions[trigger_id] = inter
            self._responses[inter.response_id] = inter
            if len(self._interactions) > MAX_INTERACTIONS:  # Slack expires them too; drop the oldest
                oldest = next(iter(self._interactions.values()))
                del self._interactions[oldest.trigger_id], self._responses[oldest.response_id]
            return copy.copy(inter)

    def use_trigger(self, trigger_id: str) -> Interaction:
        """A trigger_id opens one view only; Slack rejects unknown or reused ones."""
        with self._lock:
            inter = self._interactions.get(trigger_id)
            if inter is None:
                raise SlackError("invalid_trigger_id")
            if inter.trigger_used:
                raise SlackError("exchanged_trigger_id")
            inter.trigger_used = True
            return copy.copy(inter)

    def use_response_url(self, response_id: str, *, consume: bool = True) -> Interaction:
        """The interaction behind a response_url; Slack allows five posts to each."""
        with self._lock:
            inter = self._responses.get(response_id)
            if inter is None:
                raise SlackError("expired_url")
            if consume:
                if inter.responses_left <= 0:
                    raise SlackError("used_url")
                inter.responses_left -= 1
            return copy.copy(inter)

    def record_response(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._response_log.append(copy.deepcopy(entry))

    def responses_for(self, user: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy([r for r in self._response_log if r["user"] == user])

    # ---- views (modals) ----------------------------------------------------------------------

    def open_view(self, trigger_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            inter = self.use_trigger(trigger_id)
            view = View("V" + secrets.token_hex(5).upper(), inter.user, trigger_id, copy.deepcopy(payload),
                        secrets.token_hex(8))
            self._views[view.id] = view
            self._changed()
            return view.to_slack()

    def _view(self, view_id: str | None, external_id: str | None = None) -> View:
        for view in self._views.values():
            if view_id and view.id == view_id:
                return view
            if external_id and view.payload.get("external_id") == external_id:
                return view
        raise SlackError("not_found")

    def update_view(self, payload: dict[str, Any], *, view_id: str | None, external_id: str | None,
                    hash: str | None) -> dict[str, Any]:
        with self._lock:
            view = self._view(view_id, external_id)
            if hash and hash != view.hash:
                raise SlackError("hash_conflict")
            view.payload, view.hash, view.errors = copy.deepcopy(payload), secrets.token_hex(8), {}
            self._changed()
            return view.to_slack()

    def view(self, view_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._view(view_id).to_dict())

    def views(self, *, user: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            found = [v for v in self._views.values()
                     if (user is None or v.user == user) and (status is None or v.status == status)]
            return copy.deepcopy([v.to_dict() for v in found])

    def set_view_errors(self, view_id: str, errors: dict[str, str], values: dict[str, Any]) -> None:
        """Errors the Slack client finds itself (e.g. a required field left empty); keeps what was typed."""
        with self._lock:
            view = self._view(view_id)
            view.errors, view.values = dict(errors), copy.deepcopy(values)
            self._changed()

    def close_view(self, view_id: str) -> None:
        with self._lock:
            view = self._view(view_id)
            view.status = "closed"
            # Closing the top of a stack uncovers the view beneath it.
            below = self._views.get(view.previous_view_id or "")
            if below is not None and below.status == "stacked":
                below.status = "open"
            self._changed()

    def record_submission(self, view_id: str, values: dict[str, Any], http_status: int,
                          body: dict[str, Any] | None) -> dict[str, Any]:
        """Apply the bot's answer to a view_submission the way the Slack client does."""
        with self._lock:
            view = self._view(view_id)
            view.values = copy.deepcopy(values)
            view.submissions.append({"values": copy.deepcopy(values), "http_status": http_status,
                                     "body": copy.deepcopy(body)})
            action = (body or {}).get("response_action")
            new_payload = _view_payload((body or {}).get("view"))
            if http_status != 200:
                view.errors = {"": f"The app did not respond (HTTP {http_status})."}
            elif action == "errors":
                view.errors = dict((body or {}).get("errors") or {})
            elif action == "update":
                view.payload, view.hash, view.errors = new_payload, secrets.token_hex(8), {}
            elif action == "push":
                view.status, view.errors = "stacked", {}
                pushed = View("V" + secrets.token_hex(5).upper(), view.user, view.trigger_id,
                              new_payload, secrets.token_hex(8), previous_view_id=view.id)
                self._views[pushed.id] = pushed
            elif action == "clear":
                for other in self._views.values():
                    if other.user == view.user and other.status in ("open", "stacked"):
                        other.status = "closed"
            else:
                view.errors = {}
                self.close_view(view.id)
            self._changed()
            return view.to_dict()

    # ---- recorded Web API calls --------------------------------------------------------------

    def record_call(self, method: str, params: dict[str, Any], response: dict[str, Any], *, http_status: int,
                    faulted: bool) -> None:
        with self._lock:
            self._calls.append({"method": method, "params": copy.deepcopy(params), "response": response,
                                "http_status": http_status, "faulted": faulted, "timestamp": time.time()})

    def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy([c for c in self._calls if method is None or c["method"] == method])
