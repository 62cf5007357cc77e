"""Wire the running bot: config, store, Slack gateway, flows, scheduler, sweeper, HTTP server.

``aegis serve`` builds one ``Runtime``. Without ``SLACK_BOT_TOKEN`` it starts the built-in Slack
emulator first and points the bot at it (the embedded default: SQLite, emulator, no setup).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from bot import backup_jobs, jobs
from bot.app import create_app
from bot.backup_jobs import BackupDuty
from bot.backup_slack import BackupDesk
from bot.config import Config
from bot.flows import Flows
from bot.scheduler import Scheduler
from bot.secrets import install_masking
from bot.server import HttpServer, make_wsgi
from bot.slack_gateway import DEFAULT_API_URL, SlackGateway
from statemachines.store import Store

log = logging.getLogger("aegis.runtime")


@dataclass
class SlackSettings:
    token: str
    signing_secret: str
    api_url: str
    app_token: str | None = None


def slack_settings_from_env() -> SlackSettings | None:
    token = os.environ.get("SLACK_BOT_TOKEN")
    if not token:
        return None
    secret = os.environ.get("SLACK_SIGNING_SECRET", "")
    app_token = os.environ.get("SLACK_APP_TOKEN")
    if not secret and not app_token:
        raise SystemExit("SLACK_SIGNING_SECRET is required in HTTP mode (or set SLACK_APP_TOKEN for Socket Mode)")
    return SlackSettings(token, secret, os.environ.get("SLACK_API_URL", DEFAULT_API_URL), app_token)


class Runtime:
    def __init__(self, config: Config, store: Store, slack: SlackSettings, *, sweep_seconds: float = 5.0) -> None:
        install_masking(config)   # before any hook, Slack call or log line can carry a declared secret
        self.config = config
        self.store = store
        self.slack = slack
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.gateway = SlackGateway(slack.token, slack.api_url)
        self.flows = Flows(config, store, self.gateway, owner=self.owner)
        self.scheduler = Scheduler(store.url, config.slack.reminder_minutes)
        self.flows.on_reminder_schedule = self.scheduler.schedule_reminder
        self.flows.on_reminder_cancel = self.scheduler.cancel_reminder
        self.backup_duty = BackupDuty(config, store, self.gateway, owner=self.owner)
        self.backups = BackupDesk(self.backup_duty)
        self.bolt = create_app(self.flows, token=slack.token, signing_secret=slack.signing_secret or "unused",
                               api_url=slack.api_url, backups=self.backups)
        self.sweep_seconds = sweep_seconds
        self._stop = threading.Event()
        self.http: HttpServer | None = None

    def health(self) -> dict[str, Any]:
        try:
            with self.store.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
            return {"ok": True, "store": "ok", "owner": self.owner}
        except Exception as exc:
            return {"ok": False, "store": type(exc).__name__}

    def _sweeper(self) -> None:
        while not self._stop.wait(self.sweep_seconds):
            try:
                self.flows.sweep()
            except Exception:
                log.exception("sweep failed; retrying in %ss", self.sweep_seconds)

    def start(self, host: str, port: int) -> HttpServer:
        jobs.runtime = self.flows
        backup_jobs.context = self.backup_duty
        self.scheduler.start()
        self.scheduler.reconcile_backups(self.config)
        self.flows.submit(self.flows.sweep)   # resume whatever a crash left, right away
        threading.Thread(target=self._sweeper, name="aegis-sweep", daemon=True).start()
        self.http = HttpServer(make_wsgi(self.bolt, self.health), host=host, port=port).start()
        if self.slack.app_token:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            SocketModeHandler(self.bolt, self.slack.app_token).connect()
            log.info("Socket Mode connected")
        return self.http

    def stop(self) -> None:
        self._stop.set()
        self.scheduler.shutdown()
        self.backups.shutdown()
        if self.http:
            self.http.stop()
        self.flows.pool.shutdown(wait=False, cancel_futures=True)


def emulator_settings() -> tuple[str, str]:
    """Credentials shared by the bot and the built-in emulator (fresh per run, never printed)."""
    return "xoxb-emulator-" + secrets.token_hex(8), secrets.token_hex(16)
