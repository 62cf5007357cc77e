"""The monitor inside ``aegis serve`` (M1-M3), over HTTP with the built-in Slack emulator.

A SIGKILLed PostgreSQL primary with a healthy standby opens an incident within two monitor
intervals, its evidence naming the failed check; a flapping endpoint (toggled on the monitor's
own samples, not on sleeps) opens nothing; a held failure warns in the ops channel and its
recovery posts the all-clear.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from sqlmodel import select

from recovery.monitor.history import MonitorHistory
from slack_emulator.server import EmulatorServer
from statemachines.models import Incident, TimelineEvent
from tests.harness.aegis_process import AegisProcess, start_on_sqlite, wait_for
from tests.harness.pgcluster import PgPair
from tests.harness.slack_reading import all_text, channel, channel_by_id

INTERVAL = 1.0
ROSTER = {"incident_commander": ["U0IC"], "database_lead": ["U0DB"]}


def _config(**monitoring: Any) -> dict[str, Any]:
    return {"slack": {"ops_channel": "C0OPS", "stakeholder_channel": "C0STAKE"}, "roster": ROSTER,
            "monitoring": {"interval_seconds": INTERVAL, "warning_repeat_minutes": 60, **monitoring}}


def _ops_posts(emulator: EmulatorServer) -> list[str]:
    return [all_text(m) for m in channel_by_id(emulator.state, "C0OPS")["messages"]]


class Toggle:
    """A TCP endpoint on a fixed port, open or closed."""

    def __init__(self) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.sock: socket.socket | None = None

    def set(self, up: bool) -> None:
        if up and self.sock is None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(16)
            self.sock = sock
        elif not up and self.sock is not None:
            self.sock.close()
            self.sock = None


def _samples(bot: AegisProcess, check: str) -> list[bool]:
    store = bot.store()
    try:
        return [s.ok for s in MonitorHistory(store).samples(check)]
    finally:
        store.dispose()


def test_a_flapping_endpoint_opens_nothing_a_held_failure_warns_and_its_recovery_is_all_clear(
        tmp_path: Path, emulator: EmulatorServer) -> None:
    endpoint = Toggle()
    endpoint.set(True)
    bot = start_on_sqlite(tmp_path, emulator, _config(
        endpoints=[{"name": "flappy", "host": "127.0.0.1", "port": endpoint.port}]))
    check, key = "endpoint flappy", "check_failed:endpoint flappy"
    try:
        wait_for(lambda: _samples(bot, check), timeout=15, what="the first sample")
        up = True
        for _ in range(6):                       # toggle right after each sample the monitor records
            seen = len(_samples(bot, check))
            up = not up
            endpoint.set(up)
            wait_for(lambda seen=seen: len(_samples(bot, check)) > seen, timeout=10, what="the next sample")
        flapping = _samples(bot, check)
        assert False in flapping and all(a or b for a, b in zip(flapping, flapping[1:], strict=False)), flapping
        assert not [t for t in _ops_posts(emulator) if key in t]
        endpoint.set(False)                      # now it holds: a HIGH warning after two samples
        warning = wait_for(lambda: [t for t in _ops_posts(emulator) if "HIGH" in t and key in t], timeout=15,
                           what="the warning")
        assert "unreachable" in warning[0] and check in warning[0]
        endpoint.set(True)
        clear = wait_for(lambda: [t for t in _ops_posts(emulator) if "All clear" in t and key in t], timeout=15,
                         what="the all-clear")
        assert len(clear) == 1
        assert len([t for t in _ops_posts(emulator) if "HIGH" in t and key in t]) == 1   # warned once
        store = bot.store()
        try:
            with store.session() as session:
                assert session.exec(select(Incident)).all() == []      # HIGH opens no incident
        finally:
            store.dispose()
    finally:
        bot.stop()
        endpoint.set(False)


def _sigkill_postmaster(data_dir: Path) -> None:
    pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)


def test_a_sigkilled_primary_with_a_healthy_standby_opens_an_incident_within_two_intervals(
        tmp_path: Path, emulator: EmulatorServer, pg_pair: PgPair) -> None:
    bot = start_on_sqlite(tmp_path, emulator, _config() | {"components": {"postgres": {
        "primary": {"dsn": pg_pair.primary.tcp_dsn()}, "standby": {"dsn": pg_pair.standby.tcp_dsn()}}}})
    try:
        wait_for(lambda: _samples(bot, "postgres standby"), timeout=15, what="the first sample")
        assert all(_samples(bot, "postgres primary"))
        killed = time.monotonic()
        _sigkill_postmaster(pg_pair.primary.data_dir)
        room = wait_for(lambda: channel(emulator.state, "inc-"), timeout=30, what="the incident channel")
        took = time.monotonic() - killed
        assert room["name"].endswith("database-failure")
        assert took <= 2 * INTERVAL + 3.0, f"the incident channel appeared {took:.1f} s after the kill"
        alert = wait_for(lambda: [t for t in _ops_posts(emulator) if "CRITICAL" in t], timeout=15,
                         what="the critical alert")
        assert len(alert) == 1
        assert "postgres primary" in alert[0] and "unreachable" in alert[0] and "INC-" in alert[0]
        assert "from the roster" in alert[0] and "paged" not in alert[0]   # says whom it invited, truthfully
        store = bot.store()
        try:
            with store.session() as session:
                incidents = session.exec(select(Incident)).all()
                assert [(i.declared_by, i.scenario, i.severity) for i in incidents] == [
                    ("aegis", "database_failure", "critical")]
                events = session.exec(select(TimelineEvent).where(TimelineEvent.kind == "audit")).all()
            evidence = next(e.data["evidence"] for e in events if e.data.get("monitor_condition"))
            failed = next(e for e in evidence if e["check"] == "postgres primary")
            assert failed["ok"] is False and "unreachable" in failed["reason"]
            # the condition keeps holding: still one incident, one alert, several cycles later
            seen = len(_samples(bot, "postgres primary"))
            wait_for(lambda: len(_samples(bot, "postgres primary")) >= seen + 3, timeout=15, what="more cycles")
            with store.session() as session:
                assert len(session.exec(select(Incident)).all()) == 1
            assert len([t for t in _ops_posts(emulator) if "CRITICAL" in t]) == 1
        finally:
            store.dispose()
    finally:
        bot.stop()
