"""Retention and ``aegis backup prune``: real objects on a local directory and moto S3, a real catalog.

Backups are stored through the real pipeline; only their catalog timestamps and LSNs are set to
build a history of several weeks.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from recovery.backup.retention import RetentionPolicy, prune
from recovery.backup.runner import BackupRunner, Sources
from recovery.backup.storage.base import Target
from recovery.backup.storage.local import LocalTarget
from recovery.backup.storage.s3 import S3Target
from recovery.backup.stream.crypto import BackupKey
from statemachines.models import BackupRecord, utcnow
from statemachines.store import Store
from tests.harness.storage_servers import MotoS3, aws_env, moto_s3_outage  # noqa: F401

KEY = BackupKey.from_bytes(bytes(range(32)))
POLICY = RetentionPolicy({"pg_full": 28, "pg_incremental": 7, "pg_manifest": 7, "pg_wal": 3, "neo4j": 7,
                          "milvus": 7})
NOW = utcnow()


class History:
    """A catalog plus targets; ``add`` stores a real object and back-dates its row."""

    def __init__(self, store: Store, targets: list[Target]) -> None:
        self.store = store
        self.runner = BackupRunner(store, targets, KEY, Sources())
        self.targets = targets

    def add(self, run_id: str, kind: str, obj: str, days_ago: float, *, component: str = "postgres",
            start_lsn: str | None = None, parent: str | None = None) -> BackupRecord:
        record = self.runner.store_object(run_id, kind, component, obj,
                                          contextlib.nullcontext(io.BytesIO(os.urandom(2048))))
        assert record.status == "ok", record.reason
        with self.store.session() as session:
            row = session.get(BackupRecord, record.id)
            assert row is not None
            row.started_at = row.finished_at = NOW - timedelta(days=days_ago)
            row.start_lsn, row.timeline, row.parent_run_id = start_lsn, 1 if start_lsn else None, parent
            session.add(row)
        return record

    def status(self, obj: str) -> str:
        with self.store.session() as session:
            from sqlmodel import select
            return session.exec(select(BackupRecord).where(BackupRecord.object_name == obj)).one().status

    def stored(self, obj: str) -> bool:
        return any(t.exists(obj) for t in self.targets)


@pytest.fixture
def history(tmp_path: Path) -> History:
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    store.migrate()
    return History(store, [LocalTarget(tmp_path / "backups", name="local")])


def base(run: str) -> str:
    return f"{run}/postgres-base.tar.zst.aes"


def wal(segment: str) -> str:
    return f"wal/{segment}.zst.aes"


def test_expired_backups_go_but_never_the_newest_good_one_of_each_series(history: History) -> None:
    history.add("backup_a", "pg_full", base("backup_a"), 40, start_lsn="0/2000028")
    history.add("backup_b", "pg_full", base("backup_b"), 30, start_lsn="0/4000028")
    history.add("backup_n1", "neo4j", "backup_n1/neo4j-neo4j.jsonl.zst.aes", 20, component="neo4j")
    history.add("backup_m1", "milvus", "backup_m1/milvus-docs.jsonl.zst.aes", 9, component="milvus")
    history.add("backup_m2", "milvus", "backup_m2/milvus-docs.jsonl.zst.aes", 8, component="milvus")
    history.add("backup_m2", "milvus", "backup_m2/milvus-faq.jsonl.zst.aes", 8, component="milvus")

    report = prune(history.store, history.targets, POLICY, now=NOW)

    # every one is past its window; per series the newest good one stays
    assert sorted(report.deleted) == [base("backup_a"), "backup_m1/milvus-docs.jsonl.zst.aes"]
    for kept in (base("backup_b"), "backup_n1/neo4j-neo4j.jsonl.zst.aes", "backup_m2/milvus-docs.jsonl.zst.aes",
                 "backup_m2/milvus-faq.jsonl.zst.aes"):
        assert history.status(kept) == "ok" and history.stored(kept)
        assert (kept, "newest good backup of its kind") in report.kept
    assert history.status(base("backup_a")) == "deleted" and not history.stored(base("backup_a"))


def test_wal_is_kept_while_a_kept_base_backup_needs_it(history: History) -> None:
    history.add("backup_old", "pg_full", base("backup_old"), 35, start_lsn="0/3000028")    # segment 3
    history.add("backup_kept", "pg_full", base("backup_kept"), 20, start_lsn="0/6000028")  # segment 6
    for n, age in ((2, 36), (3, 35), (5, 30), (6, 20), (7, 19), (9, 1)):
        history.add("wal", "pg_wal", wal(f"0000000100000000000000{n:02X}"), age)
    history.add("wal", "pg_wal", wal("00000002.history"), 30)

    dry = prune(history.store, history.targets, POLICY, dry_run=True, now=NOW)
    assert history.stored(base("backup_old")) and history.status(wal("000000010000000000000002")) == "ok"
    report = prune(history.store, history.targets, POLICY, now=NOW)
    assert sorted(report.deleted) == sorted(dry.deleted)

    # the oldest kept base backup starts in segment 6: older WAL past 3 days goes, 6 onwards stays
    assert sorted(report.deleted) == sorted([base("backup_old"), wal("000000010000000000000002"),
                                             wal("000000010000000000000003"), wal("000000010000000000000005")])
    for segment in ("000000010000000000000006", "000000010000000000000007", "000000010000000000000009",
                    "00000002.history"):
        assert history.status(wal(segment)) == "ok" and history.stored(wal(segment))


def test_a_kept_incremental_keeps_its_whole_chain(history: History) -> None:
    history.add("backup_full", "pg_full", base("backup_full"), 40, start_lsn="0/2000028")
    history.add("backup_full", "pg_manifest", "backup_full/postgres-base.manifest.aes", 40)
    history.add("backup_i1", "pg_incremental", base("backup_i1"), 39, start_lsn="0/4000028", parent="backup_full")
    history.add("backup_i2", "pg_incremental", base("backup_i2"), 2, start_lsn="0/6000028", parent="backup_i1")
    history.add("backup_new", "pg_full", base("backup_new"), 1, start_lsn="0/8000028")

    report = prune(history.store, history.targets, POLICY, now=NOW)

    # backup_i2 is within its window; restoring it needs backup_i1 and backup_full (and its manifest)
    assert report.deleted == []
    assert (base("backup_full"), "a kept incremental backup builds on it") in report.kept
    assert (base("backup_i1"), "a kept incremental backup builds on it") in report.kept
    assert ("backup_full/postgres-base.manifest.aes", "manifest of a kept base backup") in report.kept


def test_no_wal_is_judged_unneeded_without_a_kept_base_backup(history: History) -> None:
    history.add("wal", "pg_wal", wal("000000010000000000000002"), 10)
    report = prune(history.store, history.targets, POLICY, now=NOW)
    assert report.deleted == [] and history.stored(wal("000000010000000000000002"))


def test_a_target_down_during_prune_leaves_the_row_for_the_next_prune(
    tmp_path: Path, moto_s3_outage: MotoS3,  # noqa: F811
) -> None:
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    store.migrate()
    bucket = moto_s3_outage.create_bucket()
    s3 = S3Target(bucket=bucket, endpoint_url=moto_s3_outage.endpoint_url, name="s3", retries=0)
    history = History(store, [LocalTarget(tmp_path / "backups", name="local"), s3])
    history.add("backup_a", "pg_full", base("backup_a"), 40, start_lsn="0/2000028")
    history.add("backup_b", "pg_full", base("backup_b"), 1, start_lsn="0/4000028")
    moto_s3_outage.stop()

    report = prune(store, history.targets, POLICY, now=NOW)
    assert report.deleted == [] and report.errors and "s3" in report.errors[0]
    assert history.status(base("backup_a")) == "ok"


def test_prune_command_dry_run_then_real(tmp_path: Path) -> None:
    config = {"storage": [{"kind": "local", "path": str(tmp_path / "backups"), "name": "local"}],
              "backups": {"retention": {"neo4j_days": 1}}}
    (tmp_path / "aegis.yaml").write_text(yaml.safe_dump(config))
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    store.migrate()
    history = History(store, [LocalTarget(tmp_path / "backups", name="local")])
    history.add("backup_n1", "neo4j", "backup_n1/neo4j-neo4j.jsonl.zst.aes", 3, component="neo4j")
    history.add("backup_n2", "neo4j", "backup_n2/neo4j-neo4j.jsonl.zst.aes", 2, component="neo4j")
    env = {**os.environ, "AEGIS_CONFIG": str(tmp_path / "aegis.yaml"),
           "AEGIS_DATABASE_URL": f"sqlite:///{tmp_path}/aegis.db", "AEGIS_BACKUP_KEY": "00" * 32}

    def aegis(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot.cli", "backup", "prune", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    dry = aegis("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete backup_n1/neo4j-neo4j.jsonl.zst.aes" in dry.stdout
    assert "kept backup_n2/neo4j-neo4j.jsonl.zst.aes: newest good backup of its kind" in dry.stdout
    assert history.stored("backup_n1/neo4j-neo4j.jsonl.zst.aes")
    real = aegis()
    assert real.returncode == 0 and "deleted backup_n1/neo4j-neo4j.jsonl.zst.aes" in real.stdout
    assert not history.stored("backup_n1/neo4j-neo4j.jsonl.zst.aes")
    assert history.stored("backup_n2/neo4j-neo4j.jsonl.zst.aes")
