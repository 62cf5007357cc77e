"""How a SlackDriver reaches the emulated workspace: in-process, over HTTP, or not at all.

The driver needs the workspace to mint trigger_ids and response_urls, to put the clicked
message into a block_actions payload, to find an opened view, and to apply what the bot
answered. In-process it calls the state directly; with only the emulator's URL it uses the
``/_emulator`` hooks; with neither (signature-only tests) it invents ids that lead nowhere.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

import requests

from slack_emulator.response_url import deliver
from slack_emulator.state import EmulatorState


class WorkspaceLink(Protocol):
    def interaction(self, user: str, channel: str | None, message_ts: str | None) -> tuple[str, str]:
        """(trigger_id, response_url) for a new user interaction."""

    def message(self, channel: str, ts: str, user: str) -> dict[str, Any] | None: ...

    def view(self, view_id: str) -> dict[str, Any] | None: ...

    def user_name(self, user: str) -> str: ...

    def channel_name(self, channel: str) -> str: ...

    def show_slash_ack(self, response_url: str, payload: dict[str, Any]) -> None: ...

    def record_submission(self, view_id: str, values: dict[str, Any], status: int,
                          body: dict[str, Any] | None) -> None: ...


def _response_id(response_url: str) -> str:
    return response_url.rstrip("/").rsplit("/", 1)[-1]


class LocalWorkspace:
    def __init__(self, state: EmulatorState, emulator_url: str | None) -> None:
        self.state = state
        self.base = (emulator_url or "http://127.0.0.1").rstrip("/")

    def interaction(self, user: str, channel: str | None, message_ts: str | None) -> tuple[str, str]:
        inter = self.state.new_interaction(user, channel, message_ts)
        return inter.trigger_id, f"{self.base}/_emulator/response/{inter.response_id}"

    def message(self, channel: str, ts: str, user: str) -> dict[str, Any] | None:
        return self.state.find_message(channel, ts) or self.state.find_ephemeral(user, ts)

    def view(self, view_id: str) -> dict[str, Any] | None:
        found = self.state.views()
        return next((v for v in found if v["id"] == view_id), None)

    def user_name(self, user: str) -> str:
        return self.state.user_name(user) or user.lower()

    def channel_name(self, channel: str) -> str:
        return self.state.channel_name(channel)

    def show_slash_ack(self, response_url: str, payload: dict[str, Any]) -> None:
        deliver(self.state, _response_id(response_url), payload, source="slash_ack")

    def record_submission(self, view_id: str, values: dict[str, Any], status: int,
                          body: dict[str, Any] | None) -> None:
        self.state.record_submission(view_id, values, status, body)


class RemoteWorkspace:
    def __init__(self, emulator_url: str, timeout: float = 10.0) -> None:
        self.base = emulator_url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, **params: str) -> Any:
        resp = requests.get(f"{self.base}/_emulator/{path}", params=params, timeout=self.timeout)
        return resp.json() if resp.ok else None

    def interaction(self, user: str, channel: str | None, message_ts: str | None) -> tuple[str, str]:
        resp = requests.post(f"{self.base}/_emulator/interactions", timeout=self.timeout,
                             json={"user": user, "channel": channel, "message_ts": message_ts})
        resp.raise_for_status()
        body = resp.json()
        return body["trigger_id"], f"{self.base}/_emulator/response/{body['response_id']}"

    def message(self, channel: str, ts: str, user: str) -> dict[str, Any] | None:
        found = self._get("message", channel=channel, ts=ts, user=user)
        return found if isinstance(found, dict) else None   # the emulator answers an object or null

    def view(self, view_id: str) -> dict[str, Any] | None:
        found = self._get("views", id=view_id) or []
        return found[0] if found else None

    def user_name(self, user: str) -> str:
        users = self._get("users") or []
        return next((u["name"] for u in users if u["id"] == user), user.lower())

    def channel_name(self, channel: str) -> str:
        channels = self._get("channels") or []
        found = next((c for c in channels if c["id"] == channel), None)
        if found is None:
            return channel
        return "directmessage" if found.get("is_im") else found["name"]

    def show_slash_ack(self, response_url: str, payload: dict[str, Any]) -> None:
        requests.post(response_url, params={"source": "slash_ack"}, json=payload, timeout=self.timeout)

    def record_submission(self, view_id: str, values: dict[str, Any], status: int,
                          body: dict[str, Any] | None) -> None:
        requests.post(f"{self.base}/_emulator/views/{view_id}/submission", timeout=self.timeout,
                      json={"values": values, "http_status": status, "body": body})


class DetachedWorkspace:
    """No emulator: payloads are still well-formed, but their URLs lead nowhere."""

    def interaction(self, user: str, channel: str | None, message_ts: str | None) -> tuple[str, str]:
        return f"0.0.{uuid.uuid4().hex}", f"http://127.0.0.1:9/_emulator/response/{uuid.uuid4().hex}"

    def message(self, channel: str, ts: str, user: str) -> dict[str, Any] | None:
        return None

    def view(self, view_id: str) -> dict[str, Any] | None:
        return None

    def user_name(self, user: str) -> str:
        return user.lower()

    def channel_name(self, channel: str) -> str:
        return channel

    def show_slash_ack(self, response_url: str, payload: dict[str, Any]) -> None:
        return None

    def record_submission(self, view_id: str, values: dict[str, Any], status: int,
                          body: dict[str, Any] | None) -> None:
        return None


def link_for(state: EmulatorState | None, emulator_url: str | None) -> WorkspaceLink:
    if state is not None:
        return LocalWorkspace(state, emulator_url)
    if emulator_url:
        return RemoteWorkspace(emulator_url)
    return DetachedWorkspace()
