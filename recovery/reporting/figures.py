"""What the report pages chart: incidents' RTO/RPO/MTTR, drills' figures, backups per component.

Every figure is read from what the store recorded, with no recomputation beyond a subtraction:
an incident's RTO is declared → verified and its MTTR declared → closed (as in the closing post,
bot/presenters.py), its RPO is ``incident.rpo_seconds`` with ``rpo_basis``; a drill's figures are its
``drill_run.figures`` (each with the ``basis`` it was measured from) and ``objectives`` (pass/fail).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from sqlmodel import col, select

from recovery.backup.catalog import RESTORE_TESTED_KINDS, retained_backups
from statemachines.json_types import JsonObject
from statemachines.models import DrillRun, Incident, MonitorSample
from statemachines.store import Store


@dataclass(frozen=True)
class IncidentFigure:
    key: str
    scenario: str
    severity: str
    state: str
    declared_at: datetime
    verified_at: datetime | None
    closed_at: datetime | None
    rpo_seconds: float | None
    rpo_basis: str | None
    rpo_basis_data: JsonObject | None = None     # the basis as {code, params}, for the page's language

    @property
    def rto_seconds(self) -> float | None:
        return (self.verified_at - self.declared_at).total_seconds() if self.verified_at else None

    @property
    def mttr_seconds(self) -> float | None:
        return (self.closed_at - self.declared_at).total_seconds() if self.closed_at else None


def incident_figures(store: Store) -> list[IncidentFigure]:
    """Every incident that was verified or closed, oldest first (an open one has no figure yet)."""
    query = (select(Incident).where(col(Incident.verified_at).is_not(None) | col(Incident.closed_at).is_not(None))
             .order_by(col(Incident.declared_at), col(Incident.id)))
    with store.session() as session:
        return [IncidentFigure(i.key or f"#{i.id}", i.scenario, i.severity, i.state, i.declared_at, i.verified_at,
                               i.closed_at, i.rpo_seconds, i.rpo_basis, i.rpo_basis_data) for i in session.exec(query)]


def _figure_value(figures: JsonObject, name: str) -> float | None:
    entry = figures.get(name)
    value = entry.get("value") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class DrillFigure:
    id: int
    name: str
    status: str
    trigger: str
    requested_by: str | None
    scenario: str | None
    started_at: datetime
    finished_at: datetime | None
    steps: list[JsonObject]
    figures: JsonObject
    objectives: list[JsonObject]
    error: str
    report_path: str | None

    @property
    def rto_seconds(self) -> float | None:
        return _figure_value(self.figures, "rto")

    @property
    def rpo_seconds(self) -> float | None:
        return _figure_value(self.figures, "rpo")

    @property
    def measured(self) -> list[JsonObject]:
        """The figures that carry a basis (rto, rpo, mttr), as ``{name, value, unit, basis}``."""
        return [{"name": name, **entry} for name, entry in self.figures.items()
                if isinstance(entry, dict) and "basis" in entry]

    @property
    def facts(self) -> JsonObject:
        """The drill's other findings (counts, the base backup, …) that are plain values."""
        return {name: value for name, value in self.figures.items()
                if not isinstance(value, dict | list)}


def _drill_figure(run: DrillRun) -> DrillFigure:
    return DrillFigure(run.id or 0, run.name, run.status, run.trigger, run.requested_by, run.scenario,
                       run.started_at, run.finished_at, list(run.steps or []), dict(run.figures or {}),
                       list(run.objectives or []), run.error, run.report_path)


def drill_figures(store: Store) -> list[DrillFigure]:
    """Every drill that ran to an end (passed, failed, error, interrupted), oldest first."""
    with store.session() as session:
        rows = session.exec(select(DrillRun).where(DrillRun.status != "running").order_by(col(DrillRun.id)))
        return [_drill_figure(run) for run in rows]


def drill_figure(store: Store, run_id: int) -> DrillFigure | None:
    with store.session() as session:
        run = session.get(DrillRun, run_id)
        return _drill_figure(run) if run is not None else None


@dataclass(frozen=True)
class MonthlyMttr:
    month: str                      # 2026-11, in the display zone
    incidents: int
    mean_seconds: float
    longest_seconds: float


def mttr_by_month(incidents: Sequence[IncidentFigure], zone: tzinfo) -> list[MonthlyMttr]:
    """The mean MTTR (declared → closed) of the incidents closed in each month, oldest month first."""
    months: dict[str, list[float]] = {}
    for incident in incidents:
        if incident.closed_at is None or incident.mttr_seconds is None:
            continue
        months.setdefault(incident.closed_at.astimezone(zone).strftime("%Y-%m"), []).append(incident.mttr_seconds)
    return [MonthlyMttr(month, len(values), sum(values) / len(values), max(values))
            for month, values in sorted(months.items())]


@dataclass
class ComponentBackups:
    """Backup freshness and restore-test status of one component (postgres, neo4j, milvus)."""

    component: str
    newest_at: datetime | None = None
    newest_run: str | None = None
    newest_kind: str | None = None
    newest_size: int = 0
    retained: int = 0               # good backups in the retention window (restore-testable kinds)
    tested_ok: int = 0
    tested_failed: int = 0
    never_tested: int = 0
    last_tested_at: datetime | None = None
    failed: list[str] = field(default_factory=list)     # run ids whose restore test failed
    monitor_ok: bool | None = None  # the monitor's newest ``backup <component>`` sample (schedule + grace)
    monitor_reason: str = ""

    def age_seconds(self, now: datetime) -> float | None:
        return (now - self.newest_at).total_seconds() if self.newest_at else None


def backup_status(store: Store) -> list[ComponentBackups]:
    """Per component: the newest good backup and the restore tests of every retained one."""
    rows = retained_backups(store)
    status: dict[str, ComponentBackups] = {}
    for row in rows:
        entry = status.setdefault(row.component, ComponentBackups(row.component))
        finished = row.finished_at or row.started_at
        if entry.newest_at is None or finished >= entry.newest_at:
            entry.newest_at, entry.newest_run, entry.newest_kind = finished, row.run_id, row.kind
            entry.newest_size = row.stored_size
        if row.kind not in RESTORE_TESTED_KINDS:
            continue
        entry.retained += 1
        if row.restore_test_ok is None:
            entry.never_tested += 1
        elif row.restore_test_ok:
            entry.tested_ok += 1
        else:
            entry.tested_failed += 1
            entry.failed.append(row.run_id)
        if row.restore_tested_at and (entry.last_tested_at is None or row.restore_tested_at > entry.last_tested_at):
            entry.last_tested_at = row.restore_tested_at
    for entry in status.values():
        sample = newest_sample(store, f"backup {entry.component}")
        if sample is not None:
            entry.monitor_ok, entry.monitor_reason = sample.ok, sample.reason
    return sorted(status.values(), key=lambda e: e.component)


def newest_sample(store: Store, check: str) -> MonitorSample | None:
    with store.session() as session:
        return session.exec(select(MonitorSample).where(MonitorSample.check == check)
                            .order_by(col(MonitorSample.at).desc(), col(MonitorSample.id).desc())).first()


def month_start(now: datetime, zone: tzinfo) -> datetime:
    """The first instant of ``now``'s month in ``zone``."""
    local = now.astimezone(zone)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
