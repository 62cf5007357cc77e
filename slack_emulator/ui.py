"""The emulator's web page: pick a user, read channels, press buttons, run /aegis, fill modals.

Server-rendered (Jinja2, no front-end build). Every action is a plain HTML form that goes through
the same SlackDriver the tests use, then redirects back to the page (post/redirect/get).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import requests
from flask import Blueprint, redirect, render_template, request
from markupsafe import Markup
from werkzeug.wrappers import Response  # what flask.redirect returns

from slack_emulator.driver import SlackDriver
from slack_emulator.mrkdwn import mrkdwn_to_html, plain_to_html
from slack_emulator.state import OPS_CHANNEL_ID, EmulatorState

DEFAULT_USER = "U0IC"


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


def create_ui_blueprint(state: EmulatorState, driver: SlackDriver) -> Blueprint:
    bp = Blueprint("emulator_ui", __name__, template_folder="templates")

    def text_obj(obj: object) -> Markup:
        if not isinstance(obj, dict):
            return Markup("")
        if obj.get("type") == "mrkdwn":
            return mrkdwn_to_html(str(obj.get("text", "")), state.user_name)
        return plain_to_html(str(obj.get("text", "")))

    @bp.app_template_filter("mrkdwn")
    def mrkdwn_filter(text: str) -> Markup:
        return mrkdwn_to_html(text or "", state.user_name)

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

    def drive(user: str, channel: str, action: Callable[[], str | None]) -> Response:
        """Run one driver call, turning an unreachable bot into a notice instead of a 500."""
        if not driver.bot_url:
            return redirect(_page_url(user, channel, "No bot URL is configured, so nothing received that."))
        try:
            notice = action()
        except requests.RequestException as err:
            notice = f"Could not reach the bot at {driver.events_url}: {type(err).__name__}"
        return redirect(_page_url(user, channel, notice or ""))

    @bp.get("/")
    def page() -> str:
        users = state.users()
        user = request.args.get("user") or DEFAULT_USER
        channel_id = request.args.get("channel") or OPS_CHANNEL_ID
        channels = [c for c in state.channels() if not c.get("is_im") or user in c["members"]]
        current = next((c for c in channels if c["id"] == channel_id), None)
        return render_template(
            "page.html",
            users=users,
            user=user,
            user_name=state.user_name(user) or user,
            channels=channels,
            channel=current,
            channel_id=channel_id,
            messages=_thread_view(current["messages"]) if current else [],
            ephemerals=state.ephemeral_for(user, channel_id),
            views=state.views(user=user, status="open"),
            notice=request.args.get("notice", ""),
            bot_url=driver.bot_url,
        )

    @bp.post("/_emulator/ui/click")
    def click() -> Response:
        f = request.form
        return drive(f["user"], f["channel"], lambda: _explain(driver.click(
            f["user"], f["action_id"], f.get("value", ""), f["channel"], f["ts"], f.get("block_id") or None)))

    @bp.post("/_emulator/ui/slash")
    def slash() -> Response:
        f = request.form
        typed = f.get("text", "").strip()
        command, text = "/aegis", typed
        if typed.startswith("/"):
            command, _, text = typed.partition(" ")
        return drive(f["user"], f["channel"],
                     lambda: _explain(driver.slash(f["user"], text.strip(), f["channel"], command)))

    @bp.post("/_emulator/ui/submit")
    def submit() -> Response:
        f = request.form
        view = state.view(f["view_id"])
        values, errors = view_values(view, f.to_dict())
        if errors:
            state.set_view_errors(view["id"], errors, values)
            return redirect(_page_url(f["user"], f["channel"]))
        return drive(f["user"], f["channel"],
                     lambda: _explain(driver.submit_view(f["user"], view["id"], values)))

    @bp.post("/_emulator/ui/close")
    def close() -> Response:
        f = request.form
        state.close_view(f["view_id"])
        return redirect(_page_url(f["user"], f["channel"]))

    return bp
