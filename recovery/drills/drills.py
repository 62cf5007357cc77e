"""The three drills of D1 and the frame every drill runs in (D2).

``run_drill`` = sweep leftovers → write the run row → prepare the scratch environment → run →
validate → clean up → score → write the report → finish the row. Every step's timing is on the row
as it ends, and the scratch resources are registered before they exist (``scratch``), so a SIGKILL
at any point leaves a row the next start cleans up after.

- ``backup_restore_test``: every retained backup, least recently restore-tested first, restored into
  scratch and validated (``restores.test_backup``); new restores stop being started once the time
  budget is spent. Each tested backup's row gets ``restore_tested_at/ok/reason``.
- ``database_failover_test``: a throwaway standby built from the newest backup that has not failed a
  restore test, plus every archived WAL segment after it; recovery runs to the end of the archive and
  the server promotes itself (the end-of-recovery promotion a standby's ``pg_promote`` does), then
  it must accept a write. RTO: drill start → the write verified. RPO: the newest recovered
  transaction (``pg_last_xact_replay_timestamp()``) against the newest archived segment's push time.
- ``full_system_recovery_test``: PostgreSQL as above, then the newest Neo4j and Milvus backups, then
  each service (tier order, dependencies first) probed at its ``drill_url``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from recovery.backup.catalog import (
    MILVUS_KIND,
    NEO4J_KIND,
    POSTGRES_BASE_KINDS,
    mark_restore_test,
    newest_archived_wal,
    newest_good,
    restore_test_queue,
)
from recovery.drills import runs
from recovery.drills.context import DrillContext, ServiceProbe, Steps, lease_renewed
from recovery.drills.report import write_report
from recovery.drills.restores import RestoreResult, replay_point, restore_postgres_copy, test_backup
from recovery.drills.scoring import SCENARIO_OF, Figure, Score, overall, score
from recovery.drills.scratch import Scratch, sweep
from recovery.objectives import Basis
from recovery.redact import redact
from statemachines.json_types import JsonObject
from statemachines.models import BackupRecord, DrillRun, require_id, utcnow

log = logging.getLogger("aegis.drills")
DRILLS = ("backup_restore_test", "database_failover_test", "full_system_recovery_test")
#: a drill recovers once, so its MTTR is its RTO
ONE_RECOVERY = Basis("drill_mttr_one_recovery", "one recovery: its time to recover (drill start → verified)")


@dataclass
class Findings:
    """What a drill body found: its figures, whether its checks passed, and the details for the report."""

    figures: dict[str, Figure] = field(default_factory=dict)
    checks_ok: bool = True
    restores: list[RestoreResult] = field(default_factory=list)
    services: list[JsonObject] = field(default_factory=list)
    facts: JsonObject = field(default_factory=dict)

    def figures_dict(self) -> JsonObject:
        return {**{name: f.as_dict() for name, f in self.figures.items()}, **self.facts}


@dataclass
class DrillOutcome:
    run_id: int
    name: str
    status: str                      # passed | failed | error
    figures: JsonObject
    scores: list[Score]
    steps: list[JsonObject]
    report_path: str | None
    error: str = ""
    failed_backups: list[RestoreResult] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)


class DrillError(Exception):
    """A drill could not run at all (unknown name, nothing to restore)."""


# --- backup_restore_test ------------------------------------------------------------------------

def _backup_restore_test(ctx: DrillContext, scratch: Scratch, steps: Steps, started: datetime) -> Findings:
    findings = Findings()
    queue = restore_test_queue(ctx.store)
    budget = ctx.settings.restore_budget_seconds
    began = time.monotonic()
    not_reached: list[BackupRecord] = []
    for record in queue:
        if time.monotonic() - began >= budget:
            not_reached.append(record)
            continue
        with steps.step(f"restore-test {record.object_name}", "restore_test",
                        {"object": record.object_name}) as entry:
            result = test_backup(ctx, scratch, record)
            entry["ok"] = result.ok is not False and not result.blocked   # blocked: the environment refused
            entry["detail"] = result.reason[:600]
        findings.restores.append(result)
        if result.ok is not None:
            mark_restore_test(ctx.store, require_id(record), bool(result.ok), result.reason)
    tested = [r for r in findings.restores if r.ok is not None]
    failed = [r for r in tested if not r.ok]
    findings.checks_ok = bool(tested) and not failed
    retest = timedelta(days=ctx.settings.retest_days)
    overdue = [r for r in restore_test_queue(ctx.store)
               if r.restore_tested_at is None or r.restore_tested_at < utcnow() - retest]
    findings.facts = {"backups_in_window": len(queue), "tested": len(tested), "passed": len(tested) - len(failed),
                      "failed": len(failed), "untestable": len(findings.restores) - len(tested),
                      "not_reached": len(not_reached), "overdue": len(overdue),
                      "budget_seconds": budget, "restores": [r.as_dict() for r in findings.restores]}
    if tested:
        slowest = max(tested, key=lambda r: r.seconds)
        findings.figures["rto"] = Figure(round(slowest.seconds, 3), Basis(
            "drill_rto_restore_tests",
            f"the slowest of {len(tested)} restore(s): {slowest.object_name} took {slowest.seconds:.1f} s from the "
            "first read of its stored copy to its contents validated",
            {"count": len(tested), "object": slowest.object_name, "seconds": round(slowest.seconds, 1)}))
    else:
        findings.figures["rto"] = Figure(None, Basis("drill_rto_no_restore",
                                                     "unknown: no backup could be restore-tested"))
    findings.figures["rpo"] = Figure(None, Basis("drill_rpo_restore_test", "unknown: a restore test restores base "
                                                 "backups without WAL; the database_failover_test measures RPO"))
    findings.figures["mttr"] = Figure(None, Basis("drill_mttr_restore_test",
                                                  "unknown: a restore test recovers no service"))
    return findings


# --- database_failover_test ---------------------------------------------------------------------

def _newest_archived(ctx: DrillContext) -> BackupRecord | None:
    return newest_archived_wal(ctx.store)


def _rpo(replay: JsonObject, archived: BackupRecord | None, base: BackupRecord) -> Figure:
    last_xact: datetime | None = replay.get("last_xact_at")
    if archived is None or archived.finished_at is None:
        return Figure(None, Basis("drill_rpo_no_archive", "unknown: no WAL segment is archived (is archive_command "
                                  "`aegis wal push %p`?)"))
    if last_xact is None:
        return Figure(None, Basis("drill_rpo_nothing_replayed", f"unknown: recovery replayed no transaction after "
                                  f"backup {base.run_id} (nothing committed since it, or no WAL after it reached "
                                  "the archive)", {"backup": base.run_id}))
    seconds = max(0.0, (archived.finished_at - last_xact).total_seconds())
    committed, pushed = last_xact.isoformat(), archived.finished_at.isoformat()
    return Figure(round(seconds, 3), Basis(
        "drill_rpo",
        f"newest recovered transaction committed {committed} (pg_last_xact_replay_timestamp on the "
        f"promoted standby) against the newest archived WAL segment {archived.object_name} pushed "
        f"{pushed} (catalog); an idle database overstates it",
        {"committed": committed, "segment": archived.object_name, "pushed": pushed}))


def _failover(ctx: DrillContext, scratch: Scratch, steps: Steps, started: datetime, findings: Findings) -> None:
    base = newest_good(ctx.store, POSTGRES_BASE_KINDS, restore_test_ok=True)
    if base is None:
        raise DrillError("no PostgreSQL base backup to build a standby from (or every one failed its restore test)")
    with steps.step(f"standby from {base.run_id} + archived WAL", "standby", {"backup": base.run_id}) as entry:
        cluster, wal_files, _index = restore_postgres_copy(ctx, scratch, base, replay_wal=True)
        entry["detail"] = f"recovered from {wal_files} archived WAL file(s), port {cluster.port}"
    with steps.step("promote and accept a write", "promote_write") as entry:
        replay = replay_point(cluster)
        if replay["in_recovery"]:
            raise DrillError("the standby is still in recovery after the end of the archive")
        import psycopg

        with psycopg.connect(cluster.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE TABLE aegis_drill_probe (id int PRIMARY KEY, at timestamptz DEFAULT now())")
            conn.execute("INSERT INTO aegis_drill_probe (id) VALUES (1)")
            row = conn.execute("SELECT count(*) FROM aegis_drill_probe").fetchone()
        if not row or row[0] != 1:
            raise DrillError("the promoted standby did not return the row it was written")
        entry["detail"] = f"promoted (not in recovery), wrote and read back a row; replayed to {replay['replay_lsn']}"
    verified = utcnow()
    rto = (verified - started).total_seconds()
    span = {"started": started.isoformat(), "verified": verified.isoformat()}
    findings.figures["rto"] = Figure(round(rto, 3), Basis(
        "drill_rto_failover", f"drill start {span['started']} → write verified on the promoted standby "
        f"{span['verified']}", span))
    findings.figures["mttr"] = Figure(round(rto, 3), ONE_RECOVERY)
    archived = _newest_archived(ctx)
    findings.figures["rpo"] = _rpo(replay, archived, base)
    findings.facts.update(base_backup=base.run_id, wal_files=wal_files, replay_lsn=replay["replay_lsn"],
                          last_replayed_xact=replay["last_xact_at"].isoformat() if replay["last_xact_at"] else None,
                          newest_archived_segment=archived.object_name if archived else None)


def _database_failover_test(ctx: DrillContext, scratch: Scratch, steps: Steps, started: datetime) -> Findings:
    findings = Findings()
    _failover(ctx, scratch, steps, started, findings)
    return findings


# --- full_system_recovery_test ------------------------------------------------------------------

def _service_order(ctx: DrillContext) -> list[ServiceProbe]:
    """Tier 1 first, then dependencies before their dependants (T4)."""
    ordered: list[ServiceProbe] = []
    remaining = sorted(ctx.services, key=lambda s: (s.tier, s.name))
    while remaining:
        done = {s.name for s in ordered}
        ready = next((s for s in remaining if all(d in done for d in s.depends_on)), remaining[0])
        ordered.append(ready)
        remaining.remove(ready)
    return ordered


def _probe(url: str, name: str) -> tuple[bool, str]:
    from recovery.health import HealthSpec, run_check  # requests: loaded only by drills that probe services

    if url.startswith("tcp://"):
        spec = HealthSpec(name, "tcp", url.removeprefix("tcp://"))
    else:
        spec = HealthSpec(name, "http", url)
    result = run_check(spec)
    return result.ok, result.detail


def _full_system_recovery_test(ctx: DrillContext, scratch: Scratch, steps: Steps, started: datetime) -> Findings:
    findings = Findings()
    _failover(ctx, scratch, steps, started, findings)
    for kind, configured in ((NEO4J_KIND, ctx.neo4j is not None), (MILVUS_KIND, ctx.milvus_uri is not None)):
        if not configured:
            continue
        newest = newest_good(ctx.store, (kind,), restore_test_ok=True)
        if newest is None:
            findings.checks_ok = False
            steps.say(f"FAILED {kind}: no good backup to restore")
            continue
        with steps.step(f"restore {kind} {newest.run_id}", "restore_component",
                        {"component": kind, "backup": newest.run_id}) as entry:
            result = test_backup(ctx, scratch, newest)
            entry["ok"], entry["detail"] = result.ok is not False and not result.blocked, result.reason[:600]
        findings.restores.append(result)
        findings.checks_ok = findings.checks_ok and result.ok is not False and not result.blocked
    for service in _service_order(ctx):
        if not service.drill_url:
            findings.services.append({"service": service.name, "tier": service.tier, "ok": None,
                                      "detail": "not checked: no drill_url configured"})
            continue
        with steps.step(f"service {service.name} (tier {service.tier})", "service",
                        {"service": service.name, "tier": service.tier}) as entry:
            ok, detail = _probe(service.drill_url, service.name)
            entry["ok"], entry["detail"] = ok, detail
        findings.services.append({"service": service.name, "tier": service.tier, "ok": ok, "detail": detail})
        findings.checks_ok = findings.checks_ok and ok
    verified = utcnow()
    rto = (verified - started).total_seconds()
    span = {"started": started.isoformat(), "verified": verified.isoformat()}
    findings.figures["rto"] = Figure(round(rto, 3), Basis(
        "drill_rto_full", f"drill start {span['started']} → every component restored and every service with a "
        f"drill_url answered {span['verified']}", span))
    findings.figures["mttr"] = Figure(round(rto, 3), ONE_RECOVERY)
    findings.facts["services"] = findings.services
    findings.facts["restores"] = [r.as_dict() for r in findings.restores]
    return findings


BODIES: dict[str, Callable[[DrillContext, Scratch, Steps, datetime], Findings]] = {
    "backup_restore_test": _backup_restore_test,
    "database_failover_test": _database_failover_test,
    "full_system_recovery_test": _full_system_recovery_test,
}


# --- the frame ----------------------------------------------------------------------------------

def run_drill(ctx: DrillContext, name: str, trigger: str, requested_by: str | None = None) -> DrillOutcome:
    """Run drill ``name`` start to finish; never raises for a failure inside the drill (it is the outcome)."""
    body = BODIES.get(name)
    if body is None:
        raise DrillError(f"unknown drill {name!r}; drills are {', '.join(DRILLS)}")
    swept = sweep(ctx.store, ctx.droppers)
    for line in swept:
        ctx.say(line)
    run = runs.start(ctx.store, name, trigger, requested_by=requested_by, scenario=SCENARIO_OF.get(name))
    run_id = require_id(run)
    steps = Steps(ctx.store, run_id, ctx.say, ctx.settings.step_delay_seconds)
    findings, error = Findings(checks_ok=False), ""
    scratch: Scratch | None = None
    with lease_renewed(ctx.store, run_id):
        try:
            with steps.step("prepare scratch environment", "prepare") as entry:
                scratch = Scratch.prepare(ctx.store, run_id, ctx.settings.scratch_dir, ctx.droppers,
                                          ctx.settings.os_user, ctx.settings.pg_bin)
                entry["detail"] = str(scratch.root)
            findings = body(ctx, scratch, steps, run.started_at)
        except Exception as exc:   # the drill failed to run: recorded, reported, cleaned up
            error = redact(f"{type(exc).__name__}: {exc}")[:1500]
            log.warning("drill %s (%s) stopped: %s", run_id, name, error)
        finally:
            _clean_up(ctx, steps, run_id, scratch)
    return _finish(ctx, run_id, name, findings, error, steps, swept)


def _clean_up(ctx: DrillContext, steps: Steps, run_id: int, scratch: Scratch | None) -> None:
    try:
        with steps.step("clean up", "clean_up") as entry:
            if scratch is not None:   # restore-test copies still being deleted: joined, then marked
                scratch.finish_removals()
            fresh = runs.get(ctx.store, run_id)
            if fresh is None:
                return
            from recovery.drills.scratch import clean_run

            problems = clean_run(ctx.store, fresh, ctx.droppers)
            entry["ok"] = not problems
            entry["detail"] = "; ".join(problems) or f"{len(fresh.scratch)} scratch resource(s) removed"
    except Exception:
        log.exception("drill %s: clean-up failed; the next start retries it", run_id)


def _finish(ctx: DrillContext, run_id: int, name: str, findings: Findings, error: str, steps: Steps,
            swept: list[str]) -> DrillOutcome:
    run = runs.get(ctx.store, run_id)
    assert run is not None
    scores = score(run.scenario, findings.figures, ctx.objectives)
    checks_ok = findings.checks_ok and not error and not steps.failed
    status = "error" if error else overall(scores, checks_ok)
    figures = findings.figures_dict()
    objectives = [s.as_dict() for s in scores]
    report_path = write_report(ctx.settings.report_dir, run, status, figures, objectives, error)
    runs.finish(ctx.store, run_id, status=status, figures=figures, objectives=objectives,
                report_path=str(report_path), error=error)
    final = runs.get(ctx.store, run_id) or run
    failed = [r for r in findings.restores if r.ok is False]
    return DrillOutcome(run_id, name, status, figures, scores, list(final.steps), str(report_path), error,
                        failed, swept)


def describe(run: DrillRun) -> str:
    """One line per run for listings."""
    ended = run.finished_at.isoformat(timespec="seconds") if run.finished_at else "running"
    began = run.started_at.isoformat(timespec="seconds")
    return f"{run.id}  {run.name}  {run.trigger}  {run.status}  {began} → {ended}"
