"""Availability (O4) from the monitor's samples: downtime minutes against the monthly error budget.

Each sample of a check stands for the time until the next one, but never longer than ``gap`` (a few
check intervals): beyond that nothing watched the service, and that time is *unknown*, not up. So a
monitor that was stopped for a day shows a day of unknown, and a budget can only be called met when
the downtime plus the unknown time still fits in it.

A tier is down whenever one of its services is down (worst-of), unknown where none is down but one is
unknown, up otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select

from statemachines.models import MonitorSample
from statemachines.store import Store

MINUTES_PER_MONTH = 365 * 24 * 60 / 12        # 43,800: the plan's "43.8 minutes a month" at 99.9 %
STATES = ("up", "down", "unknown")
_RANK = {"up": 0, "unknown": 1, "down": 2}    # worst-of when services are combined into a tier


def monthly_budget_minutes(availability_percent: float) -> float:
    return round((100.0 - availability_percent) / 100.0 * MINUTES_PER_MONTH, 3)


@dataclass(frozen=True)
class Segment:
    start: datetime
    end: datetime
    state: str                                 # up | down | unknown

    @property
    def minutes(self) -> float:
        return (self.end - self.start).total_seconds() / 60


@dataclass(frozen=True)
class Availability:
    name: str                                  # a service, or "tier 1"
    since: datetime
    until: datetime
    downtime_minutes: float
    unknown_minutes: float
    budget_minutes: float
    samples: int
    tier: int | None = None                    # set on a tier's figure (its ``name`` is "tier N")

    @property
    def period_minutes(self) -> float:
        return (self.until - self.since).total_seconds() / 60

    @property
    def known_minutes(self) -> float:
        return max(0.0, self.period_minutes - self.unknown_minutes)

    @property
    def availability_percent(self) -> float | None:
        """Of the time that was watched; None when nothing was."""
        if self.known_minutes <= 0:
            return None
        return 100.0 * (self.known_minutes - self.downtime_minutes) / self.known_minutes

    @property
    def budget_left_minutes(self) -> float:
        return self.budget_minutes - self.downtime_minutes

    @property
    def status(self) -> str:
        """``met`` (even the unknown time would fit), ``missed`` (the downtime alone is over) or ``unknown``."""
        if self.downtime_minutes > self.budget_minutes:
            return "missed"
        if self.downtime_minutes + self.unknown_minutes <= self.budget_minutes:
            return "met"
        return "unknown"


def sample_points(store: Store, check: str, since: datetime, until: datetime) -> list[tuple[datetime, bool]]:
    """(at, ok) of one check from ``since`` to ``until``. Two columns, not ORM rows: a month of 30-second
    samples is ~90,000 rows per check (``MonitorHistory.samples`` loads whole rows)."""
    query = (select(MonitorSample.at, MonitorSample.ok)
             .where(MonitorSample.check == check, col(MonitorSample.at) >= since, col(MonitorSample.at) < until)
             .order_by(col(MonitorSample.at), col(MonitorSample.id)))
    with store.session() as session:
        return [(at, bool(ok)) for at, ok in session.exec(query)]


def segments(points: Sequence[tuple[datetime, bool]], since: datetime, until: datetime,
             gap: timedelta) -> list[Segment]:
    """The period [since, until) cut into up/down/unknown pieces (adjacent pieces of one state merged)."""
    pieces: list[Segment] = []
    cursor = since
    for index, (at, ok) in enumerate(points):
        following = points[index + 1][0] if index + 1 < len(points) else until
        start, end = max(at, since), min(following, at + gap, until)
        if end <= start:
            continue
        if start > cursor:
            pieces.append(Segment(cursor, start, "unknown"))
        pieces.append(Segment(start, end, "up" if ok else "down"))
        cursor = end
    if cursor < until:
        pieces.append(Segment(cursor, until, "unknown"))
    return _merged(pieces)


def _merged(pieces: list[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for piece in pieces:
        if merged and merged[-1].state == piece.state and merged[-1].end == piece.start:
            merged[-1] = Segment(merged[-1].start, piece.end, piece.state)
        else:
            merged.append(piece)
    return merged


def worst_of(timelines: Sequence[list[Segment]], since: datetime, until: datetime) -> list[Segment]:
    """Several services' timelines as one: down if any is down, else unknown if any is, else up."""
    if not timelines:
        return [Segment(since, until, "unknown")]
    bounds = sorted({since, until, *(s.start for t in timelines for s in t), *(s.end for t in timelines for s in t)})
    positions = [0] * len(timelines)
    pieces: list[Segment] = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        if start < since or end > until:
            continue
        state = "up"
        for number, timeline in enumerate(timelines):
            while positions[number] < len(timeline) and timeline[positions[number]].end <= start:
                positions[number] += 1
            here = timeline[positions[number]].state if positions[number] < len(timeline) else "unknown"
            state = here if _RANK[here] > _RANK[state] else state
        pieces.append(Segment(start, end, state))
    return _merged(pieces)


def summarise(name: str, timeline: list[Segment], since: datetime, until: datetime, budget_minutes: float,
              samples: int, tier: int | None = None) -> Availability:
    down = sum(s.minutes for s in timeline if s.state == "down")
    unknown = sum(s.minutes for s in timeline if s.state == "unknown")
    return Availability(name, since, until, round(down, 3), round(unknown, 3), budget_minutes, samples, tier)


@dataclass(frozen=True)
class WatchedService:
    name: str
    tier: int
    check: str                    # the monitor's check name (``service <name>``)
    interval_seconds: float       # how often the monitor samples it


def availability(store: Store, services: Sequence[WatchedService], since: datetime, until: datetime,
                 availability_percent: float) -> tuple[list[Availability], list[Availability]]:
    """(per service, per tier) over [since, until), against the monthly budget of the objective."""
    budget = monthly_budget_minutes(availability_percent)
    per_service: list[Availability] = []
    by_tier: dict[int, list[list[Segment]]] = {}
    counts: dict[int, int] = {}
    for service in services:
        gap = timedelta(seconds=2.5 * service.interval_seconds)
        points = sample_points(store, service.check, since - gap, until)
        timeline = segments(points, since, until, gap)
        inside = sum(1 for at, _ok in points if at >= since)
        per_service.append(summarise(service.name, timeline, since, until, budget, inside))
        by_tier.setdefault(service.tier, []).append(timeline)
        counts[service.tier] = counts.get(service.tier, 0) + inside
    tiers = [summarise(f"tier {tier}", worst_of(timelines, since, until), since, until, budget, counts[tier], tier)
             for tier, timelines in sorted(by_tier.items())]
    return per_service, tiers
