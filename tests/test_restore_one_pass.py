"""``aegis restore postgres`` of a full base backup in one pass (issue 12), against real PostgreSQL 15,
the local target and moto S3.

The backup is decrypted once, into ``<data-dir>.aegis-restoring``, every chunk's tag checked before its
plaintext is written; the directory becomes the data directory only after the final tag and the
stored sha256 passed. A tag failure in the *last* chunk (everything before it already written to the
staging directory) must leave neither directory behind, and the refusal says what to run instead; a
copy failing that way on the first target is passed over for the next target in the same pass.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from recovery.backup.stream.crypto import HEADER_SIZE
from tests.harness.cli_workspace import (
    aegis,
    flip_byte,
    local,
    restored_dsn,
    stop_restored,
    table_digest,
    write_config,
)
from tests.harness.pgcluster import PgSingle
from tests.harness.storage_servers import MotoS3, aws_env, moto_s3  # noqa: F401

OBJECT = "postgres-base.tar.zst.aes"


def _chunks(stored: Path) -> int:
    """The number of frames of a stored stream (header, then length-prefixed frames)."""
    data, at, count = stored.read_bytes(), HEADER_SIZE, 0
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        at, count = at + 4 + length, count + 1
    return count


def _flip_last_chunk(stored: Path) -> int:
    """Flip a byte inside the last chunk's tag; returns that chunk's index."""
    last = _chunks(stored) - 1
    assert last >= 2, "the test needs a backup of several chunks"
    flip_byte(stored, offset=stored.stat().st_size - 8)
    return last


def _leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.parent.iterdir() if p.name.startswith(data_dir.name))


def _table(pg: PgSingle) -> None:
    pg.primary.sql("CREATE TABLE t (id int primary key, batch text, v text)")
    # several MiB of incompressible-ish rows: a stream of several 1 MiB chunks
    pg.primary.sql("INSERT INTO t SELECT g, 'A', md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 60000) g")


@pytest.mark.timeout(300)
def test_a_tag_failure_at_the_last_chunk_leaves_no_data_directory_and_says_what_to_do(
    shared_dir: Path, pg_single: PgSingle,
) -> None:
    write_config(shared_dir, [local(shared_dir)], dsn=pg_single.primary.dsn())
    _table(pg_single)
    good = aegis(shared_dir, "backup", "run", "postgresql", "--quiet")
    assert good.returncode == 0, good.stderr
    good_id = good.stdout.split()[0]
    newest = aegis(shared_dir, "backup", "run", "postgresql", "--quiet")
    assert newest.returncode == 0, newest.stderr
    newest_id = newest.stdout.split()[0]
    last = _flip_last_chunk(shared_dir / "staging" / newest_id / OBJECT)

    data_dir = shared_dir / "restored"
    refused = aegis(shared_dir, "restore", "postgres", "--data-dir", str(data_dir), "--quiet")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr
    assert newest_id in refused.stderr and f"local: chunk {last} failed authentication" in refused.stderr, \
        refused.stderr
    assert f"previous good backup is {good_id}" in refused.stderr, refused.stderr
    assert f"to restore it: aegis restore postgres {good_id} --data-dir {data_dir}" in refused.stderr, refused.stderr
    assert _leftovers(data_dir) == [], "no data directory, no staging directory, no WAL stage"

    # the command it names works, in one pass, and nothing but the data directory (and its socket, log) remains
    restored = aegis(shared_dir, "restore", "postgres", good_id, "--data-dir", str(data_dir), "--quiet")
    try:
        assert restored.returncode == 0, restored.stderr
        assert f"{good_id} read from local" in restored.stderr, restored.stderr
        assert table_digest(restored_dsn(restored.stdout)) == table_digest(pg_single.primary.dsn())
        assert _leftovers(data_dir) == ["restored", "restored.log", "restored.sock"]
    finally:
        stop_restored(data_dir)


@pytest.mark.timeout(300)
def test_a_copy_failing_at_its_last_chunk_is_passed_over_for_the_next_target_in_the_same_pass(
    shared_dir: Path, pg_single: PgSingle, moto_s3: MotoS3,  # noqa: F811
) -> None:
    bucket = moto_s3.create_bucket()
    storage = [local(shared_dir), {"kind": "s3", "bucket": bucket, "endpoint_url": moto_s3.endpoint_url,
                                   "name": "s3"}]
    write_config(shared_dir, storage, dsn=pg_single.primary.dsn())
    _table(pg_single)
    backup = aegis(shared_dir, "backup", "run", "postgresql", "--quiet")
    assert backup.returncode == 0, backup.stderr
    backup_id = backup.stdout.split()[0]
    last = _flip_last_chunk(shared_dir / "staging" / backup_id / OBJECT)

    data_dir = shared_dir / "restored"
    restored = aegis(shared_dir, "restore", "postgres", "--data-dir", str(data_dir), "--no-wal", "--quiet")
    try:
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert f"{backup_id} read from s3 (local: chunk {last} failed authentication" in restored.stderr, \
            restored.stderr
        assert table_digest(restored_dsn(restored.stdout)) == table_digest(pg_single.primary.dsn())
        assert _leftovers(data_dir) == ["restored", "restored.log", "restored.sock"]
    finally:
        stop_restored(data_dir)
