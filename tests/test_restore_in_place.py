"""In-place PostgreSQL restore with rollback (issue 9, C3/C4), on a real PostgreSQL 15 primary.

The primary archives WAL with ``aegis wal push`` (the server-side install, as in production) to a
local target; base backups are taken by the real backup runner; the action is built by
``bot.wiring.build_action`` from a config naming the primary's ``control`` (pg_ctl, or stop/start
hooks that are real commands recording their calls and running pg_ctl themselves).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from statemachines.store import Store
from tests.harness.archiving_primary import archive_all, archiving_primary
from tests.harness.cli_workspace import flip_byte, table_digest
from tests.harness.engine_step import through_the_engine
from tests.harness.pgcluster import PG_BIN, PgNode, PgSingle

pytestmark = pytest.mark.timeout(300)


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

    def config(self, integrity: list[dict[str, Any]] | None = None, **control: Any) -> Any:  # -> Config
        from bot.config import load_config

        path = self.workdir / "aegis.yaml"
        data = yaml.safe_load(path.read_text())
        data["components"]["postgres"]["primary"]["control"] = {
            "data_dir": str(self.primary.data_dir), "pg_bin": str(PG_BIN), **control}
        data["components"]["postgres"]["integrity_checks"] = integrity or []
        path.write_text(yaml.safe_dump(data))
        return load_config(path)

    def action(self, backup_id: str, target_time: datetime | None = None, incident: str = "INC-7",
               integrity: list[dict[str, Any]] | None = None, **control: Any) -> Any:  # -> PostgresRestoreInPlace
        from bot.wiring import build_action
        from statemachines.models import PlanStep
        from statemachines.store import Store

        config = self.config(integrity, **control)
        params = {"node": "primary", "backup_id": backup_id, "backup_time": None,
                  "target_time": target_time.isoformat() if target_time else None,
                  "data_dir": str(self.primary.data_dir), "control": "hooks" if "stop" in control else "pg_ctl"}
        step = PlanStep(id=3, incident_id=7, revision=1, position=1, title="restore", action="postgres_restore",
                        params=params)
        return build_action(config, step, {"incident": incident, "step": "3"}, store=Store(self.db_url))

    def backup(self) -> str:
        from bot.backup_wiring import runner_from
        from bot.config import load_config
        from statemachines.store import Store

        report = runner_from(load_config(self.workdir / "aegis.yaml"), Store(self.db_url)).run("postgresql")
        assert report.ok, report.errors + [r.reason for r in report.records]
        return report.run_id

    def archive_all(self) -> str:
        return archive_all(self.primary)

    def pid(self) -> int:
        return int((self.primary.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])

    def siblings(self, mark: str) -> list[Path]:
        return sorted(p for p in self.primary.data_dir.parent.iterdir() if mark in p.name)

    def rows(self, where: str = "true") -> tuple[int, str]:
        return table_digest(self.primary.dsn(), where)


@pytest.fixture(scope="module")
def server() -> Iterator[World]:
    """One archiving primary and catalog for the module (initdb and the migration were most of each
    test's setup). Every test takes its own backup and restores from it, so what an earlier test left
    in the archive and the catalog (older backups, WAL of older timelines) is never restored again."""
    workdir = Path(tempfile.mkdtemp(prefix="aegis-in-place-", dir="/tmp"))
    workdir.chmod(0o777)   # the archive_command (as postgres) writes the catalog here
    pg = archiving_primary(workdir)
    try:
        pg.primary.sql("CREATE TABLE t (id int primary key, batch text, v text)")
        yield World(workdir, pg)
    finally:
        pg.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def world(server: World) -> World:
    """The module's primary, running, with t holding batch A only and nothing of an earlier restore
    beside its data directory (aside / failed directories, the journal, the staged WAL, logs)."""
    data_dir = server.primary.data_dir
    for leftover in data_dir.parent.iterdir():
        if leftover.name.startswith(data_dir.name + ".aegis-"):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
    for name in ("pg_hook.py", "hook-calls.txt", "hook-calls.txt.fail-start"):
        (server.workdir / name).unlink(missing_ok=True)
    if not server.primary.is_running():
        server.primary.start()
    server.primary.sql("TRUNCATE t")
    server.primary.sql("INSERT INTO t SELECT g, 'A', md5(g::text) FROM generate_series(1, 500) g")
    return server


def _insert(world: World, batch: str, first: int, last: int) -> None:
    world.primary.sql("INSERT INTO t SELECT g, %s, md5(g::text) FROM generate_series(%s::int, %s::int) g",
                      batch, first, last)


def _run(action: Any) -> tuple[dict[str, Any], list[str]]:
    lines: list[str] = []
    action.precheck()
    output = action.execute(lines.append)
    action.verify()
    return output, lines


def _refused(action: Any) -> str:
    from recovery.actions.base import ActionError

    with pytest.raises(ActionError) as failed:
        _run(action)
    message = str(failed.value)
    assert "Traceback" not in message
    return message


def _journal(world: World) -> dict[str, Any]:
    path = world.primary.data_dir.with_name(world.primary.data_dir.name + ".aegis-restore.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# --- the restore ---------------------------------------------------------------------------------------


def test_restore_in_place_to_the_latest_point_keeps_the_old_directory_aside_and_its_own_settings(
    world: World,
) -> None:
    backup = world.backup()
    _insert(world, "B", 501, 900)   # after the backup: only in the archived WAL
    world.archive_all()
    everything = world.rows()
    settings = world.primary.sql("SELECT name, setting FROM pg_settings WHERE name IN "
                                 "('port', 'unix_socket_directories', 'archive_mode', 'archive_command', "
                                 "'listen_addresses') ORDER BY name")
    timeline_before = world.primary.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0]
    _insert(world, "X", 5001, 5010)   # damage that the restore to the latest archived point ...
    world.primary.sql("DELETE FROM t WHERE id <= 10")
    latest = world.rows()
    world.primary.sql("SELECT pg_switch_wal()")   # ... still contains: latest means all of the archive
    world.archive_all()

    action = world.action(backup)
    assert "Restore postgres primary in place from " + backup in action.describe()
    output, lines = _run(action)

    assert world.rows() == latest, "restored to the end of the archive: every archived change is back"
    assert world.rows("batch IN ('A', 'B')")[0] == everything[0] - 10
    assert any(line.startswith("stopping postgres primary") for line in lines), lines
    assert any(line.startswith(f"restoring {backup} (") for line in lines), lines
    assert any(line.startswith("replaying WAL (") for line in lines), lines
    assert all(item["ok"] for item in output["evidence"]), output["evidence"]
    checks = " ".join(item["check"] for item in output["evidence"])
    assert "timeline" in checks and "accepts writes" in checks and f"contents recorded with {backup}" in checks
    assert output["timeline"] > timeline_before, "an archive recovery ends on a new timeline"
    [aside] = world.siblings(".aegis-aside-INC-7-")
    assert output["aside"] == [{"kind": "postgres_data_dir", "location": str(aside), "component": "postgres"}]
    assert (aside / "PG_VERSION").is_file() and (aside / "base").is_dir(), "the old directory is kept whole"
    assert output["recovered_to"] and "pg_last_xact_replay_timestamp" in output["recovered_to_basis"]
    replayed_to = datetime.fromisoformat(output["recovered_to"])
    assert replayed_to <= datetime.now(replayed_to.tzinfo)

    # its own port, sockets, archive settings; the recovery settings are gone, so a restart is no recovery
    assert world.primary.sql("SELECT name, setting FROM pg_settings WHERE name IN "
                             "('port', 'unix_socket_directories', 'archive_mode', 'archive_command', "
                             "'listen_addresses') ORDER BY name") == settings
    assert world.primary.sql("SHOW restore_command") == [("",)]
    assert "Aegis in-place restore" not in (world.primary.data_dir / "postgresql.auto.conf").read_text()
    assert not (world.primary.data_dir / "recovery.signal").exists()
    assert not world.siblings(".aegis-wal-stage"), "the decrypted WAL does not outlive the restore"
    world.primary.stop()
    world.primary.start()
    assert world.primary.sql("SELECT pg_is_in_recovery()") == [(False,)]
    assert world.rows() == latest
    _insert(world, "C", 6001, 6010)   # it archives again, on its new timeline
    assert world.archive_all().startswith(f"{output['timeline']:08X}")

    # after a crash the journal says done; a second execution restores nothing again
    again = world.action(backup)
    assert again.is_done() is True
    pid = world.pid()
    assert _run(again)[0] == output
    assert world.pid() == pid and len(world.siblings(".aegis-aside-")) == 1

    # the clean-up removes only what the journal recorded as put aside
    from recovery.actions.base import ActionError
    from recovery.actions.postgres_restore import discard_postgres_aside

    for refused in (str(world.primary.data_dir), str(aside) + "x",
                    str(aside.with_name(aside.name.replace("INC-7", "INC-8")))):
        with pytest.raises(ActionError, match="refusing to remove"):
            discard_postgres_aside(refused)
    assert "removed" in discard_postgres_aside(str(aside)) and not aside.exists()
    assert "already removed" in discard_postgres_aside(str(aside))
    assert world.rows()[0] == latest[0] + 10


def test_a_point_in_time_restore_in_place_holds_exactly_the_rows_committed_before_the_target(world: World) -> None:
    backup = world.backup()
    _insert(world, "B", 501, 800)
    target = world.primary.sql("SELECT clock_timestamp()")[0][0]
    before_target = world.rows()
    time.sleep(1.2)
    _insert(world, "C", 801, 1200)   # the "bad" change after the target
    world.archive_all()

    output, _ = _run(world.action(backup, target_time=target))

    assert world.rows() == before_target
    assert datetime.fromisoformat(output["recovered_to"]) <= target
    assert output["target_time"] == target.isoformat()
    assert world.primary.sql("SELECT pg_is_in_recovery()") == [(False,)]


# --- faults --------------------------------------------------------------------------------------------


def test_a_corrupted_wal_segment_is_found_before_anything_is_stopped(world: World) -> None:
    backup = world.backup()
    _insert(world, "B", 501, 900)
    segment = world.archive_all()
    original, pid = world.rows(), world.pid()
    stored = world.workdir / "staging" / "wal" / f"{segment}.zst.aes"
    flip_byte(stored, offset=400)

    message = _refused(world.action(backup))
    flip_byte(stored, offset=400)   # mended again: the module's later tests archive on from here

    assert segment in message and "was not stopped" in message, message
    assert world.pid() == pid, "the server was never stopped"
    assert world.rows() == original
    assert not world.siblings(".aegis-aside-") and not world.siblings(".aegis-wal-stage")


def test_a_backup_deleted_from_every_target_fails_the_step_before_the_server_is_stopped(world: World) -> None:
    backup = world.backup()
    original, pid = world.rows(), world.pid()
    action = world.action(backup)   # planned; then the backup disappears before execution
    with sqlite3.connect(world.workdir / "aegis.db") as conn:
        [(name,)] = conn.execute("SELECT object_name FROM backup_catalog WHERE run_id = ? AND kind = 'pg_full'",
                                 (backup,)).fetchall()
    (world.workdir / "staging" / name).unlink()

    message = _refused(action)

    assert backup in message and "no intact copy" in message, message
    assert world.pid() == pid and world.rows() == original
    assert not world.siblings(".aegis-aside-")


def test_a_tag_failure_at_the_last_chunk_leaves_no_restored_directory_and_nothing_stopped(world: World) -> None:
    """One pass (issue 12): the backup streams into a staging directory before the stop; its last chunk
    fails its tag only after every earlier byte was written there, and the staging directory goes."""
    backup = world.backup()
    original, pid = world.rows(), world.pid()
    with sqlite3.connect(world.workdir / "aegis.db") as conn:
        [(name,)] = conn.execute("SELECT object_name FROM backup_catalog WHERE run_id = ? AND kind = 'pg_full'",
                                 (backup,)).fetchall()
    stored = world.workdir / "staging" / name
    action = world.action(backup)
    from recovery.backup.stream.pipeline import verify_object

    runner = action.restore.runner
    chunks = verify_object(runner.targets[0], name, runner.repository.key).chunks
    flip_byte(stored, offset=stored.stat().st_size - 8)   # inside the last chunk's tag

    from recovery.actions.base import ActionError

    with pytest.raises(ActionError) as failed:
        action.precheck()
    message, lines = str(failed.value), action.lines

    assert backup in message and f"chunk {chunks - 1} failed" in message and "was not stopped" in message, message
    assert any(line.startswith(f"streaming {backup} into ") for line in lines), lines
    assert world.pid() == pid and world.rows() == original, "the server was never stopped"
    assert not world.siblings(".aegis-staging-"), "the staged restore is removed"
    assert not world.siblings(".aegis-aside-") and not world.siblings(".aegis-failed-")
    assert not world.siblings(".aegis-wal-stage")


def test_a_crash_after_staging_leaves_nothing_stopped_and_the_next_attempt_removes_the_staging(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from recovery.backup.restore.journal import Journal

    backup = world.backup()
    original, pid = world.rows(), world.pid()
    real_write = Journal.write

    def crash_after(self: Journal, written: str, **facts: object) -> Any:
        entry = real_write(self, written, **facts)
        if written == "staged":
            raise Crash(written)
        return entry

    monkeypatch.setattr(Journal, "write", crash_after)
    with pytest.raises(Crash):
        _run(world.action(backup))
    monkeypatch.setattr(Journal, "write", real_write)
    [staging] = world.siblings(".aegis-staging-INC-7")
    assert (staging / "PG_VERSION").is_file() and oct(staging.stat().st_mode & 0o777) == "0o700"
    assert _journal(world)["phase"] == "staged" and world.action(backup).is_done() is False
    assert world.pid() == pid, "nothing was stopped"

    output, _ = _run(world.action(backup))
    assert world.rows() == original and all(item["ok"] for item in output["evidence"])
    assert not world.siblings(".aegis-staging-") and not world.siblings(".aegis-wal-stage")


def test_a_failed_verification_rolls_back_to_the_original_data_and_the_server_runs(world: World) -> None:
    backup = world.backup()
    _insert(world, "B", 501, 900)
    target = world.primary.sql("SELECT clock_timestamp()")[0][0]
    time.sleep(1.2)
    _insert(world, "C", 901, 1000)
    world.archive_all()
    original = world.rows()
    integrity = [{"name": "all orders", "sql": "SELECT count(*) FROM t", "min": original[0]}]

    run = through_the_engine(Store(world.db_url), world.action(backup, target_time=target, integrity=integrity),
                             kind="postgres_restore")

    message = run.step.detail
    assert run.step.status == "failed" and run.state == "assessed", (run.step.status, run.state, message)
    assert message.startswith("rolled back: verification failed"), message
    assert "integrity: all orders" in message
    assert world.rows() == original, "the database ends exactly as it was"
    assert world.primary.sql("SELECT pg_is_in_recovery()") == [(False,)]
    [failed] = world.siblings(".aegis-failed-INC-7-")
    assert (failed / "PG_VERSION").is_file(), "the failed restore is kept for diagnosis"
    assert not world.siblings(".aegis-aside-"), "the saved directory is back in place"
    journal = _journal(world)
    assert journal["phase"] == "rolled_back" and "integrity" in journal["reason"]
    assert world.action(backup).is_done() is False

    # the failed step names the kept directory for the clean-up; the remover takes it, and only it
    assert run.output["rolled_back"] is True
    assert run.output["aside"] == [{"kind": "postgres_data_dir", "location": str(failed), "component": "postgres"}]
    from recovery.actions.base import ActionError
    from recovery.actions.postgres_restore import discard_postgres_aside

    for refused in (str(failed.with_name(failed.name.replace("INC-7", "INC-8"))),
                    str(failed.with_name(failed.name.replace(".aegis-failed-", ".aegis-aside-")))):
        with pytest.raises(ActionError, match="refusing to remove"):
            discard_postgres_aside(refused)
    assert "the failed attempt of the restore for INC-7" in discard_postgres_aside(str(failed))
    assert not failed.exists() and world.rows() == original


HOOK = textwrap.dedent("""\
    import os, subprocess, sys
    what, data_dir, log, record = sys.argv[1:5]
    with open(record, "a") as f:
        f.write(what + " " + os.environ.get("AEGIS_INCIDENT", "?") + "\\n")
    flag = record + ".fail-start"
    if what == "start" and os.path.exists(flag):
        os.unlink(flag)
        print("start refused (test)", file=sys.stderr)
        sys.exit(1)
    args = ["-l", log, "-w", "-t", "120", "start"] if what == "start" else ["-m", "fast", "-w", "stop"]
    sys.exit(subprocess.run([os.path.join(sys.argv[5], "pg_ctl"), "-D", data_dir, *args], user="postgres",
                            group="postgres", extra_groups=[], cwd="/").returncode)
    """)


def test_stop_and_start_hooks_run_the_server_and_a_failing_start_rolls_back(world: World) -> None:
    script = world.workdir / "pg_hook.py"
    script.write_text(HOOK)
    record = world.workdir / "hook-calls.txt"
    log = world.pg.base_dir / "hooked.log"

    def hook(what: str) -> dict[str, Any]:
        return {"command": [sys.executable, str(script), what, str(world.primary.data_dir), str(log), str(record),
                            str(PG_BIN)], "timeout_seconds": 120}

    backup = world.backup()
    _insert(world, "B", 501, 900)
    world.archive_all()
    original = world.rows()

    Path(f"{record}.fail-start").touch()   # the first start fails: the restore rolls back
    message = _refused(world.action(backup, stop=hook("stop"), start=hook("start")))
    assert message.startswith("rolled back: ") and "hook postgres_start failed with exit code 1" in message, message
    assert record.read_text().split() == ["stop", "INC-7", "start", "INC-7", "start", "INC-7"]
    assert world.rows() == original
    assert world.siblings(".aegis-failed-") and not world.siblings(".aegis-aside-")

    record.unlink()
    output, lines = _run(world.action(backup, stop=hook("stop"), start=hook("start")))
    assert record.read_text().split() == ["stop", "INC-7", "start", "INC-7"]
    assert "stopping postgres primary (stop hook)" in lines and "starting postgres primary (start hook)" in lines
    assert world.rows() == original and all(item["ok"] for item in output["evidence"])


# --- crash safety -------------------------------------------------------------------------------------


class Crash(BaseException):
    """The process dies (not an Exception: no rollback runs, as after a SIGKILL)."""


@pytest.mark.timeout(600)
def test_after_a_crash_at_each_phase_is_done_says_so_and_the_next_attempt_rolls_back_first(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from recovery.backup.restore.journal import Journal

    backup = world.backup()
    _insert(world, "B", 501, 900)
    world.archive_all()
    original = world.rows()
    real_write = Journal.write

    for phase in ("stopping", "stopped", "aside", "restored", "started"):
        def crash_after(self: Journal, written: str, _phase: str = phase, **facts: object) -> Any:
            entry = real_write(self, written, **facts)
            if written == _phase:
                raise Crash(_phase)
            return entry

        monkeypatch.setattr(Journal, "write", crash_after)
        action = world.action(backup)
        with pytest.raises(Crash):
            _run(action)
        monkeypatch.setattr(Journal, "write", real_write)
        assert _journal(world)["phase"] == phase
        assert world.action(backup).is_done() is False, phase

        # the next attempt (after a new approval) first puts the saved directory back, as it was
        lines: list[str] = []
        retry = world.action(backup)
        retry.restore.recover_interrupted(lines.append)
        assert any(f"interrupted at '{phase}'" in line for line in lines), (phase, lines)
        assert world.rows() == original, phase
        assert not world.siblings(".aegis-aside-"), phase
        assert _journal(world)["phase"] == "rolled_back"

    output, _ = _run(world.action(backup))
    assert world.action(backup).is_done() is True
    assert world.action(backup, incident="INC-8").is_done() is False, "another incident's restore is not this one"
    assert world.rows() == original and output["aside"]
