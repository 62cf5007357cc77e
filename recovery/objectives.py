"""RTO, RPO and MTTR of an incident (O1-O3): the maths, as pure functions returning plain data.

A figure is a value in seconds with its basis (how it was measured, or why it is unknown) and a
verdict against its target: met, not met, or unknown (``None``) — each with the reason. Unknown stays
unknown: an RPO that was not observed is ``None`` with the reason, never 0.

- RTO: declared → verified. Met only when the incident was verified *on evidence* within the target
  (a verification without evidence does not count as recovered).
- RPO: what the recovery lost, computed by the engine from the step's output and stored on the
  incident with its basis: for a promotion the standby's replication lag at failover
  (``rpo_from_promotion``); for a PostgreSQL restore in place or a partial restore the failure time
  minus the time of the last recovered transaction (``rpo_from_restore``: the action's
  ``recovered_to``, i.e. ``pg_last_xact_replay_timestamp()`` or the recovery target). The failure
  time is ``incident.failure_at`` (ransomware: the infection time); when it was never recorded the
  declaration time stands in and the basis says so — the loss it gives is then an upper bound,
  since nothing was written between the failure and the declaration. A recovery past the failure
  time lost nothing before it: 0, not a negative figure. Only PostgreSQL reports a recovered-to
  time; Neo4j and Milvus restores put back a whole backup and measure no RPO.
- MTTR: declared → closed.

Each figure is judged twice: against its objective (O1 RTO, O2 RPO, O3 MTTR, config ``objectives``)
and, for RTO and RPO, against the expected range of the incident's scenario (S1–S3,
``EXPECTED_RANGES``, the plan's table 3.1). A figure below a range's lower end is better than
expected (a range is what the plan expects, not a floor to reach); above the upper end it is over.

Nothing here reads the store or knows about chat: callers pass the times and the stored RPO, and
turn the figures into their own views (bot/presenters.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from statemachines.json_types import JsonObject


@dataclass(frozen=True)
class Basis:
    """What a figure was measured from, or why it is unknown.

    ``text`` is the English sentence: stored beside the figure, logged, printed by the CLI. ``code``
    and ``params`` say the same in a form each locale renders in its own words (a macro per code in
    messages/templates/<locale>/basis.j2); a locale without the code shows ``text``.
    """

    code: str                   # one of BASIS_CODES
    text: str
    params: JsonObject = field(default_factory=dict)

    def as_data(self) -> JsonObject:
        """What is stored beside ``text`` (incident.rpo_basis_data, a drill figure's ``basis_data``)."""
        return {"code": self.code, "params": dict(self.params)}

    def as_fields(self) -> JsonObject:
        """The two JSON fields a drill's figure or score keeps it in: ``basis`` (text) and ``basis_data``."""
        return {"basis": self.text, "basis_data": self.as_data()}

    @classmethod
    def stored(cls, text: str | None, data: object) -> Basis | None:
        """The basis kept as ``text`` and ``data`` (``as_data``); a row written before the data was kept
        has the text alone (code ``""``: every locale shows the text)."""
        if not text:
            return None
        if isinstance(data, dict) and isinstance(data.get("code"), str) and isinstance(data.get("params"), dict):
            return cls(data["code"], text, dict(data["params"]))
        return cls("", text)


#: the RPO basis of an incident no step of which measured one
NO_PROMOTION_RPO = Basis("rpo_not_measured", "unknown: no PostgreSQL promotion or restore step of this incident "
                         "reported what it recovered")
#: the RPO basis when the process running the promotion died before it could record the lag
LOST_PROMOTION_RPO = Basis("rpo_lost_promotion", "unknown: the process running the promotion died, so the "
                           "replication lag at failover was not recorded")
#: the RPO basis when the process running a restore died before it could record what it recovered
LOST_RESTORE_RPO = Basis("rpo_lost_restore", "unknown: the process running the restore died, so the time of the "
                         "last recovered transaction was not recorded")

#: every Basis code, the incidents' (here) and the drills' (recovery/drills/drills.py): each locale's
#: basis.j2 has a macro for each (tests check it)
BASIS_CODES = (
    "rpo_not_measured", "rpo_lost_promotion", "rpo_lost_restore",
    "promotion_already_primary", "promotion_position_unknown", "promotion_all_replayed",
    "promotion_no_replay_time", "promotion_lag",
    "restore_not_reported", "restore_unreadable", "restore",
    "rto_not_verified", "rto_verified", "mttr_not_closed", "mttr_closed",
    "drill_rto_restore_tests", "drill_rto_no_restore", "drill_rpo_restore_test", "drill_mttr_restore_test",
    "drill_rpo_no_archive", "drill_rpo_nothing_replayed", "drill_rpo", "drill_rto_failover", "drill_rto_full",
    "drill_mttr_one_recovery",
)

#: what a restore's ``recovered_to`` was measured from (its ``recovered_to_basis``); each locale's
#: basis.j2 translates these sentences (a restore's own other words are shown as they are)
RECOVERED_TO_LAST_REPLAYED = "pg_last_xact_replay_timestamp() (the last transaction replayed)"
RECOVERED_TO_TARGET = "the recovery target time (no transaction was replayed)"
RECOVERED_TO_BACKUP_END = "the backup's end (no transaction was replayed after it)"
RECOVERED_TO_UNKNOWN = "unknown: no transaction was replayed and the backup's end time is not recorded"
RECOVERED_TO_GRAPH_EXPORT = "when the backup's export finished (a read-committed export, not a snapshot)"
RECOVERED_TO_VECTOR_EXPORT = "when the backup's export of the collections finished"
RECOVERED_TO_BASES = (RECOVERED_TO_LAST_REPLAYED, RECOVERED_TO_TARGET, RECOVERED_TO_BACKUP_END,
                      RECOVERED_TO_UNKNOWN, RECOVERED_TO_GRAPH_EXPORT, RECOVERED_TO_VECTOR_EXPORT)



def recovered_point(last_replayed: object, target_time: datetime | None,
                    backup_end: datetime | None) -> tuple[str | None, str]:
    """What a restored PostgreSQL holds data up to (ISO, UTC) and what that was measured from: its
    last replayed transaction (``pg_last_xact_replay_timestamp()``), else the recovery target, else the
    backup's end (a naive time is UTC), else unknown."""
    if isinstance(last_replayed, datetime):
        return last_replayed.astimezone(UTC).isoformat(), RECOVERED_TO_LAST_REPLAYED
    if target_time is not None:
        return target_time.astimezone(UTC).isoformat(), RECOVERED_TO_TARGET
    if backup_end is not None:
        return backup_end.replace(tzinfo=backup_end.tzinfo or UTC).astimezone(UTC).isoformat(), RECOVERED_TO_BACKUP_END
    return None, RECOVERED_TO_UNKNOWN


#: the steps whose output gives the incident's RPO
PROMOTION_ACTIONS = ("postgres_promote",)
RESTORE_ACTIONS = ("postgres_restore", "postgres_partial_restore")

#: the objectives' requirement ids (REQUIREMENTS.md)
RTO_OBJECTIVE, RPO_OBJECTIVE, MTTR_OBJECTIVE = "O1", "O2", "O3"
_HOUR, _MINUTE = 3600.0, 60.0


@dataclass(frozen=True)
class ExpectedRange:
    """What the plan expects of a scenario's RTO or RPO (table 3.1), in seconds."""

    requirement: str           # S1 | S2 | S3
    low_seconds: float
    high_seconds: float

    def judge(self, seconds: float | None) -> str:
        """``better`` (below the range), ``within``, ``over`` (above it) or ``unknown``."""
        if seconds is None:
            return "unknown"
        if seconds < self.low_seconds:
            return "better"
        return "within" if seconds <= self.high_seconds else "over"


#: scenario → {"rto": range, "rpo": range}; S3's RPO "1 h" is read as up to an hour
EXPECTED_RANGES: dict[str, dict[str, ExpectedRange]] = {
    "datacenter_outage": {"rto": ExpectedRange("S1", 2 * _HOUR, 4 * _HOUR),
                          "rpo": ExpectedRange("S1", 5 * _MINUTE, 15 * _MINUTE)},
    "database_failure": {"rto": ExpectedRange("S2", 30 * _MINUTE, 2 * _HOUR),
                         "rpo": ExpectedRange("S2", 0.0, 5 * _MINUTE)},
    "ransomware": {"rto": ExpectedRange("S3", 4 * _HOUR, 8 * _HOUR),
                   "rpo": ExpectedRange("S3", 0.0, 1 * _HOUR)},
}


@dataclass(frozen=True)
class Expected:
    """A figure against its scenario's range."""

    range: ExpectedRange
    verdict: str               # better | within | over | unknown


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
    basis: Basis               # how the value was measured, or why it is unknown
    met: bool | None           # None: unknown
    reason: str                # why met / not met / unknown
    requirement: str = ""      # O1 | O2 | O3
    expected: Expected | None = None   # against the scenario's range (S1-S3); None: no range


@dataclass(frozen=True)
class IncidentFigures:
    rto: Figure
    rpo: Figure
    mttr: Figure


def elapsed(start: datetime, end: datetime | None) -> float | None:
    """Seconds from ``start`` to ``end``; None when ``end`` has not happened."""
    return None if end is None else (end - start).total_seconds()


def timestamp(at: datetime) -> str:
    """How a figure's basis names a time: UTC to the second, ``2024-05-01 12:00:00Z``."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def expected(scenario: str | None, name: str, seconds: float | None) -> Expected | None:
    """``seconds`` of figure ``name`` (rto | rpo) against the scenario's range; None without one."""
    ranges = EXPECTED_RANGES.get(scenario or "", {})
    found = ranges.get(name)
    return None if found is None else Expected(found, found.judge(seconds))


def rto(declared_at: datetime, verified_at: datetime | None, target_seconds: float, *,
        evidence_ok: bool, scenario: str | None = None) -> Figure:
    """Declared → verified; met only when verified on passing evidence within the target."""
    seconds = elapsed(declared_at, verified_at)
    range_ = expected(scenario, "rto", seconds)
    declared = timestamp(declared_at)
    if verified_at is None:
        basis = Basis("rto_not_verified", f"declared {declared}, not verified", {"declared": declared})
        return Figure("rto", None, target_seconds, basis, None, "never verified", RTO_OBJECTIVE, range_)
    verified = timestamp(verified_at)
    basis = Basis("rto_verified", f"declared {declared} → verified {verified}",
                  {"declared": declared, "verified": verified})
    if not evidence_ok:
        # not proven recovered: neither the objective nor the scenario's range can count it
        unproven = None if range_ is None else Expected(range_.range, "unknown")
        return Figure("rto", seconds, target_seconds, basis, False, "verified without passing evidence",
                      RTO_OBJECTIVE, unproven)
    met = seconds is not None and seconds <= target_seconds
    return Figure("rto", seconds, target_seconds, basis, met, "within the target" if met else "over the target",
                  RTO_OBJECTIVE, range_)


def rpo(seconds: float | None, basis: Basis | None, target_seconds: float, *, scenario: str | None = None) -> Figure:
    """The stored RPO (``None`` = unknown, ``basis`` says why) against the target and the scenario's range."""
    said = basis or NO_PROMOTION_RPO
    range_ = expected(scenario, "rpo", seconds)
    if seconds is None:
        return Figure("rpo", None, target_seconds, said, None, said.text, RPO_OBJECTIVE, range_)
    met = seconds <= target_seconds
    return Figure("rpo", seconds, target_seconds, said, met, "within the target" if met else "over the target",
                  RPO_OBJECTIVE, range_)


def mttr(declared_at: datetime, closed_at: datetime | None, target_seconds: float) -> Figure:
    """Declared → closed."""
    seconds = elapsed(declared_at, closed_at)
    declared = timestamp(declared_at)
    if closed_at is None:
        return Figure("mttr", None, target_seconds,
                      Basis("mttr_not_closed", f"declared {declared}, not closed", {"declared": declared}), None,
                      "not closed yet", MTTR_OBJECTIVE)
    closed = timestamp(closed_at)
    basis = Basis("mttr_closed", f"declared {declared} → closed {closed}", {"declared": declared, "closed": closed})
    met = seconds is not None and seconds <= target_seconds
    return Figure("mttr", seconds, target_seconds, basis, met, "within the target" if met else "over the target",
                  MTTR_OBJECTIVE)


def incident_figures(*, declared_at: datetime, verified_at: datetime | None, closed_at: datetime | None,
                     rpo_seconds: float | None, rpo_basis: Basis | None, evidence_ok: bool,
                     targets: Targets, scenario: str | None = None) -> IncidentFigures:
    """An incident's three figures from its stored times and RPO (and its scenario, for S1-S3)."""
    return IncidentFigures(
        rto=rto(declared_at, verified_at, targets.rto_seconds, evidence_ok=evidence_ok, scenario=scenario),
        rpo=rpo(rpo_seconds, rpo_basis, targets.rpo_seconds, scenario=scenario),
        mttr=mttr(declared_at, closed_at, targets.mttr_seconds),
    )


def rpo_from_promotion(output: JsonObject) -> tuple[float | None, Basis]:
    """RPO of a promotion from what the standby reported just before it: seconds, or None + why.

    Unknown stays unknown (None with the reason); it is never reported as 0.
    """
    if output.get("already_promoted"):
        return None, Basis("promotion_already_primary", "unknown: the standby was already a primary when the "
                           "promotion step ran, so its replication lag at failover was not observed")
    unreplayed = output.get("unreplayed_bytes")
    lag = output.get("replay_lag_seconds")
    if unreplayed is None:
        return None, Basis("promotion_position_unknown",
                           "unknown: the standby's received WAL position was not known at failover")
    count = {"unreplayed_bytes": int(unreplayed)}
    if int(unreplayed) == 0:
        return 0.0, Basis("promotion_all_replayed",
                          "replication lag at failover (all WAL the standby had received was replayed)")
    if lag is None:
        return None, Basis("promotion_no_replay_time", f"unknown: {unreplayed} bytes were unreplayed at failover "
                           "and no replay time was known", count)
    return float(lag), Basis("promotion_lag", f"replication lag at failover ({unreplayed} bytes unreplayed)", count)


def rpo_from_restore(output: JsonObject, *, failure_at: datetime | None,
                     declared_at: datetime) -> tuple[float | None, Basis]:
    """RPO of a PostgreSQL restore: the failure time minus its last recovered transaction's time.

    ``output`` is the restore step's (``recovered_to``: ISO time or null, ``recovered_to_basis``: what
    it was measured from). Without a failure time the declaration time is used, and the basis says
    so. Unknown stays unknown (None with the reason); a recovery past the failure time is 0.
    """
    assumed = failure_at is None
    baseline = declared_at if failure_at is None else failure_at
    failure = timestamp(baseline)
    said = f"failure at {failure}" + (" (the declaration time: no failure time was recorded, so this is an upper "
                                      "bound)" if assumed else "")
    measured = str(output.get("recovered_to_basis") or "not said")
    recovered = output.get("recovered_to")
    if not recovered:
        return None, Basis("restore_not_reported", "unknown: the restore did not report the time of its last "
                           f"recovered transaction (basis: {measured})", {"measured": measured})
    try:
        recovered_at = datetime.fromisoformat(str(recovered))
    except ValueError:
        shown = str(recovered)[:40]
        return None, Basis("restore_unreadable", f"unknown: the restore reported an unreadable recovered-to time "
                           f"{shown!r}", {"value": shown})
    if recovered_at.tzinfo is None:
        recovered_at = recovered_at.replace(tzinfo=UTC)
    seconds = (baseline - recovered_at).total_seconds()
    last = timestamp(recovered_at)
    text = f"{said} − last recovered transaction {last} ({measured})"
    past = seconds < 0
    if past:
        text += "; recovered past the failure time, so nothing before it was lost"
    basis = Basis("restore", text, {"failure": failure, "failure_assumed": assumed, "recovered": last,
                                    "measured": measured, "past_failure": past})
    return (0.0 if past else seconds), basis


def measured_by(basis: Basis, position: int, title: str) -> Basis:
    """``basis`` naming the step it came from: its position and (clipped) title, the words the plan
    showed the approver — not the internal action name."""
    shown = title if len(title) <= 80 else title[:79] + "…"
    return Basis(basis.code, f"{basis.text} — measured by step {position} ({shown})",
                 {**basis.params, "step_position": position, "step_title": shown})


def lost_rpo(action: str) -> Basis | None:
    """The RPO basis of a measuring step whose process died before it recorded its output; None for others."""
    if action in PROMOTION_ACTIONS:
        return LOST_PROMOTION_RPO
    return LOST_RESTORE_RPO if action in RESTORE_ACTIONS else None
