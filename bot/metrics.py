"""``GET /metrics``: Prometheus text format, read from the store at scrape time.

A custom collector (``AegisCollector``) queries the store on every scrape instead of counting in
process memory, so every replica behind a load balancer answers the same figures and a restart
loses nothing. Names follow Prometheus conventions (base units, ``_seconds``, ``_bytes``, ``_total``):

- ``aegis_incidents_open{state,severity}``: incidents not closed
- ``aegis_step_executions_total{action,status}``: executions of plan steps (the action ledger)
- ``aegis_step_duration_seconds{action}``: a histogram of finished executions' durations
- ``aegis_backup_last_success_timestamp_seconds{component}``, ``aegis_backup_last_success_size_bytes{component}``
- ``aegis_backup_restore_tests{component,result}``: retained backups by restore-test result (ok, failed, never)
- ``aegis_wal_archive_last_success_timestamp_seconds``, ``aegis_wal_archive_lag_seconds``: the newest archived
  WAL segment (catalog) and the seconds since it (on an idle database this grows up to ``archive_timeout``)
- ``aegis_drill_last_success{drill}`` (1 passed, 0 otherwise), ``aegis_drill_last_run_timestamp_seconds{drill}``,
  ``aegis_drill_last_rto_seconds{drill}``, ``aegis_drill_last_rpo_seconds{drill}`` (when measured)
- ``aegis_monitor_check_up{check,domain}``, ``aegis_monitor_check_value{check,unit}``,
  ``aegis_monitor_check_latency_seconds{check}`` (checks whose value is a connect/response time),
  ``aegis_monitor_check_last_sample_timestamp_seconds{check}``: each check's newest sample of the last hour
- ``aegis_monitor_conditions_open{level,rule}``

Access: with ``reports.metrics_token_env`` set, ``Authorization: Bearer <token>`` is required from
anywhere; without it, only loopback clients (127.0.0.0/8, ::1) are answered (403 otherwise).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlmodel import col, select

from recovery.backup.catalog import newest_archived_at
from recovery.reporting.figures import backup_status, drill_figures
from statemachines.models import Incident, LedgerEntry, MonitorCondition, MonitorSample
from statemachines.store import Store

log = logging.getLogger("aegis.metrics")
METRICS_PATH = "/metrics"
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)
RECENT_SAMPLES = timedelta(hours=1)
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AegisCollector(Collector):
    def __init__(self, store: Store, now: Clock = _utcnow) -> None:
        self.store, self.now = store, now

    def collect(self) -> Iterator[Metric]:
        now = self.now()
        yield from self._incidents()
        yield from self._steps()
        yield from self._backups(now)
        yield from self._drills()
        yield from self._monitor(now)

    def _incidents(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("aegis_incidents_open", "Incidents not closed, by state and severity",
                                  labels=["state", "severity"])
        query = (select(Incident.state, Incident.severity, func.count())
                 .where(Incident.state != "closed").group_by(Incident.state, Incident.severity))
        with self.store.session() as session:
            for state, severity, count in session.exec(query):
                gauge.add_metric([state, severity], count)
        yield gauge

    def _steps(self) -> Iterator[Metric]:
        counter = CounterMetricFamily("aegis_step_executions", "Executions of plan steps (the action ledger), "
                                      "by action and status", labels=["action", "status"])
        durations: dict[str, list[float]] = {}
        with self.store.session() as session:
            for action, status, count in session.exec(select(LedgerEntry.action, LedgerEntry.status, func.count())
                                                      .group_by(LedgerEntry.action, LedgerEntry.status)):
                counter.add_metric([action, status], count)
            finished = select(LedgerEntry.action, LedgerEntry.started_at, LedgerEntry.finished_at).where(
                col(LedgerEntry.finished_at).is_not(None))
            for action, started, ended in session.exec(finished):
                if ended is None:
                    continue
                durations.setdefault(action, []).append(max(0.0, (ended - started).total_seconds()))
        yield counter
        histogram = HistogramMetricFamily("aegis_step_duration_seconds", "Duration of finished step executions",
                                          labels=["action"])
        for action, values in sorted(durations.items()):
            buckets = [(_bound(b), float(sum(1 for v in values if v <= b))) for b in DURATION_BUCKETS]
            histogram.add_metric([action], [*buckets, ("+Inf", float(len(values)))], sum(values))
        yield histogram

    def _backups(self, now: datetime) -> Iterator[Metric]:
        last = GaugeMetricFamily("aegis_backup_last_success_timestamp_seconds",
                                 "When the newest good backup of each component finished", labels=["component"])
        size = GaugeMetricFamily("aegis_backup_last_success_size_bytes", "Stored size of that backup",
                                 labels=["component"])
        tests = GaugeMetricFamily("aegis_backup_restore_tests", "Retained backups by their last restore test",
                                  labels=["component", "result"])
        for entry in backup_status(self.store):
            if entry.newest_at is not None:
                last.add_metric([entry.component], entry.newest_at.timestamp())
                size.add_metric([entry.component], float(entry.newest_size))
            for result, count in (("ok", entry.tested_ok), ("failed", entry.tested_failed),
                                  ("never", entry.never_tested)):
                tests.add_metric([entry.component, result], count)
        yield from (last, size, tests)
        archived = newest_archived_at(self.store)
        wal = GaugeMetricFamily("aegis_wal_archive_last_success_timestamp_seconds",
                                "When the newest WAL segment was archived (catalog)")
        lag = GaugeMetricFamily("aegis_wal_archive_lag_seconds", "Seconds since the newest WAL segment was archived")
        if archived is not None:
            archived = archived if archived.tzinfo else archived.replace(tzinfo=UTC)
            wal.add_metric([], archived.timestamp())
            lag.add_metric([], max(0.0, (now - archived).total_seconds()))
        yield from (wal, lag)

    def _drills(self) -> Iterator[Metric]:
        success = GaugeMetricFamily("aegis_drill_last_success", "1 when the drill's last run passed, else 0",
                                    labels=["drill"])
        when = GaugeMetricFamily("aegis_drill_last_run_timestamp_seconds", "When the drill's last run started",
                                 labels=["drill"])
        rto = GaugeMetricFamily("aegis_drill_last_rto_seconds", "RTO measured by the drill's last run",
                                labels=["drill"])
        rpo = GaugeMetricFamily("aegis_drill_last_rpo_seconds", "RPO measured by the drill's last run",
                                labels=["drill"])
        latest = {run.name: run for run in drill_figures(self.store)}     # oldest first: the last one wins
        for name, run in sorted(latest.items()):
            success.add_metric([name], 1.0 if run.status == "passed" else 0.0)
            when.add_metric([name], run.started_at.timestamp())
            if run.rto_seconds is not None:
                rto.add_metric([name], run.rto_seconds)
            if run.rpo_seconds is not None:
                rpo.add_metric([name], run.rpo_seconds)
        yield from (success, when, rto, rpo)

    def _monitor(self, now: datetime) -> Iterator[Metric]:
        up = GaugeMetricFamily("aegis_monitor_check_up", "1 when the check's newest sample was good",
                               labels=["check", "domain"])
        value = GaugeMetricFamily("aegis_monitor_check_value", "The value the check's newest sample observed",
                                  labels=["check", "unit"])
        latency = GaugeMetricFamily("aegis_monitor_check_latency_seconds",
                                    "Connect or response time of the check's newest sample", labels=["check"])
        seen = GaugeMetricFamily("aegis_monitor_check_last_sample_timestamp_seconds",
                                 "When the check was last sampled", labels=["check"])
        newest = (select(MonitorSample.check, func.max(MonitorSample.id))
                  .where(col(MonitorSample.at) >= now - RECENT_SAMPLES).group_by(MonitorSample.check))
        with self.store.session() as session:
            ids = [row[1] for row in session.exec(newest)]
            samples = list(session.exec(select(MonitorSample).where(col(MonitorSample.id).in_(ids)))) if ids else []
            conditions = list(session.exec(select(MonitorCondition.level, MonitorCondition.rule, func.count())
                                           .where(col(MonitorCondition.open_key).is_not(None))
                                           .group_by(MonitorCondition.level, MonitorCondition.rule)))
        for sample in sorted(samples, key=lambda s: s.check):
            up.add_metric([sample.check, sample.domain], 1.0 if sample.ok else 0.0)
            seen.add_metric([sample.check], sample.at.timestamp())
            if sample.value is not None:
                value.add_metric([sample.check, sample.unit], sample.value)
                if sample.unit == "ms":
                    latency.add_metric([sample.check], sample.value / 1000)
        yield from (up, value, latency, seen)
        open_conditions = GaugeMetricFamily("aegis_monitor_conditions_open", "Risk conditions holding now",
                                            labels=["level", "rule"])
        for level, rule, count in conditions:
            open_conditions.add_metric([level, rule], count)
        yield open_conditions


def _bound(value: float) -> str:
    return f"{value:g}" if value < 1e6 else repr(value)


def registry_for(store: Store) -> CollectorRegistry:
    """A registry with only Aegis's collector (no process or platform collectors of the library's default)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AegisCollector(store))
    return registry


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


class MetricsApp:
    """The WSGI app of ``GET /metrics`` (see the module docstring for who may read it)."""

    def __init__(self, store: Store, token_env: str | None) -> None:
        self.registry = registry_for(store)
        self.token_env = token_env

    def allowed(self, environ: WSGIEnvironment) -> bool:
        if self.token_env:
            token = os.environ.get(self.token_env, "")
            given = str(environ.get("HTTP_AUTHORIZATION", ""))
            return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
        return _loopback(str(environ.get("REMOTE_ADDR", "")))

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", b"GET only")
        if not self.allowed(environ):
            why = (b"a bearer token is required (reports.metrics_token_env)" if self.token_env
                   else b"/metrics answers loopback clients only; set reports.metrics_token_env to allow others")
            return _plain(start_response, "403 Forbidden", why)
        try:
            body = generate_latest(self.registry)
        except Exception:
            log.exception("could not collect the metrics")
            return _plain(start_response, "503 Service Unavailable", b"the store could not be read")
        # the classic text format (0.0.4): every Prometheus reads it, and no name here needs 1.0.0's escaping
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]


def _plain(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
