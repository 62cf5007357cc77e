"""Prepare ahead of the approval (issue 9, "Speed"; bot/prepare_ahead.py): an in-place restore's backup is
streamed, authenticated and verified into its staging directory while the step waits for its approval.

Real PostgreSQL 15 (archiving with ``aegis wal push``), a real base backup, ``aegis serve`` with the
emulator and signed clicks; the primary keeps running (a restore planned while production still answers,
e.g. data damaged by a bad deploy), its control is ``pg_ctl`` as ``postgres``.

- the plan is posted → the staging directory appears and the journal records it complete (``staged``,
  ``prepared_ahead``) with the primary still running on the same postmaster and untouched, and one line
  says so in the channel; rows committed after the staging, archived; approve → the restore reuses the
  staging (journal ``reused_ahead``, one attempt's phases) and reaches ``verified``, with those rows;
- a re-plan (a new revision) replaces the staging by the new step's, and closing the incident withdraws it
  (journal ``withdrawn``, the directory removed);
- the backup deleted from every target after the staging → the step's precheck fails before anything is
  stopped (the action itself, without the bot).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from recovery.backup.catalog import KIND_FULL, STATUS_OK
from slack_emulator.server import EmulatorServer
from tests.harness.aegis_process import AegisProcess, wait_for
from tests.harness.archiving_primary import archive_all, archiving_primary
from tests.harness.cli_workspace import aegis, catalog
from tests.harness.pgcluster import PG_BIN, PgSingle
from tests.harness.slack_reading import all_text
from tests.harness.team import ROSTER
from tests.harness.walk import Walk, close_with_modal

pytestmark = pytest.mark.timeout(300)

ONE_ATTEMPT = ["prechecked", "staged", "stopping", "stopped", "aside", "restored", "started", "verified"]


@dataclass
class Running:
    workdir: Path
    pg: PgSingle
    run_id: str

    @property
    def data_dir(self) -> Path:
        return self.pg.primary.data_dir

    def journal(self) -> dict[str, Any]:
        path = self.data_dir.with_name(self.data_dir.name + ".aegis-restore.json")
        return json.loads(path.read_text()) if path.exists() else {}

    def staging(self) -> list[Path]:
        return sorted(self.data_dir.parent.glob(f"{self.data_dir.name}.aegis-staging-*"))

    def pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


@pytest.fixture
def running(shared_dir: Path) -> Iterator[Running]:
    pg = archiving_primary(shared_dir, {"archive_timeout": 0})
    try:
        node = pg.primary
        node.sql("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        node.sql("INSERT INTO orders SELECT g, 'in the backup' FROM generate_series(1, 100) g")
        backup = aegis(shared_dir, "backup", "run", "postgresql", "--quiet")
        assert backup.returncode == 0, backup.stdout + backup.stderr
        [row] = catalog(shared_dir, f"kind = '{KIND_FULL}' AND status = '{STATUS_OK}'")
        archive_all(node)
        yield Running(shared_dir, pg, str(row["run_id"]))
    finally:
        pg.destroy()


def start_bot(world: Running, emulator: EmulatorServer) -> Walk:
    workspace = yaml.safe_load((world.workdir / "aegis.yaml").read_text())
    workspace["components"]["postgres"]["primary"]["control"] = {
        "data_dir": str(world.data_dir), "os_user": "postgres", "pg_bin": str(PG_BIN)}
    config = {**workspace, "locale": "en", "roster": ROSTER,
              "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 30},
              "hooks": {"start_services": {"command": ["/bin/true"]}}}
    bot = AegisProcess(world.workdir, config, f"sqlite:///{world.workdir}/aegis.db", emulator.api_url, name="bot")
    emulator.bot_url = bot.url
    bot.start()
    return Walk(bot, emulator)


def planned_restore(walk: Walk) -> Any:
    """Declare, take command, and switch to restoring from the backup (the primary still answers)."""
    walk.declare()
    walk.assemble_and_assess()
    if walk.incident().strategy != "restore_from_backup":
        switch(walk, "restore_from_backup")
    [restore] = [s for s in walk.steps() if s.action == "postgres_restore"]
    assert restore.status == "awaiting_approval"
    return restore


def switch(walk: Walk, strategy: str) -> None:
    """Pick ``strategy`` in the assessment's select (a re-plan as a new revision); wait for that plan."""
    revision = walk.incident().plan_revision
    assessment = wait_for(lambda: next((m for m in reversed(walk.chan()["messages"]) if "aegis_strategy" in
                                        json.dumps(m.get("blocks") or [])), None), what="the strategy select")
    response = walk.driver.select("U0IC", "aegis_strategy", strategy, walk.channel_id, assessment["ts"])
    assert response.status_code == 200, response.text
    wait_for(lambda: walk.incident().plan_revision > revision and walk.incident().strategy == strategy,
             what=f"the {strategy} plan")


def wait_staged_ahead(world: Running, step_id: int) -> dict[str, Any]:
    def staged() -> dict[str, Any] | None:
        entry = world.journal()
        ok = (entry.get("phase") == "staged" and entry.get("prepared_ahead") is True
              and (entry.get("prepared_for") or {}).get("step") == str(step_id))
        return entry if ok else None
    return wait_for(staged, timeout=120, what=f"the journal to record the staging ahead ({world.journal()})")


def test_the_plan_stages_ahead_with_production_running_and_the_approved_restore_reuses_it(
    running: Running, emulator: EmulatorServer,
) -> None:
    world = running
    pid = world.pid()
    walk = start_bot(world, emulator)
    try:
        restore = planned_restore(walk)
        entry = wait_staged_ahead(world, restore.id)
        assert entry["backup_id"] == world.run_id and [p.name for p in world.staging()] == \
            [Path(entry["staging"]).name]
        assert (world.staging()[0] / "PG_VERSION").exists() and (world.staging()[0] / "backup_manifest").exists()
        # production untouched: the same postmaster, answering, nothing put aside
        assert world.pid() == pid and world.pg.primary.sql("SELECT count(*) FROM orders")[0][0] == 100
        assert not list(world.data_dir.parent.glob(f"{world.data_dir.name}.aegis-aside-*"))
        line = wait_for(lambda: [m for m in walk.chan()["messages"] if "staged and verified" in all_text(m)],
                        what="the channel line saying the backup is staged")
        assert world.run_id in all_text(line[-1]) and "only the downtime" in all_text(line[-1])

        # committed after the staging, archived: a restore to the latest point must replay it
        world.pg.primary.sql("INSERT INTO orders SELECT g, 'after the staging' FROM generate_series(101, 130) g")
        archive_all(world.pg.primary)

        for step in [s for s in walk.steps() if s.status == "awaiting_approval"]:
            walk.click("U0IC", "aegis_approve", str(step.id))
        walk.wait_state("verified", timeout=120)
        journal = world.journal()
        assert journal["phase"] == "verified" and journal.get("reused_ahead") is True, journal
        assert [h["phase"] for h in journal["history"]] == ONE_ATTEMPT, journal   # streamed once, ahead
        node = world.pg.primary
        assert node.sql("SELECT count(*) FROM orders WHERE note = 'after the staging'")[0][0] == 30
        assert node.sql("SELECT pg_is_in_recovery()")[0][0] is False
        assert not world.staging()
    finally:
        walk.bot.stop()


def test_a_replan_replaces_the_staging_and_closing_the_incident_withdraws_it(
    running: Running, emulator: EmulatorServer,
) -> None:
    world = running
    pid = world.pid()
    walk = start_bot(world, emulator)
    try:
        first = planned_restore(walk)
        wait_staged_ahead(world, first.id)
        switch(walk, "restore_from_backup")   # the same choice again: a new revision, the step to approve again
        [again] = [s for s in walk.steps() if s.action == "postgres_restore"]
        assert again.id != first.id
        wait_staged_ahead(world, again.id)     # the old step's staging is gone; one staging, the new step's
        assert len(world.staging()) == 1
        close_with_modal(walk, emulator, "U0IC", "False alarm: the data was fine.")
        wait_for(lambda: world.journal().get("phase") == "withdrawn" and not world.staging(), timeout=60,
                 what=f"the staging withdrawn after the close ({world.journal()})")
        assert world.pid() == pid and world.pg.primary.sql("SELECT count(*) FROM orders")[0][0] == 100
    finally:
        walk.bot.stop()


def direct_action(world: Running, step_id: int) -> Callable[[], Any]:
    """A factory of the restore step's action as the engine builds it (no bot), control by pg_ctl."""
    from bot.config import load_config
    from bot.wiring import build_action
    from statemachines.models import PlanStep
    from statemachines.store import Store

    path = world.workdir / "aegis.yaml"
    data = yaml.safe_load(path.read_text())
    data["components"]["postgres"]["primary"]["control"] = {"data_dir": str(world.data_dir), "pg_bin": str(PG_BIN)}
    path.write_text(yaml.safe_dump(data))
    params = {"node": "primary", "backup_id": world.run_id, "data_dir": str(world.data_dir)}
    step = PlanStep(id=step_id, incident_id=9, revision=1, position=1, title="restore", action="postgres_restore",
                    params=params)
    return lambda: build_action(load_config(path), step, {"incident": "INC-9", "step": str(step_id)},
                                store=Store(f"sqlite:///{world.workdir}/aegis.db"))


def test_a_backup_deleted_from_every_target_after_the_staging_fails_the_step_before_anything_stops(
    running: Running,
) -> None:
    from recovery.actions.base import ActionError

    world = running
    pid = world.pid()
    action = direct_action(world, 5)

    ready = action().prepare(lambda _line: None)
    assert ready is not None and ready["backup_id"] == world.run_id and world.staging()
    assert action().prepare(lambda _line: None) is None   # already staged for this step: nothing again
    with sqlite3.connect(world.workdir / "aegis.db") as conn:
        [(name,)] = conn.execute("SELECT object_name FROM backup_catalog WHERE run_id = ? AND kind = 'pg_full'",
                                 (world.run_id,)).fetchall()
    (world.workdir / "staging" / name).unlink()

    with pytest.raises(ActionError) as refused:
        action().precheck()
    assert "no intact copy" in str(refused.value) and "was not stopped" in str(refused.value), refused.value
    assert world.pid() == pid and world.pg.primary.sql("SELECT count(*) FROM orders")[0][0] == 100
    assert not world.staging() and not list(world.data_dir.parent.glob(f"{world.data_dir.name}.aegis-aside-*"))


def test_staging_ahead_leaves_the_running_servers_filesystem_its_reserve_and_the_approved_step_stages_instead(
    running: Running, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from recovery.actions.base import ActionError
    from recovery.backup.restore import in_place

    world = running
    pid = world.pid()
    action = direct_action(world, 6)

    # a filesystem this full: the reserve (here the whole disk) cannot be left beside the running server
    monkeypatch.setattr(in_place, "AHEAD_RESERVE_FRACTION", 1.0)
    with pytest.raises(ActionError) as refused:
        action().prepare(lambda _line: None)
    assert "not staged ahead" in str(refused.value) and "the approved step stages it" in str(refused.value)
    assert not world.staging() and world.journal().get("phase") is None   # nothing written, nothing staged
    assert world.pid() == pid

    approved = action()
    approved.precheck()    # the approved step: only the room for the backup itself is required
    try:
        assert world.staging() and world.journal()["phase"] == "staged"
        assert not world.journal().get("prepared_ahead")
    finally:
        approved.restore.remove_staging()
        approved.restore.release()
    assert world.pid() == pid and world.pg.primary.sql("SELECT count(*) FROM orders")[0][0] == 100
