"""A drill's figures against the objectives (O1-O3) and its scenario's expected range (S1-S3).

Each figure carries what it was measured from (``basis``); an unmeasured figure is ``None`` with
the reason, and its objective is scored ``passed = None`` (unknown) — never a pass by default. The
expected range of a scenario (the plan's table 3.1) is met when the figure is at most its upper
bound (faster than expected is fine); its lower bound is shown beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from recovery.objectives import EXPECTED_RANGES, Basis
from statemachines.json_types import JsonObject


@dataclass(frozen=True)
class Figure:
    value: float | None          # seconds; None = unknown
    basis: Basis                 # what it was measured from, or why it is unknown

    def as_dict(self) -> JsonObject:
        return {"value": self.value, "unit": "seconds", **self.basis.as_fields()}


@dataclass(frozen=True)
class Objectives:
    rto_seconds: float = 4 * 3600     # O1
    rpo_seconds: float = 15 * 60      # O2
    mttr_seconds: float = 2 * 3600    # O3


@dataclass(frozen=True)
class ExpectedRange:
    rto: tuple[float, float]          # seconds (low, high)
    rpo: tuple[float, float]


# The plan's table 3.1 (S1 data-centre outage, S2 database failure, S3 ransomware), kept in one
# place: recovery/objectives.py, which judges incidents against the same ranges.
EXPECTED = {
    scenario: ExpectedRange((ranges["rto"].low_seconds, ranges["rto"].high_seconds),
                            (ranges["rpo"].low_seconds, ranges["rpo"].high_seconds))
    for scenario, ranges in EXPECTED_RANGES.items()
}
# Which scenario each drill rehearses, so which expected range scores it.
SCENARIO_OF = {
    "database_failover_test": "database_failure",
    "full_system_recovery_test": "datacenter_outage",
    "backup_restore_test": "ransomware",    # restore from a backup proven clean
}


@dataclass(frozen=True)
class Score:
    objective: str               # rto | rpo | mttr | <scenario>_rto | <scenario>_rpo
    target: float                # seconds: the objective, or the range's upper bound
    low: float | None            # the range's lower bound (ranges only)
    value: float | None
    passed: bool | None          # None: unknown (the figure could not be measured)
    basis: Basis

    def as_dict(self) -> JsonObject:
        return {**asdict(self), **self.basis.as_fields(), "unit": "seconds"}


def _score(objective: str, target: float, figure: Figure, low: float | None = None) -> Score:
    passed = None if figure.value is None else figure.value <= target
    return Score(objective, target, low, figure.value, passed, figure.basis)


def score(scenario: str | None, figures: dict[str, Figure], objectives: Objectives) -> list[Score]:
    """Pass/fail per objective for the figures present (``rto``, ``rpo``, ``mttr``)."""
    targets = {"rto": objectives.rto_seconds, "rpo": objectives.rpo_seconds, "mttr": objectives.mttr_seconds}
    scores = [_score(name, targets[name], figures[name]) for name in ("rto", "rpo", "mttr") if name in figures]
    expected = EXPECTED.get(scenario or "")
    if expected is not None:
        for name, (low, high) in (("rto", expected.rto), ("rpo", expected.rpo)):
            if name in figures:
                scores.append(_score(f"{scenario}_{name}", high, figures[name], low))
    return scores


def overall(scores: list[Score], checks_ok: bool) -> str:
    """``passed`` only when every check passed and no scored figure failed; an unknown figure does not
    fail the drill (its score says unknown), a failed one does."""
    if not checks_ok or any(s.passed is False for s in scores):
        return "failed"
    return "passed"
