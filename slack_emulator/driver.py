"""Plays Slack's side of the bot's HTTP endpoint: signed slash commands, clicks and modal submits.

Bodies are built the way Slack builds them, so slack-bolt parses them unchanged: slash commands
are form fields; interactivity is one form field ``payload`` holding JSON. Each request is signed
with ``v0=HMAC-SHA256(secret, "v0:{ts}:{body}")``. After the bot answers, the driver does what the
Slack client would: shows a slash command's ack body to the user, and applies a view_submission
answer (``response_action`` errors/update/push/clear, or close) to the stored view.

When the emulator runs in Socket Mode the driver hands the same payloads to a Socket Mode server
(``socket``) as envelopes instead of POSTing them; the bot's ack comes back as the response.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl, urlencode

import requests
from slack_sdk.signature import SignatureVerifier

from slack_emulator.model import APP_ID, TEAM_DOMAIN, TEAM_ID
from slack_emulator.state import EmulatorState
from slack_emulator.workspace_link import link_for

# Slack's deprecated per-app verification token; Bolt ignores it but real payloads carry one.
VERIFICATION_TOKEN = "emulator-verification-token"
FORM = "application/x-www-form-urlencoded"


class SocketAck(NamedTuple):
    """What came back for one Socket Mode envelope: whether it was acked, and the ack's payload."""

    envelope_id: str
    acked: bool
    payload: dict[str, Any] | None


class EnvelopeSender(Protocol):
    """The Socket Mode server, as the driver uses it (slack_emulator/socket_mode.py)."""

    def deliver(self, kind: str, payload: dict[str, Any], *, envelope_id: str | None = None,
                retry_attempt: int | None = None, timeout: float = 10.0) -> SocketAck: ...


def ack_as_response(ack: SocketAck) -> requests.Response:
    """A Socket Mode ack in the shape of the HTTP answer it replaces (200 with the payload as JSON);
    no ack in time is Slack's ``operation_timeout`` (504), as a user would see it."""
    resp = requests.Response()
    resp.url = f"socket-mode://envelope/{ack.envelope_id}"
    resp.headers["Content-Type"] = "application/json"
    if not ack.acked:
        resp.status_code = 504
        resp._content = json.dumps({"error": "operation_timeout"}).encode()
    else:
        resp.status_code = 200
        resp._content = json.dumps(ack.payload).encode() if ack.payload else b""
    return resp


def _json_or_none(resp: requests.Response) -> dict[str, Any] | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def find_button(blocks: list[dict[str, Any]], action_id: str) -> tuple[str | None, dict[str, Any] | None]:
    """(block_id, element) of the interactive element with this action_id, if the message has one."""
    for block in blocks:
        elements = list(block.get("elements") or [])
        if "accessory" in block:
            elements.append(block["accessory"])
        for element in elements:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return block.get("block_id"), element
    return None, None


class SlackDriver:
    def __init__(self, bot_url: str, signing_secret: str, emulator: EmulatorState | None = None,
                 emulator_url: str | None = None, *, timeout: float = 10.0) -> None:
        self.bot_url = bot_url
        self.timeout = timeout
        self._verifier = SignatureVerifier(signing_secret)
        self._state = emulator
        self._emulator_url = emulator_url
        self._link = link_for(emulator, emulator_url)
        self._last_body: str | None = None
        self.socket: EnvelopeSender | None = None   # set: Socket Mode, envelopes instead of POSTs
        self._last_envelope: tuple[str, str, dict[str, Any]] | None = None   # (id, kind, payload)

    @property
    def emulator_url(self) -> str | None:
        return self._emulator_url

    @emulator_url.setter
    def emulator_url(self, value: str | None) -> None:
        self._emulator_url = value
        self._link = link_for(self._state, value)

    @property
    def events_url(self) -> str:
        return self.bot_url.rstrip("/") + "/slack/events"

    # ---- signing and raw requests ------------------------------------------------------------

    def sign(self, body: str | bytes, timestamp: str | int | None = None) -> dict[str, str]:
        """Slack's signature headers for this body (timestamp defaults to now)."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = self._verifier.generate_signature(timestamp=ts, body=body) or ""
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}

    def post_raw(self, body: str | bytes, headers: dict[str, str] | None = None) -> requests.Response:
        """POST a body with exactly these headers (no signing), for signature and replay tests."""
        sent = {"Content-Type": FORM, **(headers or {})}
        return requests.post(self.events_url, data=body, headers=sent, timeout=self.timeout)

    def _send(self, body: str, retry_num: int | None) -> requests.Response:
        if self.socket is not None:
            return self._send_envelope(body, retry_num)
        self._last_body = body
        headers = self.sign(body)
        if retry_num is not None:
            headers.update({"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"})
        return self.post_raw(body, headers)

    def _send_envelope(self, body: str, retry_num: int | None) -> requests.Response:
        """The body as a Socket Mode envelope: a form is a slash command, ``payload=`` an interaction."""
        assert self.socket is not None
        fields = dict(parse_qsl(body, keep_blank_values=True))
        if "payload" in fields:
            kind, payload = "interactive", json.loads(fields["payload"])
        else:
            kind, payload = "slash_commands", fields
        ack = self.socket.deliver(kind, payload, retry_attempt=retry_num, timeout=self.timeout)
        self._last_envelope = (ack.envelope_id, kind, payload)
        return ack_as_response(ack)

    def redeliver(self, retry_attempt: int = 1) -> requests.Response:
        """Socket Mode: the previous envelope again, the same envelope_id, marked ``retry_attempt``."""
        if self.socket is None or self._last_envelope is None:
            raise RuntimeError("no Socket Mode envelope has been sent yet")
        envelope_id, kind, payload = self._last_envelope
        return ack_as_response(self.socket.deliver(kind, payload, envelope_id=envelope_id,
                                                   retry_attempt=retry_attempt, timeout=self.timeout))

    def resend(self, retry_num: int = 1) -> requests.Response:
        """Send the previous body again, freshly signed, marked as Slack's retry number ``retry_num``."""
        if self.socket is not None:
            return self.redeliver(retry_num)
        if self._last_body is None:
            raise RuntimeError("nothing has been sent yet")
        return self._send(self._last_body, retry_num)

    def _user(self, user_id: str) -> dict[str, str]:
        name = self._link.user_name(user_id)
        return {"id": user_id, "username": name, "name": name, "team_id": TEAM_ID}

    # ---- what a user does --------------------------------------------------------------------

    def slash(self, user_id: str, text: str, channel_id: str = "C0OPS", command: str = "/aegis",
              retry_num: int | None = None) -> requests.Response:
        trigger_id, response_url = self._link.interaction(user_id, channel_id, None)
        body = urlencode({
            "token": VERIFICATION_TOKEN,
            "team_id": TEAM_ID,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel_id,
            "channel_name": self._link.channel_name(channel_id),
            "user_id": user_id,
            "user_name": self._link.user_name(user_id),
            "command": command,
            "text": text,
            "api_app_id": APP_ID,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger_id,
        })
        resp = self._send(body, retry_num)
        self._show_ack(resp, response_url)
        return resp

    def _show_ack(self, resp: requests.Response, response_url: str) -> None:
        # Slack shows a slash command's HTTP answer (text or JSON message) to the user who typed it.
        if resp.status_code != 200 or not resp.content.strip():
            return
        payload = _json_or_none(resp)
        if payload is None:
            payload = {"text": resp.text}
        if payload.get("text") or payload.get("blocks"):
            self._link.show_slash_ack(response_url, payload)

    def click(self, user_id: str, action_id: str, value: str, channel_id: str, message_ts: str,
              block_id: str | None = "b", retry_num: int | None = None) -> requests.Response:
        """Press a button. The block_id and label come from the stored message when it has the button."""
        trigger_id, response_url = self._link.interaction(user_id, channel_id, message_ts)
        message = self._link.message(channel_id, message_ts, user_id)
        is_ephemeral = bool(message and message.get("is_ephemeral"))
        found_block_id, element = find_button((message or {}).get("blocks") or [], action_id)
        action: dict[str, Any] = {
            "action_id": action_id,
            "block_id": found_block_id or block_id or "b",
            "value": value,
            "type": "button",
            "action_ts": f"{time.time():.6f}",
        }
        if element is not None:
            action["text"] = element.get("text")
            if element.get("style"):
                action["style"] = element["style"]
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": self._user(user_id),
            "api_app_id": APP_ID,
            "token": VERIFICATION_TOKEN,
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel_id,
                          "is_ephemeral": is_ephemeral},
            "trigger_id": trigger_id,
            "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel_id, "name": self._link.channel_name(channel_id)},
            "state": {"values": {}},
            "response_url": response_url,
            "actions": [action],
        }
        if not is_ephemeral:  # Slack leaves the message out for ephemeral ones
            payload["message"] = self._message_payload(message, message_ts)
        return self._send(urlencode({"payload": json.dumps(payload)}), retry_num)

    def select(self, user_id: str, action_id: str, value: str, channel_id: str, message_ts: str) -> requests.Response:
        """Pick an option of a message's ``static_select``: a block_actions payload with ``selected_option``
        (the option as the message has it), the way Slack sends a select."""
        message = self._link.message(channel_id, message_ts, user_id)
        block_id, element = find_button((message or {}).get("blocks") or [], action_id)
        option = next((o for o in (element or {}).get("options") or [] if o.get("value") == value),
                      {"text": {"type": "plain_text", "text": value}, "value": value})
        trigger_id, response_url = self._link.interaction(user_id, channel_id, message_ts)
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": self._user(user_id),
            "api_app_id": APP_ID,
            "token": VERIFICATION_TOKEN,
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel_id,
                          "is_ephemeral": False},
            "trigger_id": trigger_id,
            "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
            "channel": {"id": channel_id, "name": self._link.channel_name(channel_id)},
            "state": {"values": {}},
            "response_url": response_url,
            "actions": [{"type": "static_select", "action_id": action_id, "block_id": block_id or "b",
                         "selected_option": option, "action_ts": f"{time.time():.6f}"}],
            "message": self._message_payload(message, message_ts),
        }
        return self._send(urlencode({"payload": json.dumps(payload)}), None)

    @staticmethod
    def _message_payload(message: dict[str, Any] | None, message_ts: str) -> dict[str, Any]:
        if message is None:
            return {"type": "message", "ts": message_ts, "text": "", "blocks": []}
        keep = ("type", "user", "bot_id", "app_id", "text", "blocks", "ts", "thread_ts", "team", "edited")
        return {k: message[k] for k in keep if k in message}

    def submit_view(self, user_id: str, view_id: str, values: dict[str, dict[str, dict[str, Any]]],
                    retry_num: int | None = None) -> requests.Response:
        """Submit an opened modal with these input values: ``{block_id: {action_id: {...}}}``."""
        view = self._link.view(view_id)
        if view is None:
            raise LookupError(f"no view {view_id} has been opened in the emulator")
        trigger_id, _ = self._link.interaction(user_id, None, None)
        keep = ("id", "team_id", "type", "title", "submit", "close", "blocks", "private_metadata",
                "callback_id", "external_id", "clear_on_close", "notify_on_close", "hash", "previous_view_id",
                "root_view_id", "app_id", "app_installed_team_id", "bot_id")
        view_payload = {k: view.get(k) for k in keep} | {"state": {"values": values}}
        payload: dict[str, Any] = {   # a Slack view_submission payload: JSON at the edge
            "type": "view_submission",
            "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
            "user": self._user(user_id),
            "api_app_id": APP_ID,
            "token": VERIFICATION_TOKEN,
            "trigger_id": trigger_id,
            "view": view_payload,
            "response_urls": [],
            "enterprise": None,
            "is_enterprise_install": False,
        }
        resp = self._send(urlencode({"payload": json.dumps(payload)}), retry_num)
        self._link.record_submission(view_id, values, resp.status_code, _json_or_none(resp))
        return resp
