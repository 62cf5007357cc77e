"""``aegis serve`` on the embedded default as a real process: no Slack credentials, so it starts its
own emulator (its workspace kept in SQLite beside ``aegis.db``) and the tests reach both over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.harness.aegis_process import AegisProcess, wait_for
from tests.harness.pgcluster import free_port


class EmbeddedAegis(AegisProcess):
    """The same process as in production on a laptop: SQLite store, built-in emulator, no SLACK_* at all."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        super().__init__(workdir, config, f"sqlite:///{workdir}/aegis.db", emulator_api_url="")
        self.emulator_port = free_port()
        self.env = {k: v for k, v in self.env.items() if not k.startswith("SLACK_")}
        self.extra_args = ["--emulator-port", str(self.emulator_port)]

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    def start(self, timeout: float = 30) -> EmbeddedAegis:
        super().start(timeout)   # the bot's /healthz; the emulator was started before it
        wait_for(lambda: self._emulator_up(), timeout=timeout, what="the built-in emulator's page")
        return self

    def _emulator_up(self) -> bool:
        try:
            return requests.get(self.emulator_url + "/_emulator/users", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def emulator_channels(self) -> list[dict[str, Any]]:
        channels: list[dict[str, Any]] = requests.get(self.emulator_url + "/_emulator/channels", timeout=5).json()
        return channels

    def emulator_views(self, user: str) -> list[dict[str, Any]]:
        views: list[dict[str, Any]] = requests.get(self.emulator_url + "/_emulator/views",
                                                   params={"user": user, "status": "open"}, timeout=5).json()
        return views
