"""APScheduler with a persistent job store in the bot's own database.

Reminders are rows in ``apscheduler_jobs``; after a restart they resume. With several replicas
sharing a store each may fire the same job; ``Flows.remind`` takes a compare-and-set on the
incident first, so stakeholders still get one reminder per interval.
"""

from __future__ import annotations

import logging

from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("aegis.scheduler")


class Scheduler:
    def __init__(self, database_url: str, reminder_minutes: float) -> None:
        self.reminder_seconds = reminder_minutes * 60
        self._scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=database_url, tablename="apscheduler_jobs")},
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
