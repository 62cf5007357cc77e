"""The backup pipeline end to end against real storage: local directory, moto S3 and Azurite.

Covers B6 (encrypted, every target at once, one target down does not sink the run) and the restore rule
that nothing reaches a database before its checksum and every authentication tag are verified.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from recovery.backup.storage.azure import AzureTarget
from recovery.backup.storage.base import Target
from recovery.backup.storage.local import LocalTarget
from recovery.backup.storage.s3 import S3Target
from recovery.backup.stream.crypto import (
    HEADER_SIZE,
    BackupKey,
    BackupKeyError,
    IntegrityError,
    WrongKeyError,
    load_key,
)
from recovery.backup.stream.pipeline import PipelineResult, backup_stream, restore_stream, verify_object
from tests.harness.storage_servers import Azurite, MotoS3, aws_env, azurite, moto_s3, moto_s3_outage  # noqa: F401

MiB = 1024 * 1024


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> BackupKey:
    monkeypatch.setenv("AEGIS_BACKUP_KEY", base64.b64encode(os.urandom(32)).decode())
    return load_key()


def mixed_data(random_bytes: int, text_bytes: int) -> bytes:
    """Incompressible and highly compressible data, so both zstd paths are exercised."""
    text = b"2024-01-01 12:00:00 UTC LOG:  checkpoint complete: wrote 42 buffers\n"
    return os.urandom(random_bytes) + (text * (text_bytes // len(text) + 1))[:text_bytes]


def s3_target(server: MotoS3) -> S3Target:
    # One retry keeps the outage tests quick; the default (3) is for real networks.
    return S3Target(server.create_bucket(), prefix="aegis/", endpoint_url=server.endpoint_url, part_size=5 * MiB,
                    retries=1)


def azure_target(server: Azurite) -> AzureTarget:
    return AzureTarget(server.create_container(), prefix="aegis/", block_size=512 * 1024)


def restored(target: Target, name: str, key: BackupKey, sha: str | None = None, **kwargs: object) -> bytes:
    sink = io.BytesIO()
    restore_stream(target, name, key, sink, sha, **kwargs)  # type: ignore[arg-type]
    return sink.getvalue()


def test_a_pipe_read_in_uneven_pieces_into_reused_buffers_comes_back_byte_for_byte(tmp_path: Path,
                                                                                  key: BackupKey) -> None:
    """The source is read into a few buffers used over and over (pipeline._read_ahead): a piece is
    overwritten only after the compressor took it, whatever sizes the pipe hands out."""
    import threading

    data = mixed_data(9 * MiB + 12345, 5 * MiB)   # ~14 MiB: every buffer is reused a few times
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as out:
            view, size = memoryview(data), 1
            while view:
                size = size * 7 % 300_007 + 1   # uneven writes: the reads come back uneven too
                out.write(view[:size])
                view = view[size:]

    writer = threading.Thread(target=feed)
    writer.start()
    target = LocalTarget(tmp_path / "local")
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        result = backup_stream(source, "pipe.enc", [target], key)
    writer.join()
    assert result.ok and result.source_size == len(data)
    assert restored(target, "pipe.enc", key, result.sha256) == data


def frame_offsets(blob: bytes) -> list[tuple[int, int]]:
    """(start, end) of each stored frame, length prefix included."""
    offsets, pos = [], HEADER_SIZE
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        offsets.append((pos, pos + 4 + length))
        pos += 4 + length
    return offsets


def test_round_trip_to_local_s3_and_azure(
    tmp_path: Path, key: BackupKey, moto_s3: MotoS3, azurite: Azurite  # noqa: F811
) -> None:
    data = mixed_data(6 * MiB, 2 * MiB)
    targets: list[Target] = [LocalTarget(tmp_path / "local"), s3_target(moto_s3), azure_target(azurite)]
    seen: list[int] = []

    result = backup_stream(io.BytesIO(data), "pg/full/backup_20240101_020000.tar.zst.enc", targets, key,
                           progress=seen.append)

    assert result.ok and result.failed == [], result.targets
    assert result.source_size == len(data) and seen[-1] == len(data)
    assert result.key_id == key.key_id and result.chunks >= 7
    # Random data does not compress, so the stored object is larger than one S3 part: multipart is exercised.
    assert 6 * MiB < result.stored_size < len(data)
    for target in targets:
        assert target.size(result.name) == result.stored_size
        blob = b"".join(target.read(result.name))
        assert hashlib.sha256(blob).hexdigest() == result.sha256
        verification = verify_object(target, result.name, key, result.sha256)
        assert verification.ok and verification.chunks == result.chunks
        assert restored(target, result.name, key, result.sha256) == data


def test_generator_source_and_empty_source(tmp_path: Path, key: BackupKey) -> None:
    target = LocalTarget(tmp_path)
    pieces = [os.urandom(100_000), b"", b"x" * 300_000]
    result = backup_stream(iter(pieces), "gen.bin", [target], key, chunk_size=64 * 1024)
    assert restored(target, "gen.bin", key, result.sha256) == b"".join(pieces)

    empty = backup_stream(io.BytesIO(b""), "empty.bin", [target], key)
    assert empty.ok and empty.source_size == 0 and empty.chunks == 1
    assert restored(target, "empty.bin", key, empty.sha256) == b""


@pytest.fixture
def stored(tmp_path: Path, key: BackupKey) -> tuple[LocalTarget, PipelineResult, bytes]:
    """A small backup of several chunks on a local target, for tampering."""
    data = os.urandom(300_000)
    target = LocalTarget(tmp_path / "store")
    result = backup_stream(io.BytesIO(data), "b.enc", [target], key, chunk_size=64 * 1024)
    assert result.ok and result.chunks == 5
    return target, result, data


def rewrite(target: LocalTarget, name: str, edit) -> None:  # type: ignore[no-untyped-def]
    path = target.path_for(name)
    path.write_bytes(edit(path.read_bytes()))


def test_flipped_byte_is_named_by_chunk_and_nothing_reaches_the_sink(
    stored: tuple[LocalTarget, PipelineResult, bytes], key: BackupKey
) -> None:
    target, result, _ = stored

    def flip(blob: bytes) -> bytes:
        start, end = frame_offsets(blob)[2]
        pos = (start + end) // 2
        return blob[:pos] + bytes([blob[pos] ^ 0x01]) + blob[pos + 1 :]

    rewrite(target, result.name, flip)
    verification = verify_object(target, result.name, key, result.sha256)
    assert not verification.ok and verification.reason == "tag" and verification.chunk_index == 2
    assert "chunk 2" in (verification.error or "")

    sink = io.BytesIO()
    with pytest.raises(IntegrityError) as info:
        restore_stream(target, result.name, key, sink, result.sha256)
    assert info.value.chunk_index == 2
    assert sink.getvalue() == b"", "a corrupt backup must not reach the sink at all"

    # Without the verification pass, chunks before the bad one are written, but the restore still fails.
    with pytest.raises(IntegrityError):
        restored(target, result.name, key, result.sha256, verify_first=False)


def test_truncation_is_detected(stored: tuple[LocalTarget, PipelineResult, bytes], key: BackupKey) -> None:
    target, result, _ = stored
    blob = target.path_for(result.name).read_bytes()
    frames = frame_offsets(blob)

    # Cut cleanly at a frame boundary: every remaining tag is valid, only the final flag is missing.
    rewrite(target, result.name, lambda b: b[: frames[2][1]])
    verification = verify_object(target, result.name, key)
    assert verification.reason == "truncated" and verification.chunk_index == 3, verification
    with pytest.raises(IntegrityError, match="truncated"):
        restored(target, result.name, key)

    # Cut inside a frame.
    rewrite(target, result.name, lambda _b: blob[: frames[3][0] + 100])
    assert verify_object(target, result.name, key).reason == "truncated"
    # Only the header left.
    rewrite(target, result.name, lambda _b: blob[:HEADER_SIZE])
    assert verify_object(target, result.name, key).reason == "truncated"


def test_reordered_and_duplicated_frames_are_detected(
    stored: tuple[LocalTarget, PipelineResult, bytes], key: BackupKey
) -> None:
    target, result, _ = stored
    blob = target.path_for(result.name).read_bytes()
    f = [blob[s:e] for s, e in frame_offsets(blob)]
    header = blob[:HEADER_SIZE]

    rewrite(target, result.name, lambda _b: header + f[0] + f[2] + f[1] + f[3] + f[4])
    verification = verify_object(target, result.name, key)
    assert verification.reason == "reordered" and verification.chunk_index == 1, verification
    assert "chunk 1 holds the data of chunk 2" in (verification.error or "")

    rewrite(target, result.name, lambda _b: header + f[0] + f[1] + f[1] + f[3] + f[4])
    assert verify_object(target, result.name, key).reason == "reordered"

    # Appending data after the final chunk is not accepted either.
    rewrite(target, result.name, lambda _b: blob + f[1])
    assert verify_object(target, result.name, key).reason == "trailing"


def test_checksum_mismatch_and_foreign_frames(
    stored: tuple[LocalTarget, PipelineResult, bytes], key: BackupKey
) -> None:
    target, result, data = stored
    verification = verify_object(target, result.name, key, "0" * 64)
    assert verification.reason == "checksum" and not verification.ok
    with pytest.raises(IntegrityError, match="checksum"):
        restored(target, result.name, key, "0" * 64)

    # A frame from another backup under the same key: the header hash in the AAD rejects it.
    other = backup_stream(io.BytesIO(data), "other.enc", [target], key, chunk_size=64 * 1024)
    other_blob = target.path_for(other.name).read_bytes()
    s, e = frame_offsets(other_blob)[1]
    blob = target.path_for(result.name).read_bytes()
    s1, e1 = frame_offsets(blob)[1]
    rewrite(target, result.name, lambda _b: blob[:s1] + other_blob[s:e] + blob[e1:])
    assert verify_object(target, result.name, key).chunk_index == 1


def test_wrong_key_names_both_key_ids(stored: tuple[LocalTarget, PipelineResult, bytes], key: BackupKey) -> None:
    target, result, _ = stored
    other = BackupKey.from_bytes(os.urandom(32))
    verification = verify_object(target, result.name, other, result.sha256)
    assert verification.reason == "wrong_key" and verification.key_id == key.key_id
    sink = io.BytesIO()
    with pytest.raises(WrongKeyError) as info:
        restore_stream(target, result.name, other, sink, result.sha256)
    assert key.key_id in str(info.value) and other.key_id in str(info.value)
    assert sink.getvalue() == b""


def test_missing_or_bad_key_fails_before_any_target_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = LocalTarget(tmp_path / "store")
    monkeypatch.delenv("AEGIS_BACKUP_KEY", raising=False)
    with pytest.raises(BackupKeyError, match="AEGIS_BACKUP_KEY"):
        backup_stream(io.BytesIO(b"data"), "b.enc", [target], load_key())
    with pytest.raises(BackupKeyError):
        backup_stream(io.BytesIO(b"data"), "b.enc", [target], b"\x00" * 32)  # type: ignore[arg-type]
    assert not target.exists("b.enc") and target.list() == []

    short = base64.b64encode(b"k" * 16).decode()
    monkeypatch.setenv("AEGIS_BACKUP_KEY", short)
    with pytest.raises(BackupKeyError, match="16 bytes") as info:
        load_key()
    assert short not in str(info.value)


def test_key_sources_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(32)
    monkeypatch.setenv("AEGIS_BACKUP_KEY", raw.hex())
    from_hex = load_key()
    (tmp_path / "key").write_text(base64.b64encode(raw).decode() + "\n")
    (tmp_path / "raw").write_bytes(raw)
    for name in ("key", "raw"):
        (tmp_path / name).chmod(0o600)  # a key file others can read is refused
    assert from_hex == load_key(key_file=tmp_path / "key") == load_key(key_file=tmp_path / "raw")
    assert len(from_hex.key_id) == 16 and from_hex.key_id not in raw.hex()
    assert raw.hex() not in repr(from_hex)
    with pytest.raises(BackupKeyError, match="cannot read"):
        load_key(key_file=tmp_path / "absent")


def test_s3_down_before_the_run_others_succeed(
    tmp_path: Path, key: BackupKey, moto_s3_outage: MotoS3, azurite: Azurite  # noqa: F811
) -> None:
    s3 = s3_target(moto_s3_outage)
    moto_s3_outage.stop()
    targets: list[Target] = [LocalTarget(tmp_path), s3, azure_target(azurite)]
    data = mixed_data(MiB, MiB)

    result = backup_stream(io.BytesIO(data), "b.enc", targets, key)

    assert result.ok and result.succeeded == ["local", "azure"] and result.failed == ["s3"]
    reason = result.targets["s3"].error or ""
    assert reason.startswith("s3:") and "connect" in reason.lower(), reason
    for target in (targets[0], targets[2]):
        assert restored(target, "b.enc", key, result.sha256) == data


def test_s3_dies_mid_upload_leaves_no_object(
    tmp_path: Path, key: BackupKey, moto_s3_outage: MotoS3, azurite: Azurite  # noqa: F811
) -> None:
    s3 = s3_target(moto_s3_outage)
    targets: list[Target] = [LocalTarget(tmp_path), s3, azure_target(azurite)]
    data = os.urandom(12 * MiB)

    def outage_after_first_part(read: int) -> None:
        if read > 7 * MiB:
            moto_s3_outage.stop()

    result = backup_stream(io.BytesIO(data), "b.enc", targets, key, progress=outage_after_first_part)

    assert result.failed == ["s3"] and result.succeeded == ["local", "azure"], result.targets
    assert restored(targets[2], "b.enc", key, result.sha256) == data


def test_all_targets_failing_is_reported_not_raised(
    tmp_path: Path, key: BackupKey, moto_s3_outage: MotoS3, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the backup directory should be")
    s3 = s3_target(moto_s3_outage)
    moto_s3_outage.stop()
    monkeypatch.delenv("AEGIS_TEST_NO_SUCH_AZURE", raising=False)
    azure = AzureTarget("c", connection_string_env="AEGIS_TEST_NO_SUCH_AZURE")

    result = backup_stream(io.BytesIO(b"payload" * 1000), "b.enc", [LocalTarget(blocker), s3, azure], key)

    assert not result.ok and result.succeeded == []
    assert all(r.error for r in result.targets.values()), result.targets
    assert "AEGIS_TEST_NO_SUCH_AZURE" in (result.targets["azure"].error or "")


def test_failing_source_aborts_every_target(tmp_path: Path, key: BackupKey) -> None:
    target = LocalTarget(tmp_path)

    def source() -> Iterator[bytes]:
        yield os.urandom(3 * MiB)
        raise OSError("pg_basebackup exited with status 1")

    with pytest.raises(OSError, match="pg_basebackup"):
        backup_stream(source(), "b.enc", [target], key)
    assert target.list() == [] and list(tmp_path.iterdir()) == []


_FLAT_MEMORY_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from recovery.backup.stream.crypto import BackupKey
    from recovery.backup.stream.pipeline import backup_stream
    from recovery.backup.storage.local import LocalTarget

    def vm_hwm_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

    def generate(total, piece=1 << 20):
        # Half random, half repetitive: realistic-ish compression, never materialised as a whole.
        noise = os.urandom(piece // 2)
        for i in range(total // piece):
            yield noise[i % 7 :] + bytes([i % 251]) * (piece // 2 + i % 7)

    key = BackupKey.from_bytes(os.urandom(32))
    target = LocalTarget(sys.argv[1])
    backup_stream(generate(4 << 20), "warmup", [target], key, level=1)
    before = vm_hwm_kib()
    result = backup_stream(generate(int(sys.argv[2])), "big", [target], key, level=1)
    after = vm_hwm_kib()
    assert result.ok, result.targets
    print(result.source_size, result.stored_size, before, after)
    """
)


def test_memory_stays_flat_on_a_large_stream(tmp_path: Path) -> None:
    total = 200 * MiB
    proc = subprocess.run(
        [sys.executable, "-c", _FLAT_MEMORY_SCRIPT, str(tmp_path), str(total)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    source_size, stored_size, before_kib, after_kib = map(int, proc.stdout.split())
    assert source_size == total and (tmp_path / "big").stat().st_size == stored_size
    growth_mib = (after_kib - before_kib) / 1024
    assert growth_mib < 60, f"peak RSS grew by {growth_mib:.1f} MiB while streaming {total // MiB} MiB"
