"""Two replicas' monitors each open a ransomware condition at the same instant: one incident.

"Find the open ransomware incident or declare one" is one transaction serialised across processes
(bot/jobs/monitor.py ``lock_scenario``: a PostgreSQL advisory transaction lock; SQLite's IMMEDIATE
sessions). Two MonitorDuty objects with their own flows on one real store (SQLite and PostgreSQL)
handle a condition each, started by a barrier: exactly one incident is declared, the other
condition is attached to it, and both conditions name it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import select

from bot.jobs.monitor import MonitorDuty
from bot.slack.gateway import SlackGateway
from recovery.monitor.history import MonitorHistory
from recovery.monitor.loop import CycleResult
from recovery.monitor.risk import CRITICAL, Changes, Condition
from slack_emulator.server import EmulatorServer
from statemachines.models import Incident, TimelineEvent
from statemachines.store import Store
from tests.harness.aegis_process import BOT_TOKEN
from tests.harness.concurrency import at_once
from tests.harness.flows_harness import Harness, harness_for


def _condition(source: str) -> Condition:
    now = datetime.now(UTC)
    evidence = {"check": "signal ransomware", "ok": False, "value": None, "unit": "", "threshold": None,
                "reason": f"{source} reported ransomware on files-01", "at": now.isoformat(),
                "signal": {"id": 1, "source": source, "kind": "ransomware", "host": "files-01",
                           "received_at": now.isoformat()}}
    return Condition(f"ransomware:signal {source}", "ransomware", CRITICAL, "ransomware", now, now,
                     f"{source} reported ransomware on files-01", ("signal ransomware",), [evidence])


def _opened(condition: Condition) -> CycleResult:
    """What a cycle that opened ``condition`` hands to MonitorDuty.respond."""
    return CycleResult(1, condition.since, 0.0, [], [], Changes(opened=[condition]))


def _replica(store: Store, emulator: EmulatorServer, tmp_path: Path) -> tuple[Harness, MonitorDuty]:
    harness = harness_for(store, emulator, tmp_path / uuid.uuid4().hex[:6],
                          {"slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS"}})
    gateway = SlackGateway(BOT_TOKEN, emulator.api_url, attempts=1)
    return harness, MonitorDuty(harness.flows.config, store, harness.flows, gateway, is_leader=lambda: True)


def test_two_replicas_opening_ransomware_conditions_at_once_declare_one_incident(
        store: Store, emulator: EmulatorServer, tmp_path: Path) -> None:
    conditions = [_condition("edr-falcon"), _condition("canary-grid")]
    history = MonitorHistory(store)
    for condition in conditions:
        assert history.open_condition(condition)
    replicas = [_replica(store, emulator, tmp_path) for _ in conditions]
    try:
        at_once(*[lambda d=duty, c=condition: d.respond(_opened(c))
                  for (_harness, duty), condition in zip(replicas, conditions, strict=True)])
        with store.session() as session:
            incidents = session.exec(select(Incident).where(Incident.scenario == "ransomware")).all()
            assert len(incidents) == 1, [i.key for i in incidents]
            events = session.exec(select(TimelineEvent).where(TimelineEvent.incident_id == incidents[0].id,
                                                              TimelineEvent.kind == "audit")).all()
        linked = {c.key: c.incident_id for c in history.conditions()}
        assert linked == {c.key: incidents[0].id for c in conditions}
        marks = sorted((e.data["monitor_condition"], bool(e.data.get("attached"))) for e in events
                       if e.data.get("monitor_condition"))
        assert [attached for _key, attached in marks].count(True) == 1 and len(marks) == 2
    finally:
        for harness, _duty in replicas:
            harness.stop()
