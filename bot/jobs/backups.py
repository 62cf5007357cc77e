"""The scheduled backup jobs (registered by stable name in ``bot.jobs.registry``): runs, WAL switch, prune.

Each gets the running ``BackupDuty`` (bot/flows/backup.py) as its first argument and reports a
failure to the ops channel once per streak.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.backup_wiring import repository_from, retention_policy
from bot.flows.backup import BackupDuty
from messages.blocks import backup as backup_blocks
from recovery.redact import redact

if TYPE_CHECKING:   # retention is imported lazily, when the prune job fires
    from recovery.backup.retention import PruneReport

log = logging.getLogger("aegis.backup")


def run_backup(duty: BackupDuty, job_id: str, kind: str, incremental: bool = False) -> str | None:
    """A scheduled backup (B1-B3); returns the run id, or None when it could not run."""
    duty.gate.enter(job_id)   # wait for a Slack-started run rather than skip the slot
    try:
        view = duty.run(kind, incremental=incremental, schedule=job_id)
    except Exception as exc:                     # not configured, key missing: tell ops, never die silently
        log.exception("scheduled %s could not run", job_id)
        error = redact(f"{type(exc).__name__}: {exc}")[:400]
        message = backup_blocks.backup_job_alert("not_run", job_id, error, duty.locale)
        duty.post(duty.config.slack.ops_channel, message, f"{job_id} failure")
        return None
    finally:
        duty.gate.leave()
    return view.run_id


def switch_wal(duty: BackupDuty, job_id: str) -> str | None:
    """B1's second line behind ``archive_timeout``: close the current WAL segment so it is archived."""
    from recovery.backup.wal.commands import switch_wal as pg_switch_wal

    if duty.config.components.postgres is None:
        return None
    try:
        lsn = pg_switch_wal(duty.config.components.postgres.primary.full_dsn())
    except Exception as exc:
        _report_once(duty, job_id, "wal_failed", redact(f"{type(exc).__name__}: {exc}")[:400])
        return None
    duty.failing.discard(job_id)
    log.info("%s: WAL switched at %s", job_id, lsn)
    return lsn


def prune_backups(duty: BackupDuty, job_id: str) -> PruneReport | None:
    """Retention (B1-B3) after the nightly runs; errors go to the ops channel."""
    duty.gate.enter(job_id)     # never prune while a backup is being written
    try:
        from recovery.backup.retention import prune  # only needed when the prune job fires

        repo = repository_from(duty.config, duty.store)
        report = prune(repo.store, repo.targets, retention_policy(duty.config))
    except Exception as exc:
        log.exception("prune failed")
        _report_once(duty, job_id, "prune_failed", redact(f"{type(exc).__name__}: {exc}")[:400])
        return None
    finally:
        duty.gate.leave()
    if report.errors:
        _report_once(duty, job_id, "prune_failed", "; ".join(redact(e) for e in report.errors)[:1500])
    else:
        duty.failing.discard(job_id)
    return report


def _report_once(duty: BackupDuty, job_id: str, part: str, error: str) -> None:
    """Post a repeating job's failure once per streak (a WAL switch fails every 15 minutes while PG is down)."""
    log.error("%s failed: %s", job_id, error)
    if job_id in duty.failing:
        return
    duty.failing.add(job_id)
    duty.post(duty.config.slack.ops_channel, backup_blocks.backup_job_alert(part, job_id, error, duty.locale),
              f"{job_id} failure")
