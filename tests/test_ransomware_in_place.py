"""Ransomware end to end (issue 9, S3): a real primary restored in place to just before the infection.

The world: a PostgreSQL 15 primary archiving WAL with ``aegis wal push``; a base backup taken by
``aegis backup run`` and checked by ``aegis backup verify`` *before* the infection; more rows
committed after it (only in the archived WAL), still before the infection; then, after the infection
(a minute boundary: the form's resolution), every row overwritten with ``'ENCRYPTED'`` and a ransom
row added, and a second backup taken and verified — of the encrypted data. The primary keeps running
(it is encrypted, not down); ``components.postgres.primary.control`` lets Aegis stop and start it
with ``pg_ctl``. The ``isolate_systems`` and ``start_services`` hooks are scripts recording each call.

Through ``aegis serve`` and the emulator: declare ``ransomware`` → the first plan assumes the
detection time, so the encrypted backup (verified before it) is its clean point → the infection time
in the form → the new plan names the pre-infection backup as the clean point, says why the later one
was skipped, and restores PostgreSQL in place to 1 s before the infection → the restore is not run on
one person's two approvals, nor on two people's without the security lead (step status, votes,
ledger, the server untouched) → the security lead and the step's other lead approve each two-person
step → automated verification → ``verified``. The database then holds exactly the rows committed
before the infection, the encrypted data directory is aside, and ``/aegis status`` shows the RPO
measured from the infection time.

The test waits for the clock to pass the next minute boundary (the infection), so it takes up to a
minute longer than its work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from recovery.objectives import timestamp
from recovery.planner import at
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from tests.harness.aegis_process import AegisProcess, wait_for
from tests.harness.archiving_primary import archive_all, archiving_primary
from tests.harness.cli_workspace import aegis, catalog
from tests.harness.pgcluster import PG_BIN, PgNode, PgSingle
from tests.harness.slack_reading import all_text
from tests.harness.team import ROSTER
from tests.harness.walk import Walk

pytestmark = pytest.mark.timeout(300)

ZONE = "Asia/Seoul"   # the team's zone: the form's date and time are read in it
RECORD = """#!/usr/bin/env bash
# test hook: record the call ({workdir}/calls.log), do nothing else
echo "$1 ${{AEGIS_INCIDENT:-}} ${{AEGIS_STEP:-}}" >> "{workdir}/calls.log"
echo "$1 done"
"""
DIGEST = "SELECT count(*), md5(coalesce(string_agg(id || ':' || note, ',' ORDER BY id), '')) FROM orders"


@dataclass
class Clean:
    """The primary before the infection: a verified backup and rows committed after it (in the WAL)."""

    workdir: Path
    pg: PgSingle
    clean_id: str
    digest: tuple[Any, ...]     # (count, md5) of every row committed before the infection
    last_commit: datetime       # the last of those commits (track_commit_timestamp)

    @property
    def node(self) -> PgNode:
        return self.pg.primary

    def calls(self, name: str) -> int:
        log = self.workdir / "calls.log"
        return sum(1 for line in log.read_text().splitlines() if line.split()[0] == name) if log.exists() else 0

    def asides(self) -> list[Path]:
        data_dir = self.node.data_dir
        return sorted(data_dir.parent.glob(f"{data_dir.name}.aegis-aside-*"))

    def pid(self) -> int:
        return int((self.node.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def backup_and_verify(workdir: Path) -> str:
    """``aegis backup run postgresql`` then ``aegis backup verify`` of that run (both as processes)."""
    before = {row["run_id"] for row in catalog(workdir, "kind = 'pg_full'")}
    run = aegis(workdir, "backup", "run", "postgresql", "--quiet")
    assert run.returncode == 0, run.stdout + run.stderr
    [run_id] = {row["run_id"] for row in catalog(workdir, "kind = 'pg_full' AND status = 'ok'")} - before
    check = aegis(workdir, "backup", "verify", run_id)
    assert check.returncode == 0 and ": ok" in check.stdout, check.stdout + check.stderr
    [row] = catalog(workdir, f"run_id = '{run_id}' AND kind = 'pg_full'")
    assert row["verified_at"] and json.loads(row["verify_result"]).get("ok") is True, dict(row)
    return str(run_id)


@pytest.fixture
def clean(shared_dir: Path) -> Iterator[Clean]:
    pg = archiving_primary(shared_dir, {"archive_timeout": 0, "track_commit_timestamp": "on"})
    try:
        node = pg.primary
        node.sql("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        node.sql("INSERT INTO orders SELECT g, 'in the clean backup' FROM generate_series(1, 100) g")
        clean_id = backup_and_verify(shared_dir)
        node.sql("INSERT INTO orders SELECT g, 'after the backup, before the infection' "
                 "FROM generate_series(101, 150) g")
        last_commit = node.sql("SELECT max(pg_xact_commit_timestamp(xmin)) FROM orders")[0][0].astimezone(UTC)
        yield Clean(shared_dir, pg, clean_id, node.sql(DIGEST)[0], last_commit)
    finally:
        pg.destroy()


def infect(world: Clean) -> tuple[datetime, str]:
    """The infection: the first minute boundary at least 1.5 s after the last clean commit (the plan
    restores to 1 s before it). Once the clock has passed it, every row is encrypted, a ransom row
    added, and a second backup taken and verified. Returns (infection time, the later backup's id)."""
    infection = (world.last_commit + timedelta(seconds=1.5)).replace(second=0, microsecond=0) + timedelta(minutes=1)
    wait_for(lambda: datetime.now(UTC) > infection + timedelta(milliseconds=200), timeout=75, interval=0.1,
             what=f"the clock to pass {infection}")
    world.node.sql("UPDATE orders SET note = 'ENCRYPTED'")
    world.node.sql("INSERT INTO orders VALUES (9999, 'ENCRYPTED: pay to get your data back')")
    encrypted_at = world.node.sql("SELECT min(pg_xact_commit_timestamp(xmin)) FROM orders")[0][0]
    assert encrypted_at > infection, (encrypted_at, infection)
    later_id = backup_and_verify(world.workdir)
    archive_all(world.node)   # the encryption's WAL is archived too: the restore must stop before it
    return infection, later_id


def bot_config(world: Clean) -> dict[str, Any]:
    hook = world.workdir / "record.sh"
    hook.write_text(RECORD.format(workdir=world.workdir))
    hook.chmod(0o755)
    workspace = yaml.safe_load((world.workdir / "aegis.yaml").read_text())
    workspace["components"]["postgres"]["primary"]["control"] = {
        "data_dir": str(world.node.data_dir), "os_user": "postgres", "pg_bin": str(PG_BIN)}
    return {**workspace, "locale": "en", "timezone": ZONE, "roster": ROSTER,
            "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 30},
            "hooks": {"isolate_systems": {"command": [str(hook), "isolate_systems"], "timeout_seconds": 30},
                      "start_services": {"command": [str(hook), "start_services"], "timeout_seconds": 30}}}


def votes(walk: Walk, step_id: int) -> list[str]:
    with walk.store.session() as session:
        return [a.user_id for a in svc.all_approvals(session, walk.incident_id)
                if a.step_id == step_id and a.decision == "approve"]


def approve(walk: Walk, user: str, step_id: int) -> None:
    """One click on Approve, then wait for its outcome: the bot's answer to ``user`` (the vote noted, or
    refused), or, for the vote that completes the approval, the step no longer awaiting it."""
    emulator = walk.emulator
    answered = len(emulator.state.responses_for(user))
    walk.click(user, "aegis_approve", str(step_id))

    def decided() -> bool:
        if len(emulator.state.responses_for(user)) > answered:
            return True
        with walk.store.session() as session:
            status = svc.get_step(session, step_id).status
        return status != "awaiting_approval" and user in votes(walk, step_id)

    wait_for(decided, what=f"the outcome of {user}'s approval of step {step_id}")


def set_infection_time(walk: Walk, user: str, infection: datetime) -> None:
    emulator = walk.emulator
    walk.click(user, "aegis_infection_time", str(walk.incident_id))
    form = wait_for(lambda: [v for v in emulator.state.views(user=user)
                             if v.get("callback_id") == "aegis_infection_submit" and v.get("status") == "open"],
                    what="the infection-time form")[-1]
    local = infection.astimezone(ZoneInfo(ZONE))
    response = walk.driver.submit_view(user, form["id"], {
        "date": {"value": {"type": "datepicker", "selected_date": local.strftime("%Y-%m-%d")}},
        "time": {"value": {"type": "timepicker", "selected_time": local.strftime("%H:%M")}}})
    assert response.status_code == 200 and not response.content.strip(), response.text


def plan_of(walk: Walk) -> tuple[Any, Any, Any, Any]:
    steps = walk.steps()
    assert [(s.action, s.params.get("hook")) for s in steps] == [
        ("hook", "isolate_systems"), ("postgres_restore", None), ("hook", "start_services"), ("verify", None)], \
        [(s.action, s.title) for s in steps]
    isolate, restore, services, verify = steps
    return isolate, restore, services, verify


def test_a_ransomware_incident_restores_postgres_in_place_to_just_before_the_infection(
    clean: Clean, emulator: EmulatorServer,
) -> None:
    world = clean
    bot = AegisProcess(world.workdir, bot_config(world), f"sqlite:///{world.workdir}/aegis.db", emulator.api_url,
                       name="bot")
    emulator.bot_url = bot.url
    bot.start()
    try:
        infection, later_id = infect(world)
        encrypted = world.node.sql(DIGEST)[0]
        assert encrypted != world.digest
        walk = Walk(bot, emulator)
        walk.declare("incident ransomware critical orders database encrypted")
        walk.assemble_and_assess()

        # before the form: the detection time is assumed, so the encrypted backup counts as clean
        assert walk.step("postgres_restore").params["backup_id"] == later_id

        set_infection_time(walk, "U0SEC", infection)
        wait_for(lambda: walk.incident().plan_revision == 2, timeout=60, what="the plan made from the infection time")
        incident = walk.incident()
        assert incident.state == "assessed" and incident.strategy == "restore_from_backup"
        assert incident.failure_at is not None and incident.failure_at.replace(tzinfo=UTC) == infection
        isolate, restore, services, _verify = plan_of(walk)
        target = infection - timedelta(seconds=1)
        assert restore.params == {"node": "primary", "backup_id": world.clean_id, "backup_time": restore.params[
            "backup_time"], "target_time": target.isoformat(), "data_dir": str(world.node.data_dir),
            "control": "pg_ctl"}
        for shown in (world.clean_id, at(target), str(world.node.data_dir), "moved aside"):
            assert shown in restore.title, (shown, restore.title)
        assert all(s.approvals_required == 2 and s.approver_roles[0] == "security_lead"
                   for s in (isolate, restore, services))
        # the assessment names the clean point, why, and the later backup it skipped
        assessment = wait_for(lambda: [all_text(m) for m in walk.chan()["messages"]
                                       if "Clean point" in all_text(m) and world.clean_id in all_text(m)],
                              what="the assessment naming the clean point and the skipped backup")[-1]
        for said in (later_id, "verified", "skipped", "after the infection"):
            assert said in assessment, (said, assessment)

        # isolation: the security lead and the infrastructure lead
        approve(walk, "U0SEC", isolate.id)
        approve(walk, "U0INFRA", isolate.id)
        walk.wait_step(isolate.id, "succeeded")
        assert world.calls("isolate_systems") == 1

        # the restore: one person twice is one approval; two people without the security lead are not enough
        pid = world.pid()
        approve(walk, "U0DB", restore.id)
        approve(walk, "U0DB", restore.id)
        assert votes(walk, restore.id) == ["U0DB"]
        approve(walk, "U0IC", restore.id)   # the commander may approve any step, but is not the security lead
        assert votes(walk, restore.id) == ["U0DB", "U0IC"]
        with walk.store.session() as session:
            assert svc.get_step(session, restore.id).status == "awaiting_approval"
        assert not walk.ledger(restore.id), "the restore ran without the security lead's approval"
        assert world.pid() == pid and not world.asides() and world.node.sql(DIGEST)[0] == encrypted
        approve(walk, "U0SEC", restore.id)
        walk.wait_step(restore.id, "succeeded", timeout=120)
        approve(walk, "U0SEC", services.id)
        approve(walk, "U0APP", services.id)
        walk.wait_state("verified", timeout=60)

        # exactly the rows committed before the infection; the encrypted directory is aside
        assert world.node.sql(DIGEST)[0] == world.digest
        assert world.node.sql("SELECT count(*) FROM orders WHERE note LIKE 'ENCRYPTED%'")[0][0] == 0
        assert world.node.sql("SELECT pg_is_in_recovery()")[0][0] is False
        [aside] = world.asides()
        assert (aside / "PG_VERSION").exists(), "the encrypted data directory was not kept aside"
        assert (world.calls("isolate_systems"), world.calls("start_services")) == (1, 1)
        [run] = walk.ledger(restore.id)
        recovered_to = datetime.fromisoformat(run.output["recovered_to"])
        assert world.last_commit <= recovered_to <= target, (world.last_commit, recovered_to, target)

        # the RPO is measured from the infection time, and /aegis status shows it with that basis
        incident = walk.incident()
        assert incident.rpo_seconds == pytest.approx((infection - recovered_to).total_seconds(), abs=0.01)
        assert incident.rpo_basis.startswith(f"failure at {timestamp(infection)}"), incident.rpo_basis
        walk.driver.slash("U0IC", "status", channel_id=walk.channel_id)
        reply = wait_for(lambda: [r for r in emulator.state.responses_for("U0IC") if "RPO" in json.dumps(r)],
                         what="the status reply with the figures")[-1]
        rpo_line = next(line for line in all_text(reply).splitlines() if "RPO:" in line)
        assert f"failure at {timestamp(infection)}" in rpo_line, rpo_line
        assert "pg_last_xact_replay_timestamp" in rpo_line, rpo_line
    finally:
        bot.stop()
