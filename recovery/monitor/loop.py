"""The monitor loop (M1, M3): cycles of due checks run concurrently, each bounded by its timeout.

:meth:`Monitor.run_cycle` runs every due check on its own daemon thread (a hung endpoint holds
only its own thread: the cycle waits for each check until its timeout and records a failed
"timed out" sample; while that thread is still stuck, the check is not started again but recorded
as still hanging). It evaluates the risk rules, stores the samples with the streaks of consecutive
samples they make (one transaction), updates the conditions, and returns plain data
(:class:`CycleResult`). :class:`MonitorLoop` repeats cycles; a cycle that
fails (the store is down…) is logged and retried after ``retry_seconds`` — the loop never stops
for good. Nothing here knows about Slack: the caller decides what to tell.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from recovery.monitor.checks import Check, Sample, failed_sample, take_sample
from recovery.monitor.history import MonitorHistory
from recovery.monitor.risk import Changes, ConditionTracker, Finding, RiskRules

log = logging.getLogger("aegis.monitor")
TIMEOUT_SLACK_SECONDS = 0.5     # a probe given t seconds may take a little longer to return its failure
DUE_FRACTION = 0.9              # a check is due a little early rather than a whole cycle late
STREAK_GAP_INTERVALS = 2        # a stored streak continues if its newest sample is this many intervals old at most


@dataclass
class CycleResult:
    cycle: int
    started_at: datetime
    duration_seconds: float
    samples: list[Sample]
    findings: list[Finding]
    changes: Changes = field(default_factory=Changes)


class _Run:
    """One probe on its own daemon thread; the result, once it has one."""

    def __init__(self, check: Check, now: Callable[[], datetime]) -> None:
        self.check = check
        self.started = time.monotonic()
        self.sample: Sample | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(now,), name=f"aegis-check-{check.name}", daemon=True)
        self.thread.start()

    def _run(self, now: Callable[[], datetime]) -> None:
        try:
            self.sample = take_sample(self.check, now)
        finally:
            self.done.set()

    def wait(self) -> bool:
        deadline = self.started + self.check.timeout_seconds + TIMEOUT_SLACK_SECONDS
        return self.done.wait(max(0.0, deadline - time.monotonic()))


class Monitor:
    def __init__(self, checks: Iterable[Check], history: MonitorHistory, rules: RiskRules | None = None, *,
                 consecutive: int = 2, now: Callable[[], datetime] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.checks = {c.name: c for c in checks}
        self.history = history
        self.rules = rules or RiskRules()
        self.tracker = ConditionTracker(history, consecutive, self.max_gap)
        self.now = now or (lambda: datetime.now(UTC))
        self.clock = clock                      # when checks are due (seconds, monotonic)
        self.cycle = 0
        self._latest: dict[str, Sample] = {}
        self._last_run: dict[str, float] = {}
        self._hung: dict[str, _Run] = {}
        self._lock = threading.Lock()           # one cycle at a time

    def max_gap(self, checks: tuple[str, ...]) -> timedelta:
        """How old a stored streak's newest sample may be for the next one to continue it.

        Two intervals of its slowest check, plus the longest a cycle can take (the longest timeout
        of any check, and a little): the leader was gone longer than that, so the samples are not
        consecutive. A streak of checks no longer configured is never continued.
        """
        intervals = [self.checks[name].interval_seconds for name in checks if name in self.checks]
        if not intervals:
            return timedelta(0)
        longest = max((c.timeout_seconds for c in self.checks.values()), default=0.0)
        return timedelta(seconds=STREAK_GAP_INTERVALS * max(intervals) + longest + TIMEOUT_SLACK_SECONDS)

    def close(self) -> None:
        """Close what probes keep open across cycles (a Neo4j driver, a Milvus client)."""
        for check in self.checks.values():
            close = getattr(check.probe, "close", None)
            if callable(close):
                close()

    def due(self, at: float) -> list[Check]:
        return [c for c in self.checks.values()
                if c.name not in self._last_run or at - self._last_run[c.name] >= c.interval_seconds * DUE_FRACTION]

    def sample_checks(self, checks: list[Check]) -> list[Sample]:
        """Run ``checks`` concurrently; every one yields a sample within its timeout."""
        samples: list[Sample] = []
        runs: list[_Run] = []
        for check in checks:
            stuck = self._hung.get(check.name)
            if stuck is not None and not stuck.done.is_set():
                waited = time.monotonic() - stuck.started
                samples.append(failed_sample(check, f"still hanging from an earlier cycle ({waited:.0f} s)",
                                             self.now()))
                continue
            self._hung.pop(check.name, None)
            runs.append(_Run(check, self.now))
        for run in runs:
            if run.wait() and run.sample is not None:
                samples.append(run.sample)
            else:
                self._hung[run.check.name] = run
                samples.append(failed_sample(run.check, f"timed out after {run.check.timeout_seconds:g} s",
                                             self.now(), round(run.check.timeout_seconds * 1000, 1)))
        return samples

    def run_cycle(self) -> CycleResult:
        with self._lock:
            started, begun = self.now(), time.monotonic()
            tick = self.clock()
            checks = self.due(tick)
            for check in checks:
                self._last_run[check.name] = tick
            samples = self.sample_checks(checks)
            self._latest.update({s.check: s for s in samples})
            findings = self.rules.evaluate(self.checks, self._latest)
            tally = self.tracker.count(findings, {s.check for s in samples}, started)
            self.history.record_cycle(samples, tally.streaks.values(), tally.removed)   # one transaction
            changes = self.tracker.apply(tally)
            self.cycle += 1
            return CycleResult(self.cycle, started, round(time.monotonic() - begun, 3), samples, findings, changes)


class MonitorLoop:
    """Runs cycles every ``interval_seconds`` until stopped; a failed cycle waits ``retry_seconds`` (M3).

    ``gate`` is asked before each cycle: while it says no (another replica leads), no cycle runs.
    """

    def __init__(self, monitor: Monitor, *, interval_seconds: float = 30, retry_seconds: float = 60,
                 on_cycle: Callable[[CycleResult], None] | None = None,
                 gate: Callable[[], bool] = lambda: True) -> None:
        self.monitor = monitor
        self.gate = gate        # False: this process is not the one to monitor now (a scheduler standby)
        self.interval, self.retry = interval_seconds, retry_seconds
        self.on_cycle = on_cycle
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> float:
        """One cycle and what the caller does with it; the seconds to wait before the next one."""
        begun = time.monotonic()
        try:
            if not self.gate():
                return self.interval
            result = self.monitor.run_cycle()
            if self.on_cycle is not None:
                self.on_cycle(result)
        except Exception:
            self.failures += 1
            log.exception("monitor cycle failed; monitoring resumes in %g s", self.retry)
            return self.retry
        return max(0.0, self.interval - (time.monotonic() - begun))

    def run_forever(self) -> None:
        while not self._stop.is_set():
            wait = self.step()
            if self._stop.wait(wait):
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="aegis-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
