"""The monitor's Neo4j and Milvus checks ask the server something (recovery/monitor/graph_vector.py).

Against a real Neo4j with authentication on: the right password is up with the round trip's latency
and one driver reused across cycles; a wrong password is down with the server's refusal and no
password anywhere; a port that accepts TCP but never answers Bolt is down within the check's timeout,
and the cycle's other checks — one healthy, two more hung ones — are not delayed (the cycle takes
about one timeout, not three). Milvus: a Milvus Lite server URI answers ``list_collections``; once it
is stopped the check is down; a Milvus Lite path is only checked to be there, and says so.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from milvus_lite.server_manager import server_manager_instance

from bot.config import Config
from bot.monitor_checks import monitor_checks
from recovery.monitor.checks import Sample
from recovery.monitor.graph_vector import MilvusProbe, Neo4jProbe
from recovery.monitor.history import MonitorHistory
from recovery.monitor.loop import Monitor
from tests.harness.neo4j_auth_server import Neo4jAuthServer, neo4j_with_auth

PASSWORD = "monitor-right-password-4711"
WRONG = "monitor-wrong-password-0815"
PASSWORD_ENV = "AEGIS_TEST_MONITOR_NEO4J_PASSWORD"


@pytest.fixture(scope="module")
def neo4j_auth() -> Iterator[Neo4jAuthServer]:
    with neo4j_with_auth(PASSWORD) as server:
        yield server


def every_cycle() -> Callable[[], float]:
    return itertools.count(0, 3600).__next__


def _monitor(config: dict[str, Any], history: MonitorHistory) -> Monitor:
    return Monitor(monitor_checks(Config.model_validate(config), history.store), history, clock=every_cycle())


def _sample(monitor: Monitor, name: str) -> Sample:
    return next(s for s in monitor.run_cycle().samples if s.check == name)


@pytest.fixture
def silent_ports() -> Iterator[list[int]]:
    """Three ports that accept TCP connections and never send a byte."""
    servers, accepted, stop = [], [], threading.Event()
    for _ in range(3):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        server.settimeout(0.2)
        servers.append(server)

    def accept(server: socket.socket) -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    threads = [threading.Thread(target=accept, args=(s,), daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield [s.getsockname()[1] for s in servers]
    finally:
        stop.set()
        for thread in threads:
            thread.join(2)
        for conn in [*accepted, *servers]:
            conn.close()


def _neo4j(uri: str, **extra: Any) -> dict[str, Any]:
    return {"components": {"neo4j": {"uri": uri, "user": "neo4j", "password_env": PASSWORD_ENV}}, **extra}


def test_neo4j_up_is_a_query_with_its_latency_and_one_driver_across_cycles(
        neo4j_auth: Neo4jAuthServer, history: MonitorHistory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monitor = _monitor(_neo4j(neo4j_auth.uri), history)
    samples = [_sample(monitor, "neo4j") for _ in range(3)]
    assert all(s.ok for s in samples), [s.reason for s in samples]
    assert all(s.unit == "ms" and s.value is not None and 0 < s.value < 5000 for s in samples)
    assert samples[-1].reason.startswith("RETURN 1 on database neo4j answered in ")
    probe = monitor.checks["neo4j"].probe
    assert isinstance(probe, Neo4jProbe) and probe.drivers_built == 1      # reused, not rebuilt per cycle
    monitor.close()


def test_neo4j_with_a_wrong_password_is_down_with_the_refusal_and_no_password(
        neo4j_auth: Neo4jAuthServer, history: MonitorHistory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, WRONG)
    monitor = _monitor(_neo4j(neo4j_auth.uri), history)
    sample = _sample(monitor, "neo4j")
    assert not sample.ok and sample.value is None
    assert sample.reason.startswith("authentication refused: "), sample.reason
    assert "unauthorized" in sample.reason.lower()
    stored = [r.reason for r in history.samples("neo4j")]
    assert stored == [sample.reason]
    for text in (sample.reason, *stored):
        assert WRONG not in text and PASSWORD not in text
    # the assessment's check of the same server says so too: a refusal, which is no sign of a broken graph
    from bot import wiring
    from recovery.health import CREDENTIALS_REFUSED, run_checks

    [assessed] = run_checks(wiring.component_specs(Config.model_validate(_neo4j(neo4j_auth.uri))))
    assert not assessed.ok and assessed.facts.get(CREDENTIALS_REFUSED) is True, assessed
    assert assessed.detail.startswith("authentication refused: ") and WRONG not in assessed.detail
    # the password is fixed: the next cycle builds a new driver and is up (the failed one was dropped)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    assert _sample(monitor, "neo4j").ok
    probe = monitor.checks["neo4j"].probe
    assert isinstance(probe, Neo4jProbe) and probe.drivers_built == 2
    monitor.close()


def test_a_port_that_never_answers_bolt_is_down_within_the_timeout_and_delays_no_other_check(
        silent_ports: list[int], history: MonitorHistory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    healthy = socket.socket()
    healthy.bind(("127.0.0.1", 0))
    healthy.listen(16)
    host = f"127.0.0.1:{healthy.getsockname()[1]}"
    neo, milvus, http = silent_ports
    timeout = 1.5
    config = _neo4j(f"bolt://127.0.0.1:{neo}") | {
        "services": [{"name": "silent", "health": {"http": f"http://127.0.0.1:{http}/health",
                                                   "timeout_seconds": timeout}}],
        "monitoring": {"hosts": [host], "checks": {"neo4j": {"timeout_seconds": timeout},
                                                    "milvus": {"timeout_seconds": timeout}}}}
    config["components"]["milvus"] = {"uri": f"http://127.0.0.1:{milvus}"}
    monitor = _monitor(config, history)
    try:
        started = time.monotonic()
        result = monitor.run_cycle()
        took = time.monotonic() - started
    finally:
        monitor.close()
        healthy.close()
    by_name = {s.check: s for s in result.samples}
    print(f"cycle with three hung checks of {timeout} s each took {took:.2f} s")
    # concurrently: about one timeout (plus the loop's slack), never the three timeouts in a row
    assert took < 2 * timeout + 0.5, f"the cycle took {took:.2f} s"
    assert by_name[f"host {host}"].ok and (by_name[f"host {host}"].value or 0) < 1000
    for name in ("neo4j", "milvus", "service silent"):
        assert not by_name[name].ok, by_name[name]
    assert by_name["neo4j"].reason.startswith("unreachable: ") and "Bolt handshake" in by_name["neo4j"].reason
    assert PASSWORD not in by_name["neo4j"].reason


def test_milvus_lite_served_over_a_uri_is_queried_and_a_lite_path_is_only_looked_at(
        tmp_path: Path, history: MonitorHistory) -> None:
    path = str(tmp_path / "milvus.db")
    uri = server_manager_instance.start_and_get_uri(path)
    assert uri is not None and uri.startswith("http://")
    from pymilvus import MilvusClient

    owner = MilvusClient(uri=uri)            # the application's own client: one collection with a row
    owner.create_collection("docs", dimension=4)
    owner.insert("docs", [{"id": 1, "vector": [0.1, 0.2, 0.3, 0.4]}])
    owner.flush("docs")
    owner.close()
    monitor = _monitor({"components": {"milvus": {"uri": uri}}, "monitoring": {"checks": {
        "milvus": {"timeout_seconds": 2}}}}, history)
    try:
        up = [_sample(monitor, "milvus") for _ in range(2)]
        assert all(s.ok and s.unit == "ms" and s.value is not None for s in up), [s.reason for s in up]
        assert up[0].reason.startswith("list_collections answered in ") and up[0].reason.endswith(": 1 collection(s)")
        probe = monitor.checks["milvus"].probe
        assert isinstance(probe, MilvusProbe) and probe.clients_built == 1
        server_manager_instance.release_server(path)
        down = _sample(monitor, "milvus")
        assert not down.ok and down.reason.startswith("unreachable: "), down.reason
    finally:
        monitor.close()
        server_manager_instance.release_server(path)
    lite = _monitor({"components": {"milvus": {"uri": path}}}, history)     # the data milvus-lite left
    present = _sample(lite, "milvus")
    assert present.ok and present.unit == "bytes" and present.value is not None and present.value > 0
    assert "not queried: it has one owner" in present.reason
    missing = _sample(_monitor({"components": {"milvus": {"uri": str(tmp_path / "gone.db")}}}, history), "milvus")
    assert not missing.ok and "is missing" in missing.reason


class _Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_down_milvus_is_one_line_of_the_probe_not_a_pymilvus_traceback_per_cycle(tmp_path: Path) -> None:
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    path = str(tmp_path / "milvus.db")
    uri = server_manager_instance.start_and_get_uri(path)
    assert uri is not None
    # pymilvus's loggers do not propagate: a handler beside its own stderr handler sees what it prints
    # (the probe puts its filter on every handler of the "pymilvus" logger, this one included)
    seen_by_pymilvus = _Collected()
    logging.getLogger("pymilvus").addHandler(seen_by_pymilvus)
    probe = MilvusProbe(uri)
    bystander = MilvusClient(uri=uri)         # another caller's client (a backup's), made while it is up
    try:
        assert probe(2.0).ok
        server_manager_instance.release_server(path)      # the server goes down under both clients
        for _cycle in range(2):
            seen = probe(1.0)
            assert not seen.ok and seen.reason.startswith("unreachable: "), seen.reason
        noisy = [r for r in seen_by_pymilvus.records if r.levelno >= logging.WARNING]
        assert not noisy, [r.getMessage()[:200] for r in noisy]
        # outside a probe pymilvus still logs its failures (what the filter must not hide)
        with pytest.raises(MilvusException):
            bystander.list_collections(timeout=1.0)
        assert any(r.levelno >= logging.ERROR and "RPC error" in r.getMessage() for r in seen_by_pymilvus.records)
    finally:
        logging.getLogger("pymilvus").removeHandler(seen_by_pymilvus)
        probe.close()
        bystander.close()
        server_manager_instance.release_server(path)
