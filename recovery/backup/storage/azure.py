"""Azure Blob Storage as a storage target: staged blocks from a bounded pool, one commit."""

from __future__ import annotations

import base64
import functools
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypedDict

from recovery.backup.storage.base import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    DEFAULT_READ_CHUNK,
    GuardedWriter,
    MiB,
    PartWriter,
    RemoteTarget,
    StorageError,
    Writer,
    storage_failure,
)

if TYPE_CHECKING:
    from azure.storage.blob import BlobProperties, ContainerClient


_AZURE_MAX_BLOCKS = 50_000
_AZURE_MAX_BLOCK_SIZE = 4000 * MiB

class _AzureWriter(PartWriter[str]):
    def __init__(self, target: AzureTarget, key: str) -> None:
        super().__init__(target.name, target.block_size, target.concurrency, _AZURE_MAX_BLOCKS,
                         _AZURE_MAX_BLOCK_SIZE)
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


class AzureTarget(RemoteTarget):
    """Azure Blob container; the connection string is read from an environment variable, never stored."""

    kind = "azure"

    def __init__(
        self,
        container: str,
        connection_string_env: str = "AZURE_STORAGE_CONNECTION_STRING",
        prefix: str = "",
        block_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
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
                    raise storage_failure(self.name, "connect", exc) from None
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
        return GuardedWriter(self.name, key, self._call(f"open {key}", lambda: _AzureWriter(self, blob_key)))

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


