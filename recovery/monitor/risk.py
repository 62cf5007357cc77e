"""Risk (M2): rules turn the newest samples into findings, and findings that hold become conditions.

Built-in rules (each can be disabled or given another level/scenario in the config, and custom
rules can be added):

- ``database_failure`` — the PostgreSQL primary fails while a standby is healthy and in recovery:
  CRITICAL ``database_failure``;
- ``datacenter_outage`` — every tier-1 service's health check fails: CRITICAL ``datacenter_outage``;
- ``ransomware`` — a canary (file or query) changed, or a tool reported ransomware to ``POST /signals``
  (one condition per reporting source, counted at the first cycle that sees it): CRITICAL ``ransomware``;
- ``wal_archiving_stalled`` — WAL waits longer than the RPO objective, or archiving failures grow: HIGH;
- ``backup_stale`` — the newest good backup is older than its schedule plus grace: HIGH;
- ``check_failed`` — any other failing check (one not explained by a CRITICAL finding on its subject): HIGH.

A finding has a stable ``key`` (``database_failure:postgres primary``), so one ongoing condition
is one condition. :class:`ConditionTracker` opens a condition only after its finding held for N
consecutive samples and clears it after N consecutive good ones (so a blip opens nothing); the
counts are stored (``monitor_streak``), so a restart or a new leader keeps counting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from recovery.monitor.checks import Check, Sample
from statemachines.json_types import JsonObject

CRITICAL = "CRITICAL"
HIGH = "HIGH"
LEVELS = (CRITICAL, HIGH)
BUILTIN_RULES = ("database_failure", "datacenter_outage", "ransomware", "wal_archiving_stalled",
                 "backup_stale", "check_failed")
DEFAULTS: dict[str, tuple[str, str | None]] = {   # rule -> (level, scenario)
    "database_failure": (CRITICAL, "database_failure"),
    "datacenter_outage": (CRITICAL, "datacenter_outage"),
    "ransomware": (CRITICAL, "ransomware"),
    "wal_archiving_stalled": (HIGH, None),
    "backup_stale": (HIGH, None),
    "check_failed": (HIGH, None),
}


def evidence_of(sample: Sample) -> JsonObject:
    """What an incident's evidence says about one sample: the check and what it observed."""
    return {"check": sample.check, "domain": sample.domain, "ok": sample.ok, "value": sample.value,
            "unit": sample.unit, "threshold": sample.threshold, "reason": sample.reason,
            "at": sample.at.isoformat()}


@dataclass(frozen=True)
class Finding:
    key: str
    rule: str
    level: str
    scenario: str | None
    checks: tuple[str, ...]             # the checks whose samples make it (and clear it)
    summary: str
    evidence: tuple[JsonObject, ...]
    consecutive: int | None = None      # samples it must hold; None: the tracker's (a signal: 1)


@dataclass(frozen=True)
class RuleSetting:
    """A config override of a built-in rule, or a custom rule (``when_failing`` names its checks)."""

    enabled: bool = True
    level: str | None = None
    scenario: str | None = None
    when_failing: tuple[str, ...] = ()


@dataclass
class _Seen:
    checks: dict[str, Check]
    latest: dict[str, Sample]

    def failing(self, check: Check) -> bool:
        sample = self.latest.get(check.name)
        return sample is not None and not sample.ok

    def healthy(self, check: Check) -> bool:
        sample = self.latest.get(check.name)
        return sample is not None and sample.ok

    def of(self, kind: str, subject: str | None = None) -> list[Check]:
        return [c for c in self.checks.values() if c.kind == kind and (subject is None or c.subject == subject)]

    def evidence(self, checks: Iterable[Check]) -> tuple[JsonObject, ...]:
        return tuple(evidence_of(self.latest[c.name]) for c in checks if c.name in self.latest)


_Raw = tuple[str, tuple[Check, ...], str]   # key suffix, checks, summary
RuleFunction = Callable[[_Seen], list[_Raw]]


def _database_failure(seen: _Seen) -> list[_Raw]:
    standbys = [c for c in seen.of("postgres", "standby")
                if seen.healthy(c) and seen.latest[c.name].facts.get("in_recovery")]
    if not standbys:
        return []
    return [(primary.name, (primary, standbys[0]),
             f"{primary.name} is down ({seen.latest[primary.name].reason}); "
             f"{standbys[0].name} is healthy and in recovery")
            for primary in seen.of("postgres", "primary") if seen.failing(primary)]


def _datacenter_outage(seen: _Seen) -> list[_Raw]:
    tier1 = [c for c in seen.of("service") if c.tier == 1]
    if not tier1 or not all(seen.failing(c) for c in tier1):
        return []
    return [("tier1", tuple(tier1), f"every tier-1 service is down ({', '.join(c.name for c in tier1)})")]


def _ransomware(seen: _Seen) -> list[_Raw]:
    return [(c.name, (c,), f"canary {c.name}: {seen.latest[c.name].reason}") for c in seen.of("canary")
            if seen.failing(c) and seen.latest[c.name].facts.get("changed")]


def _wal_archiving(seen: _Seen) -> list[_Raw]:
    found: list[_Raw] = []
    for check in seen.of("wal_archiving"):
        facts = seen.latest[check.name].facts if check.name in seen.latest else {}
        if seen.failing(check) and (facts.get("stalled") or facts.get("failures_growing")):
            found.append((check.name, (check,), f"{check.name}: {seen.latest[check.name].reason}"))
    return found


def _backup_stale(seen: _Seen) -> list[_Raw]:
    return [(c.subject or c.name, (c,), seen.latest[c.name].reason) for c in seen.of("backup_age")
            if seen.failing(c)]


def _signal_findings(seen: _Seen, level: str, scenario: str | None) -> list[Finding]:
    """One finding per source that reported ransomware to ``POST /signals`` (the signal is its evidence).

    A tool's report is not a blip to wait out: it counts at the first cycle that sees it.
    """
    findings = []
    for check in seen.of("signal"):
        sample = seen.latest.get(check.name)
        if sample is None or sample.ok:
            continue
        for signal in sample.facts.get("signals") or []:
            source, host = str(signal.get("source")), str(signal.get("host") or "?")
            reason = f"{source} reported {signal.get('kind')} on {host} at {signal.get('at')}: {signal.get('detail')}"
            evidence = evidence_of(sample) | {"reason": reason[:300], "signal": dict(signal)}
            findings.append(Finding(f"ransomware:signal {source}", "ransomware", level, scenario, (check.name,),
                                    reason[:300], (evidence,), consecutive=1))
    return findings


BUILTIN: dict[str, RuleFunction] = {
    "database_failure": _database_failure,
    "datacenter_outage": _datacenter_outage,
    "ransomware": _ransomware,
    "wal_archiving_stalled": _wal_archiving,
    "backup_stale": _backup_stale,
}


class RiskRules:
    def __init__(self, settings: dict[str, RuleSetting] | None = None) -> None:
        self.settings = settings or {}
        for name, setting in self.settings.items():
            level, scenario = self._level(name)
            if level == CRITICAL and not scenario:
                raise ValueError(f"rule {name!r} is CRITICAL and needs a scenario")
            if name not in BUILTIN_RULES and not setting.when_failing:
                raise ValueError(f"rule {name!r} is not a built-in rule and names no checks in when_failing")

    def _level(self, rule: str) -> tuple[str, str | None]:
        setting = self.settings.get(rule, RuleSetting())
        level, scenario = DEFAULTS.get(rule, (HIGH, None))
        level = (setting.level or level).upper()
        return level, setting.scenario or scenario

    def _enabled(self, rule: str) -> bool:
        return self.settings.get(rule, RuleSetting()).enabled

    def evaluate(self, checks: dict[str, Check], latest: dict[str, Sample]) -> list[Finding]:
        """The findings the newest sample of every check makes (one per key)."""
        seen = _Seen(checks, latest)
        findings: list[Finding] = []
        for rule, function in BUILTIN.items():
            if self._enabled(rule):
                findings += [self._finding(rule, raw, seen) for raw in function(seen)]
        if self._enabled("ransomware"):
            findings += _signal_findings(seen, *self._level("ransomware"))
        for rule, setting in self.settings.items():
            if rule in BUILTIN_RULES or not setting.enabled:
                continue
            named = [checks[n] for n in setting.when_failing if n in checks]
            if named and all(seen.failing(c) for c in named):
                reasons = "; ".join(f"{c.name}: {latest[c.name].reason}" for c in named)
                findings.append(self._finding(rule, ("all", tuple(named), reasons), seen))
        if self._enabled("check_failed"):
            findings += [self._finding("check_failed", raw, seen) for raw in _unexplained(seen, findings)]
        return findings

    def _finding(self, rule: str, raw: _Raw, seen: _Seen) -> Finding:
        suffix, checks, summary = raw
        level, scenario = self._level(rule)
        return Finding(f"{rule}:{suffix}", rule, level, scenario, tuple(c.name for c in checks), summary,
                       seen.evidence(checks))


def _unexplained(seen: _Seen, findings: list[Finding]) -> list[_Raw]:
    """Failing checks no other finding names, nor shares a subject with a CRITICAL finding's check."""
    named = {name for f in findings for name in f.checks}
    critical_subjects = {seen.checks[name].subject for f in findings if f.level == CRITICAL
                         for name in f.checks if name in seen.checks and seen.checks[name].subject}
    return [(c.name, (c,), f"{c.name}: {seen.latest[c.name].reason}") for c in seen.checks.values()
            if seen.failing(c) and c.name not in named and c.subject not in critical_subjects]


# --- conditions: held for N samples, one per key, cleared after N good ones ----------------------


@dataclass
class Condition:
    key: str
    rule: str
    level: str
    scenario: str | None
    since: datetime
    last_seen: datetime
    summary: str
    checks: tuple[str, ...]
    evidence: list[JsonObject] = field(default_factory=list)
    incident_id: int | None = None
    last_warned_at: datetime | None = None
    cleared_at: datetime | None = None


@dataclass(frozen=True)
class Streak:
    """Consecutive samples of one finding key: ``failing`` (not yet a condition) or good (an open one)."""

    key: str
    failing: bool
    count: int
    checks: tuple[str, ...]
    last_at: datetime           # the cycle that counted the newest sample


class ConditionStore(Protocol):
    """Where open conditions and streaks live (``recovery.monitor.history.MonitorHistory``: the database)."""

    def open_conditions(self) -> dict[str, Condition]: ...

    def open_condition(self, condition: Condition) -> bool: ...   # False: already open (another replica)

    def touch_condition(self, key: str, last_seen: datetime, evidence: list[JsonObject]) -> None: ...

    def clear_condition(self, key: str, at: datetime) -> Condition | None: ...

    def streaks(self) -> dict[str, Streak]: ...


@dataclass
class Changes:
    opened: list[Condition] = field(default_factory=list)
    held: list[Condition] = field(default_factory=list)      # open before, still holding (with this cycle's evidence)
    cleared: list[Condition] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)    # key -> consecutive samples so far


@dataclass
class Tally:
    """What one cycle counted (:meth:`ConditionTracker.count`), before any condition is opened or cleared.

    ``streaks`` (written) and ``removed`` (deleted) go to the store in the cycle's transaction with its
    samples; :meth:`ConditionTracker.apply` then opens, touches and clears conditions.
    """

    at: datetime
    streaks: dict[str, Streak] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    to_open: list[Finding] = field(default_factory=list)
    to_touch: list[tuple[Condition, Finding]] = field(default_factory=list)
    to_clear: list[str] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)


def never_stale(_checks: tuple[str, ...]) -> timedelta:
    return timedelta.max


class ConditionTracker:
    """Counts consecutive samples per finding key; opens, de-duplicates and clears conditions.

    Only cycles that sampled one of a finding's checks count (a check on a longer interval is not
    "good" just because it was not run). Streaks and open conditions both live in the store, so a
    restarted loop (or a new leader) continues the same count and the same condition: one stored
    failing sample plus one new one is two in a row. ``max_gap(checks)`` says how old a stored
    streak's newest sample may be for the next one to be consecutive with it (the loop gives
    ``2 × interval + the longest timeout``); an older streak (the leader was gone) starts again at 1.

    A streak that reached N stays stored until the next cycle sees its condition open (or cleared),
    so a crash between counting and opening opens it at the next cycle instead of counting anew.
    """

    def __init__(self, store: ConditionStore, consecutive: int = 2,
                 max_gap: Callable[[tuple[str, ...]], timedelta] = never_stale) -> None:
        if consecutive < 1:
            raise ValueError("consecutive must be at least 1")
        self.store, self.consecutive, self.max_gap = store, consecutive, max_gap

    def _continues(self, previous: Streak | None, failing: bool, at: datetime) -> int:
        if previous is None or previous.failing != failing:
            return 0
        return previous.count if at - previous.last_at <= self.max_gap(previous.checks) else 0

    def count(self, findings: list[Finding], sampled: set[str], at: datetime) -> Tally:
        tally = Tally(at)
        current = {f.key: f for f in findings}
        open_now = self.store.open_conditions()
        stored = self.store.streaks()
        for key, finding in current.items():
            if not sampled.intersection(finding.checks):
                continue
            if key in open_now:
                tally.to_touch.append((open_now[key], finding))
                continue
            bad = self._continues(stored.get(key), True, at) + 1
            tally.streaks[key] = Streak(key, True, bad, finding.checks, at)
            tally.pending[key] = bad
            if bad >= (finding.consecutive or self.consecutive):
                tally.to_open.append(finding)
        for key, condition in open_now.items():
            if key in current or not sampled.intersection(condition.checks):
                continue
            good = self._continues(stored.get(key), False, at) + 1
            tally.streaks[key] = Streak(key, False, good, condition.checks, at)
            if good >= self.consecutive:
                tally.to_clear.append(key)
        for key, streak in stored.items():
            if key in tally.streaks:
                continue
            broken = streak.failing and key not in current and bool(sampled.intersection(streak.checks))
            settled = (key in open_now) == streak.failing     # failing but open now, or good but not open
            if broken or settled or not self._continues(streak, streak.failing, at):
                tally.removed.add(key)                        # a blip opens nothing; a stale one is gone
        return tally

    def apply(self, tally: Tally) -> Changes:
        changes = Changes(pending=dict(tally.pending))
        for condition, finding in tally.to_touch:
            self.store.touch_condition(condition.key, tally.at, list(finding.evidence))
            changes.held.append(replace(condition, last_seen=tally.at, evidence=list(finding.evidence)))
        for finding in tally.to_open:
            condition = _condition_of(finding, tally.at)
            if self.store.open_condition(condition):
                changes.opened.append(condition)
        for key in tally.to_clear:
            cleared = self.store.clear_condition(key, tally.at)
            if cleared is not None:
                changes.cleared.append(cleared)
        return changes


def _condition_of(finding: Finding, at: datetime) -> Condition:
    return Condition(finding.key, finding.rule, finding.level, finding.scenario, at, at, finding.summary,
                     finding.checks, list(finding.evidence))
