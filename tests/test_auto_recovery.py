"""Automatic recovery (``monitoring.auto_recovery``) with a real PostgreSQL primary + standby.

The monitor (1 s interval) sees a SIGKILLed primary and opens a ``database_failure`` incident;
with ``auto_recovery: {database_failure: true}`` Aegis assesses it and posts the plan without any
click, and the read-only step (confirm the primary is down) runs. With ``pre_approved_actions``
naming the fence hook and the promotion, both run — the fence hook (a real command) records that it
ran, the standby is promoted — and the audit and the approval rows say "pre-approved by config".
Without it, the promotion waits for approval once the read-only step has finished.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import select

from bot.config import ConfigError, load_config
from recovery.monitor.history import MonitorHistory
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines import usecases
from statemachines.models import Approval, Incident, PlanStep, TimelineEvent, require_id
from statemachines.service import StepSpec
from statemachines.store import Store
from tests.harness.aegis_process import AegisProcess, start_on_sqlite, wait_for
from tests.harness.pgcluster import PgPair
from tests.harness.slack_reading import all_text, channel

ROSTER = {"incident_commander": ["U0IC"], "database_lead": ["U0DB"], "infrastructure_lead": ["U0INFRA"]}


def _config(pg_pair: PgPair, fence_log: Path, **monitoring: Any) -> dict[str, Any]:
    fence = ["/bin/sh", "-c", f'echo "fenced $AEGIS_INCIDENT step $AEGIS_STEP" >> {fence_log}']
    return {
        "slack": {"ops_channel": "C0OPS", "stakeholder_channel": "C0STAKE"}, "roster": ROSTER,
        "components": {"postgres": {"primary": {"dsn": pg_pair.primary.tcp_dsn()},
                                    "standby": {"dsn": pg_pair.standby.tcp_dsn()}}},
        "hooks": {"fence_primary": {"command": fence, "timeout_seconds": 20}},
        "monitoring": {"interval_seconds": 1.0, "warning_repeat_minutes": 60,
                       "auto_recovery": {"database_failure": True}, **monitoring},
    }


def _sigkill_primary(pg_pair: PgPair) -> None:
    pid = int((pg_pair.primary.data_dir / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)


def _steps(bot: AegisProcess) -> dict[str, PlanStep]:
    """The current plan's steps of the one incident, by action name (hooks by their hook)."""
    store = bot.store()
    try:
        with store.session() as session:
            incident = session.exec(select(Incident)).first()
            if incident is None or not incident.plan_revision:
                return {}
            steps = svc.current_steps(session, require_id(incident))
            return {(s.params or {}).get("hook") or s.action: s for s in steps}
    finally:
        store.dispose()


def _incident(bot: AegisProcess) -> Incident:
    store = bot.store()
    try:
        with store.session() as session:
            incidents = session.exec(select(Incident)).all()
            assert len(incidents) == 1
            return incidents[0]
    finally:
        store.dispose()


def _events(bot: AegisProcess, kind: str) -> list[TimelineEvent]:
    store = bot.store()
    try:
        with store.session() as session:
            return list(session.exec(select(TimelineEvent).where(TimelineEvent.kind == kind)))
    finally:
        store.dispose()


def _approvals(bot: AegisProcess) -> list[Approval]:
    store = bot.store()
    try:
        with store.session() as session:
            return list(session.exec(select(Approval)))
    finally:
        store.dispose()


def _plan_posted(emulator: EmulatorServer) -> list[str]:
    room = channel(emulator.state, "inc-")
    return [all_text(m) for m in (room or {}).get("messages", []) if "recovery plan" in all_text(m)]


def _start(tmp_path: Path, emulator: EmulatorServer, pg_pair: PgPair, fence_log: Path,
           **monitoring: Any) -> AegisProcess:
    bot = start_on_sqlite(tmp_path, emulator, _config(pg_pair, fence_log, **monitoring))
    wait_for(lambda: _sampled(bot, "postgres standby"), timeout=15, what="the monitor's first sample")
    return bot


def _sampled(bot: AegisProcess, check: str) -> bool:
    store = bot.store()
    try:
        return bool(MonitorHistory(store).samples(check))
    finally:
        store.dispose()


def test_pre_approved_fence_and_promotion_run_without_a_click_audited_as_pre_approved_by_config(
        tmp_path: Path, emulator: EmulatorServer, pg_pair: PgPair) -> None:
    fence_log = tmp_path / "fence.log"
    bot = _start(tmp_path, emulator, pg_pair, fence_log,
                 pre_approved_actions=["hook.fence_primary", "postgres_promote"])
    try:
        _sigkill_primary(pg_pair)
        promote = wait_for(lambda: (s := _steps(bot).get("postgres_promote")) and s.status == "succeeded" and s,
                           timeout=60, what="the promotion step to succeed")
        assert pg_pair.standby.sql("SELECT pg_is_in_recovery()")[0][0] is False      # really promoted
        incident = _incident(bot)
        assert (incident.declared_by, incident.scenario) == ("aegis", "database_failure")
        assert incident.state == "recovering"
        assert fence_log.read_text().strip() == f"fenced {incident.key} step {_steps(bot)['fence_primary'].id}"
        assert wait_for(lambda: _plan_posted(emulator), timeout=15, what="the plan in the incident channel")
        steps = _steps(bot)
        assert steps["postgres_confirm_down"].status == "succeeded"
        # the traffic step names no hook: a manual step nobody pre-approved keeps waiting for a person
        assert [s.status for s in steps.values() if s.action == "manual"] == ["awaiting_approval"]
        votes = [(a.step_id, a.user_id, a.basis) for a in _approvals(bot)]
        assert sorted(votes) == sorted([
            (steps["fence_primary"].id, "aegis",
             "pre-approved by config (monitoring.pre_approved_actions: hook.fence_primary)"),
            (promote.id, "aegis", "pre-approved by config (monitoring.pre_approved_actions: postgres_promote)")])
        audited = [e for e in _events(bot, "approval") if e.data.get("code") == "step_pre_approved"]
        assert sorted(e.data["step_id"] for e in audited) == sorted([steps["fence_primary"].id, promote.id])
        assert all(e.actor == "aegis" and e.text.startswith("pre-approved by config") for e in audited)
        started = [e for e in _events(bot, "transition") if e.data.get("trigger") in ("assemble", "start_recovery")]
        assert [(e.data["trigger"], e.actor) for e in started] == [("assemble", "aegis"), ("start_recovery", "aegis")]
    finally:
        bot.stop()


def test_without_pre_approval_the_promotion_waits_for_approval_after_the_read_only_step_ran(
        tmp_path: Path, emulator: EmulatorServer, pg_pair: PgPair) -> None:
    fence_log = tmp_path / "fence.log"
    bot = _start(tmp_path, emulator, pg_pair, fence_log)
    try:
        _sigkill_primary(pg_pair)
        wait_for(lambda: (s := _steps(bot).get("postgres_confirm_down")) and s.status == "succeeded",
                 timeout=60, what="the read-only step to finish")
        assert wait_for(lambda: _plan_posted(emulator), timeout=15, what="the plan in the incident channel")
        steps = _steps(bot)
        assert steps["fence_primary"].status == "awaiting_approval"
        assert steps["postgres_promote"].status == "awaiting_approval"
        assert _incident(bot).state == "recovering"
        assert _approvals(bot) == []
        assert not fence_log.exists()
        assert pg_pair.standby.sql("SELECT pg_is_in_recovery()")[0][0] is True
    finally:
        bot.stop()


# --- the rules that hold whatever the config says ----------------------------------------------------


@pytest.mark.parametrize(("actions", "expected"), [
    (["manual"], "pre_approved_actions: `manual` is a two-person step"),
    (["postgres_promote", "postgres_restore"], "pre_approved_actions: `postgres_restore` is a two-person step"),
    (["discard_aside"], "pre_approved_actions: `discard_aside` is a two-person step"),
    (["hook"], "pre_approved_actions: `hook`: name the hook, one of hook.fence_primary"),
    (["hook.fence_primray"], "name the hook"),
])
def test_a_config_that_would_pre_approve_a_two_person_step_or_an_unnamed_hook_is_refused_in_one_line(
        tmp_path: Path, actions: list[str], expected: str) -> None:
    file = tmp_path / "aegis.yaml"
    file.write_text(yaml.safe_dump({"monitoring": {"auto_recovery": {"ransomware": True},
                                                   "pre_approved_actions": actions}}))
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert expected in str(caught.value)
    assert len([line for line in str(caught.value).splitlines() if "pre_approved_actions" in line]) == 1


def test_pre_approval_never_satisfies_a_two_person_step(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    store.migrate()
    try:
        with store.session() as session:
            incident = usecases.declare(session, scenario="ransomware", severity="critical", summary="signal",
                                        declared_by="aegis", locale="en", stakeholder_channel=None)
            incident_id = require_id(incident)
            usecases.auto_assemble(session, incident_id=incident_id, basis="monitoring.auto_recovery.ransomware")
            version = svc.get(session, incident_id).version
            usecases.assess(session, incident_id=incident_id, expected_version=version, strategy="restore_from_backup",
                            rationale="test", checks=[], steps=[StepSpec(
                                title="Restore from the clean backup", action="manual", risk="critical",
                                approver_roles=["security_lead", "database_lead"], approvals_required=2,
                                params={"instruction": "restore"})])
        with store.session() as session:
            step = svc.current_steps(session, incident_id)[0]
            assert usecases.pre_approve(session, step_id=require_id(step), basis="pre-approved by config") is False
        with store.session() as session:
            assert svc.get_step(session, require_id(step)).status == "awaiting_approval"
            assert svc.approvals(session, step) == []
    finally:
        store.dispose()
