"""The plan's last step: services answer their health checks and the database takes writes.

A verification passes only on evidence: every check is recorded with the value it observed
(``[{check, observed, expected, ok}]``), and at least one check must have run. With nothing
automated configured the step is handed to a person (``NeedsHuman``): a responder states what they
checked, and that statement becomes the evidence. "Checked nothing" is never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import SupportsFloat, cast

import psycopg
from psycopg.rows import TupleRow

from recovery.actions.base import (
    Action,
    ActionError,
    Evidence,
    NeedsHuman,
    Progress,
    VerificationFailed,
    evidence,
)
from recovery.health import CheckResult, HealthSpec, describe_error, run_checks
from statemachines.json_types import JsonObject

_EXPECTED = {
    "http": "HTTP 2xx or 3xx",
    "tcp": "TCP connection accepted",
    "postgres": "reachable",
}


class DatabaseCheck(Action):
    """What ``VerifyRecovery`` needs from a database probe: observations, not just "no error"."""

    kind = "database_check"
    destructive = False

    def describe(self) -> str:
        return "check the database"

    def observe(self) -> list[Evidence]:
        raise NotImplementedError

    def execute(self, progress: Progress) -> JsonObject:
        return {"evidence": self.observe()}


def _service_evidence(result: CheckResult) -> Evidence:
    name = f"{result.name} ({result.kind.upper() if result.kind != 'postgres' else 'PostgreSQL'})"
    return evidence(name, result.detail, _EXPECTED.get(result.kind, "ok"), result.ok)


class VerifyRecovery(Action):
    kind = "verify"
    destructive = False

    def __init__(self, checks: list[HealthSpec], database: DatabaseCheck | None = None) -> None:
        self.checks = checks
        self.database = database

    def describe(self) -> str:
        if not self.checks and self.database is None:
            return "manual verification: no automated check is configured"
        return f"check {len(self.checks)} service(s)" + (" and a database write" if self.database else "")

    def execute(self, progress: Progress) -> JsonObject:
        if not self.checks and self.database is None:
            raise NeedsHuman("no automated check is configured (no service health checks, no database)")
        observations: list[Evidence] = []
        if self.database is not None:
            try:
                observations += self.database.observe()
            except ActionError as exc:
                observations.append(evidence(self.database.describe(), str(exc), "reachable primary", False))
        observations += [_service_evidence(r) for r in run_checks(self.checks)]
        for item in observations:
            progress(f"{item['check']}: {'ok' if item['ok'] else 'FAILED'} — {item['observed']}")
        failures = [f"{item['check']}: {item['observed']}" for item in observations if not item["ok"]]
        if failures:
            raise VerificationFailed("verification failed: " + "; ".join(failures), observations)
        return {"evidence": observations, "checks_passed": len(observations)}


@dataclass(frozen=True)
class IntegrityQuery:
    """A configured read-only query whose first value is evidence that the data is there."""

    name: str
    sql: str
    expect: str | None = None       # the value, as text, must equal this
    minimum: float | None = None    # or be a number at least this
    timeout_seconds: float = 30

    def expected(self) -> str:
        if self.expect is not None:
            return f"= {self.expect}"
        if self.minimum is not None:
            return f"≥ {self.minimum:g}"
        return "a value that is not empty or false"

    def judge(self, value: object) -> bool:
        if self.expect is not None:
            return value is not None and str(value) == self.expect
        if self.minimum is not None:
            try:
                number = cast("SupportsFloat", value)   # float() raises below for what is not a number
                return value is not None and not isinstance(value, bool) and float(number) >= self.minimum
            except (TypeError, ValueError):   # a value float() cannot read (a date, a word): not a number
                return False
        return value is not None and value is not False and value != ""

    def observe(self, conn: psycopg.Connection[TupleRow]) -> Evidence:
        """Run read-only under a statement timeout; a failing query is a failed check, never a crash."""
        check = f"integrity: {self.name}"
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION READ ONLY")
                conn.execute(f"SET LOCAL statement_timeout = {int(self.timeout_seconds * 1000)}")
                row = conn.execute(self.sql).fetchone()  # the operator's own SQL
        except psycopg.Error as exc:
            return evidence(check, f"query failed: {describe_error(exc)}", self.expected(), False)
        if row is None:
            return evidence(check, "no row", self.expected(), False)
        value = row[0]
        return evidence(check, str(value)[:200] if value is not None else "NULL", self.expected(), self.judge(value))


class PostgresVerification(DatabaseCheck):
    """The promoted/restored node: its role, a committed write, its replication state, and the
    configured integrity queries (``components.postgres.integrity_checks``)."""

    kind = "postgres_writable"

    def __init__(self, dsn: str, label: str, integrity: tuple[IntegrityQuery, ...] = ()) -> None:
        self.dsn = dsn
        self.label = label
        self.integrity = integrity

    def describe(self) -> str:
        return f"{self.label} accepts writes"

    def observe(self) -> list[Evidence]:
        # the connection helpers redact and reduce driver errors to one line
        from recovery.actions.postgres import connect_action, is_in_recovery

        with connect_action(self.dsn, self.label) as conn:
            in_recovery = is_in_recovery(conn)
            role = evidence(f"{self.label} role (pg_is_in_recovery)",
                            "standby, in recovery (true)" if in_recovery else "primary (false)",
                            "primary (false)", not in_recovery)
            if in_recovery:
                return [role, evidence(f"{self.label} accepts writes", "read-only: in recovery",
                                       "a committed write", False)]
            with conn.transaction():
                row = conn.execute("SELECT txid_current()").fetchone()
            replicas = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()
            integrity = [query.observe(conn) for query in self.integrity]
        txid = int(row[0]) if row else 0
        count = int(replicas[0]) if replicas else 0
        return [
            role,
            evidence(f"{self.label} accepts writes", f"committed transaction {txid}", "a committed write",
                     txid > 0),
            evidence(f"{self.label} replication", f"{count} streaming replica(s)", "reported", True),
            *integrity,
        ]
