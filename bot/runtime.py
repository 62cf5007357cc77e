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
from typing import TYPE_CHECKING

from bot.config import Config
from bot.flows.backup import BackupDuty
from bot.flows.drills import DrillDuty, sweep_leftovers
from bot.flows.incident import Flows
from bot.jobs.drills import reconcile_drills
from bot.jobs.monitor import MonitorDuty
from bot.jobs.registry import JobContext, default_registry
from bot.jobs.scheduler import Scheduler
from bot.metrics import MetricsApp
from bot.reports.desk import ReportDesk
from bot.reports.tokens import ReportSecretError
from bot.secrets import install_masking
from bot.signals import SignalsApp
from bot.slack.app import create_app
from bot.slack.backup_desk import BackupDesk
from bot.slack.drill_desk import DrillDesk
from bot.slack.gateway import DEFAULT_API_URL, SlackGateway
from bot.slack.server import Health, HttpServer, WSGIApp, make_wsgi
from recovery.redact import redact
from statemachines.store import Store

if TYPE_CHECKING:   # imported when Socket Mode is used, not before
    from bot.slack.socket_mode import RedeliverySafeHandler

log = logging.getLogger("aegis.runtime")


class StartupError(Exception):
    """``aegis serve`` cannot start as configured; the text says what to set (printed as one line)."""


@dataclass
class SlackSettings:
    """How the bot talks to Slack. Exactly one way in: HTTP (``signing_secret``) or Socket Mode (``app_token``)."""

    token: str
    signing_secret: str | None
    api_url: str
    app_token: str | None = None
    # how often the Socket Mode client pings; a connection that stops answering is replaced after a
    # failed ping or 4 silent intervals (AEGIS_SOCKET_PING_SECONDS)
    socket_ping_seconds: float = 10.0

    @property
    def socket_mode(self) -> bool:
        return bool(self.app_token)


def slack_settings_from_env() -> SlackSettings | None:
    """Slack credentials from the environment; None when there are none (the built-in emulator runs).

    With ``SLACK_APP_TOKEN`` the bot uses Socket Mode and serves no HTTP events route at all, so no
    signing secret is involved; otherwise ``SLACK_SIGNING_SECRET`` is required. There is no
    default secret on any path.
    """
    token = os.environ.get("SLACK_BOT_TOKEN", "").strip()
    if not token:
        return None
    api_url = os.environ.get("SLACK_API_URL") or DEFAULT_API_URL
    app_token = os.environ.get("SLACK_APP_TOKEN", "").strip()
    if app_token:
        if os.environ.get("SLACK_SIGNING_SECRET"):
            log.info("SLACK_APP_TOKEN is set: Socket Mode; POST /slack/events is not served "
                     "and SLACK_SIGNING_SECRET is not used")
        ping = float(os.environ.get("AEGIS_SOCKET_PING_SECONDS") or 10.0)
        return SlackSettings(token, None, api_url, app_token, socket_ping_seconds=max(0.5, ping))
    secret = os.environ.get("SLACK_SIGNING_SECRET", "")
    if not secret.strip():
        raise StartupError("SLACK_SIGNING_SECRET is required in HTTP mode (the app's Signing Secret from "
                           "Basic Information), or set SLACK_APP_TOKEN to use Socket Mode")
    return SlackSettings(token, secret, api_url, None)


class Runtime:
    def __init__(self, config: Config, store: Store, slack: SlackSettings, *, sweep_seconds: float = 5.0) -> None:
        install_masking(config)   # before any hook, Slack call or log line can carry a declared secret
        self.config = config
        self.store = store
        self.slack = slack
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.gateway = SlackGateway(slack.token, slack.api_url)
        self.flows = Flows(config, store, self.gateway, owner=self.owner)
        self.backup_duty = BackupDuty(config, store, self.gateway, owner=self.owner)
        # jobs reach the running bot through the registry's context, never through module globals
        self.drill_duty = DrillDuty(config, store, self.gateway)
        registry = default_registry(JobContext(flows=self.flows, backups=self.backup_duty, drills=self.drill_duty))
        self.scheduler = Scheduler(store, registry, owner=self.owner, reminder_minutes=config.slack.reminder_minutes)
        self.flows.on_reminder_schedule = self.scheduler.schedule_reminder
        self.flows.on_reminder_cancel = self.scheduler.cancel_reminder
        self.backups = BackupDesk(self.backup_duty)
        self.drills = DrillDesk(self.drill_duty)
        # /reports and /metrics (issue 10): links signed with the reports' own secret, never Slack's
        try:
            self.reports = ReportDesk(config, store, slack_signing_secret=slack.signing_secret)
        except ReportSecretError as exc:
            raise StartupError(str(exc)) from None
        self.drill_duty.on_report = self.reports.publish_drill
        # M1-M3: cycles run only while this replica's scheduler leads
        self.monitor = (MonitorDuty(config, store, self.flows, self.gateway,
                                    is_leader=lambda: self.scheduler.role == "leader")
                        if config.monitoring.enabled else None)
        # Socket Mode requests are not signed and no HTTP route exists; Bolt still wants a secret, so
        # it gets a random one nobody knows rather than a guessable default.
        bolt_secret = slack.signing_secret if not slack.socket_mode else secrets.token_hex(32)
        self.bolt = create_app(self.flows, token=slack.token, signing_secret=bolt_secret or "",
                               api_url=slack.api_url, backups=self.backups, drills=self.drills,
                               reports=self.reports.link_reply)
        self._socket_mode: RedeliverySafeHandler | None = None
        self.sweep_seconds = sweep_seconds
        self._stop = threading.Event()
        self.http: HttpServer | None = None

    def health(self) -> Health:
        try:
            with self.store.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
            return {"ok": True, "store": "ok", "owner": self.owner, "scheduler": self.scheduler.role}
        except Exception as exc:
            return {"ok": False, "store": type(exc).__name__}

    def _sweep_drills(self) -> None:
        try:
            for line in sweep_leftovers(self.config, self.store):
                log.warning("%s", line)
        except Exception:
            log.exception("could not sweep the leftovers of interrupted drills; the next drill retries")

    def _sweeper(self) -> None:
        while not self._stop.wait(self.sweep_seconds):
            try:
                self.flows.sweep()
            except Exception:
                log.exception("sweep failed; retrying in %ss", self.sweep_seconds)

    def start(self, host: str, port: int) -> HttpServer:
        # Bind first: a port in use (OSError) must fail before any job or sweep has started.
        events_secret = None if self.slack.socket_mode else self.slack.signing_secret
        metrics = MetricsApp(self.store, self.config.reports.metrics_token_env)
        mounts: list[tuple[str, WSGIApp]] = [("/metrics", metrics), ("/reports", self.reports.app),
                                             ("/signals", SignalsApp(self.config, self.store))]
        self.http = HttpServer(make_wsgi(self.bolt, self.health, signing_secret=events_secret, mounts=mounts),
                               host=host, port=port)
        self.reports.serving_at(host, self.http.port)
        self.scheduler.start()
        self.scheduler.reconcile_backups(self.config)
        reconcile_drills(self.store, self.config)   # drill-* schedules; the leader's next sync picks them up
        # leftovers of drills a crash interrupted (scratch servers, directories): removed at every start
        threading.Thread(target=self._sweep_drills, name="aegis-drill-sweep", daemon=True).start()
        self.flows.outbox.start()   # delivers what committed changes must tell, also what a crash left
        self.flows.submit(self.flows.sweep)   # resume whatever a crash left, right away
        if self.monitor is not None:
            self.monitor.start()
        threading.Thread(target=self._sweeper, name="aegis-sweep", daemon=True).start()
        self.http.start()
        if self.slack.socket_mode:
            threading.Thread(target=self._connect_socket_mode, name="aegis-socket-mode", daemon=True).start()
        return self.http

    def _connect_socket_mode(self, first_wait: float = 2.0, max_wait: float = 60.0) -> None:
        """Connect over Socket Mode in the background, retrying with back-off; never crash ``serve``.

        Once connected, slack_sdk's client reconnects by itself (a dropped connection, a
        ``disconnect`` asking for a refresh); redelivered envelopes are not run twice (bot/slack/socket_mode.py).
        """
        from bot.slack.socket_mode import RedeliverySafeHandler

        wait = first_wait
        while not self._stop.is_set():
            try:
                handler = RedeliverySafeHandler(self.bolt, self.slack.app_token or "",
                                                ping_interval=self.slack.socket_ping_seconds)
                handler.connect()  # type: ignore[no-untyped-call]  # slack_bolt leaves connect() unannotated
                self._socket_mode = handler
                log.info("Socket Mode connected")
                return
            except Exception as exc:
                log.error("Socket Mode connection failed (%s: %s); retrying in %.0fs — /healthz keeps "
                          "answering meanwhile", type(exc).__name__, redact(str(exc))[:300], wait)
            if self._stop.wait(wait):
                return
            wait = min(max_wait, wait * 2)

    def stop(self) -> None:
        self._stop.set()
        if self.monitor is not None:
            self.monitor.stop()
        self.scheduler.shutdown()
        self.backups.shutdown()
        self.drills.shutdown()
        if self.http:
            self.http.stop()
        if self._socket_mode is not None:
            try:
                self._socket_mode.close()  # type: ignore[no-untyped-call]  # unannotated in slack_bolt
            except Exception:
                log.warning("could not close the Socket Mode connection", exc_info=True)
        self.flows.pool.shutdown(wait=False, cancel_futures=True)
        self.flows.outbox.stop()


def emulator_settings() -> tuple[str, str]:
    """Credentials shared by the bot and the built-in emulator (fresh per run, never printed)."""
    return "xoxb-emulator-" + secrets.token_hex(8), secrets.token_hex(16)


def emulator_database_path(store_url: str) -> str | None:
    """Where the built-in emulator keeps its workspace: beside the bot's SQLite file (``aegis.db`` →
    ``aegis-emulator.db``), so a restart of ``aegis serve`` finds the channels of the incidents the
    store still holds. A PostgreSQL store has no data directory: the working directory then.
    None (an in-memory workspace) for an in-memory store, whose incidents die with the process too."""
    from sqlalchemy.engine import make_url

    url = make_url(store_url)
    if url.get_backend_name() != "sqlite":
        return os.path.abspath("aegis-emulator.db")
    if not url.database or url.database == ":memory:" or url.database.startswith("file::memory:"):
        return None
    store_file = os.path.abspath(url.database)
    stem, _ = os.path.splitext(store_file)
    return stem + "-emulator.db"
