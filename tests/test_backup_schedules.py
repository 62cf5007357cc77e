"""Backup schedules: the cron jobs the config asks for (in its time zone), the fire time APScheduler
hands to a job, a scheduled job really taking a backup, and a second replica's fire of the same
(job, fire time) doing nothing."""

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

from bot import backup_jobs
from bot.backup_jobs import BackupDuty
from bot.config import Config, S3Storage
from bot.emulator.server import EmulatorServer
from bot.scheduler import Scheduler
from bot.slack_gateway import SlackGateway
from statemachines.models import BackupRecord, ScheduledClaim
from statemachines.store import Store
from tests.aegis_process import BOT_TOKEN, wait_for
from tests.pgcluster import PgSingle
from tests.slack_reading import all_text, channel_by_id
from tests.storage_servers import MotoS3, aws_env, moto_s3, moto_s3_outage  # noqa: F401

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


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[Scheduler]:
    sched = Scheduler(f"sqlite:///{tmp_path}/jobs.db", 30)
    sched.start()
    try:
        yield sched
    finally:
        sched.shutdown()


def test_configured_cron_jobs_exist_with_next_fire_times_in_the_configured_zone(scheduler: Scheduler) -> None:
    ids = scheduler.reconcile_backups(config_for())
    # neo4j is disabled (null), milvus is not a configured component
    assert ids == ["backup-postgres_full", "backup-postgres_incremental", "backup-prune", "backup-wal_switch"]
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


FIRED: list[datetime | None] = []
FIRED_EVENT = threading.Event()


def record_fire(job_id: str, fire_time: datetime | None = None) -> None:
    FIRED.append(fire_time)
    FIRED_EVENT.set()


def test_the_executor_hands_the_scheduled_fire_time_to_the_job(scheduler: Scheduler) -> None:
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    scheduler._scheduler.add_job("tests.test_backup_schedules:record_fire", "date", run_date=when,
                                 kwargs={"job_id": "probe", "fire_time": None}, id="probe")
    assert FIRED_EVENT.wait(15)
    assert FIRED == [when]
    # let the scheduler drop the spent date job before the fixture shuts it down
    wait_for(lambda: "probe" not in scheduler.job_ids(), timeout=10, what="the spent job removed")


@pytest.fixture
def emulator_gateway(emulator: EmulatorServer) -> SlackGateway:
    return SlackGateway(BOT_TOKEN, emulator.api_url, attempts=1)


def backup_config(tmp_path: Path, pg: PgSingle, s3: MotoS3) -> Config:
    return Config.model_validate({
        "slack": {"ops_channel": "C0OPS"},
        "components": {"postgres": {"primary": {"dsn": pg.primary.dsn()}}},
        "storage": [{"kind": "local", "path": str(tmp_path / "staging"), "name": "local"},
                    {"kind": "s3", "bucket": s3.create_bucket(), "endpoint_url": s3.endpoint_url, "name": "s3"}],
    })


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("AEGIS_BACKUP_KEY", KEY)
    db = Store(f"sqlite:///{tmp_path}/aegis.db")
    db.migrate()
    yield db
    backup_jobs.context = None
    db.dispose()


def test_a_scheduled_fire_takes_a_backup_once_even_when_two_replicas_fire_it(
    tmp_path: Path, pg_single: PgSingle, moto_s3: MotoS3, store: Store,  # noqa: F811
    emulator_gateway: SlackGateway,
) -> None:
    config = backup_config(tmp_path, pg_single, moto_s3)
    fire = datetime(2026, 11, 29, 2, 0, tzinfo=SEOUL)       # a Sunday 02:00 slot
    backup_jobs.context = BackupDuty(config, store, emulator_gateway, owner="replica-a")
    run_id = backup_jobs.run_backup(job_id="backup-postgres_full", kind="postgresql", fire_time=fire)
    assert run_id and run_id.startswith("backup_")
    with store.session() as session:
        rows = list(session.exec(select(BackupRecord)))
        claims = list(session.exec(select(ScheduledClaim)))
    assert [(r.run_id, r.kind, r.status) for r in rows] == [(run_id, "pg_full", "ok")]
    assert [(c.job_id, c.owner) for c in claims] == [("backup-postgres_full", "replica-a")]
    assert claims[0].fire_time == fire.astimezone(UTC).isoformat()

    # the second replica fires the same (job, fire time): it loses the claim and runs nothing
    backup_jobs.context = BackupDuty(config, store, emulator_gateway, owner="replica-b")
    assert backup_jobs.run_backup(job_id="backup-postgres_full", kind="postgresql", fire_time=fire) is None
    with store.session() as session:
        assert len(list(session.exec(select(BackupRecord)))) == 1
    # the next slot is a new fire: replica b may take it
    assert backup_jobs.run_backup(job_id="backup-postgres_full", kind="postgresql",
                                  fire_time=fire + timedelta(days=7))


def test_a_failed_scheduled_run_tells_the_ops_channel_and_names_the_previous_good_backup(
    tmp_path: Path, pg_single: PgSingle, moto_s3_outage: MotoS3, store: Store,  # noqa: F811
    emulator: EmulatorServer, emulator_gateway: SlackGateway,
) -> None:
    config = backup_config(tmp_path, pg_single, moto_s3_outage)
    backup_jobs.context = BackupDuty(config, store, emulator_gateway, owner="replica-a")
    fire = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    good = backup_jobs.run_backup(job_id="backup-postgres_incremental", kind="postgresql", incremental=True,
                                  fire_time=fire)
    moto_s3_outage.stop()
    failed = backup_jobs.run_backup(job_id="backup-postgres_incremental", kind="postgresql", incremental=True,
                                    fire_time=fire + timedelta(days=1))
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
    config.storage.append(S3Storage(kind="s3", bucket=moto_s3_outage.create_bucket(),
                                    endpoint_url=moto_s3_outage.endpoint_url, name="s3-dr"))
    moto_s3_outage.stop()
    backup_jobs.context = BackupDuty(config, store, emulator_gateway, owner="replica-a")
    run_id = backup_jobs.run_backup(job_id="backup-postgres_full", kind="postgresql",
                                    fire_time=datetime(2026, 12, 6, 2, 0, tzinfo=UTC))
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
    fire = datetime(2026, 12, 1, 9, 15, tzinfo=UTC)
    backup_jobs.context = BackupDuty(config, store, emulator_gateway, owner="replica-a")
    pg_single.primary.sql("CREATE TABLE w (x int); INSERT INTO w VALUES (1)")
    lsn = backup_jobs.switch_wal(job_id="backup-wal_switch", fire_time=fire)
    assert lsn and "/" in lsn
    backup_jobs.context = BackupDuty(config, store, emulator_gateway, owner="replica-b")
    assert backup_jobs.switch_wal(job_id="backup-wal_switch", fire_time=fire) is None   # replica a had it

    pg_single.primary.stop()
    for n in (1, 2, 3):
        assert backup_jobs.switch_wal(job_id="backup-wal_switch", fire_time=fire + timedelta(minutes=15 * n)) is None
    alerts = [all_text(m) for m in channel_by_id(emulator.state, "C0OPS")["messages"] if "WAL" in all_text(m)]
    assert len(alerts) == 1 and "backup-wal_switch" in alerts[0] and "archive_timeout" in alerts[0]


def test_the_prune_job_applies_retention_once_per_fire(
    tmp_path: Path, pg_single: PgSingle, moto_s3: MotoS3, store: Store,  # noqa: F811
    emulator_gateway: SlackGateway,
) -> None:
    config = backup_config(tmp_path, pg_single, moto_s3)
    backup_jobs.context = BackupDuty(config, store, emulator_gateway, owner="replica-a")
    fire = datetime(2026, 12, 2, 5, 30, tzinfo=UTC)
    old = backup_jobs.run_backup(job_id="backup-postgres_full", kind="postgresql", fire_time=fire - timedelta(days=2))
    new = backup_jobs.run_backup(job_id="backup-postgres_full", kind="postgresql", fire_time=fire - timedelta(days=1))
    with store.session() as session:       # the first one is older than postgres_full_days (28)
        row = session.exec(select(BackupRecord).where(BackupRecord.run_id == old)).one()
        row.started_at = row.finished_at = datetime.now(UTC) - timedelta(days=40)
        session.add(row)
    report = backup_jobs.prune_backups(job_id="backup-prune", fire_time=fire)
    assert report is not None and not report.errors and [n.split("/")[0] for n in report.deleted] == [old]
    stored = {p.parent.name for p in (tmp_path / "staging").rglob("*.aes")}
    assert old not in stored and new in stored
    backup_jobs.context = BackupDuty(config, store, emulator_gateway, owner="replica-b")
    assert backup_jobs.prune_backups(job_id="backup-prune", fire_time=fire) is None
