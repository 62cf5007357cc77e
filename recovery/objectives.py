"""RTO, RPO and MTTR of an incident (O1-O3): the maths, as pure functions returning plain data.

A figure is a value in seconds with its basis (how it was measured, or why it is unknown) and a
verdict against its target: met, not met, or unknown (``None``) — each with the reason. Unknown stays
unknown: an RPO that was not observed is ``None`` with the reason, never 0.

- RTO: declared → verified. Met only when the incident was verified *on evidence* within the target
  (a verification without evidence does not count as recovered).
- RPO: what the failover lost, e.g. the standby's replication lag at a promotion
  (``rpo_from_promotion``, computed by the engine from the promotion's output and stored on the incident).
- MTTR: declared → closed.

Nothing here reads the store or knows about chat: callers pass the times and the stored RPO, and
turn the figures into their own views (bot/presenters.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from statemachines.json_types import JsonObject

#: the RPO basis of an incident that promoted no database
NO_PROMOTION_RPO = "not measured (no database promotion in this incident)"
#: the RPO basis when the process running the promotion died before it could record the lag
LOST_PROMOTION_RPO = ("unknown: the process running the promotion died, so the replication lag at failover "
                      "was not recorded")


@dataclass(frozen=True)
class Targets:
    """The objectives, in seconds (config ``objectives``)."""

    rto_seconds: float
    rpo_seconds: float
    mttr_seconds: float


@dataclass(frozen=True)
class Figure:
    """One objective's figure: value, how it was obtained, and the verdict against the target."""

    name: str                  # rto | rpo | mttr
    seconds: float | None      # None: unknown (the basis says why)
    target_seconds: float
    basis: str                 # how the value was measured, or why it is unknown
    met: bool | None           # None: unknown
    reason: str                # why met / not met / unknown


@dataclass(frozen=True)
class IncidentFigures:
    rto: Figure
    rpo: Figure
    mttr: Figure


def elapsed(start: datetime, end: datetime | None) -> float | None:
    """Seconds from ``start`` to ``end``; None when ``end`` has not happened."""
    return None if end is None else (end - start).total_seconds()


def rto(declared_at: datetime, verified_at: datetime | None, target_seconds: float, *,
        evidence_ok: bool) -> Figure:
    """Declared → verified; met only when verified on passing evidence within the target."""
    seconds = elapsed(declared_at, verified_at)
    basis = "declared → verified"
    if seconds is None:
        return Figure("rto", None, target_seconds, basis, None, "never verified")
    if not evidence_ok:
        return Figure("rto", seconds, target_seconds, basis, False, "verified without passing evidence")
    met = seconds <= target_seconds
    return Figure("rto", seconds, target_seconds, basis, met, "within the target" if met else "over the target")


def rpo(seconds: float | None, basis: str | None, target_seconds: float) -> Figure:
    """The stored RPO (``None`` = unknown or not measured, ``basis`` says which) against the target."""
    said = basis or NO_PROMOTION_RPO
    if seconds is None:
        return Figure("rpo", None, target_seconds, said, None, said)
    met = seconds <= target_seconds
    return Figure("rpo", seconds, target_seconds, said, met, "within the target" if met else "over the target")


def mttr(declared_at: datetime, closed_at: datetime | None, target_seconds: float) -> Figure:
    """Declared → closed."""
    seconds = elapsed(declared_at, closed_at)
    basis = "declared → closed"
    if seconds is None:
        return Figure("mttr", None, target_seconds, basis, None, "not closed yet")
    met = seconds <= target_seconds
    return Figure("mttr", seconds, target_seconds, basis, met, "within the target" if met else "over the target")


def incident_figures(*, declared_at: datetime, verified_at: datetime | None, closed_at: datetime | None,
                     rpo_seconds: float | None, rpo_basis: str | None, evidence_ok: bool,
                     targets: Targets) -> IncidentFigures:
    """An incident's three figures from its stored times and RPO."""
    return IncidentFigures(
        rto=rto(declared_at, verified_at, targets.rto_seconds, evidence_ok=evidence_ok),
        rpo=rpo(rpo_seconds, rpo_basis, targets.rpo_seconds),
        mttr=mttr(declared_at, closed_at, targets.mttr_seconds),
    )


def rpo_from_promotion(output: JsonObject) -> tuple[float | None, str]:
    """RPO of a promotion from what the standby reported just before it: seconds, or None + why.

    Unknown stays unknown (None with the reason); it is never reported as 0.
    """
    if output.get("already_promoted"):
        return None, ("unknown: the standby was already a primary when the promotion step ran, so its "
                      "replication lag at failover was not observed")
    unreplayed = output.get("unreplayed_bytes")
    lag = output.get("replay_lag_seconds")
    if unreplayed is None:
        return None, "unknown: the standby's received WAL position was not known at failover"
    if int(unreplayed) == 0:
        return 0.0, "replication lag at failover (all WAL the standby had received was replayed)"
    if lag is None:
        return None, f"unknown: {unreplayed} bytes were unreplayed at failover and no replay time was known"
    return float(lag), f"replication lag at failover ({unreplayed} bytes unreplayed)"
