"""What the running bot holds for the reports: the link signer, the ``/reports`` app, links for Slack,
and the publishing of a finished drill's report (wired in bot/runtime.py)."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta

from bot.config import Config
from bot.reports.publish import publish_drill
from bot.reports.tokens import signer_from_env
from bot.reports.web import ReportLinks, ReportsApp
from messages import report_pages
from messages.views import Message
from statemachines.store import Store

log = logging.getLogger("aegis.reports")


class ReportDesk:
    def __init__(self, config: Config, store: Store, *, slack_signing_secret: str | None) -> None:
        self.config, self.store = config, store
        reports = config.reports
        self.signer = signer_from_env(reports.secret_env, timedelta(minutes=reports.link_minutes),
                                      slack_signing_secret=slack_signing_secret)
        self.links = ReportLinks(self.signer, reports.base_url)
        self.app = ReportsApp(store, config, self.signer)

    def serving_at(self, host: str, port: int) -> None:
        """Without ``reports.base_url``, links point at the address ``aegis serve`` bound."""
        if self.signer.ephemeral_because:
            log.warning("%s is not set: report links are signed with a random secret of this process (they stop "
                        "working at a restart and on other replicas); set it to a shared secret",
                        self.signer.ephemeral_because)
        if self.links.base_url:
            return
        shown = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
        self.links.base_url = f"http://{shown}:{port}"

    def link_reply(self, user: str) -> Message:
        """``/aegis report``: a fresh link for ``user`` (with a roster, only for people on it)."""
        roster = self.config.roster
        if roster and not any(user in users for users in roster.values()):
            return report_pages.link_reply(self.config.locale, url=None, expires_at=None, reason="not_allowed")
        made = self.links.link(user)
        if made is None:
            return report_pages.link_reply(self.config.locale, url=None, expires_at=None, reason="no_address")
        return report_pages.link_reply(self.config.locale, url=made[0], expires_at=made[1])

    def publish_drill(self, run_id: int) -> str | None:
        return publish_drill(self.store, self.config, self.links, run_id)
