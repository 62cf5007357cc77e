"""One scheduler per cluster: the leader (``bot.jobs.leader``) runs APScheduler; every replica stores schedules.

Schedules are rows of ``scheduled_job`` (a stable job name from ``bot.jobs.registry``, plain
arguments, a crontab or an interval), written by whichever replica asks: a reminder when an
incident's room opens (removed at close), the backup schedules at every start (``reconcile_backups``:
``backups.schedules`` in ``backups.timezone``, only for configured components and only when
``storage`` lists a target). Only the leader turns them into APScheduler jobs (an in-memory job
store: APScheduler never shares a store) and re-reads the table every poll (2 s), so a schedule
written by a standby is picked up within seconds.

Every fire runs under a claim with a lease (``bot.jobs.claims``): one run per (job, fire time), and
a fire whose claimant died mid-run is run again by the next leader. A standby that takes over also
runs any fire of the last ``TAKEOVER_WINDOW`` that nobody claimed (the gap between the old leader's
death and the takeover). At election, schedules written by the old APScheduler job store
(``apscheduler_jobs``, module-path function references) are moved into ``scheduled_job``.
"""

from __future__ import annotations

import logging
import pickle
import threading
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select

from bot.config import Config
from bot.jobs.claims import FireClaims, Lapsed
from bot.jobs.leader import Leadership
from bot.jobs.registry import REMINDER, JobRegistry
from statemachines.models import ScheduledJob, utcnow
from statemachines.store import Store

log = logging.getLogger("aegis.scheduler")
BACKUP_PREFIX = "backup-"
BACKUP_GRACE_SECONDS = 3600      # a nightly backup is still worth taking an hour late
INTERVAL_GRACE_SECONDS = 300     # a WAL switch or reminder is not
TAKEOVER_WINDOW = timedelta(seconds=30)
LEGACY_TABLE = "apscheduler_jobs"


# (name, args, cron, interval_seconds, timezone, start_at, misfire_grace_seconds) of a ScheduledJob row
_ScheduleKey = tuple[str, tuple[object, ...], str | None, float | None, str, datetime, int]


@dataclass(frozen=True)
class _Loaded:
    """A schedule as the leader turned it into an APScheduler job (compared to see a row changed)."""

    row: _ScheduleKey
    trigger: BaseTrigger
    grace: int


class Scheduler:
    def __init__(self, store: Store, registry: JobRegistry, *, owner: str = "", reminder_minutes: float = 30,
                 lease_seconds: float = 60.0, poll_seconds: float = 2.0) -> None:
        self.store = store
        self.registry = registry
        self.reminder_seconds = reminder_minutes * 60
        self.claims = FireClaims(store, owner, lease_seconds)
        self.leadership = Leadership(store.url, on_elected=self._elected, on_lost=self._lost,
                                     on_tick=self._tick, poll_seconds=poll_seconds)
        self._lock = threading.RLock()
        self._aps: BackgroundScheduler | None = None
        self._loaded: dict[str, _Loaded] = {}

    @property
    def role(self) -> str:
        return self.leadership.role

    def start(self) -> None:
        self.leadership.start()

    def shutdown(self) -> None:
        self.leadership.stop()

    # --- schedules (any replica) --------------------------------------------------------------

    def schedule_reminder(self, incident_id: int) -> None:
        start = utcnow().replace(microsecond=0)      # whole seconds: fire keys are whole seconds
        self._save([ScheduledJob(job_id=f"reminder-{incident_id}", name=REMINDER, args=[incident_id],
                                 interval_seconds=self.reminder_seconds, start_at=start,
                                 misfire_grace_seconds=INTERVAL_GRACE_SECONDS)])
        self.sync()

    def cancel_reminder(self, incident_id: int) -> None:
        with self.store.session() as session:
            session.execute(delete(ScheduledJob).where(col(ScheduledJob.job_id) == f"reminder-{incident_id}"))
        self.sync()

    def reconcile_backups(self, config: Config) -> list[str]:
        """Make the stored ``backup-*`` schedules match the config; returns the ids now scheduled."""
        wanted = backup_jobs(config)
        with self.store.session() as session:
            stored = session.exec(select(ScheduledJob.job_id).where(
                col(ScheduledJob.job_id).startswith(BACKUP_PREFIX))).all()
            for job_id in set(stored) - set(wanted):
                session.execute(delete(ScheduledJob).where(col(ScheduledJob.job_id) == job_id))
                log.info("backup schedule %s removed (disabled in config)", job_id)
        self._save(list(wanted.values()))
        if wanted:
            log.info("backup schedules: %s", ", ".join(sorted(wanted)))
        self.sync()
        return sorted(wanted)

    def stored_ids(self) -> list[str]:
        with self.store.session() as session:
            return sorted(session.exec(select(ScheduledJob.job_id)).all())

    def job_ids(self) -> list[str]:
        """The jobs this process schedules (none on a standby)."""
        with self._lock:
            return [job.id for job in self._aps.get_jobs()] if self._aps else []

    def next_fire_times(self) -> dict[str, datetime | None]:
        with self._lock:
            return {job.id: job.next_run_time for job in self._aps.get_jobs()} if self._aps else {}

    def _save(self, rows: list[ScheduledJob]) -> None:
        try:
            with self.store.session() as session:
                for row in rows:
                    session.merge(row)
        except IntegrityError:      # another replica inserted the same schedule a moment earlier
            log.info("schedules %s were stored concurrently by another replica", [r.job_id for r in rows])

    # --- the leader ------------------------------------------------------------------------------

    def _elected(self, took_over: bool) -> None:
        with self._lock:
            migrate_legacy_jobs(self.store)
            self._aps = BackgroundScheduler(
                job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": INTERVAL_GRACE_SECONDS},
                timezone="UTC")
            self._aps.start()
            self._loaded = {}
            self._sync_locked()
        self._rerun_lapsed()
        if took_over:
            self._catch_up()

    def _lost(self) -> None:
        with self._lock:
            if self._aps is not None:
                self._aps.shutdown(wait=False)    # running fires finish under their claims
            self._aps, self._loaded = None, {}

    def _tick(self) -> None:
        self.sync()
        self._rerun_lapsed()

    def sync(self) -> None:
        """Leader: make the APScheduler jobs match ``scheduled_job`` (added, changed, removed)."""
        with self._lock:
            if self._aps is not None:
                self._sync_locked()

    def _sync_locked(self) -> None:
        assert self._aps is not None
        with self.store.session() as session:
            rows = {row.job_id: row for row in session.exec(select(ScheduledJob))}
        for job_id in set(self._loaded) - set(rows):
            self._loaded.pop(job_id)
            try:
                self._aps.remove_job(job_id)
            except JobLookupError:
                pass
        for job_id, row in rows.items():
            key = (row.name, tuple(row.args or []), row.cron, row.interval_seconds, row.timezone, row.start_at,
                   row.misfire_grace_seconds)
            if job_id in self._loaded and self._loaded[job_id].row == key:
                continue
            try:
                trigger = trigger_of(row)
            except Exception as exc:
                log.error("schedule %s cannot be read (%s); not scheduled", job_id, exc)
                continue
            self._loaded[job_id] = _Loaded(key, trigger, row.misfire_grace_seconds)
            self._aps.add_job(self._fire, trigger, args=[job_id, row.name, list(row.args or [])], id=job_id,
                              name=job_id, replace_existing=True, misfire_grace_time=row.misfire_grace_seconds)

    def _fire(self, job_id: str, name: str, args: list[object]) -> object:
        """APScheduler's call: the scheduled time is the trigger's newest fire at or before now."""
        loaded = self._loaded.get(job_id)
        now = datetime.now(UTC)
        fire_time = (last_fire_time(loaded.trigger, now, timedelta(seconds=loaded.grace)) if loaded else None) or now
        return self._run(job_id, name, args, fire_time)

    def _run(self, job_id: str, name: str, args: list[object], fire_time: datetime) -> object:
        ran, result = self.claims.run(job_id, fire_time, name, args, lambda: self.registry.run(name, job_id, args))
        return result if ran else None

    def _rerun_lapsed(self) -> None:
        for lapsed in self.claims.lapsed():
            self._submit(self._take_over, lapsed)

    def _take_over(self, lapsed: Lapsed) -> None:
        self.claims.take_over(lapsed, lambda: self.registry.run(lapsed.job_name, lapsed.job_id, lapsed.args))

    def _catch_up(self) -> None:
        """After a takeover: the fires of the last seconds the dead leader never claimed."""
        now = datetime.now(UTC)
        with self._lock:
            due = [(job_id, loaded, last_fire_time(loaded.trigger, now, TAKEOVER_WINDOW))
                   for job_id, loaded in self._loaded.items()]
        for job_id, loaded, fire_time in due:
            if fire_time is not None and not self.claims.is_claimed(job_id, fire_time):
                log.info("%s at %s was due during the leader change; running it", job_id, fire_time.isoformat())
                name, args = loaded.row[0], list(loaded.row[1])
                self._submit(self._run, job_id, name, args, fire_time)

    def _submit(self, function: Callable[..., object], *args: object) -> None:
        """Run once now on the scheduler's worker threads (a date job without a trigger)."""
        with self._lock:
            if self._aps is not None:
                self._aps.add_job(function, args=list(args), misfire_grace_time=None)


def trigger_of(row: ScheduledJob) -> BaseTrigger:
    zone = zoneinfo.ZoneInfo(row.timezone)
    if row.cron:
        return CronTrigger.from_crontab(row.cron, timezone=zone)
    if row.interval_seconds:
        return IntervalTrigger(seconds=row.interval_seconds, start_date=row.start_at, timezone=zone)
    raise ValueError("neither cron nor interval_seconds")


def last_fire_time(trigger: BaseTrigger, now: datetime, window: timedelta) -> datetime | None:
    """The trigger's newest fire time in (now - window, now], or None."""
    fire = trigger.get_next_fire_time(None, now - window)
    last = None
    while fire is not None and fire <= now:
        last = fire
        fire = trigger.get_next_fire_time(fire, fire)
    return last


def backup_jobs(config: Config) -> dict[str, ScheduledJob]:
    """The backup schedules the config asks for, by id (job names: ``backup.<schedule>``)."""
    if not config.storage:
        return {}
    zone = config.backups.timezone
    plan = config.backups.schedules
    parts = config.components
    wanted: dict[str, ScheduledJob] = {}

    def cron(schedule: str, expression: str | None) -> None:
        if expression:
            job_id = BACKUP_PREFIX + schedule
            wanted[job_id] = ScheduledJob(job_id=job_id, name=f"backup.{schedule}", args=[], cron=expression,
                                          timezone=zone, start_at=datetime(2000, 1, 1, tzinfo=UTC),
                                          misfire_grace_seconds=BACKUP_GRACE_SECONDS)

    if parts.postgres:
        cron("postgres_full", plan.postgres_full)
        cron("postgres_incremental", plan.postgres_incremental)
        if plan.wal_switch_minutes:
            job_id = BACKUP_PREFIX + "wal_switch"
            # A fixed start aligns the fires to :00, :15, … however often the schedule is rewritten.
            start = datetime(2000, 1, 1, tzinfo=zoneinfo.ZoneInfo(zone))
            wanted[job_id] = ScheduledJob(job_id=job_id, name="backup.wal_switch", args=[],
                                          interval_seconds=plan.wal_switch_minutes * 60, timezone=zone,
                                          start_at=start, misfire_grace_seconds=INTERVAL_GRACE_SECONDS)
    if parts.neo4j:
        cron("neo4j", plan.neo4j)
    if parts.milvus:
        cron("milvus", plan.milvus)
    if parts.postgres or parts.neo4j or parts.milvus:
        cron("prune", plan.prune)
    return wanted


# --- schedules written by the APScheduler job store of earlier versions ------------------------------

LEGACY_REMINDER = "bot.jobs:send_reminder"


def migrate_legacy_jobs(store: Store) -> list[str]:
    """Move ``apscheduler_jobs`` rows (module-path references) into ``scheduled_job``; returns the ids moved.

    Reminders keep their interval and phase. Backup rows are dropped: their schedules are rebuilt
    from the config at every start. A row of an unknown function stays, with an error logged.
    """
    if not inspect(store.engine).has_table(LEGACY_TABLE):
        return []
    with store.engine.connect() as connection:
        rows = connection.execute(text(f"SELECT id, job_state FROM {LEGACY_TABLE}")).all()
    moved: list[str] = []
    for job_id, state_bytes in rows:
        try:
            state = pickle.loads(state_bytes)   # our own table, written by APScheduler 3
        except Exception as exc:
            log.error("old scheduled job %s cannot be read (%s); left in %s", job_id, exc, LEGACY_TABLE)
            continue
        func = state.get("func")
        if func == LEGACY_REMINDER and isinstance(state.get("trigger"), IntervalTrigger):
            trigger = state["trigger"]
            incident_id = int(state["args"][0])
            store_row = ScheduledJob(job_id=job_id, name=REMINDER, args=[incident_id],
                                     interval_seconds=trigger.interval.total_seconds(),
                                     start_at=trigger.start_date.astimezone(UTC).replace(microsecond=0),
                                     misfire_grace_seconds=INTERVAL_GRACE_SECONDS)
            with store.session() as session:
                session.merge(store_row)
        elif not (isinstance(func, str) and func.startswith("bot.backup_jobs:")):
            log.error("old scheduled job %s calls %r, which no job name maps to; left in %s", job_id, func,
                      LEGACY_TABLE)
            continue
        with store.engine.begin() as connection:
            connection.execute(text(f"DELETE FROM {LEGACY_TABLE} WHERE id = :id"), {"id": job_id})
        moved.append(job_id)
        log.info("old scheduled job %s (%s) moved to the job name %s", job_id, func,
                 REMINDER if func == LEGACY_REMINDER else "its backup schedule")
    return moved
