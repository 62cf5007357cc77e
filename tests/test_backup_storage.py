"""Storage targets against real servers: the same contract for a local directory, moto S3 and Azurite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from recovery.backup.storage.azure import AzureTarget
from recovery.backup.storage.base import (
    PART_GROWTH_EVERY,
    PartWriter,
    StorageError,
    Target,
    part_size_of,
    target_from_config,
)
from recovery.backup.storage.local import LocalTarget
from recovery.backup.storage.s3 import S3Target
from tests.harness.storage_servers import Azurite, MotoS3, aws_env, azurite, moto_s3, moto_s3_outage  # noqa: F401

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3", "azure"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """Each backend with parts small enough that a few MB already needs several concurrent uploads."""
    if request.param == "local":
        yield LocalTarget(tmp_path / "backups")
    elif request.param == "s3":
        s3: MotoS3 = request.getfixturevalue("moto_s3")
        yield S3Target(s3.create_bucket(), prefix="dr/", endpoint_url=s3.endpoint_url, part_size=5 * MiB,
                       concurrency=3)
    else:
        az: Azurite = request.getfixturevalue("azurite")
        yield AzureTarget(az.create_container(), prefix="dr/", block_size=256 * 1024, concurrency=3)


def write(target: Target, key: str, data: bytes, piece: int = 300_000) -> None:
    writer = target.open_writer(key)
    for i in range(0, len(data), piece):
        writer.write(data[i : i + piece])
    writer.commit()


def test_write_read_list_delete(target: Target) -> None:
    # 11 MiB: three S3 parts, 44 Azure blocks, written in pieces that do not align with either.
    data = os.urandom(11 * MiB)
    write(target, "pg/full/a.enc", data)
    write(target, "pg/wal/b.enc", b"small")

    assert target.exists("pg/full/a.enc") and target.size("pg/full/a.enc") == len(data)
    assert b"".join(target.read("pg/full/a.enc", chunk_size=MiB)) == data
    assert all(len(p) <= MiB for p in target.read("pg/full/a.enc", chunk_size=MiB))
    assert b"".join(target.read("pg/wal/b.enc")) == b"small"
    assert target.list() == ["pg/full/a.enc", "pg/wal/b.enc"]
    assert target.list("pg/wal/") == ["pg/wal/b.enc"]

    target.delete("pg/full/a.enc")
    target.delete("pg/full/a.enc")  # deleting twice is not an error: retention may race a manual delete
    assert not target.exists("pg/full/a.enc") and target.size("pg/full/a.enc") is None
    assert target.list() == ["pg/wal/b.enc"]


def test_nothing_visible_until_commit_and_abort_leaves_nothing(target: Target) -> None:
    writer = target.open_writer("x.enc")
    writer.write(os.urandom(6 * MiB))  # past the first S3 part, so a multipart upload really exists
    assert not target.exists("x.enc") and target.list() == []
    writer.abort()
    assert not target.exists("x.enc") and target.list() == []

    # Overwriting keeps the old object readable until the new one commits.
    write(target, "y.enc", b"old")
    writer = target.open_writer("y.enc")
    writer.write(b"new" * 1000)
    assert b"".join(target.read("y.enc")) == b"old"
    writer.commit()
    assert b"".join(target.read("y.enc")) == b"new" * 1000


def test_empty_object(target: Target) -> None:
    write(target, "empty", b"")
    assert target.exists("empty") and target.size("empty") == 0 and b"".join(target.read("empty")) == b""


def test_unsafe_names_are_refused(target: Target) -> None:
    for bad in ("../escape", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(StorageError, match="invalid backup object name"):
            target.open_writer(bad)


def test_part_sizes_grow_with_the_object() -> None:
    def size(n: int) -> int:
        return part_size_of(n, 5 * MiB, 5 * 1024 * MiB)

    assert [size(n) for n in (1, PART_GROWTH_EVERY, PART_GROWTH_EVERY + 1, 2 * PART_GROWTH_EVERY + 1)] \
        == [5 * MiB, 5 * MiB, 10 * MiB, 20 * MiB]
    assert size(12 * PART_GROWTH_EVERY) == 5 * 1024 * MiB   # capped at S3's largest part
    # the largest object of S3's 10,000 parts: ~303 GiB (fixed 8 MiB parts: 78 GiB)
    assert sum(size(n) for n in range(1, 10_001)) > 300 * 1024 * MiB


@pytest.mark.parametrize("backend", ["s3", "azure"])
def test_an_object_of_growing_parts_reads_back_whole(backend: str, request: pytest.FixtureRequest,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # growth after every part, so a few MiB already spans three sizes: the servers accept mixed sizes
    monkeypatch.setattr(PartWriter, "growth_every", 1)
    if backend == "s3":
        s3: MotoS3 = request.getfixturevalue("moto_s3")
        target: Target = S3Target(s3.create_bucket(), endpoint_url=s3.endpoint_url, part_size=5 * MiB)
        data = os.urandom(5 * MiB + 10 * MiB + 3 * MiB)   # parts of 5, 10 and 3 MiB
    else:
        az: Azurite = request.getfixturevalue("azurite")
        target = AzureTarget(az.create_container(), block_size=256 * 1024)
        data = os.urandom(256 * 1024 * (1 + 2 + 4 + 8) + 1000)   # blocks of 256 KiB, 512 KiB, 1, 2 MiB, 1000 B
    write(target, "pg/full/grown.enc", data)
    assert target.size("pg/full/grown.enc") == len(data)
    assert b"".join(target.read("pg/full/grown.enc", chunk_size=MiB)) == data


def test_s3_abort_removes_the_multipart_upload(moto_s3: MotoS3) -> None:  # noqa: F811
    target = S3Target(moto_s3.create_bucket(), endpoint_url=moto_s3.endpoint_url, part_size=5 * MiB)
    writer = target.open_writer("x.enc")
    writer.write(os.urandom(11 * MiB))
    assert moto_s3.client().list_multipart_uploads(Bucket=target.bucket).get("Uploads")
    writer.abort()
    assert not moto_s3.client().list_multipart_uploads(Bucket=target.bucket).get("Uploads")


def test_prefixes_keep_targets_apart(moto_s3: MotoS3) -> None:  # noqa: F811
    bucket = moto_s3.create_bucket()
    prod = S3Target(bucket, prefix="prod/", endpoint_url=moto_s3.endpoint_url)
    test = S3Target(bucket, prefix="test/", endpoint_url=moto_s3.endpoint_url)
    write(prod, "a", b"p")
    write(test, "a", b"t")
    assert prod.list() == test.list() == ["a"]
    assert b"".join(prod.read("a")) == b"p" and b"".join(test.read("a")) == b"t"


def test_s3_outage_is_a_storage_error(moto_s3_outage: MotoS3) -> None:  # noqa: F811
    # One retry: the outage is permanent here, so more attempts only slow the test.
    target = S3Target(moto_s3_outage.create_bucket(), endpoint_url=moto_s3_outage.endpoint_url, retries=1)
    write(target, "a", b"before")
    moto_s3_outage.stop()
    with pytest.raises(StorageError, match="^s3: head a failed") as info:
        target.exists("a")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(info.value).replace("s3: head a failed: ", "")
    with pytest.raises(StorageError):
        b"".join(target.read("a"))
    writer = target.open_writer("b")
    writer.write(b"x")
    with pytest.raises(StorageError, match="commit b failed"):
        writer.commit()


def test_azure_errors_do_not_leak_the_account_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.harness.pgcluster import free_port

    secret = "c2VjcmV0LWFjY291bnQta2V5LWRvLW5vdC1sb2c="
    dead = f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={secret};BlobEndpoint=http://127.0.0.1:{free_port()}/acct;"
    monkeypatch.setenv("AEGIS_TEST_AZURE_DEAD", dead)
    target = AzureTarget("c", connection_string_env="AEGIS_TEST_AZURE_DEAD", retries=0)
    with pytest.raises(StorageError) as info:
        target.exists("a")
    assert secret not in str(info.value) and dead not in str(info.value)
    assert str(info.value).startswith("azure: head a failed")


def test_pinned_api_version_works_against_azurite(azurite: Azurite) -> None:  # noqa: F811
    # Azurite 3.35 knows REST versions up to 2025-11-05; pinning one lets a strict emulator or old stack work.
    target = AzureTarget(azurite.create_container(), api_version="2025-11-05")
    write(target, "a", b"pinned")
    assert b"".join(target.read("a")) == b"pinned"


def test_target_from_config(tmp_path: Path) -> None:
    local = target_from_config({"kind": "local", "path": str(tmp_path)})
    assert isinstance(local, LocalTarget) and local.name == "local" and local.root == tmp_path
    s3 = target_from_config({"kind": "s3", "bucket": "b", "endpoint_url": "http://127.0.0.1:9", "region": "eu-west-1"})
    assert isinstance(s3, S3Target) and (s3.bucket, s3.region, s3.name) == ("b", "eu-west-1", "s3")
    azure = target_from_config({"kind": "azure", "container": "c", "connection_string_env": "X", "name": "azure-dr"})
    assert isinstance(azure, AzureTarget) and azure.connection_string_env == "X" and azure.name == "azure-dr"

    with pytest.raises(ValueError, match="kind"):
        target_from_config({"kind": "ftp"})
    with pytest.raises(ValueError, match=r"missing \['bucket'\]"):
        target_from_config({"kind": "s3"})
    with pytest.raises(ValueError, match=r"unknown \['buckett'\]"):
        target_from_config({"kind": "s3", "bucket": "b", "buckett": "typo"})
