"""One run per scheduled fire, with a lease: ``scheduled_claim`` rows (job, fire time, unique).

Before a fire does its work the scheduler leader inserts the claim; the insert that loses the
unique (job, fire time) runs nothing, so a fire runs once even when a leader change lets two
processes see it. While the work runs its lease is renewed; at the end ``done_at`` is set. A claim
whose lease lapsed without ``done_at`` belonged to a process that died mid-fire: the next leader
takes it over (compare-and-set on the old lease) and runs the job again by its stable name.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select

from statemachines.models import ScheduledClaim, require_id, utcnow
from statemachines.store import Store

log = logging.getLogger("aegis.scheduler")
CLAIMS_KEPT = timedelta(days=7)       # the record of who ran what; a fire is never re-run this late
RERUN_WITHIN = timedelta(hours=1)     # a crashed fire older than this is not worth re-running


def fire_key(fire_time: datetime) -> str:
    """The claim key of a fire: the scheduled time in UTC to the second, ISO (every process computes
    the same; rounding absorbs the float error of interval triggers' arithmetic)."""
    return datetime.fromtimestamp(round(fire_time.timestamp()), UTC).isoformat()


@dataclass(frozen=True)
class Lapsed:
    """A claimed fire whose claimant stopped renewing its lease before it finished."""

    claim_id: int
    job_id: str
    fire_time: str
    job_name: str
    args: list[object]
    lease_until: datetime | None


class FireClaims:
    def __init__(self, store: Store, owner: str, lease_seconds: float = 60.0) -> None:
        self.store = store
        self.owner = owner
        self.lease = timedelta(seconds=lease_seconds)

    def run(self, job_id: str, fire_time: datetime, job_name: str, args: list[object],
            work: Callable[[], object]) -> tuple[bool, object]:
        """Claim (job, fire time) and do ``work`` under a renewed lease; (False, None) when taken."""
        claim_id = self._insert(job_id, fire_key(fire_time), job_name, args)
        if claim_id is None:
            log.info("%s at %s was already claimed; not run again", job_id, fire_key(fire_time))
            return False, None
        log.info("%s at %s: claimed by %s, running", job_id, fire_key(fire_time), self.owner)
        return True, self._work(claim_id, job_id, work)

    def take_over(self, lapsed: Lapsed, work: Callable[[], object]) -> tuple[bool, object]:
        """Run a crashed claimant's fire, if this process wins the compare-and-set on its lease."""
        query = update(ScheduledClaim).where(col(ScheduledClaim.id) == lapsed.claim_id,
                                             col(ScheduledClaim.done_at).is_(None))
        query = query.where(col(ScheduledClaim.lease_until).is_(None) if lapsed.lease_until is None
                            else col(ScheduledClaim.lease_until) == lapsed.lease_until)
        with self.store.session() as session:
            won = session.execute(query.values(owner=self.owner, lease_until=utcnow() + self.lease)
                                  ).rowcount == 1  # type: ignore[attr-defined]
        if not won:
            return False, None
        log.warning("%s at %s: its claimant stopped before finishing; running it again", lapsed.job_id,
                    lapsed.fire_time)
        return True, self._work(lapsed.claim_id, lapsed.job_id, work)

    def lapsed(self) -> list[Lapsed]:
        """Unfinished claims whose lease ran out (their process died), recent enough to re-run."""
        now = utcnow()
        query = select(ScheduledClaim).where(col(ScheduledClaim.done_at).is_(None),
                                             col(ScheduledClaim.lease_until) < now,
                                             col(ScheduledClaim.claimed_at) > now - RERUN_WITHIN)
        with self.store.session() as session:
            return [Lapsed(require_id(row), row.job_id, row.fire_time, row.job_name, list(row.args or []),
                           row.lease_until) for row in session.exec(query)]

    def is_claimed(self, job_id: str, fire_time: datetime) -> bool:
        query = select(ScheduledClaim.id).where(col(ScheduledClaim.job_id) == job_id,
                                                col(ScheduledClaim.fire_time) == fire_key(fire_time))
        with self.store.session() as session:
            return session.exec(query).first() is not None

    # --- rows -----------------------------------------------------------------------------------

    def _insert(self, job_id: str, key: str, job_name: str, args: list[object]) -> int | None:
        row = ScheduledClaim(job_id=job_id, fire_time=key, owner=self.owner, job_name=job_name, args=args,
                             lease_until=utcnow() + self.lease)
        try:
            with self.store.session() as session:
                session.add(row)
                session.flush()
                claim_id = row.id
        except IntegrityError:
            return None
        with self.store.session() as session:    # keep a week of the record, per job
            session.execute(delete(ScheduledClaim).where(col(ScheduledClaim.job_id) == job_id,
                                                         col(ScheduledClaim.claimed_at) < utcnow() - CLAIMS_KEPT))
        return claim_id

    def _work(self, claim_id: int, job_id: str, work: Callable[[], object]) -> object:
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(claim_id, stop), name=f"aegis-lease-{job_id}",
                                   daemon=True)
        renewer.start()
        try:
            return work()
        finally:
            # done even when the job raised: only a process that died leaves a fire to re-run
            stop.set()
            renewer.join()
            self._set(claim_id, done_at=utcnow())

    def _renew(self, claim_id: int, stop: threading.Event) -> None:
        while not stop.wait(self.lease.total_seconds() / 3):
            try:
                self._set(claim_id, lease_until=utcnow() + self.lease)
            except Exception:
                log.warning("could not renew the lease of claim %s; retrying", claim_id, exc_info=True)

    def _set(self, claim_id: int, **values: object) -> None:
        with self.store.session() as session:
            session.execute(update(ScheduledClaim).where(col(ScheduledClaim.id) == claim_id).values(**values))
