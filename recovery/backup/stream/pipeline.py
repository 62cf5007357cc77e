"""The one backup pipeline: source → zstd → AES-256-GCM → sha256 → every target at once, and its reverse.

Memory stays flat: the source is read in 1 MiB pieces, compressed output is cut into encryption chunks,
and each target consumes frames from its own small bounded queue on its own thread. A slow target slows
the pipeline (back-pressure) rather than growing a buffer; a failed or stalled target is dropped and the
others carry on. Deciding whether the run as a whole succeeded (B6: at least one target) is the caller's job.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, cast

from recovery.backup.storage.base import DEFAULT_READ_CHUNK, StorageError, Target, safe_message
from recovery.backup.stream.compress import DEFAULT_LEVEL, compress_chunks, decompress_chunks
from recovery.backup.stream.crypto import (
    DEFAULT_CHUNK_SIZE,
    BackupKey,
    BackupKeyError,
    Decryptor,
    Encryptor,
    IntegrityError,
)

SOURCE_READ_SIZE = 1024 * 1024
READ_AHEAD = 4       # source pieces read ahead of the compressor (4 MiB)
QUEUE_DEPTH = 4
_DONE = object()
_ABORT = object()


@dataclass
class TargetResult:
    ok: bool
    error: str | None
    seconds: float


@dataclass
class PipelineResult:
    name: str
    stored_size: int
    source_size: int
    sha256: str
    key_id: str
    chunks: int
    targets: dict[str, TargetResult]

    @property
    def ok(self) -> bool:
        """True when at least one target holds the backup."""
        return any(t.ok for t in self.targets.values())

    @property
    def succeeded(self) -> list[str]:
        return [n for n, t in self.targets.items() if t.ok]

    @property
    def failed(self) -> list[str]:
        return [n for n, t in self.targets.items() if not t.ok]


@dataclass
class VerifyResult:
    ok: bool
    name: str
    target: str
    stored_size: int
    sha256: str | None
    key_id: str | None
    chunks: int
    reason: str | None = None
    chunk_index: int | None = None
    error: str | None = None
    exception: Exception | None = field(default=None, repr=False, compare=False)

    def raise_for_failure(self) -> None:
        if self.exception is not None:
            raise self.exception


@dataclass
class RestoreResult:
    name: str
    target: str
    stored_size: int
    restored_size: int
    sha256: str
    key_id: str
    chunks: int
    verified_first: bool
    seconds: float


class Sink(Protocol):
    """Where a restore writes plaintext: a file, a pipe, or a wrapper that counts. ``data`` is valid only
    during the call (a view of the decompressor's reused buffer): a sink that keeps it must copy it."""

    def write(self, data: bytes | memoryview, /) -> object: ...


def _source_chunks(source: BinaryIO | Iterable[bytes]) -> Iterator[bytes | memoryview]:
    """The source in pieces; a piece read from a file object is valid until the next one is asked for."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
        return
    read = getattr(source, "read", None)
    if callable(read):
        # A file object is also iterable, but by lines: read fixed pieces instead, on a thread of their own.
        readinto = getattr(source, "readinto", None)
        yield from _read_ahead(readinto if callable(readinto) else _filling(read))
        return
    yield from source


def _filling(read: Callable[[int], bytes]) -> Callable[[memoryview], int]:
    """``readinto`` for a source that has only ``read`` (the WAL push's hashing wrapper): one copy more."""
    def readinto(buffer: memoryview) -> int:
        data = read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
    return readinto


def _read_ahead(readinto: Callable[[memoryview], int | None], depth: int = READ_AHEAD) -> Iterator[memoryview]:
    """1 MiB pieces read on their own thread, up to ``depth`` ahead of the consumer.

    The child behind a pipe (pg_basebackup, an exporter) then never waits while the pipeline compresses
    and encrypts: the read blocks in the kernel with the GIL released, and the consumer takes pieces
    from the queue. Order is kept (one reader); a read error is raised to the consumer; a consumer that
    stops early (an exception, ``close()``) stops the reader at its next piece.

    The pieces are read into ``depth + 2`` buffers used over and over, and each piece is valid until the
    consumer asks for the next (the compressor copies it in first). A fresh 1 MiB object per piece is
    fresh memory: mapped by glibc (``return_big_buffers``), every 4 KiB of it is a page fault on first
    touch — reading 4 GiB from a pipe took 4.38 s that way (3.9 s of it in the kernel) and 1.62 s into
    reused buffers, on this VM.
    """
    pieces: queue.Queue[object] = queue.Queue(maxsize=depth)
    free: queue.Queue[memoryview] = queue.Queue()
    for _ in range(depth + 2):   # queued, the consumer's, the one being filled
        free.put(memoryview(bytearray(SOURCE_READ_SIZE)))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                pieces.put(item, timeout=0.25)
                return True
            except queue.Full:
                continue
        return False

    def filled() -> tuple[memoryview, int] | None:
        """The next buffer and how much of it was read; None at the end (or when the consumer stopped)."""
        while not stop.is_set():
            try:
                buffer = free.get(timeout=0.25)
            except queue.Empty:
                continue
            n = readinto(buffer) or 0
            return (buffer, n) if n else None
        return None

    def run() -> None:
        try:
            while (item := filled()) is not None:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer
            put(_Failure(exc))

    reader = threading.Thread(target=run, name="backup-read", daemon=True)
    reader.start()
    item: object = None
    try:
        while True:
            item = pieces.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            buffer, n = cast("tuple[memoryview, int]", item)
            yield buffer[:n]
            free.put(buffer)   # the consumer asked for the next piece: it is done with this one
    finally:
        stop.set()
        if not reader.is_alive() or item is _DONE:   # the normal end: the reader is finished with ``read``
            reader.join()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _stored_frames(chunks: Iterable[bytes | memoryview], encryptor: Encryptor, level: int,
                   threads: int | None) -> Iterator[bytes]:
    """Header, then one frame per compressed chunk; one chunk is held back so the last can be marked final."""
    yield encryptor.header()
    pending: bytes | None = None
    for block in compress_chunks(chunks, level=level, threads=threads, piece_size=encryptor.chunk_size):
        if pending is not None:
            yield encryptor.encrypt_chunk(pending, final=False)
        pending = block
    yield encryptor.encrypt_chunk(pending or b"", final=True)


_M_MMAP_THRESHOLD = -3            # mallopt(3)
MMAP_THRESHOLD = 256 * 1024


@functools.cache
def return_big_buffers() -> None:
    """Have glibc hand every freed buffer of 256 KiB or more straight back to the kernel (once per process).

    A backup allocates and frees 1 MiB pieces and 5-8 MiB upload parts on several threads. glibc's
    default raises its mmap threshold after such a free, so later buffers come from per-thread arenas and
    their pages stay in the process's RSS long after they were freed; a fixed threshold keeps them mmap'd
    (a map and an unmap per buffer, a few microseconds against the MiB of work each carries)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


class _TargetFeed:
    """One target's consumer thread and bounded queue; the first outcome recorded wins."""

    def __init__(self, target: Target, name: str, depth: int, stall_timeout: float) -> None:
        self.target = target
        self.name = name
        self.stall_timeout = stall_timeout
        self.queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self.failed = threading.Event()
        self.result: TargetResult | None = None
        self.expected_size = -1
        self.written = 0
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"backup-{target.name}", daemon=True)

    def start(self) -> None:
        self._start = time.monotonic()
        self._thread.start()

    def settle(self, ok: bool, error: str | None) -> None:
        with self._lock:
            if self.result is None:
                self.result = TargetResult(ok, error, round(time.monotonic() - self._start, 3))
            if not ok:
                self.failed.set()

    def offer(self, item: object) -> None:
        """Hand ``item`` to the target, unless it has failed; give up on a target that stops consuming."""
        deadline = time.monotonic() + self.stall_timeout
        while not self.failed.is_set():
            try:
                self.queue.put(item, timeout=0.25)
                return
            except queue.Full:
                if time.monotonic() > deadline:
                    self.settle(False, f"{self.target.name}: stalled, no progress for {self.stall_timeout:.0f} s")

    def join(self) -> None:
        self._thread.join(self.stall_timeout)
        if self._thread.is_alive():
            self.settle(False, f"{self.target.name}: did not finish within {self.stall_timeout:.0f} s")

    def _run(self) -> None:
        writer = None
        try:
            writer = self.target.open_writer(self.name)
            while not self.failed.is_set():
                item = self.queue.get()
                if item is _ABORT:
                    self.settle(False, f"{self.target.name}: aborted because the backup source failed")
                    break
                if item is _DONE:
                    writer.commit()
                    writer = None
                    self._check_size()
                    return
                writer.write(item)  # type: ignore[arg-type]
                self.written += len(item)  # type: ignore[arg-type]
        except StorageError as exc:
            self.settle(False, str(exc))
        except Exception as exc:
            self.settle(False, f"{self.target.name}: {safe_message(exc)}")
        finally:
            if writer is not None:
                # Best effort: the target may be unreachable, which is why we are aborting.
                with contextlib.suppress(Exception):
                    writer.abort()
            self._drop_queued()

    def _check_size(self) -> None:
        """Every frame reached the writer, and the object holds them. A committed remote upload already
        confirmed its parts (S3 answers each part and the completion, Azure checks each block's MD5), so
        no extra request per target after the stream; a local file is looked at (a stat). What a restore
        relies on is the catalog's sha256 of the stored bytes, checked on every read."""
        if self.written != self.expected_size:
            self.settle(False, f"{self.target.name}: {self.written} bytes written, {self.expected_size} expected")
            return
        size = self.target.size(self.name) if self.target.size_is_cheap else self.written
        if size != self.expected_size:
            self.settle(False, f"{self.target.name}: stored size {size} does not match the {self.expected_size} "
                               "bytes written")
        else:
            self.settle(True, None)

    def _drop_queued(self) -> None:
        # Free memory held by a failed target's queue; the producer no longer feeds it.
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()


def backup_stream(
    source: BinaryIO | Iterable[bytes],
    name: str,
    targets: list[Target],
    key: BackupKey,
    progress: Callable[[int], None] | None = None,
    *,
    level: int = DEFAULT_LEVEL,
    threads: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    queue_depth: int = QUEUE_DEPTH,
    stall_timeout: float = 300.0,
    source_done: Callable[[], object] | None = None,
) -> PipelineResult:
    """Stream ``source`` to every target under ``name`` and report per-target outcomes.

    ``progress`` is called with the cumulative number of source bytes read. Target failures are reported in
    the result, not raised; a failing source (or progress callback) aborts every target and is re-raised.
    ``source_done`` is called once the source's last byte was read, while the targets still finish their
    uploads (the runner snapshots the database "after" the backup there instead of after the uploads).
    """
    if not isinstance(key, BackupKey):
        raise BackupKeyError("backup_stream needs a BackupKey (see load_key)")
    if not targets:
        raise ValueError("backup_stream needs at least one target")
    if len({t.name for t in targets}) != len(targets):
        raise ValueError("target names must be unique")
    # The key is checked here, before any target is opened, so a bad key never leaves partial objects.
    encryptor = Encryptor(key, chunk_size)
    return_big_buffers()
    feeds = [_TargetFeed(t, name, queue_depth, stall_timeout) for t in targets]
    for feed in feeds:
        feed.start()

    digest = hashlib.sha256()
    stored = 0
    source_size = 0

    def counted() -> Iterator[bytes | memoryview]:
        nonlocal source_size
        for piece in _source_chunks(source):
            source_size += len(piece)
            if progress is not None:
                progress(source_size)
            yield piece

    try:
        for frame in _stored_frames(counted(), encryptor, level, threads):
            digest.update(frame)
            stored += len(frame)
            for feed in feeds:
                feed.offer(frame)
    except BaseException:
        for feed in feeds:
            feed.offer(_ABORT)
        for feed in feeds:
            feed.join()
        raise
    for feed in feeds:
        feed.expected_size = stored
        feed.offer(_DONE)
    if source_done is not None:
        source_done()
    for feed in feeds:
        feed.join()
    return PipelineResult(
        name=name,
        stored_size=stored,
        source_size=source_size,
        sha256=digest.hexdigest(),
        key_id=key.key_id,
        chunks=encryptor.chunks,
        targets={f.target.name: f.result or TargetResult(False, "no outcome recorded", 0.0) for f in feeds},
    )


class _Hashing:
    """Pass bytes through while counting and hashing them (the checksum is over the stored bytes)."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = pieces
        self.digest = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._pieces:
            self.digest.update(piece)
            self.size += len(piece)
            yield piece


def verify_object(
    target: Target, name: str, key: BackupKey, expected_sha256: str | None = None, read_size: int = DEFAULT_READ_CHUNK
) -> VerifyResult:
    """Read the whole object, checking every chunk's tag and (if given) the sha256; nothing is written anywhere.

    Integrity and key problems come back as ``ok=False`` with ``reason`` and ``chunk_index``; storage errors
    (target unreachable, object missing) raise :class:`~recovery.backup.storage.base.StorageError`.
    """
    reader = target.read(name, read_size)
    hashing = _Hashing(reader)
    decryptor = Decryptor(key, hashing)
    failure: Exception | None = None
    with contextlib.closing(reader):  # type: ignore[type-var]
        try:
            for _ in decryptor:
                pass
        except (IntegrityError, BackupKeyError) as exc:
            failure = exc
    sha = hashing.digest.hexdigest()
    if failure is None and expected_sha256 and sha != expected_sha256.lower():
        failure = IntegrityError(
            f"checksum mismatch on {target.name}: stored object has sha256 {sha}, catalog expects {expected_sha256}",
            None, "checksum",
        )
    header = decryptor.header
    return VerifyResult(
        ok=failure is None,
        name=name,
        target=target.name,
        stored_size=hashing.size,
        sha256=sha if failure is None else None,
        key_id=header.key_id if header else getattr(failure, "expected_key_id", None),
        chunks=decryptor.chunks,
        reason=getattr(failure, "reason", "wrong_key" if failure else None),
        chunk_index=getattr(failure, "chunk_index", None),
        error=str(failure) if failure else None,
        exception=failure,
    )


def restore_stream(
    target: Target,
    name: str,
    key: BackupKey,
    sink: Sink,
    expected_sha256: str | None = None,
    *,
    verify_first: bool = True,
    read_size: int = DEFAULT_READ_CHUNK,
) -> RestoreResult:
    """Decrypt and decompress ``name`` from ``target`` into ``sink``.

    With ``verify_first`` (the default) the object is read twice: a full verification pass (checksum and
    every tag) before the first byte reaches ``sink``, then the restore pass. That doubles the download
    but guarantees a database never sees a prefix of a corrupt, truncated or swapped backup. With
    ``verify_first=False`` the object is read once; each chunk is still authenticated before its plaintext
    is written, but a truncation or checksum mismatch is only detected at the end, after ``sink`` has
    received earlier chunks, so the caller must then discard the sink. In both modes the restore pass
    re-checks everything and raises :class:`IntegrityError` (or :class:`WrongKeyError`) on any mismatch.
    """
    start = time.monotonic()
    pinned = expected_sha256.lower() if expected_sha256 else None
    if verify_first:
        verification = verify_object(target, name, key, expected_sha256, read_size)
        verification.raise_for_failure()
        # Pin the verified checksum so an object replaced between the two reads is caught too.
        pinned = verification.sha256
    reader = target.read(name, read_size)
    hashing = _Hashing(reader)
    decryptor = Decryptor(key, hashing)
    restored = 0
    with contextlib.closing(reader):  # type: ignore[type-var]
        for piece in decompress_chunks(decryptor):
            sink.write(piece)
            restored += len(piece)
    sha = hashing.digest.hexdigest()
    if pinned and sha != pinned:
        raise IntegrityError(
            f"checksum mismatch on {target.name}: restored object has sha256 {sha}, expected {pinned}",
            None, "checksum",
        )
    header = decryptor.read_header()
    return RestoreResult(
        name=name,
        target=target.name,
        stored_size=hashing.size,
        restored_size=restored,
        sha256=sha,
        key_id=header.key_id,
        chunks=decryptor.chunks,
        verified_first=verify_first,
        seconds=round(time.monotonic() - start, 3),
    )
