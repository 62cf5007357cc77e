"""Verify backups (B5), and prove one copy good before a restore (``verified_copy``).

Verification: every target that should hold an object has it at the recorded size, and
one copy is re-read end to end — sha256 of the stored bytes and every chunk's authentication tag.

The copy re-read is the first target, in config order, that should hold it (``deep=True`` re-reads
every copy). Results are written back to the catalog row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recovery.backup.catalog import mark_verified, records_for
from recovery.backup.repository import Repository, RestoreRefused, VerifiedCopy, holders
from recovery.backup.storage.base import StorageError, Target
from recovery.backup.stream.crypto import BackupKey
from recovery.backup.stream.pipeline import verify_object
from recovery.redact import redact
from statemachines.models import BackupRecord, require_id

__all__ = ["ObjectCheck", "RestoreRefused", "VerifiedCopy", "check_record", "holders", "verified_copy", "verify"]


@dataclass
class ObjectCheck:
    run_id: str
    object_name: str
    ok: bool
    problems: list[str] = field(default_factory=list)   # "target: what is wrong (chunk N)"
    reread: list[str] = field(default_factory=list)      # targets re-read end to end


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


def verify(repo: Repository, ident: str, *, deep: bool = False) -> list[ObjectCheck]:
    """Check every row of run/object ``ident``; each result is written back to its catalog row."""
    checks = []
    for record in records_for(repo.store, ident):
        check = check_record(record, repo.targets, repo.key, deep=deep)
        mark_verified(repo.store, require_id(record), ok=check.ok, problems=check.problems, reread=check.reread)
        checks.append(check)
    return checks


def verified_copy(repo: Repository, record: BackupRecord) -> VerifiedCopy:
    """Read copies in config order until one passes checksum and every tag; else ``RestoreRefused``."""
    return repo.verified_copy(record)
