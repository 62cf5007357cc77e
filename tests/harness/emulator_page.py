"""Driving an emulator that runs inside ``aegis serve`` (the embedded default) from outside it.

Its signing secret is never printed, so a test acts the way the emulator page does: it POSTs the
page's own forms (``/_emulator/ui/slash|click|submit``) and reads the workspace over ``/_emulator/*``.
"""

from __future__ import annotations

from typing import Any

import requests

from tests.harness.aegis_process import wait_for
from tests.harness.slack_reading import message_with_button

JSON = {"Accept": "application/json"}


class EmulatorPage:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _post(self, path: str, data: dict[str, str]) -> dict[str, Any]:
        response = requests.post(self.url + path, data=data, headers=JSON, timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def slash(self, user: str, text: str, channel: str = "C0OPS") -> dict[str, Any]:
        return self._post("/_emulator/ui/slash", {"user": user, "channel": channel, "text": text})

    def channels(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = requests.get(self.url + "/_emulator/channels", timeout=5).json()
        return found

    def channel(self, name_prefix: str) -> dict[str, Any] | None:
        return next((c for c in self.channels() if c["name"].startswith(name_prefix)), None)

    def channel_by_id(self, channel_id: str) -> dict[str, Any]:
        return next(c for c in self.channels() if c["id"] == channel_id)

    def click(self, user: str, channel_id: str, action_id: str, value: str) -> dict[str, Any]:
        message = wait_for(lambda: message_with_button(self.channel_by_id(channel_id), action_id, value),
                           what=f"a {action_id} button with value {value}")
        return self._post("/_emulator/ui/click", {"user": user, "channel": channel_id, "ts": message["ts"],
                                                  "action_id": action_id, "value": value})

    def ephemeral_text(self, user: str, channel: str | None = None) -> str:
        params = {"user": user, **({"channel": channel} if channel else {})}
        shown = requests.get(self.url + "/_emulator/ephemeral", params=params, timeout=5).json()
        return "\n".join(str(m.get("text") or "") + " " + str(m.get("blocks") or "") for m in shown)

    def open_view(self, user: str, callback_id: str) -> dict[str, Any]:
        def find() -> list[dict[str, Any]]:
            views = requests.get(self.url + "/_emulator/views", params={"user": user, "status": "open"},
                                 timeout=5).json()
            return [v for v in views if v.get("callback_id") == callback_id]
        found: list[dict[str, Any]] = wait_for(find, what=f"the {callback_id} form")
        return found[-1]

    def submit(self, user: str, channel_id: str, view_id: str, fields: dict[str, str]) -> dict[str, Any]:
        """``fields`` by ``block_id::action_id``, as the page's form names them."""
        return self._post("/_emulator/ui/submit", {"user": user, "channel": channel_id, "view_id": view_id, **fields})
