"""One scheduler per cluster: two ``aegis serve`` processes on one PostgreSQL store elect one leader,
reminders and a backup job fire once per slot, a SIGKILLed leader is replaced within the bound;
a fire whose claimant died is run again; schedules of the old APScheduler job store survive the
upgrade under their job names."""

from __future__ import annotations

import pickle
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.triggers.interval import IntervalTrigger
from sqlmodel import select

from bot.jobs.registry import JobRegistry
from bot.jobs.scheduler import Scheduler
from slack_emulator.server import EmulatorServer
from statemachines.models import ScheduledClaim, ScheduledJob
from statemachines.store import Store
from tests.harness.aegis_process import AegisProcess, wait_for
from tests.harness.pgcluster import PgSingle
from tests.harness.slack_reading import all_text, channel, channel_by_id

TAKEOVER_BOUND = 10.0      # seconds; README, bot/jobs/leader.py
CLAIMED = re.compile(r"(\S+) at (\S+): claimed by (\S+), running")


def config_for(store_server: PgSingle, workdir: Path) -> dict[str, Any]:
    return {
        "locale": "en",
        "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 0.05},
        "roster": {"incident_commander": ["U0IC"], "database_lead": ["U0DB"]},
        # the store's own server doubles as the component: the WAL switch job has a real primary
        "components": {"postgres": {"primary": {"dsn": store_server.primary.dsn(), "label": "pg-primary"}}},
        "storage": [{"kind": "local", "path": str(workdir / "staging"), "name": "local"}],
        "backups": {"schedules": {"postgres_full": None, "postgres_incremental": None, "prune": None,
                                  "wal_switch_minutes": 0.1}},       # every 6 s
    }


def health(bot: AegisProcess) -> dict[str, Any]:
    return dict(requests.get(f"{bot.url}/healthz", timeout=2).json())


def claims(store: Store) -> list[ScheduledClaim]:
    with store.session() as session:
        return list(session.exec(select(ScheduledClaim).order_by(ScheduledClaim.fire_time)))


def fires_in_logs(*bots: AegisProcess) -> list[tuple[str, str, str]]:
    return [m.groups() for bot in bots for m in CLAIMED.finditer(bot.log())]  # type: ignore[misc]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.fixture
def store_server() -> Iterator[PgSingle]:
    server = PgSingle.create()
    server.primary.sql("CREATE DATABASE aegis")
    try:
        yield server
    finally:
        server.destroy()


def test_two_replicas_elect_one_scheduler_and_a_killed_leader_is_replaced_within_the_bound(
    workdir: Path, store_server: PgSingle, emulator: EmulatorServer,
) -> None:
    node = store_server.primary
    url = f"postgresql+psycopg://postgres@/aegis?host={node.socket_dir}&port={node.port}"
    config = config_for(store_server, workdir)
    first = AegisProcess(workdir, config, url, emulator.api_url, name="first")
    second = AegisProcess(workdir, config, url, emulator.api_url, name="second")
    for bot in (first, second):
        bot.env["AEGIS_BACKUP_KEY"] = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    emulator.bot_url = first.url
    first.start()
    second.start()
    store = first.store()
    try:
        roles = {health(first)["scheduler"], health(second)["scheduler"]}
        assert roles == {"leader", "standby"}
        assert health(first)["scheduler"] == "leader"          # the first to start holds the lock
        leader_owner = health(first)["owner"]
        assert "scheduler: standby" in second.log() and "scheduler: leader" in first.log()

        # an incident opened through the standby: its reminder schedule reaches the leader via the store
        emulator.bot_url = second.url
        assert emulator.driver.slash("U0IC", "incident database_failure critical primary database is down"
                                     ).status_code == 200
        wait_for(lambda: channel(emulator.state, "inc-"), what="the incident channel")

        def done(job_prefix: str, owner: str, after: datetime | None = None) -> list[ScheduledClaim]:
            return [c for c in claims(store) if c.job_id.startswith(job_prefix) and c.owner == owner
                    and c.done_at is not None and (after is None or datetime.fromisoformat(c.fire_time) > after)]

        wait_for(lambda: len(done("reminder-", leader_owner)) >= 2, timeout=30, what="two reminder fires")
        wait_for(lambda: done("backup-wal_switch", leader_owner), timeout=30, what="a WAL switch fire")
        # only the leader fired anything, each (job, fire time) once
        assert {c.owner for c in claims(store)} == {leader_owner}
        assert not fires_in_logs(second)

        first.kill()
        killed_at = datetime.now(UTC)
        started = time.monotonic()
        wait_for(lambda: health(second)["scheduler"] == "leader", timeout=TAKEOVER_BOUND,
                 interval=0.1, what="the standby taking over")
        took = time.monotonic() - started
        assert took <= TAKEOVER_BOUND
        new_owner = health(second)["owner"]

        # the next reminder and WAL switch after the kill happen, run by the new leader
        wait_for(lambda: done("reminder-", new_owner, killed_at), timeout=30, what="a reminder after the kill")
        wait_for(lambda: done("backup-wal_switch", new_owner, killed_at), timeout=30,
                 what="a WAL switch after the kill")
        assert "WAL switched at" in second.log()
        # exactly once: every fire run is one claim and one "running" log line, in one process
        logged = fires_in_logs(first, second)
        assert {owner for *_, owner in logged} == {leader_owner, new_owner}
        assert len(logged) == len(set(logged)) == len({(job, at) for job, at, _ in logged})
        stored = {(c.job_id, c.fire_time, c.owner) for c in claims(store)}
        assert set(logged) <= stored
        reminders = [m for m in channel_by_id(emulator.state, "C0STAKE")["messages"]
                     if "still open" in all_text(m) and m.get("thread_ts")]
        assert 3 <= len(reminders) <= len(done("reminder-", leader_owner)) + len(done("reminder-", new_owner))
    finally:
        first.stop()
        second.stop()
        store.dispose()


# --- in-process: leases and the old job store -----------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.event = threading.Event()

    def __call__(self, _context: Any, job_id: str, *args: Any) -> None:
        self.calls.append((job_id, list(args)))
        self.event.set()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    store.migrate()
    yield store
    store.dispose()


def test_a_fire_whose_claimant_died_is_run_by_the_next_leader(sqlite_store: Store) -> None:
    now = datetime.now(UTC)
    with sqlite_store.session() as session:
        # died mid-fire: its lease lapsed, never done
        session.add(ScheduledClaim(job_id="backup-prune", fire_time="2026-12-02T05:30:00+00:00", owner="dead",
                                   job_name="probe", args=[1], claimed_at=now - timedelta(minutes=2),
                                   lease_until=now - timedelta(seconds=30)))
        # still running elsewhere (lease live) and already finished: neither is touched
        session.add(ScheduledClaim(job_id="backup-neo4j", fire_time="2026-12-02T03:00:00+00:00", owner="alive",
                                   job_name="probe", args=[2], lease_until=now + timedelta(minutes=5)))
        session.add(ScheduledClaim(job_id="backup-milvus", fire_time="2026-12-02T04:00:00+00:00", owner="done",
                                   job_name="probe", args=[3], lease_until=now - timedelta(minutes=5),
                                   done_at=now - timedelta(minutes=6)))
    recorder = Recorder()
    registry = JobRegistry(None)
    registry.register("probe", recorder)
    scheduler = Scheduler(sqlite_store, registry, owner="next-leader")
    scheduler.start()
    try:
        assert recorder.event.wait(15)
        rerun = wait_for(lambda: [c for c in claims(sqlite_store) if c.job_id == "backup-prune" and c.done_at],
                         what="the re-run claim finished")[0]
        assert rerun.owner == "next-leader" and rerun.fire_time == "2026-12-02T05:30:00+00:00"
        by_job = {c.job_id: c for c in claims(sqlite_store)}
        # the lapsed lease list was read once at election, with all three rows in it: only one ran
        assert recorder.calls == [("backup-prune", [1])]
        assert by_job["backup-neo4j"].owner == "alive" and by_job["backup-neo4j"].done_at is None
        assert by_job["backup-milvus"].owner == "done"
    finally:
        scheduler.shutdown()


def old_job_state(job_id: str, func: str, trigger: Any, args: tuple[Any, ...]) -> bytes:
    """A row as APScheduler 3's SQLAlchemyJobStore wrote it (``Job.__getstate__``, pickled)."""
    return pickle.dumps({"version": 1, "id": job_id, "func": func, "trigger": trigger, "executor": "default",
                         "args": args, "kwargs": {}, "name": func.split(":")[1], "misfire_grace_time": 300,
                         "coalesce": True, "max_instances": 1,
                         "next_run_time": datetime.now(UTC) + timedelta(seconds=1)}, pickle.HIGHEST_PROTOCOL)


def test_reminders_in_the_old_apscheduler_job_store_survive_the_upgrade_under_their_job_name(
    sqlite_store: Store,
) -> None:
    table = SQLAlchemyJobStore(engine=sqlite_store.engine, tablename="apscheduler_jobs").jobs_t
    table.create(sqlite_store.engine, checkfirst=True)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=10)
    with sqlite_store.engine.begin() as connection:
        connection.execute(table.insert(), [
            {"id": "reminder-3", "next_run_time": time.time() + 1, "job_state": old_job_state(
                "reminder-3", "bot.jobs:send_reminder", IntervalTrigger(seconds=2, start_date=start), (3,))},
            {"id": "backup-prune", "next_run_time": time.time() + 60, "job_state": old_job_state(
                "backup-prune", "bot.backup_jobs:prune_backups", IntervalTrigger(hours=24), ())},
        ])
    recorder = Recorder()
    registry = JobRegistry(None)
    registry.register("reminder", recorder)
    scheduler = Scheduler(sqlite_store, registry, owner="upgraded")
    scheduler.start()
    try:
        assert recorder.event.wait(15)
        assert recorder.calls[0] == ("reminder-3", [3])
        with sqlite_store.session() as session:
            [row] = session.exec(select(ScheduledJob)).all()
        assert (row.job_id, row.name, row.args, row.interval_seconds, row.start_at) == (
            "reminder-3", "reminder", [3], 2.0, start)
        with sqlite_store.engine.connect() as connection:
            assert connection.execute(table.select()).all() == []   # moved, and the backup row dropped
    finally:
        scheduler.shutdown()


def test_an_open_incidents_reminder_in_the_old_job_store_keeps_posting_after_the_upgrade(
    workdir: Path, store_server: PgSingle, emulator: EmulatorServer,
) -> None:
    url = f"sqlite:///{workdir}/aegis.db"
    config = config_for(store_server, workdir)
    config.pop("storage")                  # reminders only
    bot = AegisProcess(workdir, config, url, emulator.api_url, name="upgrade")
    emulator.bot_url = bot.url
    bot.start()
    store = bot.store()

    def reminders() -> list[dict[str, Any]]:
        return [m for m in channel_by_id(emulator.state, "C0STAKE")["messages"]
                if "still open" in all_text(m) and m.get("thread_ts")]
    try:
        assert emulator.driver.slash("U0IC", "incident database_failure critical primary database is down"
                                     ).status_code == 200
        wait_for(reminders, timeout=30, what="a first reminder")
        bot.stop()
        # what the previous version left: the reminder as an APScheduler row with a module path
        with store.session() as session:
            [row] = session.exec(select(ScheduledJob)).all()
            session.delete(row)
        table = SQLAlchemyJobStore(engine=store.engine, tablename="apscheduler_jobs").jobs_t
        table.create(store.engine, checkfirst=True)
        incident_id = int(row.args[0])
        trigger = IntervalTrigger(seconds=row.interval_seconds or 0, start_date=row.start_at)
        with store.engine.begin() as connection:
            connection.execute(table.insert(), [{"id": row.job_id, "next_run_time": time.time(), "job_state":
                                                 old_job_state(row.job_id, "bot.jobs:send_reminder", trigger,
                                                               (incident_id,))}])
        before = len(reminders())
        bot.start()
        wait_for(lambda: len(reminders()) > before, timeout=30, what="a reminder after the upgrade")
        assert "moved to the job name reminder" in bot.log()
        with store.session() as session:
            assert [(r.job_id, r.name, r.args) for r in session.exec(select(ScheduledJob))] == [
                (row.job_id, "reminder", [incident_id])]
    finally:
        bot.stop()
        store.dispose()
