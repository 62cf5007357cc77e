"""DR drills (D1, D2) against a real PostgreSQL 15 primary archiving WAL with ``aegis wal push`` to a local
target, backups taken by the real runner (tests/harness/cli_workspace.py's shared catalog).

- backup_restore_test restores every backup in the window and compares counts/checksums with the
  catalog; a byte flipped in a stored object fails that backup's test, marks it, and the clean-point
  choice skips it;
- database_failover_test promotes a throwaway standby and reports RTO/RPO with their basis;
- a drill SIGKILLed mid-run leaves scratch resources that the next start removes;
- production is untouched (table digest and pg_stat_database before/after);
- ``aegis drill run`` from the CLI and ``/aegis drill run`` from Slack post the result.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from statemachines.models import require_id
from tests.harness.cli_workspace import (
    SERVER_AEGIS,
    flip_byte,
    local,
    migrate_shared_catalog,
    table_digest,
    write_config,
)
from tests.harness.pgcluster import PgNode, PgSingle


@dataclass
class World:
    workdir: Path
    pg: PgSingle

    @property
    def primary(self) -> PgNode:
        return self.pg.primary

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.workdir}/aegis.db"


def _wait_archived(primary: PgNode, timeout: float = 60) -> str:
    last = primary.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    deadline = time.monotonic() + timeout
    while primary.sql("SELECT coalesce(last_archived_wal, '') >= %s FROM pg_stat_archiver", last)[0][0] is False:
        assert time.monotonic() < deadline, primary.log_tail()
        time.sleep(0.2)
    return str(last)


@pytest.fixture
def world(shared_dir: Path) -> Iterator[World]:
    assert SERVER_AEGIS.exists(), "run ./scripts/setup (it installs .tools/server-venv)"
    write_config(shared_dir, [local(shared_dir)])
    migrate_shared_catalog(shared_dir)
    archive_command = (f"AEGIS_CONFIG={shared_dir}/aegis.yaml AEGIS_DATABASE_URL=sqlite:///{shared_dir}/aegis.db "
                       f"{SERVER_AEGIS} wal push %p")
    pg = PgSingle.create(settings={"archive_command": archive_command, "archive_timeout": 0})
    try:
        write_config(shared_dir, [local(shared_dir)], dsn=pg.primary.dsn())
        _add_drills_config(shared_dir)
        pg.primary.sql("CREATE TABLE t (id int primary key, batch text, v text)")
        pg.primary.sql("INSERT INTO t SELECT g, 'A', md5(g::text) FROM generate_series(1, 500) g")
        yield World(shared_dir, pg)
    finally:
        pg.destroy()


def _add_drills_config(workdir: Path, **extra: object) -> None:
    import yaml

    path = workdir / "aegis.yaml"
    config = yaml.safe_load(path.read_text())
    (workdir / "scratch").mkdir(exist_ok=True)
    config["drills"] = {"scratch_dir": str(workdir / "scratch"), "report_dir": str(workdir / "reports"), **extra}
    path.write_text(yaml.safe_dump(config))


def _context(world: World, **settings: object):  # -> DrillContext
    from bot.backup_wiring import runner_from
    from bot.config import load_config
    from recovery.drills.context import DrillContext, DrillSettings
    from statemachines.store import Store

    config = load_config(world.workdir / "aegis.yaml")
    store = Store(world.db_url)
    defaults = {"scratch_dir": world.workdir / "scratch", "report_dir": world.workdir / "reports"}
    return DrillContext(store, runner_from(config, store), DrillSettings(**{**defaults, **settings}))  # type: ignore[arg-type]


def _backup(world: World) -> str:
    from bot.backup_wiring import runner_from
    from bot.config import load_config
    from statemachines.store import Store

    store = Store(world.db_url)
    report = runner_from(load_config(world.workdir / "aegis.yaml"), store).run("postgresql")
    assert report.ok, report.errors + [r.reason for r in report.records]
    return report.run_id


def _production_fingerprint(primary: PgNode) -> tuple[tuple[int, str], list[tuple[object, ...]]]:
    """The data (row count + md5) and the cluster's identity/timeline: a drill must change neither."""
    return table_digest(primary.dsn()), primary.sql(
        "SELECT system_identifier, timeline_id FROM pg_control_system(), pg_control_checkpoint()")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _assert_scratch_gone(ctx, run_id: int) -> None:  # noqa: ANN001
    from recovery.drills import runs

    run = runs.get(ctx.store, run_id)
    assert run is not None and run.scratch, "the drill registered no scratch resource"
    for resource in run.scratch:
        assert resource["state"] == "removed", resource
        if resource["kind"] == "postgres":
            assert not _port_open(int(resource["port"])), resource
            assert not Path(resource["data_dir"]).exists(), resource
        if resource["kind"] == "dir":
            assert not Path(resource["path"]).exists(), resource
    assert run.cleaned_at is not None


@pytest.mark.timeout(600)
def test_backup_restore_test_validates_every_backup_and_a_corrupted_one_is_marked_and_never_chosen(
        world: World) -> None:
    from recovery.backup.catalog import POSTGRES_BASE_KINDS, newest_good, restore_test_queue
    from recovery.drills.drills import run_drill

    first = _backup(world)
    world.primary.sql("INSERT INTO t SELECT g, 'B', md5(g::text) FROM generate_series(501, 900) g")
    second = _backup(world)
    ctx = _context(world)
    before = _production_fingerprint(world.primary)

    outcome = run_drill(ctx, "backup_restore_test", "cli")
    assert outcome.status == "passed", (outcome.error, outcome.steps)
    restores = {r["run_id"]: r for r in outcome.figures["restores"]}
    assert set(restores) == {first, second}
    assert all(r["ok"] for r in restores.values()), restores
    # the counts came from the catalog, recorded at backup time: 500 rows in the first, 900 in the second
    assert any("public.t: 500 rows and checksum match" in d for d in restores[first]["details"]), restores[first]
    assert any("public.t: 900 rows and checksum match" in d for d in restores[second]["details"]), restores[second]
    assert outcome.figures["tested"] == 2 and outcome.figures["failed"] == 0
    assert outcome.figures["rto"]["value"] > 0 and "slowest" in outcome.figures["rto"]["basis"]
    assert outcome.figures["rpo"]["value"] is None and "unknown" in outcome.figures["rpo"]["basis"]
    assert {s.objective: s.passed for s in outcome.scores}["rto"] is True
    assert {s.objective: s.passed for s in outcome.scores}["rpo"] is None
    _assert_scratch_gone(ctx, outcome.run_id)
    assert Path(str(outcome.report_path)).is_file()

    # the second backup's stored object damaged on its only target
    [damaged] = [r for r in restore_test_queue(ctx.store) if r.run_id == second]
    flip_byte(world.workdir / "staging" / damaged.object_name, 5000)
    outcome = run_drill(ctx, "backup_restore_test", "cli")
    assert outcome.status == "failed"
    assert [r.run_id for r in outcome.failed_backups] == [second]
    rows = {r.run_id: r for r in restore_test_queue(ctx.store)}
    assert rows[second].restore_test_ok is False and "refusing to restore" in rows[second].restore_test_reason
    assert rows[first].restore_test_ok is True and rows[first].restore_tested_at is not None
    clean = newest_good(ctx.store, POSTGRES_BASE_KINDS, restore_test_ok=True)
    assert clean is not None and clean.run_id == first
    newest = newest_good(ctx.store, POSTGRES_BASE_KINDS)
    assert newest is not None and newest.run_id == second     # without the parameter: restore tests ignored
    _assert_scratch_gone(ctx, outcome.run_id)
    assert _production_fingerprint(world.primary) == before


@pytest.mark.timeout(300)
def test_a_row_changed_in_the_restored_scratch_copy_fails_the_v4_contents_check(world: World) -> None:
    """The restore test's own pieces: restore into scratch, change one value there, then the check."""
    import psycopg

    from recovery.backup.catalog import restore_test_queue
    from recovery.drills import runs
    from recovery.drills.contents import RESTORE_TEST_WORKERS, compare, recorded_formats, snapshot
    from recovery.drills.restores import restore_postgres_copy
    from recovery.drills.scratch import Scratch, clean_run

    _backup(world)
    ctx = _context(world)
    [record] = restore_test_queue(ctx.store)
    contents = record.contents or {}
    assert recorded_formats(contents) == {"postgres": {"public.t": "v4"}}   # what a new backup records
    run_id = require_id(runs.start(ctx.store, "backup_restore_test", "cli"))
    scratch = Scratch.prepare(ctx.store, run_id, ctx.settings.scratch_dir, ctx.droppers)
    try:
        cluster, _, _index = restore_postgres_copy(ctx, scratch, record, replay_wal=False)

        def check() -> tuple[bool | None, list[str]]:
            result = compare(contents, snapshot(cluster.dsn, parallel_workers=RESTORE_TEST_WORKERS,
                                                formats=recorded_formats(contents)))
            return result.ok, [f"{t.table}: {t.detail}" for t in result.tables]

        assert check() == (True, ["public.t: 500 rows and checksum match"])
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute("UPDATE t SET v = upper(v) WHERE id = 250")   # one row, the count unchanged
        assert check() == (False, ["public.t: 500 rows but the checksum differs from the recorded one"])
    finally:
        fresh = runs.get(ctx.store, run_id)
        assert fresh is not None
        assert clean_run(ctx.store, fresh, ctx.droppers) == []


@pytest.mark.timeout(300)
def test_a_restore_test_copy_is_stopped_at_once_and_stays_listed_until_its_deletion_is_joined(
        world: World) -> None:
    """The removal overlapping the drill's bookkeeping: the server is gone when ``remove_postgres_soon``
    returns, the row still lists the copy until ``finish_removals``, and a drill that died in between
    (its row as it was) is swept like any other."""
    import os

    from recovery.backup.catalog import restore_test_queue
    from recovery.drills import runs
    from recovery.drills.restores import restore_postgres_copy
    from recovery.drills.scratch import Scratch, clean_run

    _backup(world)
    ctx = _context(world)
    [record] = restore_test_queue(ctx.store)
    run_id = require_id(runs.start(ctx.store, "backup_restore_test", "cli"))
    scratch = Scratch.prepare(ctx.store, run_id, ctx.settings.scratch_dir, ctx.droppers)
    first, _, one = restore_postgres_copy(ctx, scratch, record, replay_wal=False)
    second, _, two = restore_postgres_copy(ctx, scratch, record, replay_wal=False)
    pid = int((second.data_dir / "postmaster.pid").read_text().split()[0])
    scratch.remove_postgres_soon(one)
    scratch.remove_postgres_soon(two)
    assert not _port_open(first.port) and not _port_open(second.port)
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    listed = runs.get(ctx.store, run_id)
    assert listed is not None and [r["state"] for r in listed.scratch] == ["registered", "created", "created"]
    assert scratch.finish_removals() == []
    assert not first.data_dir.exists() and not second.data_dir.exists()
    fresh = runs.get(ctx.store, run_id)
    assert fresh is not None and [r["state"] for r in fresh.scratch] == ["registered", "removed", "removed"]
    # a drill killed before the join: its row still lists the copy; the sweep's clean_run removes it
    third, _, three = restore_postgres_copy(ctx, scratch, record, replay_wal=False)
    scratch.remove_postgres_soon(three)
    killed = runs.get(ctx.store, run_id)
    assert killed is not None and killed.scratch[three]["state"] == "created"
    scratch.finish_removals()   # (the thread of the dead process, not left running by the test)
    os.makedirs(third.data_dir / "base")   # what the deletion had not reached yet when the process died
    assert clean_run(ctx.store, killed, ctx.droppers) == []
    _assert_scratch_gone(ctx, run_id)


def test_stop_immediately_never_signals_a_process_a_stale_pid_file_names(tmp_path: Path) -> None:
    """A scratch dir whose postmaster.pid names a live process that is not its postmaster (the number
    reused after a crash): nothing is signalled (pg_ctl would send it SIGQUIT)."""
    import subprocess

    from recovery.backup.restore.postgres import RestoredCluster
    from recovery.backup.sources.postgres import pg_bin_dir
    from recovery.drills.scratch import stop_immediately

    data_dir = tmp_path / "pg-1"
    data_dir.mkdir()
    other = subprocess.Popen(["sleep", "30"], cwd=tmp_path)
    try:
        (data_dir / "postmaster.pid").write_text(f"{other.pid}\n{data_dir}\n")
        stop_immediately(RestoredCluster(data_dir, 1, tmp_path / "sock", tmp_path / "log", pg_bin_dir(None)))
        assert other.poll() is None, "the unrelated process was signalled"
    finally:
        other.kill()
        other.wait()


@pytest.mark.timeout(600)
def test_backup_restore_test_stops_starting_restores_when_its_budget_is_spent_least_recently_tested_first(
        world: World) -> None:
    from recovery.drills.drills import run_drill

    first = _backup(world)
    second = _backup(world)
    ctx = _context(world, restore_budget_seconds=0.001)   # spent by the first restore
    one = run_drill(ctx, "backup_restore_test", "schedule")
    assert [r["run_id"] for r in one.figures["restores"]] == [first]
    assert one.figures["not_reached"] == 1
    two = run_drill(ctx, "backup_restore_test", "schedule")
    assert [r["run_id"] for r in two.figures["restores"]] == [second]   # the never-tested one comes first
    three = run_drill(ctx, "backup_restore_test", "schedule")
    assert [r["run_id"] for r in three.figures["restores"]] == [first]  # then the least recently tested


@pytest.mark.timeout(600)
def test_database_failover_test_promotes_a_throwaway_standby_and_measures_rto_and_rpo(world: World) -> None:
    from recovery.drills.drills import run_drill

    _backup(world)
    world.primary.sql("INSERT INTO t SELECT g, 'C', md5(g::text) FROM generate_series(501, 700) g")
    segment = _wait_archived(world.primary)
    ctx = _context(world)
    before = _production_fingerprint(world.primary)

    outcome = run_drill(ctx, "database_failover_test", "cli")
    assert outcome.status == "passed", (outcome.error, outcome.steps)
    assert outcome.figures["wal_files"] >= 1
    assert outcome.figures["last_replayed_xact"] is not None
    assert segment in str(outcome.figures["newest_archived_segment"])
    rto, rpo = outcome.figures["rto"], outcome.figures["rpo"]
    assert 0 < rto["value"] < 300 and "write verified on the promoted standby" in rto["basis"]
    assert rpo["value"] is not None and 0 <= rpo["value"] < 60, rpo
    assert "pg_last_xact_replay_timestamp" in rpo["basis"] and segment in rpo["basis"]
    scores = {s.objective: s for s in outcome.scores}
    assert scores["rto"].passed and scores["rpo"].passed and scores["database_failure_rpo"].target == 300
    assert [s["name"] for s in outcome.steps][:2] == ["prepare scratch environment",
                                                      f"standby from {outcome.figures['base_backup']} + archived WAL"]
    _assert_scratch_gone(ctx, outcome.run_id)
    assert _production_fingerprint(world.primary) == before


# --- the CLI, a crash, the next start, Slack ------------------------------------------------------

ROSTER = {"incident_commander": ["U0IC"], "database_lead": ["U0DB"], "infrastructure_lead": ["U0INFRA"],
          "application_lead": ["U0APP"]}


def _slack_config(world: World, **extra: object) -> None:
    import yaml

    path = world.workdir / "aegis.yaml"
    config = yaml.safe_load(path.read_text())
    config.update({"slack": {"ops_channel": "C0OPS", "stakeholder_channel": "C0STAKE"}, "roster": ROSTER,
                   "monitoring": {"enabled": False}, **extra})
    path.write_text(yaml.safe_dump(config))


def _cli_env(world: World, emulator_api_url: str | None = None) -> dict[str, str]:
    import os

    from tests.harness.aegis_process import BOT_TOKEN

    env = {**os.environ, "AEGIS_CONFIG": str(world.workdir / "aegis.yaml"), "AEGIS_DATABASE_URL": world.db_url,
           "PYTHONUNBUFFERED": "1"}
    env.pop("AEGIS_BACKUP_KEY", None)
    if emulator_api_url:
        env.update(SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_API_URL=emulator_api_url)
    return env


def _ops_posts(emulator) -> list[str]:  # noqa: ANN001
    from tests.harness.slack_reading import all_text, channel_by_id

    return [all_text(m) for m in channel_by_id(emulator.state, "C0OPS")["messages"]]


@pytest.mark.timeout(600)
def test_aegis_drill_run_prints_progress_posts_the_result_and_exits_0_only_when_it_passed(
        world: World, emulator) -> None:  # noqa: ANN001
    import subprocess
    import sys

    from tests.harness.aegis_process import wait_for

    _backup(world)
    world.primary.sql("INSERT INTO t SELECT g, 'D', md5(g::text) FROM generate_series(501, 600) g")
    _wait_archived(world.primary)
    _slack_config(world)
    env = _cli_env(world, emulator.api_url)
    passed = subprocess.run([sys.executable, "-m", "bot.cli", "drill", "run", "database_failover_test"],
                            cwd=world.workdir, env=env, capture_output=True, text=True, timeout=300)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    out = passed.stdout
    assert "… standby from" in out and "ok promote and accept a write" in out and "PASSED" in out, out
    assert "rpo:" in out and "pg_last_xact_replay_timestamp" in out
    post = wait_for(lambda: [p for p in _ops_posts(emulator) if "database_failover_test" in p], what="the result")[-1]
    assert "passed" in post and "RTO (O1)" in post and "Report:" in post and ".json" in post, post

    # a drill that fails (a service's drill instance does not answer) exits 1 and says so in ops
    import yaml

    config = yaml.safe_load((world.workdir / "aegis.yaml").read_text())
    config["services"] = [{"name": "user-authentication", "tier": 1, "drill_url": "tcp://127.0.0.1:9"}]
    (world.workdir / "aegis.yaml").write_text(yaml.safe_dump(config))
    failed = subprocess.run([sys.executable, "-m", "bot.cli", "drill", "run", "full_system_recovery_test"],
                            cwd=world.workdir, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAILED service user-authentication (tier 1)" in failed.stdout, failed.stdout
    post = wait_for(lambda: [p for p in _ops_posts(emulator) if "full_system_recovery_test" in p],
                    what="the failed result")[-1]
    assert "FAILED" in post and "user-authentication" in post, post


@pytest.mark.timeout(600)
def test_a_drill_killed_mid_run_leaves_scratch_that_the_next_start_removes_then_slack_runs_one(
        world: World, emulator) -> None:  # noqa: ANN001
    import signal
    import subprocess
    import sys

    from recovery.drills import runs
    from statemachines.store import Store
    from tests.harness.aegis_process import AegisProcess, wait_for

    _backup(world)
    _wait_archived(world.primary)
    _slack_config(world)
    before = _production_fingerprint(world.primary)
    # each step is held this long after it ends (the prepare step too), so the kill below lands while the
    # throwaway standby runs: ample for a poll, short enough not to wait on the prepare step's hold
    env = {**_cli_env(world), "AEGIS_TEST_DRILL_STEP_DELAY": "10"}
    child = subprocess.Popen([sys.executable, "-m", "bot.cli", "drill", "run", "database_failover_test"],
                             cwd=world.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store = Store(world.db_url)
    try:
        def restored() -> list[dict[str, object]]:
            [run] = runs.recent(store, 1) or [None]
            return [r for r in (run.scratch if run else []) if r["kind"] == "postgres" and r["state"] == "created"]

        [resource] = wait_for(restored, timeout=240, what="the throwaway standby running")
        port, data_dir = int(str(resource["port"])), Path(str(resource["data_dir"]))
        assert _port_open(port) and data_dir.is_dir()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert _port_open(port) and data_dir.is_dir(), "SIGKILL left the scratch server behind (what is tested)"
    [run] = runs.recent(store, 1)
    assert run.status == "running"

    # the next start of the bot finds the dead drill by its row and removes what it registered
    import yaml

    config = yaml.safe_load((world.workdir / "aegis.yaml").read_text())
    bot = AegisProcess(world.workdir, config, world.db_url, emulator.api_url, name="serve")
    bot.env.pop("AEGIS_BACKUP_KEY", None)   # the key is in the config's key file
    emulator.bot_url = bot.url
    bot.start()
    try:
        wait_for(lambda: (runs.get(store, require_id(run)) or run).cleaned_at, timeout=60, what="the sweep at start")
        swept = runs.get(store, require_id(run))
        assert swept is not None and swept.status == "interrupted"
        assert not _port_open(port) and not data_dir.exists()
        assert not Path(str(swept.scratch[0]["path"])).exists()
        assert all(r["state"] == "removed" for r in swept.scratch)

        # /aegis drill run from Slack: roster roles only; the ack at once, the result in ops
        channel = emulator.state.create_channel("dr-drills", is_private=False)["id"]
        refused = emulator.driver.slash("U0APP", "drill run backup_restore_test", channel_id=channel).json()
        assert refused["response_type"] == "ephemeral" and "may start a drill" in refused["text"], refused
        started = time.monotonic()
        ack = emulator.driver.slash("U0DB", "drill run backup_restore_test", channel_id=channel)
        assert ack.status_code == 200 and time.monotonic() - started < 3
        assert "started" in ack.json()["text"], ack.text
        post = wait_for(lambda: [p for p in _ops_posts(emulator) if "backup_restore_test" in p], timeout=240,
                        what="the drill's result in ops")[-1]
        assert "passed" in post and "<@U0DB>" in post and "RTO (O1)" in post and "Report:" in post, post
        [latest] = runs.recent(store, 1)
        assert latest.trigger == "slack" and latest.requested_by == "U0DB" and latest.status == "passed"
        assert latest.report_path and Path(latest.report_path).is_file()
        with store.engine.connect() as connection:
            jobs = {row[0]: row[1] for row in connection.exec_driver_sql("SELECT job_id, name FROM scheduled_job")}
        assert jobs["drill-database_failover_test"] == "drill.database_failover_test"
        assert jobs["drill-restore_rotation"] == "drill.restore_rotation"
    finally:
        bot.stop()
        store.dispose()
    assert _production_fingerprint(world.primary) == before
