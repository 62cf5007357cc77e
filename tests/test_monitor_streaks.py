"""Streaks of consecutive samples are stored (``monitor_streak``), so a restart keeps counting.

In process: two Monitor instances on one store stand for a leader and its successor — one failing
sample stored by the first plus one by the second is two in a row and opens the condition; the same
for clearing; a blip between them breaks the streak; a stored streak older than the allowed gap
(2 × interval + the longest timeout) starts again at 1. Then for real: ``aegis serve`` records one
failing sample, is SIGKILLed and started again, and its first sample after the restart opens the
condition (its warning is posted).
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from bot.config import Config
from bot.monitor_checks import monitor_checks, risk_rules
from recovery.monitor.history import MonitorHistory
from recovery.monitor.loop import Monitor
from recovery.monitor.risk import Condition
from slack_emulator.server import EmulatorServer
from statemachines.models import MonitorStreak
from tests.harness.aegis_process import start_on_sqlite, wait_for
from tests.harness.pgcluster import free_port
from tests.harness.slack_reading import all_text, channel_by_id

KEY = "check_failed:endpoint api"


class Endpoint:
    """A real TCP endpoint on one port: listening or not."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock: socket.socket | None = None

    def set(self, up: bool) -> None:
        if up and self.sock is None:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", self.port))
            self.sock.listen(16)
        elif not up and self.sock is not None:
            self.sock.close()
            self.sock = None


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    point = Endpoint()
    try:
        yield point
    finally:
        point.set(False)


class Clock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at


def _replica(endpoint: Endpoint, history: MonitorHistory, clock: Clock) -> Monitor:
    """A new Monitor on the shared store: a restarted leader, or another replica taking over."""
    config = Config.model_validate({"monitoring": {"interval_seconds": 30, "endpoints": [
        {"name": "api", "host": "127.0.0.1", "port": endpoint.port}]}})
    due: Callable[[], float] = itertools.count(0, 3600).__next__
    return Monitor(monitor_checks(config, history.store), history, risk_rules(config.monitoring),
                   consecutive=2, now=clock, clock=due)


def _events(monitor: Monitor) -> list[str]:
    result = monitor.run_cycle()
    return ([f"opened {c.key}" for c in result.changes.opened] + [f"cleared {c.key}" for c in result.changes.cleared]
            + [f"pending {n}" for k, n in result.changes.pending.items() if k == KEY])


def _stored(history: MonitorHistory) -> list[tuple[str, bool, int]]:
    with history.store.session() as session:
        return [(r.key, r.failing, r.count) for r in session.exec(select(MonitorStreak))]


def test_one_stored_failing_sample_and_one_new_are_two_in_a_row_across_monitors(
        endpoint: Endpoint, history: MonitorHistory) -> None:
    clock = Clock()
    assert _events(_replica(endpoint, history, clock)) == ["pending 1"]
    assert _stored(history) == [(KEY, True, 1)]              # stored with the cycle's samples
    clock.at += timedelta(seconds=30)
    assert _events(_replica(endpoint, history, clock)) == [f"opened {KEY}", "pending 2"]
    clock.at += timedelta(seconds=30)
    successor = _replica(endpoint, history, clock)
    assert _events(successor) == []                          # held: one condition
    assert _stored(history) == []                            # the open condition is what counts now
    endpoint.set(True)
    clock.at += timedelta(seconds=30)
    assert _events(successor) == []
    assert _stored(history) == [(KEY, False, 1)]             # one good sample towards the clear
    clock.at += timedelta(seconds=30)
    assert _events(_replica(endpoint, history, clock)) == [f"cleared {KEY}"]
    clock.at += timedelta(seconds=30)
    assert _events(_replica(endpoint, history, clock)) == [] and _stored(history) == []
    assert [c.cleared_at is not None for c in history.conditions(KEY)] == [True]


def test_a_blip_between_monitors_breaks_the_streak(endpoint: Endpoint, history: MonitorHistory) -> None:
    clock = Clock()
    for up in (False, True, False, True, False):
        endpoint.set(up)
        clock.at += timedelta(seconds=30)
        events = _events(_replica(endpoint, history, clock))
        assert events == ([] if up else ["pending 1"]), (up, events)
    assert history.conditions() == []


def test_a_streak_older_than_two_intervals_and_a_timeout_starts_again(
        endpoint: Endpoint, history: MonitorHistory) -> None:
    clock = Clock()
    first = _replica(endpoint, history, clock)
    assert first.max_gap(("endpoint api",)) == timedelta(seconds=2 * 30 + 5 + 0.5)
    assert _events(first) == ["pending 1"]
    clock.at += timedelta(seconds=66)                        # the leader was gone: 66 s > 65.5 s
    assert _events(_replica(endpoint, history, clock)) == ["pending 1"]
    clock.at += timedelta(seconds=65)                        # within the gap: consecutive
    assert _events(_replica(endpoint, history, clock)) == [f"opened {KEY}", "pending 2"]


# --- for real: aegis serve restarted between two failing samples ----------------------------------

INTERVAL = 5.0        # the allowed gap is 2 × 5 + 5 (timeout) + 0.5 = 15.5 s: a restart fits in it


def test_a_restarted_aegis_continues_the_stored_streak(tmp_path: Path, emulator: EmulatorServer) -> None:
    port = free_port()                                       # nothing listens: every sample fails
    config = {"slack": {"ops_channel": "C0OPS", "stakeholder_channel": "C0STAKE"},
              "roster": {"incident_commander": ["U0IC"]},
              "monitoring": {"interval_seconds": INTERVAL, "consecutive": 2, "warning_repeat_minutes": 60,
                             "endpoints": [{"name": "api", "host": "127.0.0.1", "port": port}]}}
    bot = start_on_sqlite(tmp_path, emulator, config)

    def streak() -> list[tuple[str, bool, int]]:
        store = bot.store()
        try:
            return _stored(MonitorHistory(store))
        finally:
            store.dispose()

    def conditions() -> list[Condition]:
        store = bot.store()
        try:
            return list(MonitorHistory(store).conditions(KEY))
        finally:
            store.dispose()

    try:
        wait_for(lambda: [s for s in streak() if s[0] == KEY], timeout=30, interval=0.1, what="the first streak")
        bot.kill()                                           # SIGKILL right after the first failing sample
        assert [s for s in streak() if s[0] == KEY] == [(KEY, True, 1)] and conditions() == []
        restarted = datetime.now(UTC)
        bot.start()
        opened = wait_for(conditions, timeout=40, what="the condition after the restart")
        store = bot.store()
        try:
            # the opening cycle's sample is a few ms after the cycle began (the condition's since)
            until = opened[0].since + timedelta(seconds=INTERVAL / 2)
            after = [s for s in MonitorHistory(store).samples("endpoint api", since=restarted) if s.at <= until]
        finally:
            store.dispose()
        assert [s.ok for s in after] == [False], "the first sample after the restart must open it"
        warning = wait_for(lambda: [all_text(m) for m in channel_by_id(emulator.state, "C0OPS")["messages"]
                                    if "HIGH" in all_text(m) and KEY in all_text(m)], timeout=20, what="the warning")
        assert len(warning) == 1
    finally:
        bot.stop()
