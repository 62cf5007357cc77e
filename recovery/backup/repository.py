"""The backup repository: the catalog's store, the storage targets and the key as one object.

Every backup, restore, verify, prune and WAL command needs the three together; ``bot/backup_wiring``
builds one from the config (``repository_from``) and hands it on.

Reading a stored object back is written once, here (``first_good_copy``): try each target that
should hold it, in config order, download and decrypt/verify, and fall back to the next target when
a copy is unreachable, missing, damaged or under another key — collecting one problem line per
target, so a refusal says what was wrong where. The callers differ only in what they do with a copy:
``verified_copy`` proves one copy good end to end before a restore, ``read_into`` decrypts into a
sink (WAL fetch, a manifest for the next incremental), ``plaintext_sha256`` hashes a copy's plaintext.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from recovery.backup.catalog import previous_good
from recovery.backup.restore.postgres import RestoreError
from recovery.backup.storage.base import StorageError, Target
from recovery.backup.stream.crypto import BackupKey, BackupKeyError, IntegrityError
from recovery.backup.stream.pipeline import restore_stream, verify_object
from recovery.redact import redact
from statemachines.models import BackupRecord
from statemachines.store import Store

T = TypeVar("T")


class CopyDamaged(Exception):
    """One target's copy failed its checks; the message is the problem (without the target name)."""


class CopyAbsent(Exception):
    """One target does not hold the object: skipped without a problem line."""


class NoGoodCopy(Exception):
    """No candidate target yielded a good copy; ``problems`` has one line per target tried."""

    def __init__(self, object_name: str, problems: list[str]) -> None:
        self.object_name, self.problems = object_name, problems
        super().__init__(f"{object_name}: no usable copy ({'; '.join(problems) or 'no target holds it'})")


# What makes a copy unusable (and the next target worth trying); anything else is a bug or a local
# problem (the sink's disk) and propagates.
_COPY_FAILURES = (StorageError, IntegrityError, BackupKeyError, CopyDamaged)


def _problem(exc: BaseException) -> str:
    if isinstance(exc, StorageError):
        return f"unreachable ({redact(str(exc))[:160]})"
    return redact(str(exc))[:200]


def first_good_copy(object_name: str, candidates: list[Target], read: Callable[[Target], T]) -> tuple[T, Target,
                                                                                                      list[str]]:
    """``read`` each candidate in order until one succeeds: (its result, that target, problems passed over).

    ``read`` raises ``CopyAbsent`` for a target without the object, ``CopyDamaged`` (or a storage,
    integrity or key error) for an unusable copy. ``NoGoodCopy`` when none succeeded.
    """
    problems: list[str] = []
    for target in candidates:
        try:
            return read(target), target, problems
        except CopyAbsent:
            continue
        except _COPY_FAILURES as exc:
            problems.append(f"{target.name}: {_problem(exc)}")
    raise NoGoodCopy(object_name, problems)


class RestoreRefused(RestoreError):
    """No stored copy of the backup is intact; ``previous`` is the newest earlier good one, if any."""

    def __init__(self, record: BackupRecord, problems: list[str], previous: BackupRecord | None,
                 hint: str | None = None) -> None:
        self.record, self.problems, self.previous = record, problems, previous
        offer = (f"the previous good backup is {previous.run_id} ({previous.object_name})" if previous
                 else "there is no earlier good backup of this kind")
        super().__init__(f"refusing to restore {record.run_id} ({record.object_name}): no intact copy — "
                         f"{'; '.join(problems)}; nothing was written. {offer}" + (f"; {hint}" if hint else ""))


@dataclass
class VerifiedCopy:
    record: BackupRecord
    target: Target
    sha256: str
    skipped: list[str] = field(default_factory=list)  # damaged or unreachable copies passed over


def holders(record: BackupRecord, targets: list[Target]) -> list[Target]:
    """Targets that should hold the object (stored there and not removed as a staging copy)."""
    stored = record.targets
    return [t for t in targets if stored.get(t.name, {}).get("ok") and not stored[t.name].get("removed")]


class _HashingSink:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        return len(data)


@dataclass
class Repository:
    """Where backups are: the catalog (``store``), the storage targets in config order, and the key."""

    store: Store
    targets: list[Target]
    key: BackupKey

    def holders(self, record: BackupRecord) -> list[Target]:
        return holders(record, self.targets)

    def verified_copy(self, record: BackupRecord) -> VerifiedCopy:
        """The first copy, in config order, that passes its checksum and every chunk tag; else ``RestoreRefused``
        naming the newest earlier good backup (never restored silently in its place)."""
        def verify(target: Target) -> str:
            result = verify_object(target, record.object_name, self.key, record.sha256)
            if not (result.ok and result.sha256):
                where = f" in chunk {result.chunk_index}" if result.chunk_index is not None else ""
                raise CopyDamaged(f"{result.reason}{where}")
            return result.sha256

        try:
            sha256, target, skipped = first_good_copy(record.object_name, self.holders(record), verify)
        except NoGoodCopy as exc:
            raise RestoreRefused(record, exc.problems or ["no target holds a copy"],
                                 previous_good(self.store, record)) from None
        return VerifiedCopy(record, target, sha256, skipped)

    def read_into(self, object_name: str, sink: BinaryIO, *, expected_sha256: str | None,
                  candidates: list[Target] | None = None, skip_absent: bool = False) -> Target:
        """Decrypt the first good copy into ``sink`` (rewound between attempts, so a copy that fails half-way
        leaves nothing behind); returns the target read. ``skip_absent`` passes over targets without it."""
        def read(target: Target) -> None:
            if skip_absent and not target.exists(object_name):
                raise CopyAbsent(object_name)
            sink.seek(0)
            sink.truncate()
            restore_stream(target, object_name, self.key, sink, expected_sha256, verify_first=False)

        _, target, _ = first_good_copy(object_name, self.targets if candidates is None else candidates, read)
        return target

    def fetch_file(self, record: BackupRecord, dest: Path) -> Target:
        """Decrypt one (small) object to ``dest``: its holders first, else any target."""
        with open(dest, "w+b") as out:
            return self.read_into(record.object_name, out, expected_sha256=record.sha256,
                                  candidates=self.holders(record) or self.targets)

    def plaintext_sha256(self, object_name: str, candidates: list[Target]) -> str:
        """The sha256 of a stored object's plaintext, from the first candidate holding a readable copy."""
        def digest(target: Target) -> str:
            if not target.exists(object_name):
                raise CopyAbsent(object_name)
            sink = _HashingSink()
            restore_stream(target, object_name, self.key, sink, verify_first=False)
            return sink.digest.hexdigest()

        sha, _, _ = first_good_copy(object_name, candidates, digest)
        return sha
