"""Verify backups (B5), and prove one copy good before a restore (``verified_copy``).

Verification: every target that should hold an object has it at the recorded size, and
one copy is re-read end to end — sha256 of the stored bytes and every chunk's authentication tag.

The copy re-read is the first target, in config order, that should hold it (``deep=True`` re-reads
every copy). Results are written back to the catalog row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recovery.backup.catalog import previous_good, records_for
from recovery.backup.restore.postgres import RestoreError
from recovery.backup.storage.base import StorageError, Target
from recovery.backup.stream.crypto import BackupKey
from recovery.backup.stream.pipeline import verify_object
from recovery.redact import redact
from statemachines.models import BackupRecord, utcnow
from statemachines.store import Store


@dataclass
class ObjectCheck:
    run_id: str
    object_name: str
    ok: bool
    problems: list[str] = field(default_factory=list)   # "target: what is wrong (chunk N)"
    reread: list[str] = field(default_factory=list)      # targets re-read end to end


def holders(record: BackupRecord, targets: list[Target]) -> list[Target]:
    """Targets that should hold the object (stored there and not removed as a staging copy)."""
    stored = record.targets
    return [t for t in targets if stored.get(t.name, {}).get("ok") and not stored[t.name].get("removed")]


def check_record(record: BackupRecord, targets: list[Target], key: BackupKey, *, deep: bool = False) -> ObjectCheck:
    check = ObjectCheck(record.run_id, record.object_name, ok=True)
    expected = holders(record, targets)
    if record.status != "ok" or not expected:
        check.ok = False
        check.problems.append(f"catalog: backup is {record.status}, no usable copy recorded")
        return check
    readable: list[Target] = []
    for target in expected:
        try:
            size = target.size(record.object_name) if target.exists(record.object_name) else None
        except StorageError as exc:
            check.problems.append(f"{target.name}: unreachable ({redact(str(exc))[:200]})")
            continue
        if size is None:
            check.problems.append(f"{target.name}: object missing")
        elif size < record.stored_size:
            check.problems.append(f"{target.name}: size {size} is below the recorded {record.stored_size}")
        elif size != record.stored_size:
            check.problems.append(f"{target.name}: size {size} differs from the recorded {record.stored_size}")
        else:
            readable.append(target)
    for target in readable if deep else readable[:1]:
        result = verify_object(target, record.object_name, key, record.sha256)
        check.reread.append(target.name)
        if not result.ok:
            where = f" (chunk {result.chunk_index})" if result.chunk_index is not None else ""
            check.problems.append(f"{target.name}: {result.reason}{where}: {redact(result.error or '')[:200]}")
    check.ok = not check.problems
    return check


def verify(store: Store, ident: str, targets: list[Target], key: BackupKey, *, deep: bool = False) -> list[ObjectCheck]:
    checks = []
    for record in records_for(store, ident):
        check = check_record(record, targets, key, deep=deep)
        with store.session() as session:
            row = session.get(BackupRecord, record.id)
            if row is not None:
                row.verified_at = utcnow()
                row.verify_result = {"ok": check.ok, "problems": check.problems, "reread": check.reread}
                session.add(row)
        checks.append(check)
    return checks


class RestoreRefused(RestoreError):
    """No stored copy of the backup is intact; ``previous`` is the newest earlier good one, if any."""

    def __init__(self, record: BackupRecord, problems: list[str], previous: BackupRecord | None) -> None:
        self.record, self.problems, self.previous = record, problems, previous
        offer = (f"the previous good backup is {previous.run_id} ({previous.object_name})" if previous
                 else "there is no earlier good backup of this kind")
        super().__init__(f"refusing to restore {record.run_id} ({record.object_name}): no intact copy — "
                         f"{'; '.join(problems)}; nothing was written. {offer}")


@dataclass
class VerifiedCopy:
    record: BackupRecord
    target: Target
    sha256: str
    skipped: list[str] = field(default_factory=list)  # damaged or unreachable copies passed over


def verified_copy(store: Store, record: BackupRecord, targets: list[Target], key: BackupKey) -> VerifiedCopy:
    """Read copies in config order until one passes checksum and every tag; else refuse."""
    problems: list[str] = []
    for target in holders(record, targets):
        try:
            result = verify_object(target, record.object_name, key, record.sha256)
        except StorageError as exc:
            problems.append(f"{target.name}: unreachable ({redact(str(exc))[:160]})")
            continue
        if result.ok and result.sha256:
            return VerifiedCopy(record, target, result.sha256, problems)
        where = f" in chunk {result.chunk_index}" if result.chunk_index is not None else ""
        problems.append(f"{target.name}: {result.reason}{where}")
    if not problems:
        problems.append("no target holds a copy")
    raise RestoreRefused(record, problems, previous_good(store, record))
