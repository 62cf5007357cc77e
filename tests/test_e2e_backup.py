"""End to end: ``/aegis backup run|list|verify`` through the running bot, the emulator as Slack, a real
PostgreSQL and real storage (a local directory and moto's S3 server)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from bot.config import Config
from bot.flows.backup import BackupDuty
from bot.slack import commands
from bot.slack.backup_desk import BackupDesk
from slack_emulator.server import EmulatorServer
from statemachines.models import BackupRecord
from statemachines.store import Store
from tests.harness.aegis_process import BOT_TOKEN, SIGNING_SECRET, AegisProcess, wait_for
from tests.harness.pgcluster import PgSingle
from tests.harness.slack_reading import all_text, channel_by_id
from tests.harness.storage_servers import MotoS3, aws_env, moto_s3, moto_s3_outage  # noqa: F401

KEY = base64.b64encode(bytes(range(32))).decode()
ROSTER = {
    "incident_commander": ["U0IC"], "database_lead": ["U0DB"], "infrastructure_lead": ["U0INFRA"],
    "application_lead": ["U0APP"], "security_lead": ["U0SEC"], "communication_manager": ["U0COMM"],
}


def make_config(workdir: Path, pg: PgSingle, s3: MotoS3, locale: str = "en") -> dict[str, Any]:
    return {
        "locale": locale,
        "slack": {"ops_channel": "C0OPS", "stakeholder_channel": "C0STAKE"},
        "roster": ROSTER,
        "components": {"postgres": {"primary": {"dsn": pg.primary.dsn()}}},
        "storage": [{"kind": "local", "path": str(workdir / "staging"), "name": "local"},
                    s3.target(s3.create_bucket())],
    }


@pytest.fixture
def database(pg_single: PgSingle) -> PgSingle:
    pg_single.primary.sql("CREATE TABLE t (id int primary key, v text)")
    pg_single.primary.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
    return pg_single


class Desk:
    """A backup channel in the emulator and a bot process serving it."""

    def __init__(self, workdir: Path, emulator: EmulatorServer, config: dict[str, Any],
                 monkeypatch: pytest.MonkeyPatch) -> None:
        workdir.chmod(0o755)
        monkeypatch.setenv("AEGIS_BACKUP_KEY", KEY)
        self.emulator = emulator
        self.bot = AegisProcess(workdir, config, f"sqlite:///{workdir}/aegis.db", emulator.api_url)
        emulator.bot_url = self.bot.url
        self.channel = emulator.state.create_channel("dr-backups", is_private=False)["id"]
        self.bot.start()
        self.store = self.bot.store()

    def slash(self, user: str, text: str) -> dict[str, Any]:
        started = time.monotonic()
        response = self.emulator.driver.slash(user, text, channel_id=self.channel)
        assert response.status_code == 200 and time.monotonic() - started < 3, response.text
        return response.json() if response.content.strip() else {}

    def posts(self, channel: str | None = None) -> list[str]:
        return [all_text(m) for m in channel_by_id(self.emulator.state, channel or self.channel)["messages"]]

    def post_with(self, needle: str, channel: str | None = None) -> str:
        return wait_for(lambda: [t for t in self.posts(channel) if needle in t], timeout=120,
                        what=f"a post with {needle!r}")[-1]

    def replies(self, user: str) -> str:
        return json.dumps(self.emulator.state.responses_for(user), ensure_ascii=False)

    def run(self, user: str = "U0DB", kind: str = "postgresql") -> str:
        """Start a backup and wait for its result post; returns the run id."""
        before = len(self.posts())
        ack = self.slash(user, f"backup run {kind}")
        assert ack.get("response_type") == "ephemeral" and "started" in ack["text"], ack
        post = wait_for(lambda: self.posts()[before:], timeout=120, what="the backup result")[0]
        return next(w.strip("`*") for w in post.split() if w.strip("`*").startswith("backup_"))

    def records(self, run_id: str) -> list[BackupRecord]:
        with self.store.session() as session:
            return list(session.exec(select(BackupRecord).where(BackupRecord.run_id == run_id)))

    def stop(self) -> None:
        self.bot.stop()
        self.store.dispose()


@pytest.fixture
def desk_factory(tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    made: list[Desk] = []

    def make(config: dict[str, Any]) -> Desk:
        made.append(Desk(tmp_path, emulator, config, monkeypatch))
        return made[-1]

    yield make
    for desk in made:
        desk.stop()


def test_backup_run_acks_at_once_posts_the_result_and_lists_it(
    tmp_path: Path, database: PgSingle, moto_s3: MotoS3, desk_factory: Any,  # noqa: F811
) -> None:
    desk = desk_factory(make_config(tmp_path, database, moto_s3))
    with desk.store.engine.connect() as connection:      # `aegis serve` registered the schedules at start
        jobs = {row[0] for row in connection.exec_driver_sql("SELECT job_id FROM scheduled_job")}
    assert {j for j in jobs if j.startswith("backup-")} == {"backup-postgres_full", "backup-postgres_incremental",
                                                            "backup-wal_switch", "backup-prune"}
    run_id = desk.run("U0DB", "postgresql")
    result = desk.post_with(run_id)
    assert "✅" in result and "postgres-base" in result and "s3" in result and "<@U0DB>" in result
    [record] = desk.records(run_id)
    assert record.status == "ok" and record.targets["s3"]["ok"] and record.targets["local"]["ok"]
    assert not [t for t in desk.posts("C0OPS") if run_id in t]         # a clean run does not alarm ops

    # any roster member may list; the reply is ephemeral to them
    assert desk.slash("U0APP", "backup list") == {}
    wait_for(lambda: run_id in desk.replies("U0APP"), what="the backup list")
    assert "pg_full" in desk.replies("U0APP")
    log = desk.bot.log() + json.dumps(desk.posts(), ensure_ascii=False)
    assert KEY not in log and BOT_TOKEN not in log and SIGNING_SECRET not in log


def test_every_remote_target_down_fails_keeps_local_and_tells_ops_with_the_previous_good(
    tmp_path: Path, database: PgSingle, moto_s3_outage: MotoS3, desk_factory: Any,  # noqa: F811
) -> None:
    desk = desk_factory(make_config(tmp_path, database, moto_s3_outage))
    good = desk.run("U0IC", "postgresql")
    moto_s3_outage.stop()
    failed = desk.run("U0INFRA", "postgresql")
    assert "❌" in desk.post_with(failed)
    [record] = desk.records(failed)
    assert record.status == "failed" and record.targets["local"]["ok"] and not record.targets["s3"]["ok"]
    assert failed in {p.parent.name for p in (tmp_path / "staging").rglob("*.aes")}, "the local copy is kept"
    alert = desk.post_with(failed, "C0OPS")
    assert "s3" in alert and "every remote target failed" in alert and good in alert
    assert "newest usable" in alert
    with desk.store.session() as session:
        newest_ok = session.exec(select(BackupRecord).where(BackupRecord.status == "ok")
                                 .order_by(col(BackupRecord.id).desc())).first()
    assert newest_ok is not None and newest_ok.run_id == good


def test_verify_names_the_backup_target_and_chunk_of_a_flipped_byte(
    tmp_path: Path, database: PgSingle, moto_s3: MotoS3, desk_factory: Any,  # noqa: F811
) -> None:
    desk = desk_factory(make_config(tmp_path, database, moto_s3))
    first = desk.run()
    second = desk.run()
    assert desk.slash("U0APP", f"backup verify {second}")["response_type"] == "ephemeral"
    assert "✅" in desk.post_with(f"`{second}` verified")
    # with one remote target the local copy stays (B6), and verify re-reads it first
    [stored] = [p for p in (tmp_path / "staging").rglob("*.aes") if p.parent.name == second]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    desk.slash("U0SEC", f"backup verify {second}")
    report = desk.post_with(f"`{second}` failed verification")
    assert "local" in report and "chunk" in report and first in report   # the previous good backup


def test_refusals_and_typos_get_a_clear_ephemeral_answer(
    tmp_path: Path, database: PgSingle, moto_s3: MotoS3, desk_factory: Any,  # noqa: F811
) -> None:
    desk = desk_factory(make_config(tmp_path, database, moto_s3, locale="ko"))
    refused = desk.slash("U0APP", "backup run postgresql")          # on the roster, but not a run role
    assert refused["response_type"] == "ephemeral" and "🚫" in refused["text"]
    assert "데이터베이스 리드" in refused["text"]
    stranger = desk.slash("U0OUT", "backup list")
    assert "명단" in stranger["text"]
    typo = desk.slash("U0DB", "backup run postgres")
    assert "`postgresql`" in typo["text"] and "Traceback" not in json.dumps(typo)
    assert "components.neo4j" in desk.slash("U0DB", "backup run neo4j")["text"]     # not configured
    missing = desk.slash("U0DB", "backup verify")
    assert "/aegis backup verify backup_" in missing["text"]
    desk.slash("U0DB", "backup verify backup_19990101_000000")
    wait_for(lambda: "backup_19990101_000000` 백업을 찾을 수 없습니다" in desk.replies("U0DB"), what="not found")
    with desk.store.session() as session:
        assert not list(session.exec(select(BackupRecord)))           # nothing was started


def test_a_second_run_while_one_is_running_is_refused_with_what_is_running(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    store.migrate()
    config = Config.model_validate({"roster": ROSTER, "components": {"postgres": {"primary": {"dsn": "host=/x"}}},
                                    "storage": [{"kind": "local", "path": str(tmp_path / "staging")}]})
    duty = BackupDuty(config, store, None)
    desk = BackupDesk(duty)
    assert duty.gate.try_enter("backup-postgres_full")               # a scheduled run holds the gate
    try:
        reply = desk.handle(commands.BackupRun("postgresql"), user="U0DB", channel="C1",
                            respond=lambda **_: None, later=lambda *_: None)
        assert reply is not None and "already running" in reply.text and "backup-postgres_full" in reply.text
    finally:
        duty.gate.leave()
        desk.shutdown()
        store.dispose()
