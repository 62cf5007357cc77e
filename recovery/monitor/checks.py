"""Monitor checks (M1): a probe with a threshold and a timeout, and the sample each run leaves.

A probe returns an :class:`Observation` (ok, the observed value and its unit, a one-line reason,
plain facts the risk rules read). :func:`take_sample` turns any outcome of a probe — also an
exception — into a :class:`Sample`; the loop (``recovery.monitor.loop``) adds the timeout.

The probe factories below reuse ``recovery.health`` (TCP, HTTP, PostgreSQL reachability and
replication facts) and add what monitoring needs beyond a health check: disk free, replication
lag, WAL archiving (``pg_stat_archiver``), the age of the newest good backup, name resolution,
and canaries (a file or a query whose value must not change: a ransomware signal). Neo4j and
Milvus probes, which keep a client across cycles, are in ``recovery.monitor.graph_vector``.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

from recovery.health import (
    HealthSpec,
    check_http,
    check_postgres,
    check_tcp,
    describe_error,
    dsn_password,
)
from statemachines.json_types import JsonObject

DOMAINS = ("infrastructure", "database", "application", "network")


@dataclass(frozen=True)
class Observation:
    """What one probe saw. ``value`` is None when nothing could be measured (unreachable)."""

    ok: bool
    value: float | None
    unit: str
    reason: str
    facts: JsonObject = field(default_factory=dict)


Probe = Callable[[float], Observation]      # timeout in seconds -> what it saw


@dataclass(frozen=True)
class Check:
    """One thing the monitor watches.

    ``kind`` and ``subject`` say what it is to the risk rules (``postgres`` / ``primary``,
    ``service`` / ``auth``, ``canary`` / ``orders``…); ``tier`` is a service's tier.
    """

    name: str
    domain: str
    kind: str
    probe: Probe
    threshold: float | None = None
    timeout_seconds: float = 5.0
    interval_seconds: float = 30.0
    subject: str = ""
    tier: int | None = None

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"check {self.name!r}: domain {self.domain!r} is not one of {', '.join(DOMAINS)}")


@dataclass(frozen=True)
class Sample:
    check: str
    domain: str
    ok: bool
    value: float | None
    unit: str
    threshold: float | None
    at: datetime
    reason: str
    facts: JsonObject = field(default_factory=dict)
    latency_ms: float = 0.0


def sample_of(check: Check, observation: Observation, at: datetime, latency_ms: float) -> Sample:
    return Sample(check.name, check.domain, observation.ok, observation.value, observation.unit,
                  check.threshold, at, observation.reason[:300], dict(observation.facts), latency_ms)


def failed_sample(check: Check, reason: str, at: datetime, latency_ms: float = 0.0) -> Sample:
    return Sample(check.name, check.domain, False, None, "", check.threshold, at, reason[:300],
                  {"error": True}, latency_ms)


def take_sample(check: Check, now: Callable[[], datetime] | None = None) -> Sample:
    """Run the probe once; an exception is a failed sample with its reason, never a crash."""
    at = (now or _utcnow)()
    started = time.monotonic()
    try:
        observation = check.probe(check.timeout_seconds)
    except Exception as exc:   # a bug or an unexpected error in one probe must not hide the others
        return failed_sample(check, f"check raised {type(exc).__name__}: {describe_error(exc)}", at,
                             _ms(started))
    return sample_of(check, observation, at, _ms(started))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


# --- infrastructure and network ------------------------------------------------------------------


def tcp_probe(target: str) -> Probe:
    """Reachable when a TCP connection opens; the value is the connect time in ms."""
    def probe(timeout: float) -> Observation:
        result = check_tcp(HealthSpec("tcp", "tcp", target, timeout))
        return Observation(result.ok, result.latency_ms if result.ok else None, "ms", result.detail,
                           dict(result.facts))
    return probe


def http_probe(url: str) -> Probe:
    def probe(timeout: float) -> Observation:
        result = check_http(HealthSpec("http", "http", url, timeout))
        return Observation(result.ok, result.latency_ms if result.facts.get("reachable") else None, "ms",
                           result.detail, dict(result.facts))
    return probe


def disk_free_probe(path: str, min_free_percent: float) -> Probe:
    """Percent of the filesystem holding ``path`` still free; below the threshold fails."""
    def probe(timeout: float) -> Observation:
        try:
            usage = shutil.disk_usage(path)
        except OSError as exc:
            return Observation(False, None, "%", f"cannot read {path}: {exc.strerror or exc}")
        free = round(100.0 * usage.free / usage.total, 2) if usage.total else 0.0
        ok = free >= min_free_percent
        reason = f"{free}% free on {path} ({usage.free // (1024 * 1024)} MiB)"
        return Observation(ok, free, "%", reason if ok else f"{reason}, below {min_free_percent}%")
    return probe


def resolve_probe(host: str) -> Probe:
    """Name resolution of ``host``; the value is the lookup time in ms.

    ``getaddrinfo`` takes no timeout: the loop's per-check timeout bounds it.
    """
    def probe(timeout: float) -> Observation:
        started = time.monotonic()
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError as exc:
            return Observation(False, None, "ms", f"{host} does not resolve: {describe_error(exc)}")
        addresses = sorted({str(info[4][0]) for info in infos})
        return Observation(True, _ms(started), "ms", f"{host} resolves to {', '.join(addresses[:3])}",
                           {"addresses": addresses})
    return probe


# --- databases -----------------------------------------------------------------------------------


def postgres_probe(dsn: str, role: str) -> Probe:
    """Reachable or not, in recovery or not (facts ``reachable``, ``in_recovery``, ``role``)."""
    def probe(timeout: float) -> Observation:
        result = check_postgres(HealthSpec(role, "postgres", dsn, timeout))
        facts = dict(result.facts) | {"role": role}
        return Observation(result.ok, result.latency_ms if result.ok else None, "ms", result.detail, facts)
    return probe


def _connect(dsn: str, timeout: float) -> psycopg.Connection[TupleRow]:
    # libpq takes whole seconds and treats 1 as 2 (as recovery.health does)
    conn = psycopg.connect(dsn, connect_timeout=max(2, math.ceil(timeout)), autocommit=True)
    conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
    return conn


def _unreachable(dsn: str, exc: Exception, unit: str) -> Observation:
    return Observation(False, None, unit, f"unreachable: {describe_error(exc, dsn_password(dsn))}",
                       {"reachable": False})


_LAG_SQL = """
SELECT pg_is_in_recovery(),
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8,
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END
"""


def replication_lag_probe(dsn: str, unit: str, max_lag: float) -> Probe:
    """A standby's lag: ``bytes`` received but not replayed, or ``s`` behind the newest replayed commit.

    A standby that replayed all it received is 0 s behind (an idle primary sends no commits, so
    "now - last replayed commit" alone would grow forever).
    """
    column = 1 if unit == "bytes" else 2

    def probe(timeout: float) -> Observation:
        try:
            with _connect(dsn, timeout) as conn:
                row = conn.execute(_LAG_SQL).fetchone()
        except Exception as exc:
            return _unreachable(dsn, exc, unit)
        assert row is not None
        if not row[0]:
            return Observation(False, None, unit, "not in recovery: this node is no longer a standby",
                               {"reachable": True, "in_recovery": False})
        if row[column] is None:
            return Observation(False, None, unit, "replay position unknown (no WAL received from a primary)",
                               {"reachable": True, "in_recovery": True})
        lag = round(float(row[column]), 1)
        ok = lag <= max_lag
        reason = f"standby {lag:g} {unit} behind" + ("" if ok else f", more than {max_lag:g} {unit}")
        return Observation(ok, lag, unit, reason, {"reachable": True, "in_recovery": True})
    return probe


_ARCHIVER_SQL = """
SELECT a.archived_count, a.last_archived_wal, extract(epoch FROM now() - a.last_archived_time)::float8,
       a.failed_count, a.last_failed_wal, coalesce(a.last_failed_time > a.last_archived_time, false),
       current_setting('archive_mode')
FROM pg_stat_archiver a
"""
# segments waiting for the archiver (pg_monitor or superuser); without that right, "the newest
# failure is newer than the newest success" stands in for it
_READY_SQL = "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"


class WalArchivingProbe:
    """WAL archiving health from ``pg_stat_archiver`` on the primary.

    Stalled = WAL is waiting to be archived and the last success is older than ``max_age_seconds``
    (the RPO objective); the value is that age (0 when nothing waits). A failed count that grew since
    the previous sample fails the sample too, with the failing segment named.
    """

    def __init__(self, dsn: str, max_age_seconds: float) -> None:
        self.dsn, self.max_age = dsn, max_age_seconds
        self._lock = threading.Lock()
        self._failed_before: int | None = None

    def __call__(self, timeout: float) -> Observation:
        try:
            with _connect(self.dsn, timeout) as conn:
                if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
                    return Observation(True, 0.0, "s", "in recovery: a standby does not archive",
                                       {"reachable": True, "in_recovery": True})
                row = conn.execute(_ARCHIVER_SQL).fetchone()
                ready = _ready_segments(conn)
        except Exception as exc:
            return _unreachable(self.dsn, exc, "s")
        assert row is not None
        _archived, last_wal, age, failed, failed_wal, failed_since_success, mode = row
        if mode == "off":
            return Observation(False, None, "s", "archive_mode is off: no WAL is archived", {"reachable": True})
        with self._lock:
            grew = self._failed_before is not None and int(failed) > self._failed_before
            self._failed_before = int(failed)
        # last_archived_wal may be a backup history file (<segment>.<offset>.backup): its segment counts
        waiting = bool(ready) if ready is not None else bool(failed_since_success)
        stalled_for = float(age) if waiting and age is not None else 0.0
        facts = {"reachable": True, "failed_count": int(failed), "failures_growing": grew,
                 "last_archived_wal": last_wal, "waiting": waiting, "ready_segments": ready}
        if grew:
            return Observation(False, round(stalled_for, 1), "s",
                               f"archiving fails: {failed} failures, the latest on {failed_wal}", facts)
        if waiting and (age is None or age > self.max_age):
            since = "nothing archived yet" if age is None else f"last archived {age:.0f} s ago ({last_wal})"
            return Observation(False, None if age is None else round(age, 1), "s",
                               f"WAL archiving stalled: {since}", facts | {"stalled": True})
        return Observation(True, round(stalled_for, 1), "s",
                           f"archiving: last {last_wal or 'none'}, {failed} failures", facts)


def _ready_segments(conn: psycopg.Connection[TupleRow]) -> int | None:
    try:
        with conn.transaction():
            row = conn.execute(_READY_SQL).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    return int(row[0]) if row else 0


def backup_age_probe(component: str, max_age_seconds: float, newest: Callable[[], datetime | None]) -> Probe:
    """The age of the newest good backup of ``component`` against its schedule plus grace.

    ``newest`` answers when that backup finished (the catalog query the caller owns).
    """
    def probe(timeout: float) -> Observation:
        finished = newest()
        if finished is None:
            return Observation(False, None, "s", f"no good {component} backup in the catalog",
                               {"component": component, "stale": True})
        age = round((datetime.now(UTC) - finished).total_seconds(), 1)
        ok = age <= max_age_seconds
        hours = f"{age / 3600:.1f} h"
        reason = (f"newest good {component} backup {hours} old" +
                  ("" if ok else f", older than {max_age_seconds / 3600:.1f} h (schedule + grace)"))
        return Observation(ok, age, "s", reason, {"component": component, "stale": not ok})
    return probe


# --- canaries: a ransomware signal -----------------------------------------------------------------


def file_canary_probe(path: str, sha256: str) -> Probe:
    """A file that must never change: a changed or missing file is a ``changed`` fact."""
    def probe(timeout: float) -> Observation:
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except FileNotFoundError:
            return Observation(False, None, "", f"canary file {path} is gone", {"changed": True})
        except OSError as exc:
            return Observation(False, None, "", f"canary file {path} cannot be read: {exc.strerror or exc}",
                               {"changed": True})
        if digest != sha256.lower():
            return Observation(False, None, "", f"canary file {path} changed (sha256 {digest[:12]}…)",
                               {"changed": True})
        return Observation(True, None, "", f"canary file {path} unchanged", {"changed": False})
    return probe


def query_canary_probe(dsn: str, sql: str, expect: str) -> Probe:
    """A query whose first value must stay ``expect``; an unreachable database is not a change."""
    def probe(timeout: float) -> Observation:
        try:
            with _connect(dsn, timeout) as conn:
                row = conn.execute(sql).fetchone()
        except Exception as exc:
            return _unreachable(dsn, exc, "") if not _answered(exc) else Observation(
                False, None, "", f"canary query failed: {describe_error(exc, dsn_password(dsn))}", {"changed": True})
        seen = None if row is None else str(row[0])
        if seen != expect:
            return Observation(False, None, "", f"canary query returned {seen!r}, expected {expect!r}",
                               {"changed": True})
        return Observation(True, None, "", "canary query unchanged", {"changed": False})
    return probe


def _answered(exc: Exception) -> bool:
    """The server ran the query and it failed (a dropped or encrypted table), as opposed to no server."""
    return isinstance(exc, psycopg.errors.Error) and getattr(exc, "sqlstate", None) is not None

