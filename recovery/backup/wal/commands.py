"""WAL archiving: the functions behind ``aegis wal push %p`` / ``aegis wal fetch %f %p``, and streaming.

``push`` is meant for ``archive_command`` and ``fetch`` for ``restore_command``. Both talk to a small
``WalStore`` so the caller can pass the encrypting, multi-target pipeline; ``LocalWalStore`` is the
plain-directory reference implementation (and reads a directory filled by ``cp`` as well).

Archive semantics: a segment name is written once. Pushing the same bytes again succeeds (PostgreSQL
retries after a crash between copy and acknowledgement); different bytes under a stored name raise
``WalConflictError`` so that archive_command fails and nothing is overwritten — that happens when two
clusters (e.g. an old primary and a promoted copy on the same timeline) archive into one place.

RPO (B1, "WAL backup every 15 minutes"): the archiver ships a segment only when it is full (16 MB),
so on a quiet server the newest changes can sit in an open segment for hours. Set
``archive_timeout = 900`` (or lower, e.g. 300) on the primary: the server then switches segments
itself whenever something was written in that window, independent of whether Aegis is running. A
scheduled job calling ``switch_wal`` every 15 minutes achieves the same from the bot's side and
doubles as a liveness check, but it stops when the bot stops — use it as a second line, not the
only one. Each forced switch archives a full-size (mostly empty, well-compressible) segment, so do
not go below about a minute. For an RPO near zero stream WAL continuously with ``pg_receivewal``
(``receivewal_command``) into a replication slot (``create_slot_if_missing``); set
``max_slot_wal_keep_size`` on the server so a dead receiver cannot fill the primary's disk.

This module imports only the standard library at load time (psycopg lazily) so that
``python3 -P .../wal.py fetch --dir ARCHIVE %f %p`` starts fast as a restore_command, which runs
once per segment during recovery.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024
# Segment, timeline history, backup history, and the last partial segment archived at promotion.
_WAL_NAME = re.compile(r"^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$")
_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")

PUSH_FAILED_EXIT = 1
FETCH_ABSENT_EXIT = 1
# restore_command exit codes above 125 make PostgreSQL abort recovery instead of treating the file
# as absent; a store error must not silently end recovery (and promote) early.
FETCH_ERROR_EXIT = 255


class WalError(Exception):
    """Base class for WAL archive errors."""


class WalConflictError(WalError):
    """The archive holds different bytes under this name; never overwritten."""


class WalCorruptError(WalError):
    """Stored bytes do not match their recorded checksum."""


class WalStore(Protocol):
    def put(self, name: str, source: BinaryIO) -> str:
        """Store ``source`` as ``name``; return the sha256 hex of its plaintext."""
        ...

    def get(self, name: str, dest: BinaryIO) -> None:
        """Write the segment's plaintext into ``dest``; raise FileNotFoundError when absent."""
        ...

    def checksum(self, name: str) -> str | None:
        """sha256 hex of the stored plaintext, or None when absent."""
        ...


@dataclass(frozen=True)
class PushResult:
    name: str
    sha256: str
    size: int
    already_archived: bool


def check_wal_name(name: str) -> str:
    """Return ``name`` if it is a WAL archive file name; anything else (paths, ``..``) is refused."""
    if not _WAL_NAME.match(name):
        raise ValueError(f"not a WAL file name: {name!r}")
    return name


def _sha256_stream(source: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    with open(path, "rb") as f:
        return _sha256_stream(f)


def push(path: Path, store: WalStore) -> PushResult:
    """Archive one file PostgreSQL hands to archive_command (``%p``); idempotent, never overwrites."""
    path = Path(path)
    name = check_wal_name(path.name)
    stored = store.checksum(name)
    if stored is not None:
        local, size = sha256_file(path)
        if stored != local:
            raise WalConflictError(
                f"{name} is already archived with different content (archive {stored[:12]}…, local {local[:12]}…)"
            )
        return PushResult(name, local, size, already_archived=True)
    size = path.stat().st_size
    with open(path, "rb") as f:
        digest = store.put(name, f)
    return PushResult(name, digest, size, already_archived=False)


def fetch(name: str, dest: Path, store: WalStore, *, verify: bool = True) -> bool:
    """Restore ``name`` (``%f``) to ``dest`` (``%p``); False when the archive does not have it.

    Written to a temp file in ``dest``'s directory and renamed, so PostgreSQL never sees half a
    segment. With ``verify`` the written bytes are checked against ``store.checksum`` (when it has
    one) — defence in depth for stores that do not authenticate on read.
    """
    check_wal_name(name)
    dest = Path(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as out:
            try:
                store.get(name, out)
            except FileNotFoundError:
                return False
            if verify:
                expected = store.checksum(name)
                out.seek(0)
                actual, _ = _sha256_stream(out)
                if expected is not None and expected != actual:
                    raise WalCorruptError(f"{name}: fetched bytes do not match the archive checksum")
        os.replace(tmp, dest)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class LocalWalStore:
    """WAL archive in one directory: ``<name>`` plus a ``<name>.sha256`` sidecar (sha256sum format).

    A file without a sidecar (e.g. copied in by ``cp``) is hashed on demand, so this also reads
    plain archives. Writes are temp file + fsync + ``link`` (which fails if the name exists), so
    two concurrent pushers cannot overwrite each other.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, name: str) -> Path:
        return self.directory / check_wal_name(name)

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + ".sha256")

    def checksum(self, name: str) -> str | None:
        path = self._path(name)
        try:
            text = self._sidecar(path).read_text(encoding="ascii")
        except FileNotFoundError:
            try:
                return sha256_file(path)[0]
            except FileNotFoundError:
                return None
        return text.split()[0]

    def put(self, name: str, source: BinaryIO) -> str:
        path = self._path(name)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())  # archive_command success lets PostgreSQL recycle the segment
            sha = digest.hexdigest()
            try:
                os.link(tmp, path)
            except FileExistsError:
                existing = self.checksum(name)
                if existing != sha:
                    raise WalConflictError(f"{name} is already archived with different content") from None
                return sha
            self._write_sidecar(path, sha)
            self._fsync_dir()
            return sha
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _write_sidecar(self, path: Path, sha: str) -> None:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".sha.tmp", dir=self.directory)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(f"{sha}  {path.name}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, self._sidecar(path))

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get(self, name: str, dest: BinaryIO) -> None:
        path = self._path(name)
        expected = None
        with contextlib.suppress(FileNotFoundError):
            expected = self._sidecar(path).read_text(encoding="ascii").split()[0]
        digest = hashlib.sha256()
        with open(path, "rb") as src:  # FileNotFoundError propagates: "absent"
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dest.write(chunk)
        if expected is not None and digest.hexdigest() != expected:
            raise WalCorruptError(f"{name}: stored file does not match its .sha256 sidecar")


def switch_wal(dsn: str) -> str:
    """Close the current WAL segment so the archiver ships it now; returns the switch LSN.

    For a scheduled job backing ``archive_timeout`` (see the module docstring). A no-op when nothing
    was written since the last switch. Fails on a standby (run it against the primary).
    """
    import psycopg  # lazy: keeps the restore_command path dependency-free

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT pg_switch_wal()::text").fetchone()
    assert row is not None
    return str(row[0])


def create_slot_if_missing(dsn: str, slot: str) -> bool:
    """Create a physical replication slot for pg_receivewal (reserving WAL now); True if created."""
    import psycopg

    if not _SLOT_NAME.match(slot):
        raise ValueError("slot names are 1-63 characters of a-z, 0-9 and _")
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone():
            return False
        try:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
        except psycopg.errors.DuplicateObject:
            return False  # created concurrently
    return True


def receivewal_command(
    dsn: str, directory: Path, slot: str, *, synchronous: bool = False, pg_bin: str | Path | None = None
) -> list[str]:
    """argv for ``pg_receivewal`` streaming WAL continuously into ``directory`` (RPO near zero).

    The current segment is written as ``<name>.partial`` and renamed when complete. A password in
    ``dsn`` is left out of argv: run the command with ``recovery.backup.sources.postgres.client_env(dsn)``.
    ``synchronous`` flushes every write and reports it at once; with an ``application_name`` in the
    DSN listed in the primary's ``synchronous_standby_names`` commits then wait for the receiver.
    """
    from recovery.backup.sources.postgres import pg_bin_dir, split_password

    if not _SLOT_NAME.match(slot):
        raise ValueError("slot names are 1-63 characters of a-z, 0-9 and _")
    conn_dsn, _ = split_password(dsn)
    argv = [
        str(pg_bin_dir(pg_bin) / "pg_receivewal"),
        "--dbname", conn_dsn,
        "--directory", str(directory),
        "--slot", slot,
        "--no-password",
    ]
    if synchronous:
        argv.append("--synchronous")
    return argv


def push_main(path: Path, store: WalStore) -> int:
    """archive_command body: 0 when archived (or already archived identically), else 1."""
    try:
        result = push(path, store)
    except (WalError, OSError, ValueError) as exc:
        print(f"aegis wal push: {exc}", file=sys.stderr)
        return PUSH_FAILED_EXIT
    state = "already archived" if result.already_archived else "archived"
    print(f"aegis wal push: {result.name} {state} ({result.size} bytes)", file=sys.stderr)
    return 0


def fetch_main(name: str, dest: Path, store: WalStore) -> int:
    """restore_command body: 0 restored, 1 absent (normal at the end of recovery), 255 error."""
    try:
        found = fetch(name, dest, store)
    except Exception as exc:  # noqa: BLE001 - any failure must abort recovery, not look like "absent"
        print(f"aegis wal fetch: {name}: {exc}", file=sys.stderr)
        return FETCH_ERROR_EXIT
    return 0 if found else FETCH_ABSENT_EXIT


def main(argv: list[str] | None = None) -> int:
    """``wal.py push --dir ARCHIVE PATH`` / ``wal.py fetch --dir ARCHIVE NAME DEST`` on a ``LocalWalStore``."""
    parser = argparse.ArgumentParser(prog="wal.py", description="WAL archive against a local directory")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_push = sub.add_parser("push", help="archive_command: push --dir ARCHIVE %%p")
    p_push.add_argument("path", type=Path)
    p_fetch = sub.add_parser("fetch", help="restore_command: fetch --dir ARCHIVE %%f %%p")
    p_fetch.add_argument("name")
    for p in (p_push, p_fetch):
        p.add_argument("--dir", required=True, type=Path, help="archive directory")
    p_fetch.add_argument("dest", type=Path)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits 2 on usage errors; for restore_command that would read as "absent" and end
        # recovery early, so a misconfigured command fails loudly instead.
        return FETCH_ERROR_EXIT if exc.code else 0
    store = LocalWalStore(args.dir)
    if args.cmd == "push":
        return push_main(args.path, store)
    return fetch_main(args.name, args.dest, store)


if __name__ == "__main__":
    sys.exit(main())
