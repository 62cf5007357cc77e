"""The clean point of a ransomware recovery (S3): per component, the backup to restore from.

A backup is **clean** when it was taken before the infection *and* its integrity was proven before
the infection — checked end to end by ``aegis backup verify`` (``verified_at`` before the infection,
the verification passed) or restored by a restore test that passed (``restore_tested_at`` before the
infection). A proof dated after the infection does not count: by then the verifier's own host may
have been compromised, so the only evidence trusted is evidence recorded before it.

Decided here where the issue is silent:

- "Taken before" compares the backup's *end* (``taken_at`` is when the run finished storing it): a
  backup still running when the infection began may hold encrypted files.
- The catalog keeps the *last* verification of each backup only; a backup re-verified after the
  infection therefore loses its earlier proof and is skipped with that reason (a safe miss).
- Each candidate that is newer than the chosen one is reported as skipped with its reason, so the
  plan's rationale can say why the newest backup was not used. Older ones are not listed.
- The choice exists twice: ``describe`` (an English sentence for the timeline and logs) and
  ``as_json`` (codes and times the assessment message renders in each locale).

Pure: no catalog access; ``bot/plan_facts.py`` turns catalog rows into :class:`BackupCandidate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from statemachines.json_types import JsonObject


@dataclass(frozen=True)
class BackupCandidate:
    """One restorable backup of one component, as the planner sees it (no catalog row, no secrets)."""

    run_id: str
    component: str                       # postgres | neo4j | milvus
    taken_at: datetime                   # when the backup finished (it holds nothing newer)
    kind: str = ""                       # pg_full | pg_incremental | neo4j | milvus
    verified_at: datetime | None = None  # the last `aegis backup verify`
    verify_ok: bool | None = None
    restore_tested_at: datetime | None = None
    restore_test_ok: bool | None = None
    collections: tuple[str, ...] = ()    # Milvus: the collections the run exported

    @property
    def known_bad(self) -> bool:
        """Its last verification or restore test failed: never restore from it."""
        return self.verify_ok is False or self.restore_test_ok is False


@dataclass(frozen=True)
class Skipped:
    backup: BackupCandidate
    reason: str                           # English, for the rationale
    code: str = ""                        # taken_after | known_bad | proven_later | not_verified
    at: datetime | None = None            # the time the code names (taken / checked only at)


@dataclass(frozen=True)
class CleanPoint:
    """The choice for one component: ``chosen`` (None = no clean backup), ``proof`` says why it is clean."""

    component: str
    chosen: BackupCandidate | None
    proof: str = ""                       # "verified 02:40 (backup verify)" / "restore-tested 03:10"
    skipped: tuple[Skipped, ...] = field(default=())
    proof_kind: str = ""                  # verified | restore_tested
    proof_at: datetime | None = None


def _hm(moment: datetime, day: datetime | None = None) -> str:
    """``09:14`` on the infection's day (UTC), else ``2026-11-30 02:00``: short, never ambiguous."""
    moment = moment.astimezone(UTC)
    same_day = day is not None and moment.date() == day.astimezone(UTC).date()
    return f"{moment:%H:%M}" if same_day else f"{moment:%Y-%m-%d %H:%M}"


def _proof(backup: BackupCandidate, infection: datetime) -> tuple[str, datetime] | None:
    """(verified | restore_tested, when) proving ``backup`` intact before ``infection``, or None."""
    if backup.known_bad:
        return None
    if backup.verify_ok and backup.verified_at is not None and backup.verified_at < infection:
        return "verified", backup.verified_at
    if backup.restore_test_ok and backup.restore_tested_at is not None and backup.restore_tested_at < infection:
        return "restore_tested", backup.restore_tested_at
    return None


def proof_before(backup: BackupCandidate, infection: datetime) -> str | None:
    """What proves ``backup`` intact before ``infection``, or None (never a backup whose last check failed)."""
    proof = _proof(backup, infection)
    if proof is None:
        return None
    kind, when = proof
    if kind == "verified":
        return f"verified {_hm(when, infection)} (backup verify)"
    return f"restore-tested {_hm(when, infection)} (restore test)"


def _not_clean(backup: BackupCandidate, infection: datetime) -> tuple[str, datetime | None]:
    """The code of the one reason ``backup`` is not a clean point, and the time it names."""
    if backup.taken_at >= infection:
        return "taken_after", backup.taken_at
    if backup.known_bad:
        return "known_bad", None
    proven_later = [t for t in (backup.verified_at, backup.restore_tested_at) if t is not None and t >= infection]
    if proven_later:
        return "proven_later", min(proven_later)
    return "not_verified", None


def why_not_clean(backup: BackupCandidate, infection: datetime) -> str:
    """The one reason ``backup`` is not a clean point (it has no proof before the infection)."""
    code, when = _not_clean(backup, infection)
    if code == "taken_after" and when is not None:
        return f"taken {_hm(when, infection)}, after the infection"
    if code == "known_bad":
        return "its last verification or restore test failed"
    if code == "proven_later" and when is not None:
        return f"not verified before the infection (checked only at {_hm(when, infection)})"
    return "not verified before the infection"


def choose(component: str, candidates: list[BackupCandidate] | tuple[BackupCandidate, ...],
           infection: datetime) -> CleanPoint:
    """The newest clean backup of ``component`` and the newer ones skipped (module docstring)."""
    skipped: list[Skipped] = []
    for backup in sorted(candidates, key=lambda b: b.taken_at, reverse=True):
        proof = None if backup.taken_at >= infection else _proof(backup, infection)
        if proof is not None:
            return CleanPoint(component, backup, proof_before(backup, infection) or "", tuple(skipped),
                              proof_kind=proof[0], proof_at=proof[1])
        code, when = _not_clean(backup, infection)
        skipped.append(Skipped(backup, why_not_clean(backup, infection), code, when))
    return CleanPoint(component, None, "", tuple(skipped))


def describe(point: CleanPoint, infection: datetime) -> str:
    """One sentence for the plan's rationale: the choice, its proof, and what was skipped and why."""
    infected = _hm(infection, infection)
    if point.chosen is None:
        text = f"{point.component}: no backup verified before the infection at {infected}"
    else:
        chosen = point.chosen
        text = (f"{point.component}: {chosen.run_id} taken {_hm(chosen.taken_at, infection)}, {point.proof}"
                f" — the newest verified before the infection at {infected}")
    if point.skipped:
        text += "; " + "; ".join(f"{s.backup.run_id} was skipped: {s.reason}" for s in point.skipped)
    return text


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def as_json(point: CleanPoint) -> JsonObject:
    """The choice as data for the messages (rendered per locale): ``describe`` in structured form."""
    chosen = point.chosen
    return {
        "component": point.component,
        "chosen": None if chosen is None else {"run_id": chosen.run_id, "taken_at": _iso(chosen.taken_at),
                                               "proof": point.proof_kind, "proof_at": _iso(point.proof_at)},
        "skipped": [{"run_id": s.backup.run_id, "code": s.code, "at": _iso(s.at)} for s in point.skipped],
    }
