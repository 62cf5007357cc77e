"""Requests to ``aegis serve``'s front door signed the way Slack signs them (v0 HMAC-SHA256)."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

import requests

from tests.harness.aegis_process import AegisProcess


def sign(secret: str, body: bytes, timestamp: str | None = None) -> dict[str, str]:
    ts = timestamp if timestamp is not None else str(int(time.time()))
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}",
            "Content-Type": "application/x-www-form-urlencoded"}


def slash_body(text: str, channel: str = "C0OPS", user: str = "U0IC") -> bytes:
    return urlencode({"command": "/aegis", "text": text, "user_id": user, "channel_id": channel,
                      "channel_name": "ops", "team_id": "T0", "trigger_id": "t.1",
                      "response_url": "http://127.0.0.1:9/none"}).encode()


def post(bot: AegisProcess, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{bot.url}/slack/events", data=body, headers=headers, timeout=10)
