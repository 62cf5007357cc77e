"""Storage targets for backup streams: a local directory, S3 and Azure Blob, behind one small interface.

Writers are streaming: bytes arrive in arbitrary pieces and are cut into parts/blocks that upload
concurrently from a bounded pool: at most ``concurrency`` parts exist per writer (the next one is built
when a slot is free), plus the pending frames, which the writers of one stream share by reference.
Nothing is visible under the final name until ``commit()``; ``abort()`` leaves nothing behind that would
be mistaken for a backup. Errors are :class:`StorageError` with secrets redacted.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from recovery.redact import redact

T = TypeVar("T")
Part = TypeVar("Part")   # what one uploaded part leaves for the final commit (S3: number + ETag, Azure: block id)

MiB = 1024 * 1024
# The first parts are small, later ones grow (``part_size_of``): a backup's memory is its parts
# in flight, and most objects are small enough never to reach a bigger part. 5 MiB is S3's smallest part.
DEFAULT_PART_SIZE = 5 * MiB
# every this many parts the part size doubles: 2,000 × 5 MiB = 9.8 GiB before the first growth; S3's
# 10,000 parts then hold 5 × (1+2+4+8+16) × 2,000 MiB ≈ 303 GiB (fixed 8 MiB parts held 78 GiB)
PART_GROWTH_EVERY = 2_000
# parts in flight per remote writer: 2 kept a scale-70 backup's uploads ahead of the stream on 2 cores and
# 14-20 MiB less resident than 4 (bench/backup.py); more for a link with a long round trip
DEFAULT_CONCURRENCY = 2
DEFAULT_READ_CHUNK = MiB
# Shared-access signatures travel in URLs that the Azure SDK puts into its error messages.
_SAS_SIG = re.compile(r"(sig=)[^&\s]+", re.I)


class StorageError(Exception):
    """A storage operation failed; the message is safe to log and show in Slack."""


def safe_message(exc: BaseException, limit: int = 300) -> str:
    """One redacted line for logs and Slack: SDK errors carry request ids and XML bodies on later lines."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    code = getattr(exc, "error_code", None)
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if code and str(code) not in text:
        text += f" ({code})"
    text = _SAS_SIG.sub(r"\1********", redact(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def storage_failure(target: str, op: str, exc: BaseException) -> StorageError:
    return StorageError(f"{target}: {op} failed: {safe_message(exc)}")


class Writer(ABC):
    """One object being written; exactly one of ``commit`` or ``abort`` ends it."""

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...


class GuardedWriter(Writer):
    """Turn any SDK exception into a redacted StorageError naming the target and the object."""

    def __init__(self, target: str, key: str, inner: Writer) -> None:
        self._target, self._key, self._inner = target, key, inner

    def write(self, data: bytes) -> None:
        self._guard("upload", self._inner.write, data)

    def commit(self) -> None:
        self._guard("commit", self._inner.commit)

    def abort(self) -> None:
        self._guard("abort", self._inner.abort)

    def _guard(self, op: str, fn: Callable[..., None], *args: bytes) -> None:
        try:
            fn(*args)
        except StorageError:
            raise
        except Exception as exc:
            raise storage_failure(self._target, f"{op} {self._key}", exc) from None


class Target(ABC):
    """Somewhere backups are stored. Keys are relative, '/'-separated names."""

    name: str
    kind: str
    size_is_cheap = False   # True: ``size`` is a local look (a stat), not a request

    @abstractmethod
    def open_writer(self, key: str) -> Writer: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int | None: ...

    @abstractmethod
    def read(self, key: str, chunk_size: int = DEFAULT_READ_CHUNK) -> Iterator[bytes]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_key(key: str) -> str:
    """Refuse names that could escape a directory or prefix."""
    if not key or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise StorageError(f"invalid backup object name {key!r}")
    return key


class _BoundedUploads(Generic[Part]):
    """Run part uploads on a pool with at most ``limit`` in flight; ``submit`` blocks when the pool is full."""

    def __init__(self, limit: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="upload")
        self._slots = threading.BoundedSemaphore(limit)
        self._futures: list[Future[Part]] = []
        self._error: BaseException | None = None

    def submit(self, fn: Callable[[int, bytes], Part], number: int, make: Callable[[], bytes]) -> None:
        """``make()`` builds the part only once a slot is free: at most ``limit`` parts exist at a time."""
        # Fail the stream at the next write after a part fails, not only at commit.
        if self._error is not None:
            raise self._error
        self._slots.acquire()
        try:
            future = self._pool.submit(fn, number, make())
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(self._done)
        self._futures.append(future)

    def _done(self, future: Future[Part]) -> None:
        self._slots.release()
        if not future.cancelled() and future.exception() is not None and self._error is None:
            self._error = future.exception()

    def wait(self) -> list[Part]:
        """Results in submission order; raises the first failure."""
        try:
            return [f.result() for f in self._futures]
        finally:
            self._pool.shutdown(wait=True)

    def cancel(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def part_size_of(number: int, first: int, largest: int, every: int = PART_GROWTH_EVERY) -> int:
    """The size of part ``number`` (from 1) of a large object (the last part may be smaller): ``first``,
    doubled after every ``every`` parts, at most ``largest``."""
    return min(first << ((number - 1) // every), max(first, largest))


class PartWriter(Writer, Generic[Part]):
    """Cuts the stream into parts that grow with the object; subclasses upload parts and finish it.

    Part ``n`` (from 1) is ``part_size × 2^((n-1) // PART_GROWTH_EVERY)``, at most ``max_part_size``:
    small parts keep a backup's resident memory low (at most ``concurrency`` parts per writer), the growth
    keeps the largest object far beyond what fixed small parts would allow. Both S3 and Azure accept
    parts of different sizes in one object (every S3 part but the last ≥ 5 MiB)."""

    growth_every = PART_GROWTH_EVERY

    def __init__(self, target: str, part_size: int, concurrency: int, max_parts: int,
                 max_part_size: int | None = None) -> None:
        self._target = target
        self._first_part_size = part_size
        self._max_part_size = max_part_size or part_size
        self._max_parts = max_parts
        self._concurrency = concurrency
        # The pieces of the next part, by reference: the pipeline hands every target the same immutable
        # frame, so the targets' writers share them instead of each copying into a buffer of its own.
        self._pending: deque[bytes | memoryview] = deque()
        self._pending_size = 0
        self._parts = 0
        self._uploads: _BoundedUploads[Part] | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._pending.append(data if isinstance(data, bytes) else bytes(data))   # a mutable buffer is copied
        self._pending_size += len(data)
        while self._pending_size >= (size := self._next_part_size()):
            self._send(size)

    def _take(self, size: int) -> bytes:
        """The first ``size`` pending bytes as one part: one copy (the join), none per piece."""
        pieces: list[bytes | memoryview] = []
        need = size
        while need:
            piece = self._pending[0]
            if len(piece) <= need:
                pieces.append(self._pending.popleft())
                need -= len(piece)
            else:
                view = memoryview(piece)
                pieces.append(view[:need])
                self._pending[0] = view[need:]
                need = 0
        self._pending_size -= size
        return b"".join(pieces)

    def _send(self, size: int) -> None:
        """Upload the next ``size`` pending bytes as a part (built when an upload slot is free)."""
        if self._parts >= self._max_parts:
            raise StorageError(f"{self._target}: object needs more than {self._max_parts} parts; raise part_size")
        if self._uploads is None:
            self._begin()
            self._uploads = _BoundedUploads(self._concurrency)
        self._parts += 1
        self._uploads.submit(self._upload_part, self._parts, lambda: self._take(size))

    def _next_part_size(self) -> int:
        return part_size_of(self._parts + 1, self._first_part_size, self._max_part_size, self.growth_every)

    def commit(self) -> None:
        if self._uploads is None:
            # Small object: one request, no multipart bookkeeping.
            self._put_whole(self._take(self._pending_size))
            return
        if self._pending_size:
            self._send(self._pending_size)
        self._finish(self._uploads.wait())

    def abort(self) -> None:
        self._pending.clear()
        self._pending_size = 0
        if self._uploads is not None:
            self._uploads.cancel()
            self._discard()

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _upload_part(self, number: int, data: bytes) -> Part: ...

    @abstractmethod
    def _finish(self, parts: list[Part]) -> None: ...

    @abstractmethod
    def _put_whole(self, data: bytes) -> None: ...

    @abstractmethod
    def _discard(self) -> None: ...



class RemoteTarget(Target):
    """Shared by cloud targets: object names live under ``prefix`` and SDK errors become StorageError."""

    prefix: str

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except StorageError:
            raise
        except Exception as exc:
            raise storage_failure(self.name, op, exc) from None



# --- configuration ------------------------------------------------------------------------------------------

_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    # kind: (required keys, optional keys)
    "local": ({"path"}, {"name"}),
    "s3": ({"bucket"}, {"name", "prefix", "endpoint_url", "region", "part_size", "concurrency", "retries"}),
    "azure": (
        {"container"},
        {"name", "prefix", "connection_string_env", "block_size", "concurrency", "api_version", "retries"},
    ),
}


def _target_class(kind: str) -> type[Target]:
    # Imported here: each kind's module imports this one, and an SDK loads only with the kind that needs it.
    if kind == "s3":
        from recovery.backup.storage.s3 import S3Target
        return S3Target
    if kind == "azure":
        from recovery.backup.storage.azure import AzureTarget
        return AzureTarget
    from recovery.backup.storage.local import LocalTarget
    return LocalTarget


def target_from_config(config: Mapping[str, object]) -> Target:
    """Build a target from ``{kind: local|s3|azure, ...}``; unknown or missing keys are errors, not surprises."""
    options = dict(config)
    kind = options.pop("kind", None)
    if kind not in _FIELDS:
        raise ValueError(f"storage target kind must be one of {sorted(_FIELDS)}, got {kind!r}")
    required, optional = _FIELDS[kind]
    missing = required - options.keys()
    unknown = options.keys() - required - optional
    if missing or unknown:
        problems = [f"missing {sorted(missing)}" if missing else "", f"unknown {sorted(unknown)}" if unknown else ""]
        raise ValueError(f"{kind} storage target: " + "; ".join(p for p in problems if p))
    return _target_class(kind)(**options)
