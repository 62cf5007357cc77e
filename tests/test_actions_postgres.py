"""Failover actions against a real primary + streaming standby."""

from __future__ import annotations

import pytest

from recovery.actions.base import ActionError
from recovery.actions.postgres import PostgresConfirmDown, PostgresPromote, PostgresWritable
from tests.harness.pgcluster import PgPair

pytest_plugins = ["tests.harness.pgcluster"]


def test_failover_promotes_standby_with_the_data(pg_pair: PgPair) -> None:
    primary, standby = pg_pair.primary, pg_pair.standby
    primary.sql("CREATE TABLE orders (id int PRIMARY KEY)")
    primary.sql("INSERT INTO orders SELECT generate_series(1, 100)")
    pg_pair.wait_replicated()
    primary.stop("immediate")

    lines: list[str] = []
    down = PostgresConfirmDown(primary.dsn(), "pg-primary")
    out = down.execute(lines.append)
    assert out["reachable"] is False
    assert down.is_done() is True

    promote = PostgresPromote(standby.dsn(), "pg-standby", wait_seconds=30)
    assert promote.destructive and promote.kind == "postgres_promote"
    assert "pg-standby" in promote.describe() and "host=" not in promote.describe()
    assert promote.is_done() is False
    promote.precheck()
    out = promote.execute(lines.append)
    assert out["promoted"] is True
    assert out["timeline"] == 2
    assert out["unreplayed_bytes"] == 0
    assert out["receive_lsn"] and out["replay_lsn"]
    assert out["last_replay_at"] is not None and out["replay_lag_seconds"] is not None
    assert any("promoting" in line for line in lines) and any("promoted" in line for line in lines)
    promote.verify()
    assert promote.is_done() is True

    standby.sql("CREATE TABLE after_failover (id int)")
    standby.sql("INSERT INTO orders VALUES (101)")
    assert standby.sql("SELECT count(*) FROM orders") == [(101,)]

    again = PostgresPromote(standby.dsn(), "pg-standby")
    again.precheck()
    assert again.execute(lines.append)["already_promoted"] is True

    check = PostgresWritable(standby.dsn(), "pg-standby")
    assert check.execute(lines.append)["writable"] is True
    assert check.is_done() is None


def test_confirm_down_refuses_a_live_primary(pg_pair: PgPair) -> None:
    down = PostgresConfirmDown(pg_pair.primary.dsn(), "pg-primary")
    with pytest.raises(ActionError, match="still answers and accepts writes"):
        down.execute(lambda _line: None)
    assert down.is_done() is False


def test_confirm_down_refuses_a_server_that_rejects_our_login(pg_pair: PgPair) -> None:
    dsn = pg_pair.primary.tcp_dsn().replace("user=postgres", "user=nobody password=hunter22")
    down = PostgresConfirmDown(dsn, "pg-primary")
    with pytest.raises(ActionError, match="still answers") as err:
        down.execute(lambda _line: None)
    assert "hunter22" not in str(err.value)
    assert down.is_done() is False


def test_confirm_down_accepts_a_node_back_in_recovery(pg_pair: PgPair) -> None:
    # A read-only standby cannot take writes, so it is as good as down for split-brain purposes.
    out = PostgresConfirmDown(pg_pair.standby.dsn(), "pg-standby").execute(lambda _line: None)
    assert out["reachable"] is True and out["in_recovery"] is True


def test_promote_precheck_and_is_done_on_unreachable_standby(pg_pair: PgPair) -> None:
    pg_pair.standby.stop("immediate")
    promote = PostgresPromote(pg_pair.standby.dsn(), "pg-standby")
    with pytest.raises(ActionError, match="pg-standby is unreachable"):
        promote.precheck()
    assert promote.is_done() is None


def test_writable_fails_on_a_standby(pg_pair: PgPair) -> None:
    with pytest.raises(ActionError, match="in recovery"):
        PostgresWritable(pg_pair.standby.dsn(), "pg-standby").execute(lambda _line: None)
    with pytest.raises(ActionError, match="still in recovery"):
        PostgresPromote(pg_pair.standby.dsn(), "pg-standby").verify()
