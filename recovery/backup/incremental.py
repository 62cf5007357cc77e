"""PostgreSQL 17+ incremental base backups (B1: weekly full, daily incremental) and their restore.

A **chain** is one ``pg_full`` followed by ``pg_incremental`` backups, each catalog row pointing at
the previous one through ``parent_run_id``. ``pg_basebackup --incremental=<manifest>`` needs the
parent's ``backup_manifest``; downloading the whole parent for it would cost a full restore's
transfer every day, so every full/incremental taken from a PostgreSQL 17+ server also stores its
manifest as a small object of its own: kind ``pg_manifest``, same run id, object
``<run_id>/postgres-<base|incr>.manifest.zst.aes``. It is copied out of the tar *as the backup
streams past* (``ManifestTap`` follows the tar framing; no second pass, no extra server work).

When the incremental slot takes a full backup instead (the row's ``reason`` says why):
- the server is older than 17, ``summarize_wal`` is off, or the local ``pg_basebackup`` is < 17;
- there is no usable parent (no full yet, a broken chain, the parent's manifest is missing or
  unreadable, the parent is from another cluster — system identifier — or another timeline, i.e.
  a failover happened since);
- the chain is capped: ``CHAIN_MAX_INCREMENTALS`` (6: Mon–Sat after the Sunday full) or its full is
  older than ``CHAIN_MAX_AGE`` (8 days: a missed weekly full). Short chains keep a restore to one
  full plus at most six incrementals, and 8 days stays inside the server's default
  ``wal_summary_keep_time`` (10 days), past which the WAL summaries an incremental needs are gone;
- the incremental itself fails (e.g. the server no longer has the WAL summaries): the failed row is
  kept (so ops see the chain broke) and the same run takes a full backup.

``restore_chain`` walks ``parent_run_id`` back to the full, verifies every object (checksum and
every chunk tag) before a byte is written, extracts each tar into a private work directory,
combines them with ``pg_combinebackup`` into the new data directory, then configures and starts it
like ``restore_base_backup`` (optionally with ``restore_command`` / ``target_time`` for PITR).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from recovery.backup.catalog import (
    KIND_FULL,
    KIND_INCREMENTAL,
    manifest_record,
    newest_good_base,
)
from recovery.backup.catalog import ChainError as ChainError  # the chain lookup is a catalog query; named here
from recovery.backup.catalog import chain_for as chain_for  # too for the chain's restore callers
from recovery.backup.repository import NoGoodCopy, Repository, VerifiedCopy
from recovery.backup.restore.postgres import (
    RestoredCluster,
    RestoreError,
    RestoreOptions,
    check_reachable,
    chown_to,
    extract_tar,
    last_line,
    os_user_ids,
    prepare_data_dir,
    run_as,
    run_command,
    start_restored,
)
from recovery.backup.sources.postgres import (
    INCREMENTAL_MIN_VERSION,
    BackupSourceError,
    BaseBackupStream,
    connect_source,
    pg_bin_dir,
    server_version,
    supports_incremental,
)
from recovery.backup.storage.base import Target
from recovery.backup.stream.crypto import BackupKey
from recovery.backup.stream.pipe import produced
from recovery.backup.stream.pipeline import restore_stream
from recovery.redact import redact
from statemachines.models import BackupRecord
from statemachines.store import Store

CHAIN_MAX_INCREMENTALS = 6
CHAIN_MAX_AGE = timedelta(days=8)
_TAR_BLOCK = 512


def client_bin(server_version_num: int | None, pg_bin: str | Path | None = None) -> Path:
    """The client binaries for a server: explicit > ``AEGIS_PG_BIN`` > Debian's ``/usr/lib/postgresql/<major>``.

    ``pg_basebackup`` refuses a server newer than itself, so a 17 server needs a 17 client even where
    the default (15) is installed too.
    """
    if pg_bin or os.environ.get("AEGIS_PG_BIN") or server_version_num is None:
        return pg_bin_dir(pg_bin)
    debian = Path(f"/usr/lib/postgresql/{server_version_num // 10000}/bin")
    return debian if (debian / "pg_basebackup").exists() else pg_bin_dir(None)


# --- capturing the manifest while the backup streams ----------------------------------------------


class ManifestTap:
    """Follows the tar framing of bytes passing through and copies the ``backup_manifest`` member out.

    Only headers (512 bytes) are parsed and member data is skipped by size, so the cost is a few
    comparisons per 512-byte header; memory is one header. A malformed header stops the tap (the
    backup itself is unaffected; it just has no captured manifest).
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._header = bytearray()
        self._skip = 0        # bytes of the current member (data + padding) still to pass
        self._capture = 0     # of those, manifest bytes still to copy
        self.found = False
        self.stopped = ""     # why the tap stopped early ("" while following)
        self.ended = False

    @property
    def complete(self) -> bool:
        return self.found and self._capture == 0 and not self.stopped

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and not (self.ended or self.stopped):
            if self._skip:
                take = min(self._skip, end - pos)
                if self._capture:
                    part = min(self._capture, take)
                    self._out.write(data[pos:pos + part])
                    self._capture -= part
                pos += take
                self._skip -= take
                continue
            need = _TAR_BLOCK - len(self._header)
            self._header += data[pos:pos + need]
            pos += min(need, end - pos)
            if len(self._header) == _TAR_BLOCK:
                self._on_header(bytes(self._header))
                self._header.clear()

    def _on_header(self, header: bytes) -> None:
        if header == bytes(_TAR_BLOCK):
            self.ended = True   # end-of-archive marker
            return
        stored_sum = header[148:156].split(b"\0", 1)[0].strip()
        try:
            ok = int(stored_sum or b"-1", 8) == sum(header[:148]) + 8 * 32 + sum(header[156:])
            size = _tar_size(header[124:136])
        except ValueError:
            ok, size = False, 0
        if not ok:
            self.stopped = "backup stream is not a tar this tap understands (bad header checksum)"
            return
        name = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
        full = (prefix + b"/" + name if prefix else name).decode("utf-8", "replace").removeprefix("./")
        if header[156:157] in (b"0", b"\0") and full == "backup_manifest":
            self.found = True
            self._capture = size
        self._skip = (size + _TAR_BLOCK - 1) // _TAR_BLOCK * _TAR_BLOCK


def _tar_size(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for sizes past 8 GiB
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


class ManifestCapturingBackup:
    """A ``BaseBackupStream`` whose ``stream`` also feeds a ``ManifestTap`` writing to ``manifest_path``.

    Use exactly like the wrapped stream (``with ... as src: pipeline(src.stream)``); the LSN facts
    are the inner stream's. ``captured`` tells, after the block, whether the manifest is complete.
    """

    def __init__(self, inner: BaseBackupStream, manifest_path: Path) -> None:
        self.inner = inner
        self.manifest_path = manifest_path
        self._out: BinaryIO | None = None
        self.tap: ManifestTap | None = None

    def __enter__(self) -> Self:
        self._out = open(self.manifest_path, "wb")  # noqa: SIM115 - closed in __exit__
        self.tap = ManifestTap(self._out)
        try:
            self.inner.__enter__()
        except BaseException:
            self._out.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._out is not None
        self._out.close()
        self.inner.__exit__(exc_type, exc, tb)

    @property
    def stream(self) -> Self:
        return self

    def read(self, size: int = -1) -> bytes:
        data = self.inner.stream.read(size)
        if data and self.tap is not None:
            self.tap.feed(data)
        return data

    @property
    def captured(self) -> bool:
        return self.tap is not None and self.tap.complete

    @property
    def start_lsn(self) -> str | None:
        return self.inner.start_lsn

    @property
    def stop_lsn(self) -> str | None:
        return self.inner.stop_lsn

    @property
    def timeline(self) -> int | None:
        return self.inner.timeline


# --- the catalog's chains ---------------------------------------------------------------------------


@dataclass
class BasePlan:
    """What the PostgreSQL slot of a run takes: a full, or an incremental on ``parent``."""

    kind: str
    reason: str = ""
    parent: BackupRecord | None = None
    parent_manifest: Path | None = None
    pg_bin: Path | None = None
    capture_manifest: bool = False    # PostgreSQL 17+: this backup can be the parent of the next one

    def as_full(self, reason: str) -> BasePlan:
        return BasePlan(KIND_FULL, reason, pg_bin=self.pg_bin, capture_manifest=self.capture_manifest)


def _server_identity(dsn: str) -> tuple[int, int]:
    """``(system identifier, current timeline)`` of the server."""
    with connect_source(dsn) as conn:
        row = conn.execute("SELECT (SELECT system_identifier FROM pg_control_system()),"
                           " (SELECT timeline_id FROM pg_control_checkpoint())").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def plan_base_backup(store: Store, dsn: str, targets: list[Target], key: BackupKey, *, incremental: bool,
                     workdir: Path, pg_bin: str | Path | None = None, now: datetime | None = None) -> BasePlan:
    """Decide full or incremental for this run; for an incremental, download the parent's manifest.

    Never raises for a server problem: the plan is then a full backup whose ``pg_basebackup`` reports
    the real error into the catalog row, as before incrementals existed.
    """
    try:
        version_num: int | None = server_version(dsn)[0]
    except BackupSourceError:
        version_num = None
    bin_dir = client_bin(version_num, pg_bin)
    capture = version_num is not None and version_num >= INCREMENTAL_MIN_VERSION
    full = BasePlan(KIND_FULL, pg_bin=bin_dir, capture_manifest=capture)
    if not incremental or version_num is None:
        return full
    supported, why = supports_incremental(dsn, pg_bin=bin_dir)
    if not supported:
        return full.as_full(why)

    parent = newest_good_base(store)
    if parent is None:
        return full.as_full("no earlier PostgreSQL base backup to build an incremental on: took a full backup")
    try:
        chain = chain_for(store, parent)
    except ChainError as exc:
        return full.as_full(f"the previous backup's chain is unusable ({exc}): took a full backup")
    anchor, incrementals = chain[0], len(chain) - 1
    if incrementals >= CHAIN_MAX_INCREMENTALS:
        return full.as_full(f"the chain from full {anchor.run_id} already has {incrementals} incrementals "
                            f"(cap {CHAIN_MAX_INCREMENTALS}): a new chain starts with a full backup")
    taken = anchor.finished_at or anchor.started_at
    age = (now or datetime.now(UTC)) - (taken if taken.tzinfo else taken.replace(tzinfo=UTC))
    if age > CHAIN_MAX_AGE:
        return full.as_full(f"the chain's full backup {anchor.run_id} is {age.days} days old (cap "
                            f"{CHAIN_MAX_AGE.days}): a new chain starts with a full backup")
    manifest_row = manifest_record(store, parent)
    if manifest_row is None:
        return full.as_full(f"the previous backup {parent.run_id} has no stored backup_manifest: took a full backup")
    manifest_path = workdir / "parent.backup_manifest"
    try:
        Repository(store, targets, key).fetch_file(manifest_row, manifest_path)
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        ranges = manifest["WAL-Ranges"]
        parent_tli = int(ranges[-1]["Timeline"])
        parent_sysid = manifest.get("System-Identifier")  # manifest version 2 (PostgreSQL 17+)
    except (NoGoodCopy, ValueError, KeyError, IndexError, TypeError, OSError) as exc:
        return full.as_full(f"the manifest of {parent.run_id} is unusable ({redact(str(exc))[:200]}): "
                            "took a full backup")
    sysid, tli = _server_identity(dsn)
    if parent_sysid is not None and int(parent_sysid) != sysid:
        return full.as_full(f"the previous backup {parent.run_id} is from another cluster (system identifier "
                            f"{parent_sysid}, the server has {sysid}): took a full backup")
    if parent_tli != tli:
        return full.as_full(f"the previous backup {parent.run_id} is on timeline {parent_tli} and the server on "
                            f"{tli} (a promotion since): took a full backup")
    return BasePlan(KIND_INCREMENTAL, parent=parent, parent_manifest=manifest_path, pg_bin=bin_dir,
                    capture_manifest=capture)


# --- restore --------------------------------------------------------------------------------------


def _download_extract(target: Target, record: BackupRecord, sha256: str, key: BackupKey, dest: Path,
                      owner: tuple[int, int] | None) -> None:
    """Decrypt ``record`` from ``target`` through a pipe into the streaming tar extractor (flat memory)."""
    def feed(out: BinaryIO) -> None:
        # verified just before; the pinned checksum still catches an object swapped since
        restore_stream(target, record.object_name, key, out, sha256, verify_first=False)

    try:
        with produced(feed) as reader:
            extract_tar(reader, dest, owner)
            while reader.read(1024 * 1024):  # the tar's trailing padding: let the writer finish and check the sum
                pass
    except RestoreError as exc:
        raise RestoreError(f"{record.object_name}: {exc}") from None
    except Exception as exc:  # a tag, checksum or storage failure of the feed
        raise RestoreError(f"{record.object_name}: {redact(str(exc))[:300]}") from None


def _check_target_dir(data_dir: Path) -> None:
    if data_dir.is_symlink() or (data_dir.exists() and not data_dir.is_dir()):
        raise RestoreError(f"refusing to restore into {data_dir}: not a directory")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise RestoreError(f"refusing to restore into {data_dir}: it is not empty (an existing data directory?)")


def restore_chain(
    store: Store,
    backup: str | BackupRecord,
    targets: list[Target],
    key: BackupKey,
    data_dir: Path,
    options: RestoreOptions,
    *,
    work_dir: Path | None = None,
) -> RestoredCluster:
    """Restore a PostgreSQL base backup — a full or the newest incremental of a chain — and start it.

    ``backup`` is a catalog record or a run id. Every object of the chain is verified first (on the
    first target whose copy passes); one that fails on every target stops the restore before
    anything is written, naming the object. A chain's tars are extracted under ``work_dir`` (default:
    next to ``data_dir``, so it is on the same filesystem; it needs room for the whole chain) and
    combined with ``pg_combinebackup`` into ``data_dir``; the work directory is always removed.
    ``options.pg_bin`` must hold binaries of the backup's major version (17 for any chain with an
    incremental). The options are ``restore_base_backup``'s (PITR with ``restore_command`` +
    ``target_time``, ``target_action``, settings overrides); on a failure to start, the server is
    stopped and ``data_dir`` is left for diagnosis.
    """
    fill_from_chain(store, backup, targets, key, data_dir, os_user=options.os_user, pg_bin=options.pg_bin,
                    work_dir=work_dir)
    return start_restored(data_dir, options)


def fill_from_chain(
    store: Store,
    backup: str | BackupRecord,
    targets: list[Target],
    key: BackupKey,
    data_dir: Path,
    *,
    os_user: str,
    pg_bin: str | Path | None = None,
    work_dir: Path | None = None,
    copies: list[VerifiedCopy] | None = None,
) -> None:
    """The files half of ``restore_chain``: verify, extract (and combine) the chain into empty ``data_dir``.

    ``copies`` are the chain's copies already verified by the caller (in ``chain_for`` order), so an
    in-place restore that verified them before stopping the server does not read them twice.
    """
    try:
        chain = chain_for(store, backup)
    except ChainError as exc:
        raise RestoreError(str(exc)) from None
    bin_dir = pg_bin_dir(pg_bin)
    data_dir = Path(data_dir)
    owner = os_user_ids(os_user)
    check_reachable(data_dir, owner)
    _check_target_dir(data_dir)
    if copies is None or [c.record.id for c in copies] != [r.id for r in chain]:
        repo = Repository(store, targets, key)
        copies = [repo.verified_copy(record) for record in chain]   # before a byte is written

    if len(chain) == 1:   # a lone full: no combine step, extract straight into place
        prepare_data_dir(data_dir, owner)
        _download_extract(copies[0].target, chain[0], copies[0].sha256, key, data_dir, owner)
        return

    parent_dir = Path(work_dir) if work_dir is not None else data_dir.parent
    parent_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.chain-", dir=parent_dir))
    try:
        chown_to(work, owner)   # pg_combinebackup runs as the server user and reads everything here
        work.chmod(0o700)
        parts = []
        for index, (record, copy) in enumerate(zip(chain, copies, strict=True)):
            part = work / f"{index:02d}-{record.kind}"
            prepare_data_dir(part, owner)
            _download_extract(copy.target, record, copy.sha256, key, part, owner)
            if not (part / "backup_manifest").is_file():
                raise RestoreError(f"{record.object_name} has no backup_manifest: pg_combinebackup cannot use it")
            parts.append(str(part))
        prepare_data_dir(data_dir, owner)
        proc = run_command([str(bin_dir / "pg_combinebackup"), *parts, "--output", str(data_dir)],
                    cwd=work, timeout=6 * 3600, **run_as(os_user))
        if proc.returncode != 0:
            raise RestoreError(f"pg_combinebackup failed (exit {proc.returncode}): {last_line(proc.stderr)}")
    except BaseException:
        # the combined directory is worthless without the combine; leave data_dir empty for a retry
        if data_dir.is_dir():
            for child in data_dir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
