"""Crash safety of an in-place PostgreSQL restore (issue 9): ``aegis serve`` SIGKILLed at every step boundary.

A ``database_failure`` with a dead primary (stopped) and no standby, ``components.postgres.primary.control``
configured with ``stop``/``start`` hooks (real scripts that record each call, then run ``pg_ctl`` as
``postgres``), one real base backup (``aegis backup run``) and archived WAL after it (``aegis wal push``).
The planner's ``restore_from_backup`` plan is: restore in place (``postgres_restore``, approved; it stops
the server itself, so there is no confirm-down step) → start services (the ``start_services`` hook,
approved) → verify.

- ``test_database_failure_without_a_standby_walks_to_closed_through_an_in_place_restore`` — the issue's
  "Done when" walk: from the slash command to ``closed`` with no crash.
- ``test_sigkill_at_every_step_boundary_resumes_and_runs_nothing_destructive_twice`` — one walk, killed
  at each boundary in turn and restarted:

  1. before the restore: approved (the incident starts recovering), killed inside the follow-up delay
     (``AEGIS_TEST_FOLLOW_UP_DELAY`` holds the engine that long after an approval or a restart's sweep);
  2. between the restore and start_services: the restore succeeded and start_services, not approved
     yet, waits — held exactly; then start_services approved and killed inside the follow-up delay;
  3. between start_services and verify: killed while the start_services hook runs (its work done, the
     hook held by a gate file the test opens after the kill); the restarted bot confirms the step done
     by its ``done_check`` instead of running it again and then waits in the follow-up delay before
     verify — the boundary held exactly (start_services succeeded, no ledger row for verify): killed there;
  4. after verify, before ``verified``: the kill the moment verify is seen to succeed (polled every
     10 ms). The engine makes the incident ``verified`` on its next claim, milliseconds later and with no
     hook to hold it from outside, so this kill mostly lands just after ``verified``; either way the
     restarted bot must end ``verified`` with nothing run again.

  At the end the incident is ``verified``, the data is the backup's plus the archived WAL, and nothing
  destructive ran twice: by the hook records (stop, start, start_services each exactly once), the
  ledger (one attempt per step; start_services's interrupted, then confirmed done), and the data
  directory's history (the restore journal holds one attempt, its phases each once in order, and one
  ``asides`` entry; one ``.aegis-aside-`` directory, no ``.aegis-failed-`` one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from recovery.backup.catalog import KIND_FULL, STATUS_OK
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from tests.harness.aegis_process import AegisProcess, wait_for
from tests.harness.archiving_primary import archive_all, archiving_primary
from tests.harness.cli_workspace import aegis, catalog
from tests.harness.pgcluster import PG_BIN, PgSingle
from tests.harness.slack_reading import all_text
from tests.harness.team import ROSTER
from tests.harness.walk import Walk, close_with_modal

DELAY = "AEGIS_TEST_FOLLOW_UP_DELAY"
DELAY_SECONDS = 5   # how long the engine waits after an approval (and a restart's sweep) before it starts

# the restore journal's phases of one attempt that went through (recovery/backup/restore/in_place.py)
ONE_ATTEMPT = ("prechecked", "staged", "stopping", "stopped", "aside", "restored", "started", "verified")

# stop/start hooks of the primary and the start_services hook: each call appended to calls.log first
CONTROL = """#!/usr/bin/env bash
# test control hook: record the call, then do it ({data_dir}, as postgres)
echo "$1 ${{AEGIS_INCIDENT:-}} ${{AEGIS_STEP:-}}" >> "{workdir}/calls.log"
cd /tmp
pg_ctl() {{ /usr/sbin/runuser -u postgres -- "{pg_bin}/pg_ctl" -D "{data_dir}" "$@"; }}
case "$1" in
  stop) if pg_ctl status >/dev/null; then pg_ctl -m fast -w -t 60 stop; fi ;;
  start) pg_ctl -l "{log}" -w -t 120 start ;;
  # done (its done_check passes from here on), then held until the test opens the gate
  start_services) touch "{workdir}/services.done"; echo "services started"
                  while [ ! -e "{workdir}/services.gate" ]; do sleep 0.05; done ;;
esac
"""


@dataclass
class DeadPrimary:
    """The workspace (config, key, shared catalog), the stopped primary and what it held."""

    workdir: Path
    pg: PgSingle
    run_id: str
    rows: int          # orders rows: in the backup plus those only in the archived WAL after it

    @property
    def data_dir(self) -> Path:
        return self.pg.primary.data_dir

    def calls(self, name: str) -> int:
        log = self.workdir / "calls.log"
        return sum(1 for line in log.read_text().splitlines() if line.split()[0] == name) if log.exists() else 0

    def asides(self) -> list[Path]:
        return sorted(self.data_dir.parent.glob(f"{self.data_dir.name}.aegis-aside-*"))

    def open_gate(self) -> None:
        """Let the start_services hook return (it holds after doing its work, see CONTROL)."""
        (self.workdir / "services.gate").touch()

    def journal(self) -> dict[str, Any]:
        path = self.data_dir.with_name(self.data_dir.name + ".aegis-restore.json")
        return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture
def dead_primary(shared_dir: Path) -> Iterator[DeadPrimary]:
    pg = archiving_primary(shared_dir, {"archive_timeout": 0})
    try:
        node = pg.primary
        node.sql("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        node.sql("INSERT INTO orders SELECT g, 'in the backup' FROM generate_series(1, 100) g")
        backup = aegis(shared_dir, "backup", "run", "postgresql", "--quiet")
        assert backup.returncode == 0, backup.stdout + backup.stderr
        [row] = catalog(shared_dir, f"kind = '{KIND_FULL}' AND status = '{STATUS_OK}'")
        node.sql("INSERT INTO orders SELECT g, 'archived WAL only' FROM generate_series(101, 150) g")
        archive_all(node)
        node.stop("immediate")   # the primary dies; there is no standby
        yield DeadPrimary(shared_dir, pg, str(row["run_id"]), 150)
    finally:
        pg.destroy()


def bot_config(dead: DeadPrimary) -> dict[str, Any]:
    control = dead.workdir / "control.sh"
    control.write_text(CONTROL.format(workdir=dead.workdir, data_dir=dead.data_dir, pg_bin=PG_BIN,
                                      log=dead.pg.primary.log_file))
    control.chmod(0o755)
    workspace = yaml.safe_load((dead.workdir / "aegis.yaml").read_text())
    workspace["components"]["postgres"]["primary"]["control"] = {
        "data_dir": str(dead.data_dir), "os_user": "postgres", "pg_bin": str(PG_BIN),
        "stop": {"command": [str(control), "stop"], "timeout_seconds": 60},
        "start": {"command": [str(control), "start"], "timeout_seconds": 120}}
    return {**workspace, "locale": "en", "roster": ROSTER,
            "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 30},
            # its done_check: after a crash mid-hook the step is confirmed done instead of asked again
            "hooks": {"start_services": {"command": [str(control), "start_services"], "timeout_seconds": 30,
                                         "done_check": ["test", "-f", str(dead.workdir / "services.done")]}},
            "engine": {"lease_seconds": 3}}


def start_bot(dead: DeadPrimary, emulator: EmulatorServer, delay: float = 0) -> AegisProcess:
    bot = AegisProcess(dead.workdir, bot_config(dead), f"sqlite:///{dead.workdir}/aegis.db", emulator.api_url,
                       name="bot")
    if delay:
        bot.env[DELAY] = str(delay)
    emulator.bot_url = bot.url
    return bot.start()


def plan_of(walk: Walk) -> tuple[Any, Any, Any]:
    steps = walk.steps()
    assert [s.action for s in steps] == ["postgres_restore", "hook", "verify"], \
        [(s.action, s.title) for s in steps]
    restore, services, verify = steps
    assert services.params["hook"] == "start_services"
    return restore, services, verify


def assert_restored(dead: DeadPrimary) -> None:
    node = dead.pg.primary
    assert node.sql("SELECT pg_is_in_recovery()")[0][0] is False
    assert node.sql("SELECT count(*) FROM orders")[0][0] == dead.rows
    assert node.sql("SELECT count(*) FROM orders WHERE note = 'archived WAL only'")[0][0] == 50


def test_database_failure_without_a_standby_walks_to_closed_through_an_in_place_restore(
    dead_primary: DeadPrimary, emulator: EmulatorServer,
) -> None:
    dead = dead_primary
    dead.open_gate()
    bot = start_bot(dead, emulator)
    try:
        walk = Walk(bot, emulator)
        walk.declare()
        walk.assemble_and_assess()
        assert walk.incident().strategy == "restore_from_backup"
        restore, services, _verify = plan_of(walk)
        # the approver reads what will happen: the backup, the data directory, that it is moved aside
        assert dead.run_id in restore.title and str(dead.data_dir) in restore.title
        assert restore.params["backup_id"] == dead.run_id and restore.params["control"] == "hooks"
        assert dead.calls("stop") == 0 and not dead.asides(), "something ran before the approval"

        walk.click("U0DB", "aegis_approve", str(restore.id))
        walk.wait_step(restore.id, "succeeded", timeout=120)
        walk.click("U0APP", "aegis_approve", str(services.id))
        walk.wait_state("verified", timeout=60)
        assert_restored(dead)
        [aside] = dead.asides()
        assert (aside / "PG_VERSION").exists(), "the old data directory was not kept"
        assert (dead.calls("stop"), dead.calls("start"), dead.calls("start_services")) == (1, 1, 1)

        close_with_modal(walk, emulator, "U0IC", "Restored in place from the last backup and the WAL archive.")
        closing = wait_for(lambda: [m for m in walk.chan()["messages"] if "RTO" in all_text(m)],
                           what="the closing post")[-1]
        assert "RPO" in all_text(closing)
        assert aside.exists(), "the put-aside data directory was removed without an approved clean-up step"
    finally:
        bot.stop()


def _restart(bot: AegisProcess) -> None:
    bot.kill()
    bot.start()


def _kill_when_approved(walk: Walk, bot: AegisProcess, step_id: int) -> None:
    """Approve, then SIGKILL inside the follow-up delay: the approval is committed, the step not started."""
    walk.click("U0IC", "aegis_approve", str(step_id))
    def decided() -> Any:
        with walk.store.session() as session:
            step = svc.get_step(session, step_id)
        return step.status != "awaiting_approval" and step

    seen = wait_for(decided, timeout=DELAY_SECONDS, interval=0.02, what=f"step {step_id} approved")
    assert seen.status == "approved" and not walk.ledger(step_id), "the step started before the kill"
    _restart(bot)


def _kill_as_soon_as(walk: Walk, bot: AegisProcess, step_id: int, status: str) -> None:
    """SIGKILL the moment the step's ledger row is seen in ``status`` (polled every 10 ms): at the boundary
    after it, or just past it when the engine moves on within milliseconds."""
    wait_for(lambda: walk.ledger(step_id) and walk.ledger(step_id)[-1].status == status, timeout=180,
             interval=0.01, what=f"step {step_id} {status}")
    _restart(bot)


def test_sigkill_at_every_step_boundary_resumes_and_runs_nothing_destructive_twice(
    dead_primary: DeadPrimary, emulator: EmulatorServer,
) -> None:
    dead = dead_primary
    bot = start_bot(dead, emulator, delay=DELAY_SECONDS)
    try:
        walk = Walk(bot, emulator)
        walk.declare()
        walk.assemble_and_assess()
        restore, services, verify = plan_of(walk)

        # 1. before the restore: approved (the incident starts recovering), killed before it starts
        _kill_when_approved(walk, bot, restore.id)
        assert walk.incident().state == "recovering"
        assert dead.calls("stop") == 0 and not dead.asides(), "the restore started before its approval was kept"

        # 2. between the restore and start_services: the restarted bot ran the restore; start_services
        # waits for its approval (held exactly); killed there, then again once it is approved
        walk.wait_step(restore.id, "succeeded", timeout=180)
        assert walk.wait_step(services.id, "awaiting_approval", timeout=5)
        _restart(bot)
        assert (dead.calls("stop"), dead.calls("start"), dead.calls("start_services")) == (1, 1, 0)
        assert len(dead.asides()) == 1 and dead.journal()["phase"] == "verified"
        _kill_when_approved(walk, bot, services.id)
        assert dead.calls("start_services") == 0

        # 3. between start_services and verify: killed while the hook runs (its work done, held by the gate);
        # the restarted bot confirms it done by its done_check instead of running it again, and then
        # waits in the follow-up delay before verify — held exactly: killed there
        wait_for(lambda: (dead.workdir / "services.done").exists(), timeout=60, interval=0.02,
                 what="the start_services hook at work")
        bot.kill()
        assert [e.status for e in walk.ledger(services.id)] == ["running"] and not walk.ledger(verify.id)
        dead.open_gate()   # the orphaned hook may end now: its work is done, nobody waits for it
        bot.start()
        walk.wait_step(services.id, "succeeded", timeout=30)
        assert not walk.ledger(verify.id), "verify started before the kill"
        _restart(bot)

        # 4. after verify, before the incident is verified (its next claim, milliseconds later, makes it so)
        _kill_as_soon_as(walk, bot, verify.id, "succeeded")
        walk.wait_state("verified", timeout=60)

        # nothing destructive ran twice: by the hook records, the ledger and the data directory's history
        assert_restored(dead)
        assert (dead.calls("stop"), dead.calls("start"), dead.calls("start_services")) == (1, 1, 1)
        assert [(e.attempt, e.status) for e in walk.ledger(restore.id)] == [(1, "succeeded")]
        # start_services: its one attempt interrupted by the kill, then confirmed done (not run again)
        assert [(e.attempt, e.status) for e in walk.ledger(services.id)] == [(1, "interrupted")]
        assert walk.wait_step(services.id, "succeeded", timeout=5)
        assert walk.wait_step(verify.id, "succeeded", timeout=5)
        journal = dead.journal()
        phases = [h["phase"] for h in journal["history"]]
        assert phases == list(ONE_ATTEMPT), journal   # one attempt, each phase once, no rollback
        assert len(journal["asides"]) == 1 and not journal.get("failed"), journal
        assert dead.asides() == [Path(journal["asides"][0])]
        assert not list(dead.data_dir.parent.glob(f"{dead.data_dir.name}.aegis-failed-*"))
    finally:
        dead.open_gate()
        bot.stop()
