"""Backup schedules: the cron jobs the config asks for (in its time zone), stored by job name; a fire
claimed under its scheduled time; a scheduled job really taking a backup; and a second claim of
the same (job, fire time) running nothing."""

from __future__ import annotations

import base64
import threading
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from bot.config import Config, S3Storage
from bot.flows.backup import BackupDuty
from bot.jobs.claims import FireClaims
from bot.jobs.registry import JobContext, JobRegistry, default_registry
from bot.jobs.scheduler import Scheduler
from bot.slack.gateway import SlackGateway
from slack_emulator.server import EmulatorServer
from statemachines.models import BackupRecord, ScheduledClaim, ScheduledJob
from statemachines.store import Store
from tests.harness.aegis_process import BOT_TOKEN, wait_for
from tests.harness.pgcluster import PgSingle
from tests.harness.slack_reading import all_text, channel_by_id
from tests.harness.storage_servers import MotoS3, aws_env, moto_s3, moto_s3_outage  # noqa: F401

KEY = base64.b64encode(bytes(range(32))).decode()
SEOUL = zoneinfo.ZoneInfo("Asia/Seoul")


def config_for(**overrides: Any) -> Config:
    data: dict[str, Any] = {
        "components": {"postgres": {"primary": {"dsn": "host=/nonexistent port=1"}},
                       "neo4j": {"uri": "bolt://127.0.0.1:1"}},
        "storage": [{"kind": "local", "path": "/tmp/aegis-never-written", "name": "local"}],
        "backups": {"timezone": "Asia/Seoul", "schedules": {"neo4j": None}},
    }
    data.update(overrides)
    return Config.model_validate(data)


FIRED: list[tuple[str, int]] = []
FIRED_EVENT = threading.Event()


def record_fire(_context: Any, job_id: str, number: int) -> None:
    FIRED.append((job_id, number))
    FIRED_EVENT.set()


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[Scheduler]:
    db = Store(f"sqlite:///{tmp_path}/jobs.db")
    db.migrate()
    registry = JobRegistry(None)
    registry.register("probe", record_fire)
    sched = Scheduler(db, registry, owner="probe-owner")
    sched.start()
    try:
        yield sched
    finally:
        sched.shutdown()
        db.dispose()


def test_configured_cron_jobs_exist_with_next_fire_times_in_the_configured_zone(scheduler: Scheduler) -> None:
    ids = scheduler.reconcile_backups(config_for())
    # neo4j is disabled (null), milvus is not a configured component
    assert ids == ["backup-postgres_full", "backup-postgres_incremental", "backup-prune", "backup-wal_switch"]
    with scheduler.store.session() as session:      # stored by stable job name, no module path
        stored = {row.job_id: row.name for row in session.exec(select(ScheduledJob))}
    assert stored == {"backup-postgres_full": "backup.postgres_full",
                      "backup-postgres_incremental": "backup.postgres_incremental",
                      "backup-prune": "backup.prune", "backup-wal_switch": "backup.wal_switch"}
    fires = scheduler.next_fire_times()
    full = fires["backup-postgres_full"].astimezone(SEOUL)
    assert (full.weekday(), full.hour, full.minute) == (6, 2, 0)           # Sunday 02:00 Seoul time
    assert full - datetime.now(SEOUL) <= timedelta(days=7)
    daily = fires["backup-postgres_incremental"].astimezone(SEOUL)
    assert daily.weekday() != 6 and (daily.hour, daily.minute) == (2, 0)  # Mon-Sat 02:00
    prune = fires["backup-prune"].astimezone(SEOUL)
    assert (prune.hour, prune.minute) == (5, 30)
    wal = fires["backup-wal_switch"].astimezone(SEOUL)
    assert wal.minute % 15 == 0 and wal.second == 0 and wal - datetime.now(SEOUL) <= timedelta(minutes=15)

    # reconcile again with two schedules disabled and a new time: removed / replaced, nothing doubled
    changed = config_for(backups={"timezone": "UTC", "schedules": {"postgres_incremental": None,
                                                                    "wal_switch_minutes": None,
                                                                    "postgres_full": "15 1 * * sat"}})
    assert scheduler.reconcile_backups(changed) == ["backup-neo4j", "backup-postgres_full", "backup-prune"]
    full = scheduler.next_fire_times()["backup-postgres_full"].astimezone(UTC)
    assert (full.weekday(), full.hour, full.minute) == (5, 1, 15)
    assert sorted(j for j in scheduler.job_ids() if j.startswith("backup-")) == [
        "backup-neo4j", "backup-postgres_full", "backup-prune"]

    # no storage target: no backup jobs at all
    assert scheduler.reconcile_backups(config_for(storage=[])) == []
    assert not [j for j in scheduler.job_ids() if j.startswith("backup-")]
    assert not [j for j in scheduler.stored_ids() if j.startswith("backup-")]


def test_a_fire_is_claimed_under_its_scheduled_time_and_runs_the_job_by_name(scheduler: Scheduler) -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    with scheduler.store.session() as session:
        session.add(ScheduledJob(job_id="probe-7", name="probe", args=[7], interval_seconds=2, start_at=start))
    scheduler.sync()
    assert FIRED_EVENT.wait(15)

    def claims() -> list[ScheduledClaim]:
        with scheduler.store.session() as session:
            return [c for c in session.exec(select(ScheduledClaim)) if c.done_at is not None]
    [claim, *_] = wait_for(claims, what="a finished claim")
    assert FIRED[0] == ("probe-7", 7)
    assert (claim.job_id, claim.job_name, claim.args, claim.owner) == ("probe-7", "probe", [7], "probe-owner")
    fired_at = datetime.fromisoformat(claim.fire_time)
    assert (fired_at - start).total_seconds() % 2 == 0 and fired_at > start   # the trigger's time, not "now"


@pytest.fixture
def emulator_gateway(emulator: EmulatorServer) -> SlackGateway:
    return SlackGateway(BOT_TOKEN, emulator.api_url, attempts=1)


def backup_config(tmp_path: Path, pg: PgSingle, s3: MotoS3) -> Config:
    return Config.model_validate({
        "slack": {"ops_channel": "C0OPS"},
        "components": {"postgres": {"primary": {"dsn": pg.primary.dsn()}}},
        "storage": [{"kind": "local", "path": str(tmp_path / "staging"), "name": "local"},
                    s3.target(s3.create_bucket())],
    })


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("AEGIS_BACKUP_KEY", KEY)
    db = Store(f"sqlite:///{tmp_path}/aegis.db")
    db.migrate()
    yield db
    db.dispose()


def fire(store: Store, duty: BackupDuty, owner: str, name: str, job_id: str, fire_time: datetime) -> Any:
    """One scheduled fire as the leader runs it: claim (job, fire time), then the job by its name."""
    registry = default_registry(JobContext(backups=duty))
    ran, result = FireClaims(store, owner).run(job_id, fire_time, name, [], lambda: registry.run(name, job_id, []))
    return result if ran else None


def test_a_scheduled_fire_takes_a_backup_once_even_when_two_replicas_fire_it(
    tmp_path: Path, pg_single: PgSingle, moto_s3: MotoS3, store: Store,  # noqa: F811
    emulator_gateway: SlackGateway,
) -> None:
    config = backup_config(tmp_path, pg_single, moto_s3)
    fire_time = datetime(2026, 11, 29, 2, 0, tzinfo=SEOUL)       # a Sunday 02:00 slot
    duty = BackupDuty(config, store, emulator_gateway)
    run_id = fire(store, duty, "replica-a", "backup.postgres_full", "backup-postgres_full", fire_time)
    assert run_id and run_id.startswith("backup_")
    with store.session() as session:
        rows = list(session.exec(select(BackupRecord)))
        claims = list(session.exec(select(ScheduledClaim)))
    assert [(r.run_id, r.kind, r.status) for r in rows] == [(run_id, "pg_full", "ok")]
    assert [(c.job_id, c.job_name, c.owner) for c in claims] == [
        ("backup-postgres_full", "backup.postgres_full", "replica-a")]
    assert claims[0].fire_time == fire_time.astimezone(UTC).isoformat() and claims[0].done_at is not None

    # a second process fires the same (job, fire time) (a leader change): it loses the claim, runs nothing
    other = BackupDuty(config, store, emulator_gateway)
    assert fire(store, other, "replica-b", "backup.postgres_full", "backup-postgres_full", fire_time) is None
    with store.session() as session:
        assert len(list(session.exec(select(BackupRecord)))) == 1
    # the next slot is a new fire: replica b may take it
    assert fire(store, other, "replica-b", "backup.postgres_full", "backup-postgres_full",
                fire_time + timedelta(days=7))


def test_a_failed_scheduled_run_tells_the_ops_channel_and_names_the_previous_good_backup(
    tmp_path: Path, pg_single: PgSingle, moto_s3_outage: MotoS3, store: Store,  # noqa: F811
    emulator: EmulatorServer, emulator_gateway: SlackGateway,
) -> None:
    config = backup_config(tmp_path, pg_single, moto_s3_outage)
    duty = BackupDuty(config, store, emulator_gateway)
    fire_time = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    job = ("backup.postgres_incremental", "backup-postgres_incremental")
    good = fire(store, duty, "replica-a", *job, fire_time)
    moto_s3_outage.stop()
    failed = fire(store, duty, "replica-a", *job, fire_time + timedelta(days=1))
    with store.session() as session:
        assert session.exec(select(BackupRecord).where(BackupRecord.run_id == failed)).one().status == "failed"
    post = wait_for(lambda: [m for m in channel_by_id(emulator.state, "C0OPS")["messages"]
                             if failed in all_text(m)], what="the ops post")[-1]
    text = all_text(post)
    assert "s3" in text and "failed" in text and good in text and "backup-postgres_incremental" in text
    assert "local staging copy is kept" in text
    assert list((tmp_path / "staging").rglob("*.aes"))


def test_a_run_that_lost_one_remote_target_warns_the_ops_channel_naming_it(
    tmp_path: Path, pg_single: PgSingle, moto_s3: MotoS3, moto_s3_outage: MotoS3, store: Store,  # noqa: F811
    emulator: EmulatorServer, emulator_gateway: SlackGateway,
) -> None:
    config = backup_config(tmp_path, pg_single, moto_s3)
    config.storage.append(S3Storage.model_validate(moto_s3_outage.target(moto_s3_outage.create_bucket(), "s3-dr")))
    moto_s3_outage.stop()
    duty = BackupDuty(config, store, emulator_gateway)
    run_id = fire(store, duty, "replica-a", "backup.postgres_full", "backup-postgres_full",
                  datetime(2026, 12, 6, 2, 0, tzinfo=UTC))
    with store.session() as session:
        assert session.exec(select(BackupRecord).where(BackupRecord.run_id == run_id)).one().status == "ok"
    post = all_text(wait_for(lambda: [m for m in channel_by_id(emulator.state, "C0OPS")["messages"]
                                      if run_id in all_text(m)], what="the ops warning")[-1])
    assert "⚠️" in post and "s3-dr" in post and "backup-postgres_full" in post


def test_the_wal_switch_job_switches_once_per_fire_and_tells_ops_once_per_failure_streak(
    tmp_path: Path, pg_single: PgSingle, moto_s3: MotoS3, store: Store,  # noqa: F811
    emulator: EmulatorServer, emulator_gateway: SlackGateway,
) -> None:
    config = backup_config(tmp_path, pg_single, moto_s3)
    fire_time = datetime(2026, 12, 1, 9, 15, tzinfo=UTC)
    job = ("backup.wal_switch", "backup-wal_switch")
    duty = BackupDuty(config, store, emulator_gateway)
    pg_single.primary.sql("CREATE TABLE w (x int); INSERT INTO w VALUES (1)")
    lsn = fire(store, duty, "replica-a", *job, fire_time)
    assert lsn and "/" in lsn
    other = BackupDuty(config, store, emulator_gateway)
    assert fire(store, other, "replica-b", *job, fire_time) is None   # replica a had it

    pg_single.primary.stop()
    for n in (1, 2, 3):
        assert fire(store, other, "replica-b", *job, fire_time + timedelta(minutes=15 * n)) is None
    alerts = [all_text(m) for m in channel_by_id(emulator.state, "C0OPS")["messages"] if "WAL" in all_text(m)]
    assert len(alerts) == 1 and "backup-wal_switch" in alerts[0] and "archive_timeout" in alerts[0]


def test_the_prune_job_applies_retention_once_per_fire(
    tmp_path: Path, pg_single: PgSingle, moto_s3: MotoS3, store: Store,  # noqa: F811
    emulator_gateway: SlackGateway,
) -> None:
    config = backup_config(tmp_path, pg_single, moto_s3)
    duty = BackupDuty(config, store, emulator_gateway)
    fire_time = datetime(2026, 12, 2, 5, 30, tzinfo=UTC)
    full = ("backup.postgres_full", "backup-postgres_full")
    old = fire(store, duty, "replica-a", *full, fire_time - timedelta(days=2))
    new = fire(store, duty, "replica-a", *full, fire_time - timedelta(days=1))
    with store.session() as session:       # the first one is older than postgres_full_days (28)
        row = session.exec(select(BackupRecord).where(BackupRecord.run_id == old)).one()
        row.started_at = row.finished_at = datetime.now(UTC) - timedelta(days=40)
        session.add(row)
    report = fire(store, duty, "replica-a", "backup.prune", "backup-prune", fire_time)
    assert report is not None and not report.errors and [n.split("/")[0] for n in report.deleted] == [old]
    stored = {p.parent.name for p in (tmp_path / "staging").rglob("*.aes")}
    assert old not in stored and new in stored
    other = BackupDuty(config, store, emulator_gateway)
    assert fire(store, other, "replica-b", "backup.prune", "backup-prune", fire_time) is None
