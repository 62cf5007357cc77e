"""The demo workspace of the embedded default: ``aegis serve`` with no Slack credentials and no config file.

- plain: the shipped demo config's roster (a user named after a role approves without claiming,
  ``/aegis backup list`` answers, an outsider is refused), a demo key generated once with mode 0600
  that is in no log and no database byte, and a declaration that names who is invited;
- ``--demo``: a real primary + streaming standby and a sample service; a backup run from Slack, then
  the primary stopped from the sample service's page, ``database_failure`` walked to ``closed`` with the
  standby really promoted; after SIGTERM every server is gone (ports closed, run directory removed);
  a SIGKILLed demo's servers are removed by the next ``--demo`` start.
"""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from sqlmodel import select

from bot.demo.postgres import find_pg_bin
from statemachines import service as svc
from statemachines.models import BackupRecord, require_id
from tests.harness.aegis_process import wait_for
from tests.harness.embedded_aegis import EmbeddedAegis
from tests.harness.emulator_page import EmulatorPage

DECLARE = "/aegis incident database_failure critical primary database is down"
needs_postgres = pytest.mark.skipif(find_pg_bin() is None, reason="no PostgreSQL server binaries")


def demo_process(workdir: Path, *args: str) -> EmbeddedAegis:
    """The embedded default exactly as a newcomer starts it: no config file at all, no AEGIS_CONFIG."""
    workdir.chmod(0o755)
    bot = EmbeddedAegis(workdir, {})
    bot.config_path.unlink()
    bot.env.pop("AEGIS_CONFIG", None)
    bot.extra_args += list(args)
    return bot


@pytest.fixture
def plain_demo(tmp_path: Path) -> Iterator[EmbeddedAegis]:
    bot = demo_process(tmp_path).start()
    try:
        yield bot
    finally:
        bot.stop()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def demo_state(workdir: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((workdir / "aegis-demo.json").read_text())
    return state


class Incident:
    """One incident of the demo, driven through the emulator page and read from the bot's store."""

    def __init__(self, bot: EmbeddedAegis, page: EmulatorPage) -> None:
        self.bot, self.page, self.store = bot, page, bot.store()
        self.channel_id, self.id = "", 0

    def declare(self, user: str = "U0IC") -> str:
        page_answer = self.page.slash(user, DECLARE)
        assert page_answer["ok"], page_answer
        chan = wait_for(lambda: self.page.channel("inc-"), what="the incident channel")
        self.channel_id = chan["id"]
        with self.store.session() as session:
            found = svc.find_by_channel(session, self.channel_id)
            assert found is not None
            self.id = require_id(found)
        return self.page.ephemeral_text(user)

    def state(self) -> str:
        with self.store.session() as session:
            return str(svc.get(session, self.id).state)

    def wait_state(self, state: str, timeout: float = 60) -> None:
        wait_for(lambda: self.state() == state, timeout=timeout,
                 what=f"state {state} (now {self.state()}); log:\n{self.bot.log()[-3000:]}")

    def steps(self) -> list[Any]:
        with self.store.session() as session:
            return list(svc.current_steps(session, self.id))

    def wait_step(self, step_id: int, status: str, timeout: float = 60) -> None:
        def current() -> str:
            with self.store.session() as session:
                return str(svc.get_step(session, step_id).status)
        wait_for(lambda: current() == status, timeout=timeout,
                 what=f"step {step_id} {status} (now {current()}); log:\n{self.bot.log()[-3000:]}")

    def click(self, user: str, action_id: str, value: str) -> None:
        answer = self.page.click(user, self.channel_id, action_id, value)
        assert answer["ok"], answer

    def close(self, user: str, summary: str) -> None:
        self.click(user, "aegis_close", str(self.id))
        view = self.page.open_view(user, "aegis_close_submit")
        submitted = self.page.submit(user, self.channel_id, view["id"], {"summary::value": summary})
        assert submitted["ok"] and submitted["view_status"] == "closed", submitted
        self.wait_state("closed")


def test_the_embedded_default_runs_the_demo_roster_and_key(plain_demo: EmbeddedAegis, tmp_path: Path) -> None:
    page = EmulatorPage(plain_demo.emulator_url)
    incident = Incident(plain_demo, page)
    ack = incident.declare()
    # the declaration names who the demo roster invites, and does not claim a paging that is not happening
    assert "<@U0DB>" in ack and "<@U0INFRA>" in ack and "being paged" not in ack
    wait_for(lambda: {"U0IC", "U0DB", "U0INFRA", "U0APP", "U0COMM"} <= set(page.channel_by_id(incident.channel_id)
                                                                           ["members"]), what="the team invited")
    incident.click("U0IC", "aegis_claim_role", "incident_commander")
    incident.wait_state("assessed")
    first = incident.steps()[0]
    assert first.action == "manual" and "database_lead" in first.approver_roles
    # db.lee is rostered as database_lead: approving needs no claim first; the outsider is refused
    incident.click("U0OUT", "aegis_approve", str(first.id))
    wait_for(lambda: "You can't approve" in page.ephemeral_text("U0OUT", incident.channel_id),
             what="the outsider's refusal")
    assert incident.state() == "assessed"
    incident.click("U0DB", "aegis_approve", str(first.id))
    incident.wait_state("recovering")
    with incident.store.session() as session:
        votes = svc.approvals(session, svc.get_step(session, require_id(first)))
    assert [(v.user_id, tuple(v.roles or ())) for v in votes] == [("U0DB", ("database_lead",))]

    # /aegis backup list answers the demo's roles (an empty catalog), and refuses someone not rostered
    page.slash("U0DB", "/aegis backup list")
    wait_for(lambda: "No backups yet" in page.ephemeral_text("U0DB", "C0OPS"), what="the backup listing")
    assert "Only people on the Aegis roster" not in page.ephemeral_text("U0DB", "C0OPS")
    page.slash("U0OUT", "/aegis backup list")
    wait_for(lambda: "Only people on the Aegis roster" in page.ephemeral_text("U0OUT", "C0OPS"),
             what="the outsider's backup refusal")

    key = tmp_path / "aegis-demo-backup.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    secret = key.read_text().strip()
    assert len(secret) >= 40
    assert secret not in plain_demo.log()
    assert not any(secret.encode() in p.read_bytes() for p in tmp_path.glob("*.db*"))


def test_demo_without_postgres_binaries_says_what_to_install_and_runs_the_plain_demo(tmp_path: Path) -> None:
    bot = demo_process(tmp_path, "--demo")
    bot.env["AEGIS_PG_BIN"] = str(tmp_path / "no-postgres-here")
    bot.start()
    try:
        wait_for(lambda: "no PostgreSQL server binaries found" in bot.log(), what="the install hint")
        hint = next(line for line in bot.log().splitlines() if "no PostgreSQL server binaries found" in line)
        assert "apt-get install postgresql" in hint and "plain demo" in hint
        # the plain demo runs: a declared incident gets its plan of manual steps
        page = EmulatorPage(bot.emulator_url)
        incident = Incident(bot, page)
        incident.declare()
        incident.click("U0IC", "aegis_claim_role", "incident_commander")
        incident.wait_state("assessed")
        assert incident.steps()[0].action == "manual"
        assert not list(tmp_path.glob("aegis-demo.json")) or not demo_state(tmp_path).get("cluster")
    finally:
        bot.stop()


@needs_postgres
def test_demo_fails_over_to_a_real_standby_backs_up_and_cleans_up(tmp_path: Path) -> None:
    bot = demo_process(tmp_path, "--demo").start(timeout=90)
    state = demo_state(tmp_path)
    primary, standby = (node for node in state["cluster"]["nodes"])
    run_dir = Path(state["run_dir"])
    service_port = int(state["service_url"].rsplit(":", 1)[1])
    standby_dsn = f"host={standby['socket_dir']} port={standby['port']} user=postgres dbname=postgres"
    try:
        page = EmulatorPage(bot.emulator_url)
        assert requests.get(state["service_url"] + "/healthz", timeout=5).json()["reads_from"] == "primary"
        # a real backup of the primary to the demo's local target, started from Slack
        page.slash("U0DB", "/aegis backup run postgresql")
        store = bot.store()

        def finished() -> list[BackupRecord]:
            with store.session() as session:
                return [r for r in session.exec(select(BackupRecord)) if r.status != "running"]
        records = wait_for(finished, timeout=120, what=f"the backup run; log:\n{bot.log()[-3000:]}")
        assert {r.status for r in records} == {"ok"}, records
        assert any((tmp_path / "aegis-demo-backups").rglob("*"))

        # the failure: the primary stopped from the sample service's page
        stopped = requests.post(state["service_url"] + "/stop-primary", timeout=60, allow_redirects=False)
        assert stopped.status_code == 303
        assert requests.get(state["service_url"] + "/healthz", timeout=5).status_code == 503
        incident = Incident(bot, page)
        incident.declare()
        incident.click("U0IC", "aegis_claim_role", "incident_commander")
        incident.wait_state("assessed")
        steps = incident.steps()
        assert [s.action for s in steps] == ["postgres_confirm_down", "hook", "postgres_promote", "hook", "verify"]
        approvers = {"hook": "U0INFRA", "postgres_promote": "U0DB"}   # rostered: nobody claims a role first
        for step in (s for s in steps if s.approvals_required):   # the first approval starts recovering
            incident.click(approvers[step.action], "aegis_approve", str(step.id))
            incident.wait_step(step.id, "succeeded", timeout=90)
        incident.wait_state("verified")
        with psycopg.connect(standby_dsn, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_is_in_recovery(), (SELECT count(*) FROM demo_orders)").fetchone()
        assert row == (False, 100)
        health = requests.get(state["service_url"] + "/healthz", timeout=5).json()
        assert health["ok"] and health["reads_from"] == "standby"
        incident.close("U0IC", "demo: failed over to the standby")
    finally:
        bot.stop()
    assert bot.proc is not None and bot.proc.returncode == 0, bot.log()[-3000:]
    for port in (int(primary["port"]), int(standby["port"]), service_port):
        assert not port_open(port), f"port {port} is still open after SIGTERM"
    assert not run_dir.exists() and not (tmp_path / "aegis-demo.json").exists()


@needs_postgres
def test_the_next_demo_start_removes_a_killed_demos_servers(tmp_path: Path) -> None:
    first = demo_process(tmp_path, "--demo").start(timeout=90)
    old = demo_state(tmp_path)
    first.kill()
    old_ports = [int(n["port"]) for n in old["cluster"]["nodes"]]
    assert all(port_open(port) for port in old_ports)   # SIGKILL: nothing was cleaned up
    second = demo_process(tmp_path, "--demo").start(timeout=90)
    try:
        assert not Path(old["run_dir"]).exists()
        assert not any(port_open(port) for port in old_ports)
        assert demo_state(tmp_path)["run_dir"] != old["run_dir"]
    finally:
        second.stop()
    assert not (tmp_path / "aegis-demo.json").exists()
