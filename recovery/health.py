"""Health checks: TCP, HTTP and PostgreSQL probes that never raise.

Each check returns a :class:`CheckResult` whose ``detail`` is a short human sentence safe to post
in Slack (passwords and tokens are masked with :func:`recovery.redact.redact`) and whose ``facts``
are plain JSON-able values the planner uses to classify the scenario (e.g. ``in_recovery``).
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import urlsplit

import psycopg
import requests
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from recovery.redact import redact
from statemachines.json_types import JsonObject

#: a server's own round trip (kinds "neo4j" and "milvus": recovery/monitor/graph_vector.py's probes):
#: timeout in seconds -> (answered, what it saw, its facts)
Ask = Callable[[float], tuple[bool, str, JsonObject]]
#: a failed check's fact: the server answered and refused Aegis's credentials — it says nothing about
#: the data, so a restore plan does not count it as a broken database (recovery/planner.py restore_scope)
CREDENTIALS_REFUSED = "credentials_refused"
_REFUSALS = ("password authentication failed", "no pg_hba.conf entry")


@dataclass(frozen=True)
class HealthSpec:
    name: str
    kind: str  # "tcp" | "http" | "postgres" | "neo4j" | "milvus"
    target: str  # "host:port" | URL | libpq DSN | the server's URI (neo4j, milvus)
    timeout_seconds: float = 3.0
    ask: Ask | None = field(default=None, compare=False, repr=False)   # neo4j, milvus: the probe to ask


@dataclass(frozen=True)
class CheckResult:
    name: str
    kind: str
    ok: bool
    detail: str
    latency_ms: float
    facts: JsonObject = field(default_factory=dict)


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def describe_error(exc: BaseException, secrets: list[str] | None = None) -> str:
    """A one-line, secret-free reason for a failed connection (the full libpq text is multi-line).

    ``secrets`` are values to mask wherever the server's text echoes them (e.g. the DSN's password).
    """
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("no such file or directory", "connection refused (no server at that socket)"),
        ("timeout expired", "timed out"),
        ("timed out", "timed out"),
        ("password authentication failed", "password authentication failed"),
        ("could not translate host name", "unknown host"),
        ("name or service not known", "unknown host"),
        ("the database system is starting up", "server is starting up"),
        ("the database system is shutting down", "server is shutting down"),
        ("the database system is in recovery mode", "server is in crash recovery"),
    ):
        if needle in lowered:
            return reason
    # libpq prefixes the useful part with "FATAL:"; otherwise keep the first line.
    line = text.split("FATAL:", 1)[-1].strip().splitlines()[0] if text.strip() else text
    return redact(line.strip(), secrets)[:200]


def dsn_password(dsn: str) -> list[str]:
    """The DSN's own password, if it has one, so that error texts echoing it can be masked."""
    try:
        password = conninfo_to_dict(dsn).get("password")
    except Exception:   # an unparsable DSN fails to connect with its own (redacted) reason
        return []
    return [str(password)] if password else []


def server_answered(exc: BaseException) -> bool:
    """True when the error came from a PostgreSQL server (it is up, it just refused us)."""
    return "FATAL:" in str(exc)


def _split_host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"tcp target must be host:port, got {redact(target)!r}")
    return host.strip("[]"), int(port)


def check_tcp(spec: HealthSpec) -> CheckResult:
    started = time.monotonic()
    try:
        host, port = _split_host_port(spec.target)
        with socket.create_connection((host, port), timeout=spec.timeout_seconds):
            pass
    except (OSError, ValueError) as exc:
        detail = f"unreachable: {describe_error(exc)}"
        return CheckResult(spec.name, spec.kind, False, detail, _elapsed_ms(started), {"reachable": False})
    return CheckResult(spec.name, spec.kind, True, f"accepting connections on port {port}",
                       _elapsed_ms(started), {"reachable": True})


def check_http(spec: HealthSpec) -> CheckResult:
    started = time.monotonic()
    try:
        # Redirects are not followed: a 3xx proves the service is up, and following one could
        # leave the host we were asked to probe.
        resp = requests.get(spec.target, timeout=spec.timeout_seconds, allow_redirects=False)
    except requests.RequestException as exc:
        detail = f"unreachable: {describe_error(exc)}"
        return CheckResult(spec.name, spec.kind, False, detail, _elapsed_ms(started), {"reachable": False})
    ok = 200 <= resp.status_code < 400
    host = urlsplit(spec.target).hostname or "?"
    detail = f"HTTP {resp.status_code} from {host}"
    facts = {"reachable": True, "status_code": resp.status_code}
    return CheckResult(spec.name, spec.kind, ok, detail, _elapsed_ms(started), facts)


def _jsonable(value: object) -> object:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


_STANDBY_SQL = """
SELECT pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()),
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
"""
_PRIMARY_SQL = """
SELECT count(*), extract(epoch FROM max(replay_lag))::float8 FROM pg_stat_replication
"""


def postgres_facts(conn: psycopg.Connection[TupleRow]) -> JsonObject:
    """Role and replication facts from an open connection (shared with the postgres actions)."""
    role = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    in_recovery = bool(role and role[0])
    facts: JsonObject = {"reachable": True, "in_recovery": in_recovery}
    if in_recovery:
        row = conn.execute(_STANDBY_SQL).fetchone()
        assert row is not None
        facts.update(
            receive_lsn=row[0],
            replay_lsn=row[1],
            # NULL receive LSN (standby restoring from archive only): unknown, not zero
            unreplayed_bytes=_jsonable(row[2]),
            replay_lag_seconds=row[3],
        )
    else:
        row = conn.execute(_PRIMARY_SQL).fetchone()
        assert row is not None
        facts.update(replicas=int(row[0]), max_replay_lag_seconds=row[1])
    return facts


def _postgres_detail(facts: JsonObject) -> str:
    if not facts["in_recovery"]:
        n = facts["replicas"]
        return f"primary, accepting writes, {n} replica{'' if n == 1 else 's'}"
    behind = facts["unreplayed_bytes"]
    behind_text = "replay position unknown" if behind is None else f"{behind} bytes behind"
    return f"standby in recovery, {behind_text}"


def check_postgres(spec: HealthSpec) -> CheckResult:
    started = time.monotonic()
    # libpq takes whole seconds and treats 1 as 2; round up so short timeouts still work.
    connect_timeout = max(2, math.ceil(spec.timeout_seconds))
    try:
        with psycopg.connect(spec.target, connect_timeout=connect_timeout, autocommit=True) as conn:
            conn.execute(f"SET statement_timeout = {int(spec.timeout_seconds * 1000)}")
            facts = postgres_facts(conn)
    except Exception as exc:  # a check reports, it never raises
        facts = {"reachable": False, "server_answered": server_answered(exc)}
        if any(refusal in str(exc).lower() for refusal in _REFUSALS):
            facts[CREDENTIALS_REFUSED] = True
        detail = f"unreachable: {describe_error(exc, dsn_password(spec.target))}"
        return CheckResult(spec.name, spec.kind, False, detail, _elapsed_ms(started), facts)
    return CheckResult(spec.name, spec.kind, True, _postgres_detail(facts), _elapsed_ms(started), facts)


def check_server(spec: HealthSpec) -> CheckResult:
    """A Neo4j or Milvus server asked by its probe (``spec.ask``), which never raises."""
    started = time.monotonic()
    if spec.ask is None:
        return CheckResult(spec.name, spec.kind, False, "no probe for this server", 0.0, {"reachable": False})
    ok, detail, facts = spec.ask(spec.timeout_seconds)
    return CheckResult(spec.name, spec.kind, ok, redact(detail)[:300], _elapsed_ms(started),
                       {"reachable": ok, **facts})


_CHECKS: dict[str, Callable[[HealthSpec], CheckResult]] = {
    "tcp": check_tcp,
    "http": check_http,
    "postgres": check_postgres,
    "neo4j": check_server,
    "milvus": check_server,
}


def run_check(spec: HealthSpec) -> CheckResult:
    """Dispatch on ``spec.kind``; anything unexpected becomes a failed result, never an exception."""
    check = _CHECKS.get(spec.kind)
    if check is None:
        return CheckResult(spec.name, spec.kind, False, f"unknown check kind {spec.kind!r}", 0.0, {})
    try:
        return check(spec)
    except Exception as exc:  # a bug in one check must not hide the others
        return CheckResult(spec.name, spec.kind, False, f"check failed: {describe_error(exc)}", 0.0,
                           {"reachable": False})


def run_checks(specs: list[HealthSpec], max_workers: int = 8) -> list[CheckResult]:
    """Run every check concurrently; results come back in the order of ``specs``."""
    if not specs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(specs)))) as pool:
        return list(pool.map(run_check, specs))
