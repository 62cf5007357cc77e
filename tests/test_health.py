"""Health checks against real sockets, a real HTTP server and a real PostgreSQL pair."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recovery.health import HealthSpec, check_http, check_postgres, check_tcp, run_checks
from tests.harness.aegis_process import wait_for
from tests.harness.pgcluster import PgPair, free_port

pytest_plugins = ["tests.harness.pgcluster"]


class _StatusHandler(BaseHTTPRequestHandler):
    """GET /<code> answers with that status code."""

    def do_GET(self) -> None:  # http.server's naming
        code = int(self.path.strip("/") or 200)
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_tcp_ok_and_refused() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ok = check_tcp(HealthSpec("svc", "tcp", f"127.0.0.1:{port}", 2))
    assert ok.ok and ok.facts["reachable"] is True
    refused = check_tcp(HealthSpec("svc", "tcp", f"127.0.0.1:{free_port()}", 2))
    assert not refused.ok
    assert "refused" in refused.detail


def test_tcp_bad_target_is_a_failed_result() -> None:
    result = check_tcp(HealthSpec("svc", "tcp", "no-port-here", 1))
    assert not result.ok


def test_http_status_codes(http_base: str) -> None:
    assert check_http(HealthSpec("web", "http", f"{http_base}/200")).ok
    assert check_http(HealthSpec("web", "http", f"{http_base}/302")).ok
    failed = check_http(HealthSpec("web", "http", f"{http_base}/500"))
    assert not failed.ok and "500" in failed.detail and failed.facts["status_code"] == 500
    refused = check_http(HealthSpec("web", "http", f"http://127.0.0.1:{free_port()}/health", 2))
    assert not refused.ok and refused.facts["reachable"] is False


def test_postgres_primary_and_standby_facts(pg_pair: PgPair) -> None:
    primary, standby = run_checks([
        HealthSpec("pg-primary", "postgres", pg_pair.primary.dsn()),
        HealthSpec("pg-standby", "postgres", pg_pair.standby.tcp_dsn()),
    ])
    assert primary.ok and primary.facts["in_recovery"] is False
    assert primary.facts["replicas"] == 1
    assert primary.detail == "primary, accepting writes, 1 replica"
    assert standby.ok and standby.facts["in_recovery"] is True
    assert standby.facts["receive_lsn"] and standby.facts["replay_lsn"]
    assert standby.detail.startswith("standby in recovery")


def test_standby_lag_is_the_wal_received_but_not_replayed(pg_pair: PgPair) -> None:
    # Pause replay, write on the primary, wait until the standby has received it: the lag the
    # check reports must be exactly receive - replay, and more than zero.
    standby = pg_pair.standby
    standby.sql("SELECT pg_wal_replay_pause()")
    try:
        before = standby.sql("SELECT pg_last_wal_receive_lsn()")[0][0]
        pg_pair.primary.sql("CREATE TABLE lag_probe AS SELECT g AS n FROM generate_series(1, 20000) g")
        wait_for(lambda: standby.sql(f"SELECT pg_last_wal_receive_lsn() > '{before}'::pg_lsn")[0][0],
                 what="the standby to receive the new WAL")
        result = run_checks([HealthSpec("pg-standby", "postgres", standby.tcp_dsn())])[0]
        receive, replay = result.facts["receive_lsn"], result.facts["replay_lsn"]
        expected = standby.sql(f"SELECT pg_wal_lsn_diff('{receive}', '{replay}')")[0][0]
        assert result.facts["unreplayed_bytes"] == int(expected) > 0
    finally:
        standby.sql("SELECT pg_wal_replay_resume()")


def test_postgres_stopped_primary_is_not_ok(pg_pair: PgPair) -> None:
    pg_pair.primary.stop("immediate")
    result = check_postgres(HealthSpec("pg-primary", "postgres", pg_pair.primary.tcp_dsn(), 2))
    assert not result.ok
    assert result.facts["reachable"] is False
    assert result.detail == "unreachable: connection refused"


def test_postgres_detail_masks_a_password_the_server_echoes(pg_pair: PgPair) -> None:
    # The server's refusal names the database, and here the database is called like the password:
    # the detail must still not show it (without masking it would read 'database "hunter22x"...').
    dsn = pg_pair.primary.tcp_dsn() + " dbname=hunter22x password=hunter22x"
    result = check_postgres(HealthSpec("pg", "postgres", dsn, 2))
    assert not result.ok and result.facts["server_answered"] is True
    assert "does not exist" in result.detail
    assert "hunter22x" not in result.detail and "hunter22x" not in repr(result.facts)


def test_run_checks_keeps_order_and_never_raises(http_base: str) -> None:
    specs = [
        HealthSpec("a", "http", f"{http_base}/500"),
        HealthSpec("b", "bogus", "x"),
        HealthSpec("c", "http", f"{http_base}/200"),
    ]
    results = run_checks(specs)
    assert [r.name for r in results] == ["a", "b", "c"]
    assert [r.ok for r in results] == [False, False, True]
    assert run_checks([]) == []
