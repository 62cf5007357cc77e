"""PostgreSQL failover actions: confirm the old primary is down, promote the standby, check writes.

Messages name nodes by their ``label`` (from config), never by DSN, so that no password can leak
into Slack or the ledger; driver errors are reduced to one redacted line by ``describe_error``.

"Down" means *this bot cannot reach it*. That is not fencing: a primary partitioned away from the
bot may still serve clients, so a failover plan puts a fencing hook before the promotion.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import psycopg
from psycopg.rows import TupleRow

from recovery.actions.base import Action, ActionError, Progress
from recovery.health import HealthSpec, check_postgres, describe_error
from statemachines.json_types import JsonObject

CONNECT_TIMEOUT_SECONDS = 5


@contextmanager
def connect_action(dsn: str, label: str) -> Iterator[psycopg.Connection[TupleRow]]:
    """Autocommit connection; connection failures become a redacted ActionError."""
    try:
        conn = psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS, autocommit=True)
    except psycopg.Error as exc:
        raise ActionError(f"{label} is unreachable: {describe_error(exc)}") from None
    try:
        yield conn
    except psycopg.Error as exc:
        raise ActionError(f"{label}: {describe_error(exc)}") from None
    finally:
        conn.close()


def is_in_recovery(conn: psycopg.Connection[TupleRow]) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def _timeline(conn: psycopg.Connection[TupleRow]) -> int:
    """Current timeline from the WAL file name: pg_control_checkpoint() lags until the next checkpoint."""
    row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
    assert row is not None
    return int(str(row[0])[:8], 16)


def _check_writable(conn: psycopg.Connection[TupleRow], label: str) -> int:
    """Raise unless ``conn`` is a primary that can commit a write; return the new transaction id."""
    if is_in_recovery(conn):
        raise ActionError(f"{label} is still in recovery (read-only)")
    with conn.transaction():
        row = conn.execute("SELECT txid_current()").fetchone()
    assert row is not None
    return int(row[0])


class PostgresConfirmDown(Action):
    """Confirm the old primary no longer answers before anything is promoted."""

    kind = "postgres_confirm_down"
    destructive = False

    def __init__(self, dsn: str, label: str) -> None:
        self.dsn = dsn
        self.label = label

    def describe(self) -> str:
        return f"Confirm {self.label} is down (no longer answering or accepting writes)"

    def _probe(self) -> JsonObject:
        result = check_postgres(HealthSpec(self.label, "postgres", self.dsn, CONNECT_TIMEOUT_SECONDS))
        return {**result.facts, "detail": result.detail}

    def execute(self, progress: Progress) -> JsonObject:
        facts = self._probe()
        if facts["reachable"] is False and facts.get("server_answered"):
            # e.g. auth failure or "too many connections": the server is up, we just cannot log in.
            raise ActionError(f"{self.label} still answers ({facts['detail']}): fence it or reassess")
        if facts["reachable"] and not facts["in_recovery"]:
            raise ActionError(f"{self.label} still answers and accepts writes: fence it or reassess")
        # An old primary that came back as a read-only standby cannot diverge: treat it as down.
        progress(f"{self.label}: {facts['detail']}")
        return facts

    def is_done(self) -> bool | None:
        facts = self._probe()
        if facts["reachable"]:
            return bool(facts["in_recovery"])
        return not facts.get("server_answered", False)


_REPLAY_SQL = """
SELECT pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint,
       pg_last_xact_replay_timestamp(),
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
"""


class PostgresPromote(Action):
    """Promote a streaming standby to primary with ``pg_promote``; idempotent."""

    kind = "postgres_promote"
    destructive = True

    def __init__(self, standby_dsn: str, label: str, wait_seconds: int = 60) -> None:
        self.dsn = standby_dsn
        self.label = label
        self.wait_seconds = int(wait_seconds)

    def describe(self) -> str:
        return f"Promote standby {self.label} to primary (waits up to {self.wait_seconds}s)"

    def precheck(self) -> None:
        # Reachable is the requirement; not being in recovery means a previous attempt succeeded.
        with connect_action(self.dsn, self.label) as conn:
            is_in_recovery(conn)

    def execute(self, progress: Progress) -> JsonObject:
        with connect_action(self.dsn, self.label) as conn:
            if not is_in_recovery(conn):
                progress(f"{self.label} is already a primary; nothing to promote")
                return {"already_promoted": True, "promoted": True, "timeline": _timeline(conn)}
            row = conn.execute(_REPLAY_SQL).fetchone()
            assert row is not None
            receive_lsn, replay_lsn, unreplayed, last_replay, lag = row
            last_replay_at = last_replay.isoformat() if isinstance(last_replay, datetime) else None
            progress(
                f"{self.label}: received {receive_lsn}, replayed {replay_lsn}, "
                f"{unreplayed if unreplayed is not None else '?'} bytes unreplayed, "
                f"last replayed transaction at {last_replay_at or 'unknown'}; promoting"
            )
            promoted_row = conn.execute("SELECT pg_promote(true, %s)", (self.wait_seconds,)).fetchone()
            if not (promoted_row and promoted_row[0]):
                raise ActionError(f"{self.label} did not finish promotion within {self.wait_seconds}s")
            timeline = _timeline(conn)
            progress(f"{self.label} promoted: now primary on timeline {timeline}")
        return {
            "receive_lsn": receive_lsn,
            "replay_lsn": replay_lsn,
            "unreplayed_bytes": unreplayed,
            "last_replay_at": last_replay_at,
            "replay_lag_seconds": lag,
            "promoted": True,
            "timeline": timeline,
        }

    def verify(self) -> None:
        with connect_action(self.dsn, self.label) as conn:
            _check_writable(conn, self.label)

    def is_done(self) -> bool | None:
        try:
            with connect_action(self.dsn, self.label) as conn:
                return not is_in_recovery(conn)
        except ActionError:
            return None


class PostgresWritable(Action):
    """Verification check: the node is a primary and commits a write transaction."""

    kind = "postgres_writable"
    destructive = False

    def __init__(self, dsn: str, label: str) -> None:
        self.dsn = dsn
        self.label = label

    def describe(self) -> str:
        return f"Check {self.label} accepts writes"

    def execute(self, progress: Progress) -> JsonObject:
        with connect_action(self.dsn, self.label) as conn:
            txid = _check_writable(conn, self.label)
        progress(f"{self.label} accepts writes")
        return {"writable": True, "txid": txid}
