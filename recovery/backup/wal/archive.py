"""The WAL archive on the backup targets: what ``aegis wal push %p`` and ``aegis wal fetch %f %p`` use.

Each segment (or history / backup-history file) goes through the same pipeline as every backup —
zstd, AES-256-GCM in chunks, every target at once — as ``wal/<name>.zst.aes``, and gets a catalog
row (kind ``pg_wal``, run id ``wal``) with the sha256 of its plaintext. That checksum is what makes
a push idempotent: the same bytes pushed again succeed without a second upload, different bytes under
a stored name are refused (``WalConflictError``) and nothing is overwritten.

The B6 rules apply per segment: archived when at least one remote target holds it (with only a local
target configured, that one); when every remote target is down the push fails, so PostgreSQL keeps
the segment in ``pg_wal`` and retries — WAL is never acknowledged while it sits only on the database
host. The local staging copy goes once two remote targets hold the segment.

Fetching needs no catalog: the object is authenticated chunk by chunk with the key, so a damaged or
swapped copy cannot pass; when the catalog has the row its checksum is checked as well. A damaged or
unreachable copy falls back to the next target holding the segment. One archive holds one
cluster's WAL: give each cluster its own target ``prefix``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import BinaryIO

from recovery.backup.catalog import STATUS_OK, WAL_KIND, WAL_RUN_ID, good_wal, wal_object, wal_rows
from recovery.backup.repository import NoGoodCopy
from recovery.backup.runner import BackupRunner
from recovery.backup.storage.base import Target
from recovery.backup.storage.local import LocalTarget
from recovery.backup.wal.commands import WalError

log = logging.getLogger("aegis.wal")

_SEGMENT_BYTES = 16 * 1024 * 1024  # default wal_segment_size, which names the archived files


def segment_name(timeline: int, lsn: str) -> str:
    """The WAL file holding ``lsn`` (``'0/3000028'``) on ``timeline``."""
    hi, lo = (int(part, 16) for part in lsn.split("/"))
    return f"{timeline:08X}{hi:08X}{(lo // _SEGMENT_BYTES):08X}"


class _HashingReader:
    """Hands the source to the pipeline while hashing the plaintext (the catalog's ``source_sha256``)."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._digest.update(data)
        return data

    @property
    def source_sha256(self) -> str:
        return self._digest.hexdigest()


class TargetWalStore:
    """A ``recovery.backup.wal.commands.WalStore`` over the configured targets, key and catalog."""

    def __init__(self, runner: BackupRunner) -> None:
        self.runner = runner

    @property
    def targets(self) -> list[Target]:
        return self.runner.targets

    def checksum(self, name: str) -> str | None:
        rows = wal_rows(self.runner.store, name)
        if rows:  # the catalog knows this name: archived only if a row is good (a failed push is not)
            good = [r for r in rows if r.status == STATUS_OK and r.source_sha256]
            return good[0].source_sha256 if good else None
        # Not in the catalog (e.g. the catalog was restored from an older copy) but perhaps stored:
        # hash the stored plaintext so a push still cannot overwrite a different segment. A target
        # that is unreachable or holds a damaged copy cannot tell; the push then writes everywhere.
        remotes = [t for t in self.targets if not isinstance(t, LocalTarget)]
        try:   # a staging copy alone is not an archived segment (B6)
            return self.runner.repository.plaintext_sha256(wal_object(name), remotes or self.targets)
        except NoGoodCopy as exc:
            if exc.problems:
                log.warning("WAL %s: cannot check the stored copies: %s", name, "; ".join(exc.problems))
            return None

    def put(self, name: str, source: BinaryIO) -> str:
        reader = _HashingReader(source)
        record = self.runner.store_object(WAL_RUN_ID, WAL_KIND, "postgres", wal_object(name),
                                          contextlib.nullcontext(reader), replace_failed=True)
        if record.status != "ok":
            raise WalError(f"{name} not archived: {record.reason}")
        return reader.source_sha256

    def get(self, name: str, dest: BinaryIO) -> None:
        """Decrypt ``name`` into ``dest``; FileNotFoundError only when it was never archived.

        A segment the catalog lists as archived but no target holds is an error (``WalError``:
        ``aegis wal fetch`` exits 255), not "absent": absent would end recovery there and promote.
        """
        row = good_wal(self.runner.store, name)
        if row is None:
            self._read_into(name, dest, expected_sha256=None)
            return
        try:
            # holders first; then any target (a copy recorded as removed may still be there)
            self._read_into(name, dest, expected_sha256=row.sha256,
                            candidates=self.runner.repository.holders(row) or self.targets)
        except FileNotFoundError:
            stored_on = ", ".join(sorted(t for t, outcome in row.targets.items() if outcome.get("ok"))) or "none"
            raise WalError(f"{name} is in the catalog as archived (stored on: {stored_on}) but no storage target "
                           "holds it; recovery must not end early at this gap") from None

    def _read_into(self, name: str, dest: BinaryIO, expected_sha256: str | None,
                   candidates: list[Target] | None = None) -> None:
        """Decrypt the first good copy into ``dest``; FileNotFoundError when no target has it.

        A copy that is unreachable or fails authentication is skipped (and logged); if some target
        had the object but no copy was good, that is an error, not "absent" — recovery must stop
        rather than end early on a gap.
        """
        try:
            self.runner.repository.read_into(wal_object(name), dest, expected_sha256=expected_sha256,
                                             candidates=candidates, skip_absent=True)
        except NoGoodCopy as exc:
            if exc.problems:
                log.warning("WAL %s: no usable copy: %s", name, "; ".join(exc.problems))
                raise WalError(f"{name}: no usable copy ({'; '.join(exc.problems)})") from None
            raise FileNotFoundError(name) from None
