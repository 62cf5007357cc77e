"""Restores from the catalog: pick a backup, prove one stored copy good, then stream it into a database.

A full PostgreSQL base backup is restored in one pass (``restore_postgres`` with a catalog record,
``stream_into``): decrypted into a staging directory beside the data directory, every chunk's tag
checked before its plaintext is written and the stored bytes' sha256 pinned to the catalog, and
moved into place only after the final tag and the checksum passed. Every other restore (Neo4j,
Milvus, a PostgreSQL 17 incremental chain, a copy a caller verified itself) starts with a full
verification pass over one copy (sha256 of the stored bytes and every chunk's authentication tag,
``verify_object``); only then does a byte reach the database, and the restore pass is pinned to the
checksum just verified, so a copy swapped between the two reads is caught as well. A damaged copy
is skipped for the next target holding the object; when no copy is good the restore is refused
(``RestoreRefused``) and names the newest earlier good backup of the same kind, for the operator to
choose explicitly — Aegis never silently restores an older backup than the one asked for.

PostgreSQL: an incremental (17+) is combined with its chain by ``incremental.restore_chain``; a full
base backup lands in an empty data directory (through its staging directory) and is started on a
scratch port (``postgres_restore.start_restored``). WAL archived with ``aegis wal push`` is replayed — to
the end of the archive or to ``target_time`` — after being decrypted into a staging directory next
to the data directory, so the key never has to be handed to the server's ``restore_command``; the
staging directory is removed once recovery is over. A restore never ends early at a WAL gap: a
segment the catalog lists but no target delivers, or any hole between the backup's start and the
target, refuses the restore (``WalGapError``) before the data directory is created.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from recovery.backup.catalog import KIND_INCREMENTAL, BackupNotFound, archived_wal, previous_good, segment_of
from recovery.backup.incremental import restore_chain
from recovery.backup.repository import (
    CopyDamaged,
    NoGoodCopy,
    RestoreRefused,
    VerifiedCopy,
    first_good_copy,
    holders,
)
from recovery.backup.restore.postgres import (
    PG_OS_USER,
    RESTORING_SUFFIX,
    RestoredCluster,
    RestoreError,
    RestoreOptions,
    check_pg_ctl_path,
    check_reachable,
    check_staged,
    extract_tar,
    os_user_ids,
    prepare_data_dir,
    restore_base_backup,
    start_restored,
)
from recovery.backup.storage.base import StorageError, Target
from recovery.backup.stream.crypto import BackupKey
from recovery.backup.stream.pipe import produced
from recovery.backup.stream.pipeline import restore_stream
from recovery.backup.wal import commands as wal
from recovery.backup.wal.archive import TargetWalStore, segment_name
from recovery.backup.wal.sequence import first_gap, histories_in, parse_segment
from recovery.redact import redact
from statemachines.models import BackupRecord
from statemachines.store import Store

if TYPE_CHECKING:   # the drivers load only for a Neo4j or Milvus restore (pymilvus alone is ~2 s)
    from neo4j import Driver
    from pymilvus import MilvusClient

    from recovery.backup.sources import milvus as milvus_export
    from recovery.backup.sources import neo4j as neo4j_export

Progress = Callable[[str, int], None]

class _Counting:
    """A sink wrapper reporting plaintext bytes written (the progress bar's figure)."""

    def __init__(self, sink: BinaryIO, label: str, progress: Progress | None) -> None:
        self.sink, self.label, self.progress, self.done = sink, label, progress, 0

    def write(self, data: bytes | memoryview) -> int:
        self.sink.write(data)
        self.done += len(data)
        if self.progress is not None:
            self.progress(self.label, self.done)
        return len(data)


@contextlib.contextmanager
def plaintext(copy: VerifiedCopy, key: BackupKey, progress: Progress | None = None) -> Iterator[BinaryIO]:
    """A readable stream of the verified copy's plaintext (decrypted in a thread, handed over in process)."""
    def write(out: BinaryIO) -> None:
        restore_stream(copy.target, copy.record.object_name, key, _Counting(out, copy.record.object_name, progress),
                       copy.sha256, verify_first=False)  # verified just before; pinned to that checksum

    with produced(write, in_process=True) as reader:
        yield reader


def stream_into(store: Store, record: BackupRecord, targets: list[Target], key: BackupKey, dest: Path,
                owner: tuple[int, int] | None, progress: Progress | None = None) -> VerifiedCopy:
    """One pass instead of two: decrypt a full base backup straight into new ``dest`` (a staging
    directory nobody starts a server on), every chunk's tag checked before its plaintext is written and
    the stored bytes' sha256 pinned to the catalog's, checked after the final chunk's tag.

    ``dest`` is usable only when this returns: on any failure of a copy (a tag, the final tag, the
    checksum, the storage) it is removed and the next target holding the object is tried; when none
    is good, ``RestoreRefused`` (as ``Repository.verified_copy``) and ``dest`` does not exist. The
    caller moves ``dest`` into place only after this returned — so no byte of an unverified backup
    reaches a usable data directory, as with the verify-first pass, at half the reading.
    """
    if not record.sha256:
        raise RestoreError(f"{record.run_id} has no recorded checksum: it cannot be verified while streaming")
    sha256 = record.sha256

    def extract(target: Target) -> str:
        prepare_data_dir(dest, owner)
        try:
            with plaintext(VerifiedCopy(record, target, sha256), key, progress) as tar_stream:
                extract_tar(tar_stream, dest, owner)
                while tar_stream.read(1024 * 1024):   # the tar's padding: let the writer check the last tag
                    pass
        except StorageError:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        except Exception as exc:   # a tag, the final tag or the checksum (the writer's error wins)
            shutil.rmtree(dest, ignore_errors=True)
            raise CopyDamaged(redact(str(exc))[:300]) from None
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return sha256

    try:
        _, target, skipped = first_good_copy(record.object_name, holders(record, targets), extract)
    except NoGoodCopy as exc:
        raise RestoreRefused(record, exc.problems or ["no target holds a copy"], previous_good(store, record)) from None
    return VerifiedCopy(record, target, sha256, skipped)


# --- PostgreSQL ---------------------------------------------------------------------------------

class WalGapError(RestoreError):
    """A WAL segment the restore needs is on no target: refused before the server is started."""

    def __init__(self, segment: str, message: str) -> None:
        super().__init__(message)
        self.segment = segment


def _archived(store: Store, targets: list[Target]) -> dict[str, datetime | None]:
    """Archived WAL file names, with when each was pushed: the catalog's, else the targets' own listings."""
    archived = archived_wal(store)
    if archived:
        return archived
    # No catalog rows (catalog restored from an older copy): the archive lists itself. The union of
    # every reachable target, so one target missing a segment another holds is not taken for a gap.
    for target in targets:
        with contextlib.suppress(StorageError):
            archived.update({segment_of(n): None for n in target.list("wal/") if n.endswith(".zst.aes")})
    return archived


def _start_segment(record: BackupRecord) -> str:
    return segment_name(record.timeline or 1, record.start_lsn) if record.start_lsn else "0" * 24


def wal_after(store: Store, targets: list[Target], record: BackupRecord) -> list[str]:
    """Archived WAL files a restore of ``record`` may ask for: history files and every segment from its start."""
    start = _start_segment(record)
    keep = []
    for name in _archived(store, targets):
        if name.endswith(".history"):
            keep.append(name)
        elif len(name) >= 24 and not name.endswith(".partial") and name[8:24] >= start[8:]:
            keep.append(name)
    return sorted(set(keep))


def _owned_dir(path: Path, os_user: str) -> Path:
    path.mkdir(parents=True, exist_ok=False, mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(path, os_user, os_user)
    return path


def stage_wal(store: TargetWalStore, names: list[str], stage: Path, os_user: str,
              progress: Progress | None = None) -> int:
    """Decrypt each archived WAL file into ``stage`` (owned by the server user); returns bytes staged.

    A file the catalog lists as archived but no target can deliver stops the restore (``WalGapError``);
    one that is merely absent (listing mode) is left to ``check_wal_sequence``.
    """
    total = 0
    for name in names:
        dest = stage / name
        try:
            found = wal.fetch(name, dest, store)
        except wal.WalError as exc:
            raise WalGapError(name, f"WAL segment {name} cannot be restored: {redact(str(exc))[:400]}; "
                                    "the restore stops here instead of ending early at the gap "
                                    "(no server was started)") from None
        if not found:
            continue
        if os.geteuid() == 0:
            shutil.chown(dest, os_user, os_user)
        total += dest.stat().st_size
        if progress is not None:
            progress("wal", total)
    return total


def _last_needed(archived: dict[str, datetime | None], target_time: datetime | None) -> str | None:
    """For a point-in-time restore, the first segment pushed at or after the target (it may hold it);
    later ones are not needed. None: everything up to the newest segment is ("latest", or no push times)."""
    if target_time is None:
        return None
    pushed_after = [name for name, at in archived.items() if at is not None and parse_segment(name)
                    and (at if at.tzinfo else at.replace(tzinfo=UTC)) >= target_time]
    return min(pushed_after, key=lambda name: parse_segment(name) or (0, 0), default=None)


def check_wal_sequence(stage: Path, record: BackupRecord, last_needed: str | None = None) -> None:
    """Refuse (``WalGapError``) when a segment between the backup's start and the target is not staged."""
    if not record.start_lsn:
        return  # a backup without recorded LSNs: nothing to anchor the sequence on
    staged = {path.name for path in stage.iterdir()}
    missing = first_gap(staged, histories_in(stage), backup_tli=record.timeline or 1, start_lsn=record.start_lsn,
                        stop_lsn=record.stop_lsn, last_needed=last_needed)
    if missing is not None:
        raise WalGapError(missing, (
            f"WAL segment {missing} is missing from every storage target: the archive has a gap after backup "
            f"{record.run_id} (which starts at {_start_segment(record)}); replaying past it is impossible and "
            "stopping at it would silently lose every later change, so no server was started. Find the segment "
            "(the primary's pg_wal, another archive) and push it with `aegis wal push`, or restore to a time "
            "before the gap with --target-time"))


def stage_for_restore(store: Store, wal_store: TargetWalStore, record: BackupRecord, stage: Path, *,
                      target_time: datetime | None, os_user: str = PG_OS_USER,
                      progress: Progress | None = None, keep_staged: bool = False) -> tuple[str | None, int]:
    """Stage (decrypt into new ``stage``, owned by ``os_user``) and check the archived WAL a restore of
    ``record`` to ``target_time`` (None: the end of the archive) needs; returns the ``restore_command``
    that reads it (None: no WAL after the backup) and the number of files staged.

    ``WalGapError`` for a segment no target delivers or a hole in the sequence; ``BackupNotFound`` for a
    point-in-time restore without any archived WAL. The caller removes ``stage`` when recovery is over.
    ``keep_staged``: ``stage`` may exist from an earlier staging by the same caller (an in-place restore's
    staging prepared ahead); the files already in it stay, only the ones archived since are fetched,
    and the whole sequence is checked again.
    """
    archived = _archived(store, wal_store.targets)
    names = wal_after(store, wal_store.targets, record)
    if target_time is not None and not names:
        raise BackupNotFound("point-in-time restore needs archived WAL after the backup; the archive has none "
                             "(is archive_command set to `aegis wal push %p`?)")
    if not names:
        return None, 0
    if keep_staged and stage.is_dir():
        staged = {path.name for path in stage.iterdir()}
        stage_wal(wal_store, [name for name in names if name not in staged], stage, os_user, progress)
    else:
        _owned_dir(stage, os_user)
        stage_wal(wal_store, names, stage, os_user, progress)
    check_wal_sequence(stage, record, _last_needed(archived, target_time))
    return staged_restore_command(stage), len(names)


def staged_restore_command(stage: Path) -> str:
    """The ``restore_command`` reading a staged directory: a plain copy, no Aegis process per file.

    Every staged file was authenticated (AES-GCM tag and sha256) on its way in and ``stage`` is the
    server user's, 0700, so re-hashing each 16 MiB segment at replay (``wal.py fetch``) proved nothing
    new. Exit codes follow PostgreSQL's restore_command rules (as ``wal.FETCH_*``): a file not staged
    exits 1, "not in the archive", which is how recovery finds the end of the archive (the sequence
    was checked gap-free when staged); a file that is there but cannot be copied (a full disk, an I/O
    error) exits 255, above 125, so PostgreSQL aborts recovery instead of ending it early."""
    source = shlex.quote(str(stage)).replace("%", "%%") + "/%f"
    return (f"test -f {source} || exit {wal.FETCH_ABSENT_EXIT}; "
            f"cp {source} %p || exit {wal.FETCH_ERROR_EXIT}")


def restore_postgres(
    store: Store, source: BackupRecord | VerifiedCopy, wal_store: TargetWalStore, data_dir: Path, *, port: int,
    socket_dir: Path, target_time: datetime | None = None, replay_wal: bool = True,
    pause_at_target: bool = False, progress: Progress | None = None, os_user: str = PG_OS_USER,
    pg_bin: str | Path | None = None, on_copy: Callable[[VerifiedCopy], None] | None = None,
) -> tuple[RestoredCluster, int]:
    """Restore a base backup into empty ``data_dir`` and start it; returns it and WAL files staged.

    The archived WAL is staged and checked for gaps first: a missing segment refuses the restore
    before ``data_dir`` is created or any server is started.

    ``source`` a catalog record of a full base backup (with its checksum): **one pass** (issue 12) —
    ``stream_into`` decrypts it into ``<data_dir>.aegis-restoring`` (every chunk's tag checked before
    its plaintext is written, the final tag and the stored sha256 pinned to the catalog after the last
    chunk; a failing copy is removed and the next target tried), then ``pg_verifybackup
    --skip-checksums`` (file list, sizes, WAL range) on it, and only then is it renamed to ``data_dir``
    (same parent, so one ``rename``). No byte of an unverified backup reaches a usable data directory;
    on any failure neither directory is left. ``on_copy`` is told which copy was used.
    ``source`` a ``VerifiedCopy`` (verified by the caller, e.g. a partial restore's precheck) or an
    incremental (PostgreSQL 17: ``restore_chain`` verifies every link first): extracted as before.
    """
    restore_command = None
    stage = data_dir.with_name(data_dir.name + ".wal-stage")
    staged = 0
    record = source.record if isinstance(source, VerifiedCopy) else source
    one_pass = not isinstance(source, VerifiedCopy) and record.kind != KIND_INCREMENTAL and bool(record.sha256)
    owner = os_user_ids(os_user)
    if one_pass:   # refused before anything is downloaded: a data directory that is there and not empty
        _refuse_unusable(data_dir, owner)
    try:
        if replay_wal or target_time is not None:
            restore_command, staged = stage_for_restore(store, wal_store, record, stage, target_time=target_time,
                                                        os_user=os_user, progress=progress)
        options = RestoreOptions(
            port=port, socket_dir=socket_dir, restore_command=restore_command, target_time=target_time,
            target_action="pause" if pause_at_target else "promote", pg_bin=pg_bin, os_user=os_user)
        if record.kind == KIND_INCREMENTAL:  # PostgreSQL 17+: combine the chain back to its full
            cluster = restore_chain(store, record, wal_store.targets, wal_store.runner.key, data_dir, options)
            return cluster, staged
        if one_pass:
            _stream_and_move(store, record, wal_store.targets, wal_store.runner.key, data_dir, owner, pg_bin,
                             progress, on_copy)
            return start_restored(data_dir, replace(options, verify_manifest=False)), staged   # checked staged
        copy = source if isinstance(source, VerifiedCopy) else wal_store.runner.repository.verified_copy(record)
        if on_copy is not None:
            on_copy(copy)
        with plaintext(copy, wal_store.runner.key, progress) as tar_stream:
            cluster = restore_base_backup(tar_stream, data_dir, options)
        return cluster, staged
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _refuse_unusable(data_dir: Path, owner: tuple[int, int] | None) -> None:
    """What ``restore_base_backup`` checks before it extracts, for the staging path: the path pg_ctl can
    take, an empty or new directory, a parent the server user can traverse."""
    check_pg_ctl_path(data_dir, "data directory")
    if data_dir.is_symlink() or (data_dir.exists() and not data_dir.is_dir()):
        raise RestoreError(f"refusing to restore into {data_dir}: not a directory")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise RestoreError(f"refusing to restore into {data_dir}: it is not empty (an existing data directory?)")
    check_reachable(data_dir, owner)


def _stream_and_move(store: Store, record: BackupRecord, targets: list[Target], key: BackupKey, data_dir: Path,
                     owner: tuple[int, int] | None, pg_bin: str | Path | None, progress: Progress | None,
                     on_copy: Callable[[VerifiedCopy], None] | None) -> None:
    """``stream_into`` the staging directory beside ``data_dir``, check it, rename it into place."""
    staging = data_dir.with_name(data_dir.name + RESTORING_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)   # ours by name: a killed earlier restore's leftover
    try:
        copy = stream_into(store, record, targets, key, staging, owner, progress)
        if on_copy is not None:
            on_copy(copy)
        check_staged(staging, pg_bin)   # pg_verifybackup --skip-checksums: every byte was authenticated
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, data_dir)    # onto nothing or an empty directory (checked): atomic, same parent
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- Neo4j and Milvus ---------------------------------------------------------------------------

def restore_neo4j(copy: VerifiedCopy, key: BackupKey, driver: Driver, database: str,
                  progress: Progress | None = None) -> neo4j_export.ImportStats:
    """Import the export into ``database``, which must be empty (``import_graph`` checks counts after)."""
    from recovery.backup.sources.neo4j import import_graph

    with plaintext(copy, key, progress) as source:
        return import_graph(driver, database, source=source)


def restore_milvus(copy: VerifiedCopy, key: BackupKey, client: MilvusClient, new_name: str | None = None,
                   progress: Progress | None = None) -> milvus_export.ImportStats:
    """Recreate the collection (as ``new_name`` if given), which must not exist yet."""
    from recovery.backup.sources.milvus import import_collection

    with plaintext(copy, key, progress) as source:
        return import_collection(client, source, new_name)

