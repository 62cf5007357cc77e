"""A store holding what the report pages and /metrics show, written through the real accessors.

- incidents walked to ``closed`` through ``statemachines.service`` (declare, plan, assemble, assess,
  recover with a ledger execution of the manual step, verify with evidence, close), their
  ``verified_at``/``closed_at`` given so the figures are known exactly (one declared 40 days back),
  and one left ``recovering``;
- drills through ``recovery.drills.runs`` scored by ``recovery.drills.scoring`` (one passed, one failed);
- backups through the real ``BackupRunner`` into a local target, one restore-tested;
- monitor samples through ``MonitorHistory.record_samples`` for last month (180 one-minute samples of
  ``service auth``, 12 of them failing; none of ``service billing``) and a few recent ones.
"""

from __future__ import annotations

import base64
import io
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bot.backup_wiring import runner_from
from bot.config import load_config
from recovery.backup.catalog import WAL_KIND, mark_restore_test, wal_object
from recovery.drills import runs
from recovery.drills.drills import ONE_RECOVERY
from recovery.drills.scoring import Figure, Objectives, score
from recovery.monitor.checks import Sample
from recovery.monitor.history import MonitorHistory
from recovery.objectives import Basis
from statemachines import service as svc
from statemachines.service import StepSpec
from statemachines.store import Store
from tests.harness.incidents import recovering_incident
from tests.harness.team import ROSTER

REPORTS_SECRET_ENV = "AEGIS_TEST_REPORTS_SECRET"
REPORTS_SECRET = "reports-secret-for-the-tests-0123456789"
PASSWORD_ENV = "AEGIS_TEST_REPORTS_PASSWORD"
PASSWORD = "auditor-password-42"
HOSTILE_STEP = 'restore-test <script>alert("x")</script> & co'


@dataclass(frozen=True)
class WalkedIncident:
    key: str
    rto_seconds: float
    mttr_seconds: float
    rpo_seconds: float | None


@dataclass
class ReportWorld:
    workdir: Path
    store: Store
    config: dict[str, Any]
    incidents: list[WalkedIncident] = field(default_factory=list)
    passed_drill: int = 0
    failed_drill: int = 0
    backup_finished_at: datetime | None = None
    backup_size: int = 0
    wal_archived_at: datetime | None = None
    month: str = ""                      # last month, YYYY-MM (UTC)
    month_minutes: float = 0.0

    def env(self) -> dict[str, str]:
        return {REPORTS_SECRET_ENV: REPORTS_SECRET, PASSWORD_ENV: PASSWORD}


def report_config(workdir: Path, **reports: Any) -> dict[str, Any]:
    key_file = workdir / "backup.key"
    key_file.write_text(base64.b64encode(bytes(range(32))).decode())
    key_file.chmod(0o600)
    (workdir / "staging").mkdir(exist_ok=True)
    return {
        "locale": "en",
        "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 30},
        "roster": ROSTER,
        "services": [{"name": "auth", "tier": 1, "health": {"tcp": "127.0.0.1:9"}},
                     {"name": "billing", "tier": 2, "health": {"tcp": "127.0.0.1:9"}}],
        "monitoring": {"enabled": False, "interval_seconds": 60},
        "storage": [{"kind": "local", "path": str(workdir / "staging"), "name": "local"}],
        "encryption": {"key_file": str(key_file)},
        "reports": {"secret_env": REPORTS_SECRET_ENV, "link_minutes": 30, **reports},
    }


def walk_to_closed(store: Store, *, scenario: str, severity: str, rto: timedelta, mttr: timedelta,
                   rpo: float | None, basis: str | None, back: timedelta = timedelta(0)) -> WalkedIncident:
    with store.session() as session:
        incident = svc.declare(session, scenario=scenario, severity=severity, summary="reports test",
                               declared_by="U0IC", locale="en", stakeholder_channel=None)
        incident_id = incident.id or 0
        declared = incident.declared_at - back
        svc.set_fields(session, incident_id=incident_id, declared_at=declared)
        svc.replace_plan(session, incident_id=incident_id, strategy="manual", specs=[
            StepSpec(title="restore the service", action="manual"),
            StepSpec(title="verify", action="verify", approvals_required=0)])
        for trigger in ("assemble", "assess", "start_recovery"):
            svc.transition(session, incident_id=incident_id, trigger=trigger, actor="U0IC")
        manual, verify = svc.current_steps(session, incident_id)
        assert svc.move_step(session, step=manual, to="approved", from_statuses=("awaiting_approval",))
        entry = svc.ledger_start(session, step=svc.get_step(session, manual.id or 0), owner="report-test",
                                 lease=timedelta(seconds=30))
        assert entry is not None and entry.id is not None
        svc.ledger_finish(session, entry_id=entry.id, status="succeeded", output={"done": True})
        svc.move_step(session, step=svc.get_step(session, manual.id or 0), to="succeeded")
        svc.move_step(session, step=svc.get_step(session, verify.id or 0), to="succeeded",
                      evidence=[{"check": "auth", "observed": "200", "expected": "200", "ok": True}])
        svc.transition(session, incident_id=incident_id, trigger="verify", actor="aegis",
                       values={"verified_at": declared + rto, "rpo_seconds": rpo, "rpo_basis": basis})
        svc.transition(session, incident_id=incident_id, trigger="close", actor="U0IC",
                       values={"closed_at": declared + mttr, "close_summary": "recovered"})
        key = svc.get(session, incident_id).key or ""
    return WalkedIncident(key, rto.total_seconds(), mttr.total_seconds(), rpo)


def leave_recovering(store: Store) -> None:
    with store.session() as session:
        recovering_incident(session, [StepSpec(title="fail over", action="manual")], scenario="datacenter_outage",
                            strategy="manual", summary="still going")


def _step(name: str, seconds: float, ok: bool = True, detail: str = "") -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"name": name, "ok": ok, "detail": detail, "started_at": (now - timedelta(seconds=seconds)).isoformat(),
            "finished_at": now.isoformat(), "seconds": seconds}


def record_drills(store: Store) -> tuple[int, int]:
    passed = runs.start(store, "database_failover_test", "slack", requested_by="U0DB", scenario="database_failure")
    passed_id = passed.id or 0
    for step in (_step("prepare scratch environment", 1.25), _step("standby from backup_x + archived WAL", 20.5),
                 _step("promote and accept a write", 3.75), _step(HOSTILE_STEP, 2.0), _step("clean up", 0.5)):
        runs.add_step(store, passed_id, step)
    span = {"started": "2026-11-01T02:00:00+00:00", "verified": "2026-11-01T02:12:34.500000+00:00"}
    pushed = {"committed": "2026-11-01T01:59:18+00:00", "segment": "wal/000000010000000000000003.zst.aes",
              "pushed": "2026-11-01T02:00:00+00:00"}
    figures = {"rto": Figure(754.5, Basis("drill_rto_failover", f"drill start {span['started']} → write verified on "
                                          f"the promoted standby {span['verified']}", span)),
               "rpo": Figure(42.0, Basis("drill_rpo", "newest recovered transaction against the newest archived WAL "
                                         "segment", pushed)),
               "mttr": Figure(754.5, ONE_RECOVERY)}
    scores = score("database_failure", figures, Objectives())
    runs.finish(store, passed_id, status="passed", objectives=[s.as_dict() for s in scores], report_path=None,
                figures={**{n: f.as_dict() for n, f in figures.items()}, "wal_files": 3})
    failed = runs.start(store, "backup_restore_test", "schedule", requested_by="drill-backup_restore_test",
                        scenario="ransomware")
    failed_id = failed.id or 0
    runs.add_step(store, failed_id, _step("restore-test backup_1/postgres-base.tar.zst.aes", 5.0, ok=False,
                                          detail="checksum mismatch"))
    figures = {"rto": Figure(None, Basis("drill_rto_no_restore", "unknown: no backup could be restore-tested"))}
    scores = score("ransomware", figures, Objectives())
    runs.finish(store, failed_id, status="failed", objectives=[s.as_dict() for s in scores], report_path=None,
                figures={n: f.as_dict() for n, f in figures.items()})
    return passed_id, failed_id


def previous_month(now: datetime) -> tuple[datetime, datetime]:
    this = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last = (this - timedelta(days=1)).replace(day=1)
    return last, this


def record_samples(store: Store, start: datetime) -> None:
    history = MonitorHistory(store)
    first = start + timedelta(days=1)
    down = range(100, 112)      # 12 one-minute samples failing
    history.record_samples(Sample("service auth", "application", i not in down, None if i in down else 3.0, "ms",
                                  None, first + timedelta(minutes=i), "tcp 127.0.0.1:9") for i in range(180))
    now = datetime.now(UTC)
    history.record_samples([
        Sample("service auth", "application", True, 3.5, "ms", None, now - timedelta(seconds=30), "ok"),
        Sample("postgres primary", "database", False, None, "", None, now - timedelta(seconds=20), "refused")])


def seed(workdir: Path, **reports: Any) -> ReportWorld:
    workdir.chmod(0o755)
    config = report_config(workdir, **reports)
    path = workdir / "aegis.yaml"
    path.write_text(yaml.safe_dump(config))
    store = Store(f"sqlite:///{workdir}/aegis.db")
    store.migrate()
    world = ReportWorld(workdir, store, config)
    world.incidents = [
        walk_to_closed(store, scenario="database_failure", severity="critical", rto=timedelta(minutes=37, seconds=12),
                       mttr=timedelta(minutes=52, seconds=30), rpo=4.25,
                       basis="replication lag at failover (pg_last_wal_receive_lsn − replay)", back=timedelta(days=40)),
        walk_to_closed(store, scenario="ransomware", severity="high", rto=timedelta(hours=5, minutes=3),
                       mttr=timedelta(hours=6), rpo=None, basis=None),
    ]
    leave_recovering(store)
    world.passed_drill, world.failed_drill = record_drills(store)
    runner = runner_from(load_config(path), store)
    base = runner.store_object("backup_20261101_020000", "pg_full", "postgres",
                               "backup_20261101_020000/postgres-base.tar.zst.aes",
                               nullcontext(io.BytesIO(bytes(range(256)) * 800)))
    assert base.status == "ok", base
    mark_restore_test(store, base.id or 0, True, "restored; public.t: 500 rows and checksum match")
    world.backup_finished_at, world.backup_size = base.finished_at, base.stored_size
    wal = runner.store_object("wal", WAL_KIND, "postgres", wal_object("0000000100000000000000A1"),
                              nullcontext(io.BytesIO(b"\0" * 4096)))
    assert wal.status == "ok", wal
    world.wal_archived_at = wal.finished_at
    start, end = previous_month(datetime.now(UTC))
    record_samples(store, start)
    world.month, world.month_minutes = start.strftime("%Y-%m"), (end - start).total_seconds() / 60
    return world
