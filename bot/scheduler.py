"""APScheduler with a persistent job store in the bot's own database.

Reminders are rows in ``apscheduler_jobs``; after a restart they resume. With several replicas
sharing a store each may fire the same job; ``Flows.remind`` takes a compare-and-set on the
incident first, so stakeholders still get one reminder per interval.

Backup schedules (``backups.schedules``, crontab strings in ``backups.timezone``) are reconciled at
every start (``reconcile_backups``): the wanted ``backup-*`` jobs are added or replaced, the others
removed, so the store always matches the config. Jobs exist only for configured components and
only when ``storage`` lists a target. Each backup job is stored with a ``fire_time`` keyword that
``FireTimeExecutor`` fills with the scheduled time; the job claims (job, fire time) before it runs,
so one replica runs each fire (``bot.backup_jobs``).
"""

from __future__ import annotations

import logging
import zoneinfo
from datetime import datetime
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.backup_jobs import FireTimeExecutor
from bot.config import Config

log = logging.getLogger("aegis.scheduler")
BACKUP_PREFIX = "backup-"
BACKUP_GRACE_SECONDS = 3600
JobSpec = tuple[str, BaseTrigger, dict[str, Any]]     # function path, trigger, keywords


class Scheduler:
    def __init__(self, database_url: str, reminder_minutes: float) -> None:
        self.reminder_seconds = reminder_minutes * 60
        self._scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=database_url, tablename="apscheduler_jobs")},
            executors={"default": FireTimeExecutor(max_workers=4)},
            job_defaults={"coalesce": True, "misfire_grace_time": 300, "max_instances": 1},
            timezone="UTC",
        )

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def schedule_reminder(self, incident_id: int) -> None:
        self._scheduler.add_job(
            "bot.jobs:send_reminder", "interval", seconds=self.reminder_seconds, args=[incident_id],
            id=f"reminder-{incident_id}", replace_existing=True,
        )

    def cancel_reminder(self, incident_id: int) -> None:
        try:
            self._scheduler.remove_job(f"reminder-{incident_id}")
        except JobLookupError:
            pass

    def job_ids(self) -> list[str]:
        return [job.id for job in self._scheduler.get_jobs()]

    def reconcile_backups(self, config: Config) -> list[str]:
        """Make the stored ``backup-*`` jobs match the config; returns the ids now scheduled."""
        wanted = backup_jobs(config)
        for job in self._scheduler.get_jobs():
            if job.id.startswith(BACKUP_PREFIX) and job.id not in wanted:
                self._scheduler.remove_job(job.id)
                log.info("backup schedule %s removed (disabled in config)", job.id)
        for job_id, (func, trigger, kwargs) in wanted.items():
            # a nightly backup is still worth taking an hour late (a restart at 02:00); a WAL switch is not
            grace = 300 if isinstance(trigger, IntervalTrigger) else BACKUP_GRACE_SECONDS
            self._scheduler.add_job(func, trigger, kwargs=kwargs, id=job_id, name=job_id, replace_existing=True,
                                    misfire_grace_time=grace)
        if wanted:
            log.info("backup schedules: %s", ", ".join(sorted(wanted)))
        return sorted(wanted)

    def next_fire_times(self) -> dict[str, datetime | None]:
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}


def backup_jobs(config: Config) -> dict[str, JobSpec]:
    """The backup jobs the config asks for, by id."""
    if not config.storage:
        return {}
    zone = zoneinfo.ZoneInfo(config.backups.timezone)
    plan = config.backups.schedules
    parts = config.components
    wanted: dict[str, JobSpec] = {}

    def cron(name: str, expression: str | None, func: str, **kwargs: Any) -> None:
        if expression:
            job_id = BACKUP_PREFIX + name
            trigger = CronTrigger.from_crontab(expression, timezone=zone)
            wanted[job_id] = (func, trigger, {"job_id": job_id, **kwargs, "fire_time": None})

    if parts.postgres:
        cron("postgres_full", plan.postgres_full, "bot.backup_jobs:run_backup", kind="postgresql")
        cron("postgres_incremental", plan.postgres_incremental, "bot.backup_jobs:run_backup",
             kind="postgresql", incremental=True)
        if plan.wal_switch_minutes:
            job_id = BACKUP_PREFIX + "wal_switch"
            # A fixed start aligns the fires to :00, :15, … however often the job is re-added.
            start = datetime(2000, 1, 1, tzinfo=zone)
            trigger = IntervalTrigger(minutes=plan.wal_switch_minutes, start_date=start, timezone=zone)
            wanted[job_id] = ("bot.backup_jobs:switch_wal", trigger, {"job_id": job_id, "fire_time": None})
    if parts.neo4j:
        cron("neo4j", plan.neo4j, "bot.backup_jobs:run_backup", kind="neo4j")
    if parts.milvus:
        cron("milvus", plan.milvus, "bot.backup_jobs:run_backup", kind="milvus")
    if parts.postgres or parts.neo4j or parts.milvus:
        cron("prune", plan.prune, "bot.backup_jobs:prune_backups")
    return wanted
