"""The monitor's state in the incident store: samples (``monitor_sample``), streaks (``monitor_streak``)
and conditions (``monitor_condition``).

Conditions are in the database, not in memory, so that one ongoing condition stays one condition
across a restart of the loop and a change of scheduler leader (``open_key`` is unique while open).
So are the streaks of consecutive samples, written in one transaction with the cycle's samples
(:meth:`MonitorHistory.record_cycle`): a sample is never stored without the count it made.
Samples are kept ``SAMPLES_KEPT`` for the availability figures (O4) and read by check and time.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select

from recovery.monitor.checks import Sample
from recovery.monitor.risk import Condition, Streak
from statemachines.json_types import JsonObject
from statemachines.models import MonitorCondition, MonitorSample, MonitorStreak, utcnow
from statemachines.store import Store

SAMPLES_KEPT = timedelta(days=400)


def _condition(row: MonitorCondition) -> Condition:
    return Condition(row.key, row.rule, row.level, row.scenario, row.since, row.last_seen, row.summary,
                     tuple(row.checks or ()), list(row.evidence or []), row.incident_id, row.last_warned_at,
                     row.cleared_at)


def _sample_row(s: Sample) -> MonitorSample:
    return MonitorSample(check=s.check, domain=s.domain, ok=s.ok, value=s.value, unit=s.unit, threshold=s.threshold,
                         reason=s.reason, at=s.at)


class MonitorHistory:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- samples ---------------------------------------------------------------------------------

    def record_samples(self, samples: Iterable[Sample]) -> None:
        with self.store.session() as session:
            session.add_all(_sample_row(s) for s in samples)

    def record_cycle(self, samples: Iterable[Sample], streaks: Iterable[Streak], removed: Iterable[str]) -> None:
        """One cycle's samples and the streaks they made (written or deleted), in one transaction."""
        written = {s.key: s for s in streaks}
        gone = set(removed) - set(written)
        with self.store.session() as session:
            session.add_all(_sample_row(s) for s in samples)
            if gone:
                session.execute(delete(MonitorStreak).where(col(MonitorStreak.key).in_(gone)))
            if written:
                rows = {r.key: r for r in session.exec(select(MonitorStreak)
                                                       .where(col(MonitorStreak.key).in_(written)))}
                for key, streak in written.items():
                    row = rows.get(key) or MonitorStreak(key=key, failing=streak.failing, count=streak.count,
                                                         last_at=streak.last_at)
                    row.failing, row.count, row.checks, row.last_at = (streak.failing, streak.count,
                                                                       list(streak.checks), streak.last_at)
                    session.add(row)

    def streaks(self) -> dict[str, Streak]:
        with self.store.session() as session:
            return {r.key: Streak(r.key, r.failing, r.count, tuple(r.checks or ()), r.last_at)
                    for r in session.exec(select(MonitorStreak))}

    def samples(self, check: str, since: datetime | None = None, until: datetime | None = None) -> list[MonitorSample]:
        """One check's samples in time order, optionally within [since, until)."""
        query = select(MonitorSample).where(MonitorSample.check == check)
        if since is not None:
            query = query.where(col(MonitorSample.at) >= since)
        if until is not None:
            query = query.where(col(MonitorSample.at) < until)
        with self.store.session() as session:
            return list(session.exec(query.order_by(col(MonitorSample.at), col(MonitorSample.id))))

    def prune_samples(self, now: datetime | None = None, kept: timedelta = SAMPLES_KEPT) -> int:
        cutoff = (now or utcnow()) - kept
        with self.store.session() as session:
            result = session.execute(delete(MonitorSample).where(col(MonitorSample.at) < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)

    # --- conditions (recovery.monitor.risk.ConditionStore) ---------------------------------------

    def open_conditions(self) -> dict[str, Condition]:
        with self.store.session() as session:
            rows = session.exec(select(MonitorCondition).where(col(MonitorCondition.open_key).is_not(None)))
            return {row.key: _condition(row) for row in rows}

    def open_condition(self, condition: Condition) -> bool:
        """Insert the condition as open; False when it is open already (another replica, a restart)."""
        row = MonitorCondition(key=condition.key, open_key=condition.key, rule=condition.rule,
                               level=condition.level, scenario=condition.scenario, summary=condition.summary,
                               checks=list(condition.checks), since=condition.since,
                               last_seen=condition.last_seen, evidence=condition.evidence)
        try:
            with self.store.session() as session:
                session.add(row)
        except IntegrityError:
            return False
        return True

    def touch_condition(self, key: str, last_seen: datetime, evidence: list[JsonObject]) -> None:
        with self.store.session() as session:
            session.execute(update(MonitorCondition).where(col(MonitorCondition.open_key) == key)
                            .values(last_seen=last_seen, evidence=evidence))

    def clear_condition(self, key: str, at: datetime) -> Condition | None:
        """Mark it cleared; the cleared condition, or None when it was not open (cleared elsewhere)."""
        with self.store.session() as session:
            row = session.exec(select(MonitorCondition).where(col(MonitorCondition.open_key) == key)
                               .with_for_update()).first()
            if row is None:
                return None
            row.open_key, row.cleared_at = None, at
            session.add(row)
            session.flush()
            return _condition(row)

    def link_incident(self, key: str, incident_id: int) -> None:
        with self.store.session() as session:
            session.execute(update(MonitorCondition).where(col(MonitorCondition.open_key) == key)
                            .values(incident_id=incident_id))

    def claim_warning(self, key: str, now: datetime, repeat: timedelta) -> bool:
        """True for the one caller that may warn about ``key`` now (none warned within ``repeat``).

        A compare-and-set on ``last_warned_at``: two replicas or a retried cycle warn once.
        """
        due = (col(MonitorCondition.last_warned_at).is_(None)) | (col(MonitorCondition.last_warned_at) <= now - repeat)
        with self.store.session() as session:
            result = session.execute(update(MonitorCondition)
                                     .where(col(MonitorCondition.open_key) == key, due)
                                     .values(last_warned_at=now))
            return bool(getattr(result, "rowcount", 0))

    def conditions(self, key: str | None = None) -> list[Condition]:
        """Every condition (open and cleared), oldest first; of one key when given."""
        query = select(MonitorCondition)
        if key is not None:
            query = query.where(MonitorCondition.key == key)
        with self.store.session() as session:
            return [_condition(row) for row in session.exec(query.order_by(col(MonitorCondition.id)))]
