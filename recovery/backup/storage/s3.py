"""S3 (or an S3-compatible store) as a storage target: multipart uploads from a bounded pool."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from recovery.backup.storage.base import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    DEFAULT_READ_CHUNK,
    GuardedWriter,
    MiB,
    PartWriter,
    RemoteTarget,
    Writer,
)

_S3_MAX_PARTS = 10_000
_S3_MAX_PART_SIZE = 5 * 1024 * MiB

# boto3 ships no types: its client and responses are the one Any of this module.
_S3Part = dict[str, int | str]   # {"PartNumber": n, "ETag": "..."}, as complete_multipart_upload wants it


class _S3Writer(PartWriter[_S3Part]):
    def __init__(self, target: S3Target, key: str) -> None:
        super().__init__(target.name, target.part_size, target.concurrency, _S3_MAX_PARTS, _S3_MAX_PART_SIZE)
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


class S3Target(RemoteTarget):
    """S3 (or compatible) bucket; credentials come from the standard AWS environment and config chain."""

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
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
        return GuardedWriter(self.name, key, self._call(f"open {key}", lambda: _S3Writer(self, s3_key)))

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


