"""Backup runs for Slack and for the schedule, and the scheduled backup job functions.

- ``BackupDuty.run`` takes one backup (``BackupRunner``), turns the report into a plain view and,
  when the run failed or lost a target, posts to ``slack.ops_channel``: the reason, the target(s)
  that failed and the newest usable backup of that kind, which stays in place.
- One backup at a time per bot process (``bot.run_gate.RunGate``): a Slack ``backup run`` while
  another run is going is refused with what is running (see ``bot/slack/backup_desk.py``); a scheduled run waits for
  the gate instead, since nobody is there to retry it.
- Only the scheduler leader fires jobs (``bot.jobs.scheduler``), each fire under a claim with a lease
  (``bot.jobs.claims``). The job functions below are registered by stable name in
  ``bot.jobs.registry`` and get the running ``BackupDuty`` as their first argument.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.backup_wiring import runner_from
from bot.config import Config
from bot.run_gate import RunGate
from bot.slack.gateway import SlackCallFailed, SlackGateway
from messages.blocks import backup as backup_blocks
from messages.blocks.backup import BackupObjectView, BackupRunView, BackupTargetView
from messages.views import Message
from recovery.backup.catalog import kinds_of_run, newest_good
from recovery.backup.runner import RunReport
from recovery.redact import redact
from statemachines.models import BackupRecord
from statemachines.store import Store

log = logging.getLogger("aegis.backup")


# --- runs and their reports -------------------------------------------------------------------


def object_view(record: BackupRecord) -> BackupObjectView:
    targets = [BackupTargetView(name, bool(t.get("ok")), t.get("error"), bool(t.get("removed")))
               for name, t in (record.targets or {}).items()]
    return BackupObjectView(record.run_id, record.object_name, record.kind, record.status, record.stored_size,
                            record.started_at, targets, record.reason)


def newest_usable(store: Store, run_kind: str, kinds: list[str] | None = None,
                  before_run: str | None = None) -> BackupRecord | None:
    """The newest good backup of these catalog kinds (default: those a ``run_kind`` run stores);
    the backup service's and the monitor's backup-age check's question, asked of the catalog."""
    return newest_good(store, kinds or kinds_of_run(run_kind), before_run=before_run)


def run_view(store: Store, report: RunReport, *, started_by: str | None, schedule: str | None) -> BackupRunView:
    failed_targets: list[str] = []
    reasons: list[str] = []
    for record in report.records:
        failed_here = False
        for name, target in (record.targets or {}).items():
            if not target.get("ok"):
                failed_here = True
                if name not in failed_targets:
                    failed_targets.append(name)
                error = str(target.get("error") or "failed")
                reasons.append(redact(error if error.startswith(f"{name}:") else f"{name}: {error}")[:400])
        if record.status != "ok" and record.reason:
            # the catalog reason repeats the target errors in parentheses; they are listed above
            why = record.reason.split(" (", 1)[0] if failed_here else record.reason
            reasons.append(redact(why)[:400])
    reasons += report.errors
    local_kept = any(r.status != "ok" and "local staging copy is kept" in (r.reason or "") for r in report.records)
    status = "ok" if report.ok and not failed_targets else "warning" if report.ok else "failed"
    previous = None
    if status == "failed":
        kinds = sorted({r.kind for r in report.records}) or None
        good = newest_usable(store, report.kind, kinds, before_run=report.run_id)
        previous = object_view(good) if good else None
    return BackupRunView(report.run_id, report.kind, status, [object_view(r) for r in report.records],
                         list(report.errors), failed_targets, list(dict.fromkeys(reasons)), started_by, schedule,
                         previous, local_kept)


@dataclass
class BackupDuty:
    """Takes backups for the Slack surface and the schedule, and tells the ops channel when one fails."""

    config: Config
    store: Store
    gateway: SlackGateway | None
    owner: str = ""

    def __post_init__(self) -> None:
        self.gate = RunGate()
        self.locale = self.config.locale
        self.failing: set[str] = set()   # repeating jobs whose failure streak ops was already told of

    def run(self, kind: str, *, incremental: bool = False, started_by: str | None = None,
            schedule: str | None = None, report_channel: str | None = None) -> BackupRunView:
        """Run one backup (the caller holds the gate). Raises ``BackupSetupError``/``BackupKeyError``
        when backups are not configured; every other failure is in the returned view."""
        log.info("backup (%s%s) started by %s", kind, ", incremental" if incremental else "",
                 f"schedule {schedule}" if schedule else (started_by or "aegis"))
        report = runner_from(self.config, self.store).run(kind, incremental=incremental)
        view = run_view(self.store, report, started_by=started_by, schedule=schedule)
        log.info("backup %s (%s) %s%s", report.run_id, kind, view.status,
                 f": {'; '.join(view.reasons)}" if view.reasons else "")
        ops = self.config.slack.ops_channel
        if view.status != "ok" and ops and ops != report_channel:
            self.post(ops, backup_blocks.backup_ops_alert(view, self.locale), f"ops alert for {report.run_id}")
        return view

    def post(self, channel: str, message: Message, what: str) -> bool:
        if self.gateway is None:
            return False
        try:
            self.gateway.post(channel, message.text, message.blocks)
            return True
        except SlackCallFailed as exc:
            log.error("could not post %s to %s: %s", what, channel, exc)
            return False
