"""The drill schedules and their job functions (registered by stable name in bot/jobs/registry.py).

Schedules (``drills.schedules``, crontab lines in ``backups.timezone``) are ``scheduled_job`` rows
``drill-<schedule>`` with the stable job names ``drill.backup_restore_test``,
``drill.database_failover_test``, ``drill.full_system_recovery_test`` and ``drill.restore_rotation``
(the daily restore-test rotation: a ``backup_restore_test`` that keeps every retained backup tested
within ``drills.retest_days``). Only the scheduler leader fires them, each fire under its claim with a
lease (bot/jobs/claims.py), so a fire runs once across replicas.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlmodel import col, delete, select

from bot.config import Config
from bot.flows.drills import DrillDuty
from statemachines.models import ScheduledJob
from statemachines.store import Store

log = logging.getLogger("aegis.drills")
DRILL_PREFIX = "drill-"
# stable job name -> the drill it runs
JOB_DRILLS = {
    "drill.backup_restore_test": "backup_restore_test",
    "drill.database_failover_test": "database_failover_test",
    "drill.full_system_recovery_test": "full_system_recovery_test",
    "drill.restore_rotation": "backup_restore_test",
}
DRILL_GRACE_SECONDS = 3600

def drill_schedules(config: Config) -> dict[str, ScheduledJob]:
    """The drill schedules the config asks for (none without storage: nothing to restore from)."""
    if not config.storage:
        return {}
    plan = config.drills.schedules.model_dump()
    wanted = {}
    for job_name in JOB_DRILLS:
        expression = plan.get(job_name.removeprefix("drill."))
        if expression:
            job_id = DRILL_PREFIX + job_name.removeprefix("drill.")
            wanted[job_id] = ScheduledJob(job_id=job_id, name=job_name, args=[], cron=expression,
                                          timezone=config.backups.timezone, start_at=datetime(2000, 1, 1, tzinfo=UTC),
                                          misfire_grace_seconds=DRILL_GRACE_SECONDS)
    return wanted


def reconcile_drills(store: Store, config: Config) -> list[str]:
    """Make the stored ``drill-*`` schedules match the config (the leader picks them up at its next sync)."""
    wanted = drill_schedules(config)
    with store.session() as session:
        query = select(ScheduledJob.job_id).where(col(ScheduledJob.job_id).startswith(DRILL_PREFIX))
        stored = session.exec(query).all()
        for job_id in set(stored) - set(wanted):
            session.execute(delete(ScheduledJob).where(col(ScheduledJob.job_id) == job_id))
        for row in wanted.values():
            session.merge(row)
    return sorted(wanted)


def run_scheduled(duty: DrillDuty, job_id: str, job_name: str) -> str | None:
    """A scheduled drill: waits for a running one, then runs; returns its status."""
    name = JOB_DRILLS[job_name]
    duty.gate.enter(job_id)
    try:
        return duty.run(name, trigger="schedule", requested_by=job_id).status
    except Exception:
        log.exception("scheduled %s could not run", job_id)
        return None
    finally:
        duty.gate.leave()
