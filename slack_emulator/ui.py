"""The emulator's web page: pick a user, read channels, press buttons, run /aegis, fill modals.

Server-rendered (Jinja2, no front-end build), live through a long-poll. The page is built from
keyed parts (channel links, messages with their threads, ephemeral messages, open modals), each
an HTML fragment with a version (a hash of the fragment). ``GET /_emulator/updates?since=<seq>``
answers at once when the workspace changed after ``seq``, else after at most 25 s, with the parts
as they are now; the page's script swaps in only the parts whose version changed, so a pressed
button keeps its pending state and a half-filled modal keeps what was typed.

Why a long-poll and not server-sent events: waitress runs every request on a thread from a fixed
pool and buffers a streamed body until it has enough bytes to send, so an event stream neither
reliably arrives within 200 ms nor gives its thread back. A long-poll's answer is a complete
response, which waitress sends at once; the number of polls waiting at one time is bounded
(``MAX_WAITING_POLLS``), and a poll over the bound is answered at once with a hint to wait a second.

Every action is still a plain HTML form (post/redirect/get without JavaScript); the script sends
the same forms with ``Accept: application/json`` and gets JSON back instead of a redirect.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import requests
from flask import Blueprint, get_template_attribute, jsonify, redirect, render_template, request
from flask.typing import ResponseReturnValue
from markupsafe import Markup, escape

from slack_emulator.driver import SlackDriver
from slack_emulator.model import SlackError
from slack_emulator.mrkdwn import mrkdwn_to_html, plain_to_html
from slack_emulator.state import OPS_CHANNEL_ID, EmulatorState

DEFAULT_USER = "U0IC"
POLL_SECONDS = 25.0
# waitress has a fixed thread pool (server.py); polls beyond this answer at once so that Web API
# calls and the page's own actions always find a free thread
MAX_WAITING_POLLS = 4
BUSY_RETRY_MS = 1000

Part = dict[str, str]   # {"key", "version", "html"}


def _page_url(user: str, channel: str, notice: str = "") -> str:
    query = {"user": user, "channel": channel} | ({"notice": notice} if notice else {})
    return "/?" + urlencode(query)


def _clock(ts: str) -> str:
    try:
        return dt.datetime.fromtimestamp(float(ts)).strftime("%H:%M:%S")
    except ValueError:
        return ts


def _thread_view(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top-level messages, oldest first, each with its replies under ``replies``."""
    roots = [dict(m, replies=[]) for m in messages if m.get("thread_ts") in (None, m["ts"])]
    by_ts = {m["ts"]: m for m in roots}
    for m in messages:
        parent = by_ts.get(m.get("thread_ts") or "")
        if parent is not None and m["ts"] != parent["ts"]:
            parent["replies"].append(m)
    return roots


def view_values(view: dict[str, Any], form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Slack's ``view.state.values`` from the page's form, and the errors the Slack client itself
    would show without contacting the app (required fields, length limits)."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for block in view.get("blocks") or []:
        element = block.get("element") or {}
        if block.get("type") != "input" or "action_id" not in element:
            continue
        block_id, action_id, kind = block["block_id"], element["action_id"], element.get("type")
        raw = form.get(f"{block_id}::{action_id}", "")
        if kind == "static_select":
            option = next((o for o in element.get("options") or [] if o.get("value") == raw), None)
            state: dict[str, Any] = {"type": kind, "selected_option": option}
        else:
            state = {"type": kind, "value": raw or None}
        values.setdefault(block_id, {})[action_id] = state
        if not raw and not block.get("optional"):
            errors[block_id] = "Please complete this required field."
        elif raw and kind == "plain_text_input" and len(raw) < int(element.get("min_length", 0)):
            errors[block_id] = f"Must be at least {element['min_length']} characters."
        elif raw and kind == "plain_text_input" and len(raw) > int(element.get("max_length", 3000)):
            errors[block_id] = f"Must be at most {element.get('max_length', 3000)} characters."
    return values, errors


def _explain(resp: requests.Response) -> str:
    return "" if resp.status_code == 200 else f"The bot answered HTTP {resp.status_code}: {resp.text[:200]}"


def _part(key: str, html: str, kind: str) -> Part:
    """One keyed fragment; its version changes exactly when its HTML does."""
    version = hashlib.sha1(html.encode()).hexdigest()[:16]
    wrapped = (f'<div class="part part-{kind}" data-key="{escape(key)}" data-version="{version}">'
               f"{html}</div>")
    return {"key": key, "version": version, "html": wrapped}


def _wants_json() -> bool:
    return "application/json" in request.headers.get("Accept", "")


class LiveParts:
    """The page's parts for one user looking at one channel, rendered from the state now."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    @staticmethod
    def _macro(name: str) -> Callable[..., str]:
        macro: Callable[..., str] = get_template_attribute("parts.html", name)
        return macro

    def views(self, user: str, channel_id: str) -> list[Part]:
        render = self._macro("modal")
        return [_part(v["id"], str(render(v, user, channel_id)), "view")
                for v in self.state.views(user=user, status="open")]

    def build(self, user: str, channel_id: str) -> dict[str, Any]:
        channels = [c for c in self.state.channels() if not c.get("is_im") or user in c["members"]]
        current = next((c for c in channels if c["id"] == channel_id), None)
        nav, title, thread, ephemeral = (self._macro(n) for n in ("nav_link", "channel_title", "thread", "ephemeral"))
        messages = _thread_view(current["messages"]) if current else []
        return {
            "nav": [_part(c["id"], str(nav(c, user, channel_id)), "nav") for c in channels],
            "title": str(title(current, channel_id)),
            "messages": [_part(m["ts"], str(thread(m, user, channel_id)), "message") for m in messages],
            "ephemerals": [_part(e["message_ts"], str(ephemeral(e, user, channel_id)), "ephemeral")
                           for e in self.state.ephemeral_for(user, channel_id)],
            "views": self.views(user, channel_id),
        }


def create_ui_blueprint(state: EmulatorState, driver: SlackDriver) -> Blueprint:
    bp = Blueprint("emulator_ui", __name__, template_folder="templates")
    parts = LiveParts(state)
    waiting_polls = threading.BoundedSemaphore(MAX_WAITING_POLLS)

    def text_obj(obj: object) -> Markup:
        if not isinstance(obj, dict):
            return Markup("")
        if obj.get("type") == "mrkdwn":
            return mrkdwn_to_html(str(obj.get("text", "")), state.user_name, state.channel_label)
        return plain_to_html(str(obj.get("text", "")))

    @bp.app_template_filter("mrkdwn")
    def mrkdwn_filter(text: str) -> Markup:
        return mrkdwn_to_html(text or "", state.user_name, state.channel_label)

    def username(user_id: str) -> str:
        return state.user_name(user_id) or user_id

    bp.add_app_template_filter(text_obj, "text_obj")
    bp.add_app_template_filter(username, "username")
    bp.add_app_template_filter(_clock, "clock")

    @bp.before_app_request
    def learn_own_url() -> None:
        # Served by someone else's server: response_urls point back to where the page is served.
        if driver.emulator_url is None:
            driver.emulator_url = request.host_url.rstrip("/")

    def answer(user: str, channel: str, notice: str, *, ok: bool, **extra: Any) -> ResponseReturnValue:
        """JSON for the page's script, a redirect back to the page for a plain form."""
        if _wants_json():
            return jsonify({"ok": ok, "notice": notice, **extra})
        return redirect(_page_url(user, channel, notice))

    def drive(user: str, channel: str, action: Callable[[], requests.Response],
              after: Callable[[], dict[str, Any]] = dict) -> ResponseReturnValue:
        """Run one driver call, turning an unreachable bot into a notice instead of a 500."""
        if not driver.bot_url:
            return answer(user, channel, "No bot URL is configured, so nothing received that.", ok=False)
        try:
            resp = action()
        except requests.RequestException as err:
            return answer(user, channel, f"Could not reach the bot at {driver.events_url}: {type(err).__name__}",
                          ok=False)
        return answer(user, channel, _explain(resp), ok=resp.status_code == 200, status=resp.status_code, **after())

    @bp.get("/")
    def page() -> str:
        user = request.args.get("user") or DEFAULT_USER
        channel_id = request.args.get("channel") or OPS_CHANNEL_ID
        seq = state.seq   # read before the parts: a change in between is then sent again, never missed
        return render_template(
            "page.html",
            users=state.users(),
            user=user,
            user_name=state.user_name(user) or user,
            channel_id=channel_id,
            live=parts.build(user, channel_id),
            boot={"seq": seq, "epoch": state.epoch, "user": user, "channel": channel_id,
                  "poll_seconds": POLL_SECONDS},
            notice=request.args.get("notice", ""),
            bot_url=driver.bot_url,
        )

    @bp.get("/_emulator/updates")
    def updates() -> ResponseReturnValue:
        """Long-poll: the parts once something changed after ``since`` (at once when the epoch differs)."""
        user = request.args.get("user") or DEFAULT_USER
        channel_id = request.args.get("channel") or OPS_CHANNEL_ID
        since = request.args.get("since", type=int, default=-1)
        wait = min(max(request.args.get("wait", type=float, default=POLL_SECONDS), 0.0), POLL_SECONDS)
        same_process = request.args.get("epoch") == state.epoch
        retry_ms = 0
        if same_process and since >= state.seq:
            if waiting_polls.acquire(blocking=False):
                try:
                    state.wait_for_change(since, wait)
                finally:
                    waiting_polls.release()
            else:
                retry_ms = BUSY_RETRY_MS
        seq = state.seq
        changed = seq > since or not same_process
        body: dict[str, Any] = {"seq": seq, "epoch": state.epoch, "changed": changed, "retry_ms": retry_ms}
        if changed:
            body["parts"] = parts.build(user, channel_id)
        return jsonify(body)

    @bp.post("/_emulator/ui/click")
    def click() -> ResponseReturnValue:
        f = request.form
        return drive(f["user"], f["channel"], lambda: driver.click(
            f["user"], f["action_id"], f.get("value", ""), f["channel"], f["ts"], f.get("block_id") or None))

    @bp.post("/_emulator/ui/slash")
    def slash() -> ResponseReturnValue:
        f = request.form
        typed = f.get("text", "").strip()
        command, text = "/aegis", typed
        if typed.startswith("/"):
            command, _, text = typed.partition(" ")
        return drive(f["user"], f["channel"], lambda: driver.slash(f["user"], text.strip(), f["channel"], command))

    @bp.post("/_emulator/ui/submit")
    def submit() -> ResponseReturnValue:
        f = request.form
        user, channel = f["user"], f["channel"]
        try:
            view = state.view(f["view_id"])
        except SlackError:
            return answer(user, channel, "That form is no longer open.", ok=False, views=parts.views(user, channel))
        values, errors = view_values(view, f.to_dict())

        def outcome() -> dict[str, Any]:
            # what the page shows next: the form closed (success), or its errors inline (refused)
            return {"view_status": state.view(view["id"])["status"], "views": parts.views(user, channel)}

        if errors:
            state.set_view_errors(view["id"], errors, values)
            return answer(user, channel, "", ok=False, **outcome())
        return drive(user, channel, lambda: driver.submit_view(user, view["id"], values), after=outcome)

    @bp.post("/_emulator/ui/close")
    def close() -> ResponseReturnValue:
        f = request.form
        try:
            state.close_view(f["view_id"])
        except SlackError:
            pass   # already gone: closing it is done either way
        return answer(f["user"], f["channel"], "", ok=True, views=parts.views(f["user"], f["channel"]))

    @bp.post("/_emulator/ui/dismiss")
    def dismiss() -> ResponseReturnValue:
        """Dismiss one ephemeral message (``ts``), or all of this user's in the channel (no ``ts``)."""
        f = request.form
        user, channel = f["user"], f["channel"]
        stamps = [f["ts"]] if f.get("ts") else [e["message_ts"] for e in state.ephemeral_for(user, channel)]
        for ts in stamps:
            state.delete_ephemeral(user, ts)
        return answer(user, channel, "", ok=True, dismissed=stamps)

    return bp
