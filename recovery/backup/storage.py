"""Storage targets for backup streams: a local directory, S3 and Azure Blob, behind one small interface.

Writers are streaming: bytes arrive in arbitrary pieces and are cut into parts/blocks that upload
concurrently from a bounded pool, so memory is at most ``(concurrency + 1) * part_size`` per writer.
Nothing is visible under the final name until ``commit()``; ``abort()`` leaves nothing behind that would
be mistaken for a backup. Errors are :class:`StorageError` with secrets redacted.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar

from recovery.redact import redact

if TYPE_CHECKING:
    from azure.storage.blob import BlobProperties, ContainerClient

T = TypeVar("T")
Part = TypeVar("Part")   # what one uploaded part leaves for the final commit (S3: number + ETag, Azure: block id)

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_READ_CHUNK = MiB
_S3_MAX_PARTS = 10_000
_AZURE_MAX_BLOCKS = 50_000
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


def _fail(target: str, op: str, exc: BaseException) -> StorageError:
    return StorageError(f"{target}: {op} failed: {safe_message(exc)}")


class Writer(ABC):
    """One object being written; exactly one of ``commit`` or ``abort`` ends it."""

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...


class _GuardedWriter(Writer):
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
            raise _fail(self._target, f"{op} {self._key}", exc) from None


class Target(ABC):
    """Somewhere backups are stored. Keys are relative, '/'-separated names."""

    name: str
    kind: str

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

    def submit(self, fn: Callable[[int, bytes], Part], number: int, data: bytes) -> None:
        # Fail the stream at the next write after a part fails, not only at commit.
        if self._error is not None:
            raise self._error
        self._slots.acquire()
        try:
            future = self._pool.submit(fn, number, data)
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


class _PartWriter(Writer, Generic[Part]):
    """Cuts the stream into fixed-size parts; subclasses upload parts and finish the object."""

    def __init__(self, target: str, part_size: int, concurrency: int, max_parts: int) -> None:
        self._target = target
        self._part_size = part_size
        self._max_parts = max_parts
        self._concurrency = concurrency
        self._buf = bytearray()
        self._parts = 0
        self._uploads: _BoundedUploads[Part] | None = None

    def write(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= self._part_size:
            with memoryview(self._buf) as view:  # one copy per part, not a slice and then a copy of it
                part = bytes(view[: self._part_size])
            del self._buf[: self._part_size]
            self._send(part)

    def _send(self, part: bytes) -> None:
        if self._parts >= self._max_parts:
            raise StorageError(f"{self._target}: object needs more than {self._max_parts} parts; raise part_size")
        if self._uploads is None:
            self._begin()
            self._uploads = _BoundedUploads(self._concurrency)
        self._parts += 1
        self._uploads.submit(self._upload_part, self._parts, part)

    def commit(self) -> None:
        if self._uploads is None:
            # Small object: one request, no multipart bookkeeping.
            self._put_whole(bytes(self._buf))
            return
        if self._buf:
            self._send(bytes(self._buf))
            self._buf.clear()
        self._finish(self._uploads.wait())

    def abort(self) -> None:
        self._buf.clear()
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


# --- local directory -------------------------------------------------------------------------------------


class _LocalWriter(Writer):
    def __init__(self, target: str, dest: Path) -> None:
        self._target = target
        self._dest = dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
        # fsync before rename, then the directory, so a crash leaves either the old state or the whole file.
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._dest)
        dir_fd = os.open(self._dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalTarget(Target):
    kind = "local"

    def __init__(self, path: str | os.PathLike[str], name: str = "local") -> None:
        self.name = name
        self.root = Path(path)

    def path_for(self, key: str) -> Path:
        return self.root / check_key(key)

    def open_writer(self, key: str) -> Writer:
        try:
            return _GuardedWriter(self.name, key, _LocalWriter(self.name, self.path_for(key)))
        except OSError as exc:
            raise _fail(self.name, f"open {key}", exc) from None

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def size(self, key: str) -> int | None:
        try:
            return self.path_for(key).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, key: str, chunk_size: int = DEFAULT_READ_CHUNK) -> Iterator[bytes]:
        try:
            f = self.path_for(key).open("rb")
        except OSError as exc:
            raise _fail(self.name, f"read {key}", exc) from None
        with f:
            while piece := f.read(chunk_size):
                yield piece

    def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        names = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        # In-progress writes are hidden dot files ending in .part; they are not backups.
        return sorted(n for n in names if n.startswith(prefix) and not _is_temp(n))


def _is_temp(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") and base.endswith(".part")


class _RemoteTarget(Target):
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
            raise _fail(self.name, op, exc) from None


# --- S3 ----------------------------------------------------------------------------------------------------


# boto3 ships no types: its client and responses are the one Any of this module.
_S3Part = dict[str, int | str]   # {"PartNumber": n, "ETag": "..."}, as complete_multipart_upload wants it


class _S3Writer(_PartWriter[_S3Part]):
    def __init__(self, target: S3Target, key: str) -> None:
        super().__init__(target.name, target.part_size, target.concurrency, _S3_MAX_PARTS)
        self._s3 = target.client
        self._bucket = target.bucket
        self._key = key
        self._upload_id: str | None = None

    def _begin(self) -> None:
        self._upload_id = self._s3.create_multipart_upload(Bucket=self._bucket, Key=self._key)["UploadId"]

    def _upload_part(self, number: int, data: bytes) -> _S3Part:
        resp = self._s3.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=data
        )
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def _finish(self, parts: list[_S3Part]) -> None:
        self._s3.complete_multipart_upload(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
        )

    def _put_whole(self, data: bytes) -> None:
        self._s3.put_object(Bucket=self._bucket, Key=self._key, Body=data)

    def _discard(self) -> None:
        # An unfinished multipart upload is billed storage and invisible in listings; remove it.
        if self._upload_id is not None:
            self._s3.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)


class S3Target(_RemoteTarget):
    """S3 (or compatible) bucket; credentials come from the standard AWS environment and config chain."""

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = 4,
        name: str = "s3",
        retries: int = 3,
    ) -> None:
        if part_size < 5 * MiB:
            raise ValueError("S3 parts other than the last must be at least 5 MiB")
        self.name = name
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self.part_size = part_size
        self.concurrency = max(1, concurrency)
        self.retries = retries
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    retries={"max_attempts": self.retries + 1, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=120,
                    max_pool_connections=self.concurrency + 2,
                    # Custom endpoints (MinIO, moto, Ceph) rarely do virtual-host buckets.
                    s3={"addressing_style": "path" if self.endpoint_url else "auto"},
                )
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
                )
            return self._client

    def open_writer(self, key: str) -> Writer:
        s3_key = self._key(key)
        return _GuardedWriter(self.name, key, self._call(f"open {key}", lambda: _S3Writer(self, s3_key)))

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return head
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._call(f"head {key}", lambda: self._head(key)) is not None

    def size(self, key: str) -> int | None:
        head = self._call(f"head {key}", lambda: self._head(key))
        return None if head is None else int(head["ContentLength"])

    def read(self, key: str, chunk_size: int = DEFAULT_READ_CHUNK) -> Iterator[bytes]:
        body = self._call(f"read {key}", lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key)))["Body"]
        try:
            pieces = body.iter_chunks(chunk_size)
            while True:
                piece = self._call(f"read {key}", lambda: next(pieces, None))
                if piece is None:
                    return
                yield piece
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def list(self, prefix: str = "") -> list[str]:
        def run() -> list[str]:
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
            return sorted(str(obj["Key"])[len(self.prefix) :] for page in pages for obj in page.get("Contents", []))

        return self._call(f"list {prefix}", run)


# --- Azure Blob ---------------------------------------------------------------------------------------------


class _AzureWriter(_PartWriter[str]):
    def __init__(self, target: AzureTarget, key: str) -> None:
        super().__init__(target.name, target.block_size, target.concurrency, _AZURE_MAX_BLOCKS)
        self._blob = target.container_client.get_blob_client(key)
        self._ids: list[str] = []

    def _begin(self) -> None:
        pass

    @staticmethod
    def _block_id(number: int) -> str:
        # All ids of one blob must have the same length.
        return base64.b64encode(f"{number:08d}".encode()).decode()

    def _upload_part(self, number: int, data: bytes) -> str:
        block_id = self._block_id(number)
        # validate_content sends an MD5 per block, so corruption in transit fails the upload, not the restore.
        self._blob.stage_block(block_id, data, length=len(data), validate_content=True)
        return block_id

    def _finish(self, parts: list[str]) -> None:
        from azure.storage.blob import BlobBlock

        self._blob.commit_block_list([BlobBlock(block_id=b) for b in parts])

    def _put_whole(self, data: bytes) -> None:
        self._blob.upload_blob(data, overwrite=True, length=len(data), validate_content=True)

    def _discard(self) -> None:
        # Uncommitted blocks are never visible and Azure drops them after a week; nothing to delete.
        pass


class _AzureVersion(TypedDict, total=False):
    api_version: str   # absent: the SDK's own default version


class AzureTarget(_RemoteTarget):
    """Azure Blob container; the connection string is read from an environment variable, never stored."""

    kind = "azure"

    def __init__(
        self,
        container: str,
        connection_string_env: str = "AZURE_STORAGE_CONNECTION_STRING",
        prefix: str = "",
        block_size: int = DEFAULT_PART_SIZE,
        concurrency: int = 4,
        api_version: str | None = None,
        name: str = "azure",
        retries: int = 3,
    ) -> None:
        self.name = name
        self.container = container
        self.connection_string_env = connection_string_env
        self.prefix = prefix
        self.block_size = block_size
        self.concurrency = max(1, concurrency)
        self.api_version = api_version
        self.retries = retries
        self._client: ContainerClient | None = None
        self._lock = threading.Lock()

    @property
    def container_client(self) -> ContainerClient:
        with self._lock:
            if self._client is None:
                conn = os.environ.get(self.connection_string_env)
                if not conn:
                    raise StorageError(f"{self.name}: environment variable {self.connection_string_env} is not set")
                from azure.storage.blob import BlobServiceClient, ExponentialRetry

                # The SDK default waits 15 s before the first retry; an outage should fail over quickly.
                retry = ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=self.retries)
                version: _AzureVersion = {"api_version": self.api_version} if self.api_version else {}
                try:
                    service = BlobServiceClient.from_connection_string(
                        conn, retry_policy=retry, connection_timeout=10, **version)
                except Exception as exc:
                    raise _fail(self.name, "connect", exc) from None
                self._client = service.get_container_client(self.container)
            return self._client

    def _props(self, key: str) -> BlobProperties | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.container_client.get_blob_client(self._key(key)).get_blob_properties()
        except ResourceNotFoundError:
            return None

    def open_writer(self, key: str) -> Writer:
        blob_key = self._key(key)
        return _GuardedWriter(self.name, key, self._call(f"open {key}", lambda: _AzureWriter(self, blob_key)))

    def exists(self, key: str) -> bool:
        return self._call(f"head {key}", lambda: self._props(key)) is not None

    def size(self, key: str) -> int | None:
        props = self._call(f"head {key}", lambda: self._props(key))
        return None if props is None else int(props.size)

    def read(self, key: str, chunk_size: int = DEFAULT_READ_CHUNK) -> Iterator[bytes]:
        from azure.core import MatchConditions

        props = self._call(f"read {key}", lambda: self._props(key))
        if props is None:
            raise StorageError(f"{self.name}: read {key} failed: object does not exist")
        blob = self.container_client.get_blob_client(self._key(key))
        # Ranged reads pinned to the etag: bounded memory, and a blob replaced mid-read fails instead of mixing.
        def chunk(offset: int) -> bytes:
            return blob.download_blob(
                offset, chunk_size, etag=props.etag, match_condition=MatchConditions.IfNotModified, max_concurrency=1
            ).readall()

        for offset in range(0, int(props.size), chunk_size):
            yield self._call(f"read {key}", functools.partial(chunk, offset))

    def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        def run() -> None:
            try:
                self.container_client.delete_blob(self._key(key), delete_snapshots="include")
            except ResourceNotFoundError:
                pass

        self._call(f"delete {key}", run)

    def list(self, prefix: str = "") -> list[str]:
        def run() -> list[str]:
            blobs = self.container_client.list_blobs(name_starts_with=self.prefix + prefix)
            return sorted(b.name[len(self.prefix) :] for b in blobs)

        return self._call(f"list {prefix}", run)


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
_CLASSES: dict[str, type[Target]] = {"local": LocalTarget, "s3": S3Target, "azure": AzureTarget}


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
    return _CLASSES[kind](**options)
