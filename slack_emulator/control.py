"""``/_emulator/*``: fault injection, inspection for tests, response URLs and driver hooks.

Not part of Slack's API. Inspection endpoints return bare JSON lists so that a test can write
``requests.get(url + "/_emulator/calls?method=chat.postMessage").json()``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from slack_emulator.faults import fault_from_json
from slack_emulator.model import SlackError
from slack_emulator.response_url import deliver
from slack_emulator.state import EmulatorState


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None and request.form:
        body = request.form.to_dict()
    return body


def _error(status: int, error: str) -> tuple[Response, int]:
    return jsonify({"ok": False, "error": error}), status


def create_control_blueprint(state: EmulatorState) -> Blueprint:
    bp = Blueprint("emulator_control", __name__, url_prefix="/_emulator")

    @bp.post("/faults")
    def add_faults() -> Any:
        body = _json_body()
        specs = body if isinstance(body, list) else [body]
        try:
            faults = [fault_from_json(spec) for spec in specs if isinstance(spec, dict)]
        except (ValueError, TypeError) as err:
            return _error(400, str(err))
        if not faults:
            return _error(400, "expected a JSON object like {\"method\": \"chat.postMessage\", \"count\": 1}")
        for fault in faults:
            state.faults.add(fault)
        return jsonify({"ok": True, "pending": state.faults.pending()})

    @bp.delete("/faults")
    def clear_faults() -> Any:
        state.faults.clear()
        return jsonify({"ok": True})

    @bp.get("/faults")
    def list_faults() -> Any:
        return jsonify(state.faults.pending())

    @bp.get("/calls")
    def calls() -> Any:
        return jsonify(state.calls(request.args.get("method") or None))

    @bp.get("/channels")
    def channels() -> Any:
        return jsonify(state.channels())

    @bp.get("/message")
    def message() -> Any:
        channel, ts, user = (request.args.get(k, "") for k in ("channel", "ts", "user"))
        found = state.find_message(channel, ts) or (state.find_ephemeral(user, ts) if user else None)
        return jsonify(found) if found else _error(404, "message_not_found")

    @bp.get("/ephemeral")
    def ephemeral() -> Any:
        user = request.args.get("user")
        if not user:
            return _error(400, "the 'user' query parameter is required")
        channel = request.args.get("channel") or None
        shown = state.ephemeral_for(user, channel)
        # response_url replies that everyone sees (in_channel posts, rewritten channel messages) too.
        others = [r for r in state.responses_for(user)
                  if not r["is_ephemeral"] and (channel is None or r["channel"] == channel)]
        return jsonify(shown + others)

    @bp.get("/views")
    def views() -> Any:
        found = state.views(user=request.args.get("user") or None, status=request.args.get("status") or None)
        view_id = request.args.get("id")
        return jsonify([v for v in found if v["id"] == view_id] if view_id else found)

    @bp.get("/users")
    def users() -> Any:
        return jsonify(state.users())

    @bp.post("/users")
    def add_user() -> Any:
        body = _json_body() or {}
        if not body.get("id") or not body.get("name"):
            return _error(400, "'id' and 'name' are required")
        return jsonify(state.add_user(body["id"], body["name"], body.get("real_name")))

    @bp.post("/reset")
    def reset() -> Any:
        state.reset()
        return jsonify({"ok": True})

    @bp.post("/response/<response_id>")
    def response(response_id: str) -> Any:
        payload = _json_body()
        if not isinstance(payload, dict):
            return _error(400, "invalid_payload")
        source = "slash_ack" if request.args.get("source") == "slash_ack" else "response_url"
        try:
            deliver(state, response_id, payload, source=source)
        except SlackError as err:
            return _error(404 if err.code == "expired_url" else 400, err.code)
        return jsonify({"ok": True})

    # Hooks for a SlackDriver that runs outside this process (it has only the emulator's URL).
    @bp.post("/interactions")
    def new_interaction() -> Any:
        body = _json_body() or {}
        inter = state.new_interaction(body.get("user", ""), body.get("channel"), body.get("message_ts"))
        return jsonify({"trigger_id": inter.trigger_id, "response_id": inter.response_id})

    @bp.post("/views/<view_id>/submission")
    def view_submission(view_id: str) -> Any:
        body = _json_body() or {}
        try:
            view = state.record_submission(view_id, body.get("values") or {},
                                           int(body.get("http_status", 200)), body.get("body"))
        except SlackError as err:
            return _error(404, err.code)
        return jsonify(view)

    return bp
