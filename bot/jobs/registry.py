"""Scheduled jobs by stable name: ``reminder``, ``backup.postgres_full``, … mapped to functions.

A stored schedule (``scheduled_job``) and a fire claim hold only the name and plain arguments, so
moving or renaming a module never orphans a stored job. Every function is called as
``function(context, job_id, *args)``: the ``JobContext`` the runtime built at start-up is how a job
reaches the running bot (its flows and backup duty), not a module global.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from bot.flows.backup import BackupDuty
from bot.flows.drills import DrillDuty
from bot.flows.incident import Flows
from bot.jobs import backups as backup_jobs
from bot.jobs import reminders
from bot.jobs.drills import JOB_DRILLS, run_scheduled

log = logging.getLogger("aegis.scheduler")
JobFunction = Callable[..., object]     # (context, job_id, *args) -> a result only logged or tested

REMINDER = "reminder"
BACKUP_KINDS = {           # stable name -> (run kind, incremental)
    "backup.postgres_full": ("postgresql", False),
    "backup.postgres_incremental": ("postgresql", True),
    "backup.neo4j": ("neo4j", False),
    "backup.milvus": ("milvus", False),
}


@dataclass
class JobContext:
    """What a job may use of the running bot."""

    flows: Flows | None = None
    backups: BackupDuty | None = None
    drills: DrillDuty | None = None


class JobRegistry:
    def __init__(self, context: JobContext) -> None:
        self.context = context
        self._functions: dict[str, JobFunction] = {}

    def register(self, name: str, function: JobFunction) -> None:
        self._functions[name] = function

    def names(self) -> list[str]:
        return sorted(self._functions)

    def run(self, name: str, job_id: str, args: list[object]) -> object:
        function = self._functions.get(name)
        if function is None:
            log.error("%s: no job is registered under the name %r; not run", job_id, name)
            return None
        return function(self.context, job_id, *args)


def default_registry(context: JobContext) -> JobRegistry:
    """The bot's jobs: reminders, the seven backup jobs and the four drill jobs."""
    registry = JobRegistry(context)
    registry.register(REMINDER, reminders.send_reminder)
    for name, (kind, incremental) in BACKUP_KINDS.items():
        registry.register(name, _backup(kind, incremental))
    registry.register("backup.prune", lambda ctx, job_id: _with_duty(ctx, job_id, backup_jobs.prune_backups))
    registry.register("backup.wal_switch", lambda ctx, job_id: _with_duty(ctx, job_id, backup_jobs.switch_wal))
    for name in JOB_DRILLS:
        registry.register(name, _drill(name))
    return registry


def _drill(job_name: str) -> JobFunction:
    def run(ctx: JobContext, job_id: str) -> object:
        if ctx.drills is None:
            log.warning("%s fired in a process without drills wired; not run", job_id)
            return None
        return run_scheduled(ctx.drills, job_id, job_name)
    return run


def _backup(kind: str, incremental: bool) -> JobFunction:
    def run(ctx: JobContext, job_id: str) -> object:
        return _with_duty(ctx, job_id, lambda duty, job: backup_jobs.run_backup(duty, job, kind, incremental))
    return run


def _with_duty(ctx: JobContext, job_id: str, function: Callable[[BackupDuty, str], object]) -> object:
    if ctx.backups is None:
        log.warning("%s fired in a process without backups wired; not run", job_id)
        return None
    return function(ctx.backups, job_id)
