"""The monitor's domain against real servers: PostgreSQL primary + standby, TCP/HTTP endpoints.

Samples carry observed values; a hung endpoint or a raising check never holds up a cycle; a
condition opens only after N consecutive bad samples (a flapping check opens nothing), is one
condition while it holds — also across a restart of the loop — and clears after N good samples.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.config import Config, ConfigError, load_config
from bot.monitor_checks import monitor_checks, risk_rules
from recovery.monitor.checks import Check, Observation, tcp_probe
from recovery.monitor.history import MonitorHistory
from recovery.monitor.loop import Monitor, MonitorLoop
from recovery.monitor.risk import CRITICAL, HIGH
from statemachines.store import Store
from tests.harness.aegis_process import wait_for
from tests.harness.pgcluster import PgPair


def _pair_config(pair: PgPair, **monitoring: object) -> Config:
    return Config.model_validate({
        "components": {"postgres": {"primary": {"dsn": pair.primary.tcp_dsn()},
                                    "standby": {"dsn": pair.standby.tcp_dsn()}}},
        "monitoring": {"interval_seconds": 1, **monitoring},
    })


def every_cycle() -> Callable[[], float]:
    """A due-clock an hour further on each cycle: every check is due in every cycle of these tests."""
    return itertools.count(0, 3600).__next__


def _monitor(config: Config, history: MonitorHistory) -> Monitor:
    return Monitor(monitor_checks(config, history.store), history, risk_rules(config.monitoring),
                   consecutive=config.monitoring.consecutive, clock=every_cycle())


class Listener:
    """A real TCP endpoint that can be opened and closed on one port."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def open(self) -> None:
        if self.sock is not None:
            return
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self.sock = sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# --- samples from real servers -----------------------------------------------------------------


def test_a_primary_and_standby_give_samples_with_observed_values(pg_pair: PgPair, history: MonitorHistory) -> None:
    pg_pair.primary.sql("CREATE TABLE filler AS SELECT g FROM generate_series(1, 1000) g")
    pg_pair.wait_replicated()
    result = _monitor(_pair_config(pg_pair), history).run_cycle()
    by_name = {s.check: s for s in result.samples}
    assert set(by_name) == {"postgres primary", "postgres primary wal archiving", "postgres standby",
                            "postgres standby lag bytes", "postgres standby lag seconds"}
    assert all(s.ok for s in result.samples), [s.reason for s in result.samples if not s.ok]
    assert by_name["postgres primary"].facts["in_recovery"] is False
    assert by_name["postgres standby"].facts["in_recovery"] is True
    lag = by_name["postgres standby lag bytes"]
    assert (lag.unit, lag.threshold) == ("bytes", 16 * 1024 * 1024) and lag.value is not None and lag.value >= 0
    archiving = by_name["postgres primary wal archiving"]
    assert archiving.unit == "s" and archiving.threshold == 900 and archiving.value is not None
    stored = history.samples("postgres standby lag bytes")
    assert [(r.ok, r.unit, r.value) for r in stored] == [(True, "bytes", lag.value)]
    assert result.findings == [] and history.conditions() == []


def test_wal_archiving_that_fails_is_a_high_condition(pg_pair: PgPair, history: MonitorHistory) -> None:
    primary = pg_pair.primary
    primary.sql("ALTER SYSTEM SET archive_command = '/bin/false'")
    primary.sql("SELECT pg_reload_conf()")
    primary.sql("CREATE TABLE filler AS SELECT g FROM generate_series(1, 1000) g")
    primary.sql("SELECT pg_switch_wal()")
    wait_for(lambda: primary.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] > 0, timeout=30,
             what="the archiver to fail")
    config = _pair_config(pg_pair, checks={"postgres primary wal archiving": {"threshold": 1}})
    monitor = _monitor(config, history)
    time.sleep(1.1)   # the last success must be older than the 1 s threshold
    first = monitor.run_cycle()
    sample = next(s for s in first.samples if s.check == "postgres primary wal archiving")
    assert not sample.ok and sample.threshold == 1 and "stalled" in sample.reason, sample.reason
    assert sample.value is not None and sample.value > 1
    key = "wal_archiving_stalled:postgres primary wal archiving"
    assert first.changes.opened == [] and first.changes.pending == {key: 1}
    second = monitor.run_cycle()
    assert [(c.key, c.level) for c in second.changes.opened] == [
        ("wal_archiving_stalled:postgres primary wal archiving", HIGH)]
    assert second.changes.opened[0].evidence[0]["check"] == "postgres primary wal archiving"


def test_primary_down_with_a_healthy_standby_is_one_critical_condition_across_restarts(
        pg_pair: PgPair, history: MonitorHistory) -> None:
    config = _pair_config(pg_pair)
    assert _monitor(config, history).run_cycle().findings == []
    pg_pair.primary.stop("immediate")
    first = _monitor(config, history)
    one = first.run_cycle()
    assert one.changes.opened == []                   # held once: not yet a condition
    two = first.run_cycle()
    assert [(c.key, c.level, c.scenario) for c in two.changes.opened] == [
        ("database_failure:postgres primary", CRITICAL, "database_failure")]
    evidence = {e["check"]: e for e in two.changes.opened[0].evidence}
    assert evidence["postgres primary"]["ok"] is False and "unreachable" in evidence["postgres primary"]["reason"]
    assert evidence["postgres standby"]["ok"] is True
    # the primary's own archiving check fails too, but it is explained by the critical condition
    assert {f.key for f in two.findings} == {"database_failure:postgres primary"}
    # a restarted loop (a new Monitor, as after a restart or a leader change) continues the same one
    restarted = _monitor(config, history)
    for _ in range(3):
        result = restarted.run_cycle()
        assert result.changes.opened == []
        assert [c.key for c in result.changes.held] == ["database_failure:postgres primary"]
    assert [(c.key, c.cleared_at) for c in history.conditions()] == [("database_failure:postgres primary", None)]


# --- timeouts and failures of the checks themselves ----------------------------------------------


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A socket that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        server.close()


def test_a_hung_endpoint_delays_nothing_else(silent_endpoint: str, history: MonitorHistory) -> None:
    released = threading.Event()

    def hangs(_timeout: float) -> Observation:      # a probe that ignores its timeout altogether
        released.wait(60)
        return Observation(True, 0.0, "ms", "finally")

    healthy = Listener()
    healthy.open()
    config = Config.model_validate({
        "services": [{"name": "silent", "health": {"http": f"http://{silent_endpoint}/health", "timeout_seconds": 1}}],
        "monitoring": {"hosts": [healthy.target]},
    })
    stuck_check = Check("stuck", "application", "custom", hangs, timeout_seconds=0.5)
    checks = [*monitor_checks(config, history.store), stuck_check]
    monitor = Monitor(checks, history, clock=every_cycle())
    try:
        started = time.monotonic()
        first = monitor.run_cycle()
        took = time.monotonic() - started
        by_name = {s.check: s for s in first.samples}
        assert took < 2.5, f"the cycle took {took:.1f} s"
        assert by_name[f"host {healthy.target}"].ok
        assert not by_name["service silent"].ok and "timed out" in by_name["service silent"].reason
        assert not by_name["stuck"].ok and by_name["stuck"].reason == "timed out after 0.5 s"
        second = monitor.run_cycle()
        stuck = next(s for s in second.samples if s.check == "stuck")
        assert not stuck.ok and stuck.reason.startswith("still hanging from an earlier cycle")
    finally:
        released.set()
        healthy.close()
    # once the stuck probe has returned, the check runs again (a cycle or two later, as its thread ends)
    wait_for(lambda: next(s for s in monitor.run_cycle().samples if s.check == "stuck").reason == "finally",
             timeout=10, interval=0.1, what="the released check to run again")


def test_a_raising_check_is_a_failed_sample_and_the_others_still_run(history: MonitorHistory) -> None:
    def broken(_timeout: float) -> Observation:
        raise RuntimeError("probe bug: no such attribute")

    up = Listener()
    up.open()
    try:
        monitor = Monitor([Check("broken", "infrastructure", "custom", broken),
                           Check("up", "network", "endpoint", tcp_probe(up.target))], history,
                          clock=every_cycle())
        result = monitor.run_cycle()
    finally:
        up.close()
    by_name = {s.check: s for s in result.samples}
    assert by_name["up"].ok
    assert not by_name["broken"].ok
    assert by_name["broken"].reason == "check raised RuntimeError: probe bug: no such attribute"
    assert [r.reason for r in history.samples("broken")] == [by_name["broken"].reason]


def test_a_failing_cycle_is_retried_after_the_configured_wait(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'unmigrated.db'}")     # no tables: storing samples fails
    monitor = Monitor([Check("up", "network", "endpoint", lambda _t: Observation(True, 1.0, "ms", "up"))],
                      MonitorHistory(store), clock=every_cycle())
    loop = MonitorLoop(monitor, interval_seconds=1, retry_seconds=7)
    assert loop.step() == 7 and loop.failures == 1
    store.migrate()                                                # the store is back
    assert loop.step() <= 1 and loop.failures == 1
    assert [s.ok for s in MonitorHistory(store).samples("up")] == [True]
    store.dispose()


# --- N consecutive samples: flapping, holding, clearing --------------------------------------------


def test_flapping_opens_nothing_holding_opens_one_and_good_samples_clear_it(history: MonitorHistory) -> None:
    endpoint = Listener()
    config = Config.model_validate({"monitoring": {"endpoints": [{"name": "api", "host": "127.0.0.1",
                                                                  "port": endpoint.port}]}})
    monitor = _monitor(config, history)
    key = "check_failed:endpoint api"

    def cycle(up: bool) -> list[str]:
        endpoint.open() if up else endpoint.close()
        result = monitor.run_cycle()
        sample = next(s for s in result.samples if s.check == "endpoint api")
        assert sample.ok is up, sample.reason
        return [f"opened {c.key}" for c in result.changes.opened] + [f"cleared {c.key}" for c in result.changes.cleared]

    try:
        assert [cycle(up) for up in (False, True, False, True, False, True)] == [[]] * 6
        assert history.conditions() == []
        assert [cycle(False) for _ in range(4)] == [[], [f"opened {key}"], [], []]
        assert [cycle(True) for _ in range(3)] == [[], [f"cleared {key}"], []]
        assert [cycle(False) for _ in range(2)] == [[], [f"opened {key}"]]    # happening again: a new one
    finally:
        endpoint.close()
    rows = history.conditions(key)
    assert len(rows) == 2 and rows[0].cleared_at is not None and rows[1].cleared_at is None
    assert rows[0].evidence[0]["check"] == "endpoint api" and "unreachable" in rows[0].evidence[0]["reason"]
    assert [s.ok for s in history.samples("endpoint api")] == [False, True] * 3 + [False] * 4 + [True] * 3 + [False] * 2


def test_samples_older_than_the_retention_are_pruned(history: MonitorHistory) -> None:
    from datetime import UTC, datetime, timedelta

    old = datetime.now(UTC) - timedelta(days=401)
    Monitor([Check("x", "network", "endpoint", lambda _t: Observation(True, 1.0, "ms", "ok"))], history,
            now=lambda: old).run_cycle()
    Monitor([Check("x", "network", "endpoint", lambda _t: Observation(False, None, "ms", "down"))],
            history).run_cycle()
    assert history.prune_samples() == 1
    assert [s.reason for s in history.samples("x")] == ["down"]


def test_a_check_runs_when_its_own_interval_is_due(history: MonitorHistory) -> None:
    ticks = iter([0.0, 10.0, 30.0, 60.0, 70.0])
    fast = Check("fast", "network", "endpoint", lambda _t: Observation(True, 1.0, "ms", "ok"), interval_seconds=30)
    slow = Check("slow", "network", "endpoint", lambda _t: Observation(True, 1.0, "ms", "ok"), interval_seconds=60)
    monitor = Monitor([fast, slow], history, clock=lambda: next(ticks))
    ran = [sorted(s.check for s in monitor.run_cycle().samples) for _ in range(5)]
    assert ran == [["fast", "slow"], [], ["fast"], ["fast", "slow"], []]


# --- the config section ---------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    ("monitoring:\n  interval_secnds: 5\n",
     "`monitoring.interval_secnds`: unknown key; did you mean `interval_seconds`?"),
    ("monitoring:\n  rules:\n    databse_failure: {level: high}\n",
     "not a built-in rule and names no checks in when_failing; did you mean `database_failure`?"),
    ("monitoring:\n  rules:\n    backup_stale: {level: critical}\n", "a critical rule needs a scenario"),
    ("monitoring:\n  auto_recovery: {ransomwere: true}\n", "unknown scenario `ransomwere`; did you mean `ransomware`?"),
    ("monitoring:\n  pre_approved_actions: [postgres_promot]\n", "did you mean `postgres_promote`?"),
    ("monitoring:\n  hosts: [db1]\n", "'db1' is not host:port"),
    ("monitoring:\n  canaries: [{name: x, file: /srv/canary}]\n", "a file canary needs the sha256 it must keep"),
])
def test_monitoring_config_errors_name_the_key_and_the_fix(tmp_path: Path, body: str, expected: str) -> None:
    file = tmp_path / "aegis.yaml"
    file.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert expected in str(caught.value)


def test_an_unknown_check_override_names_the_closest_check(history: MonitorHistory) -> None:
    config = Config.model_validate({"monitoring": {"endpoints": [{"name": "api", "host": "localhost", "port": 1}],
                                                   "checks": {"endpoint apj": {"timeout_seconds": 1}}}})
    expected = r"`monitoring.checks.endpoint apj`: no such check; did you mean `endpoint api`\?"
    with pytest.raises(ConfigError, match=expected):
        monitor_checks(config, history.store)


def test_defaults_and_overrides_of_the_monitoring_section(history: MonitorHistory) -> None:
    config = Config.model_validate({"monitoring": {
        "endpoints": [{"name": "api", "host": "localhost", "port": 1}],
        "checks": {"endpoint api": {"interval_seconds": 120, "timeout_seconds": 2}},
        "auto_recovery": {"database_failure": True}, "pre_approved_actions": ["postgres_promote"]}})
    section = config.monitoring
    assert (section.interval_seconds, section.consecutive, section.retry_after_seconds) == (30, 2, 60)
    checks = {c.name: c for c in monitor_checks(config, history.store)}
    assert (checks["endpoint api"].interval_seconds, checks["endpoint api"].timeout_seconds) == (120, 2)
    assert checks["dns api"].interval_seconds == 30 and checks["dns api"].domain == "network"
    assert config.monitoring.auto_recovery == {"database_failure": True}
