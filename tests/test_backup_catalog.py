"""The backup catalog's queries (recovery/backup/catalog.py) on a real SQLite file and a real PostgreSQL,
the listing rule both surfaces share, and the repository's one "try each target" loop.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.config import validate_config
from bot.flows.backup import BackupDuty
from bot.slack.backup_desk import BackupDesk
from recovery.backup import catalog
from recovery.backup.catalog import (
    KIND_FULL,
    KIND_INCREMENTAL,
    KIND_MANIFEST,
    NEO4J_KIND,
    POSTGRES_BASE_KINDS,
    WAL_KIND,
    ChainError,
)
from recovery.backup.repository import NoGoodCopy, RestoreRefused
from recovery.backup.runner import BackupRunner, Sources
from recovery.backup.storage.local import LocalTarget
from recovery.backup.stream.crypto import BackupKey
from statemachines import policy
from statemachines.models import BackupRecord, require_id
from statemachines.store import Store

KEY = BackupKey.from_bytes(bytes(range(32)))


def add(store: Store, run_id: str, kind: str = KIND_FULL, *, status: str = "ok", component: str = "postgres",
        obj: str | None = None, parent: str | None = None) -> BackupRecord:
    """A catalog row written the way the runner writes it: inserted running, then finished (or not)."""
    row = catalog.insert_record(store, BackupRecord(run_id=run_id, kind=kind, component=component,
                                                    object_name=obj or f"{run_id}/{kind}.zst.aes"))
    if parent:
        row = catalog.update_record(store, require_id(row), parent_run_id=parent)
    if status in ("ok", "failed"):
        row = catalog.finish_record(store, require_id(row), ok=status == "ok")
    elif status == "deleted":
        catalog.finish_record(store, require_id(row), ok=True)
        catalog.mark_deleted(store, require_id(row), "pruned")
    return row


def run_ids(rows: list[BackupRecord]) -> list[str]:
    return [r.run_id for r in rows]


def test_newest_good_skips_deleted_failed_running_and_unverified_when_asked(store: Store) -> None:
    assert catalog.newest_good(store, POSTGRES_BASE_KINDS) is None
    verified = add(store, "backup_1")
    catalog.mark_verified(store, require_id(verified), ok=True, problems=[], reread=["local"])
    plain = add(store, "backup_2", KIND_INCREMENTAL, parent="backup_1")
    add(store, "backup_3", status="deleted")
    add(store, "backup_4", status="failed")
    add(store, "backup_5", status="running")
    add(store, "backup_6", NEO4J_KIND, component="neo4j")
    add(store, "wal", WAL_KIND, obj=catalog.wal_object("000000010000000000000003"))

    newest = catalog.newest_good(store, POSTGRES_BASE_KINDS)
    assert newest is not None and newest.run_id == "backup_2"
    only_verified = catalog.newest_good(store, POSTGRES_BASE_KINDS, verified=True)
    assert only_verified is not None and only_verified.run_id == "backup_1"
    earlier = catalog.newest_good(store, POSTGRES_BASE_KINDS, before_run="backup_2")
    assert earlier is not None and earlier.run_id == "backup_1"
    previous = catalog.previous_good(store, plain)
    assert previous is None   # the only older good row is a pg_full, not the same kind
    neo = catalog.newest_good(store, catalog.kinds_of_run("full"))
    assert neo is not None and neo.run_id == "backup_6"

    # a failed verification and a failed restore test each take a backup out of the asked-for choice
    catalog.mark_verified(store, require_id(verified), ok=False, problems=["local: object missing"], reread=[])
    assert catalog.newest_good(store, POSTGRES_BASE_KINDS, verified=True) is None
    catalog.mark_restore_test(store, require_id(plain), False, "contents differ")
    clean = catalog.newest_good(store, POSTGRES_BASE_KINDS, restore_test_ok=True)
    assert clean is not None and clean.run_id == "backup_1"
    queue = run_ids(catalog.restore_test_queue(store))
    assert queue == ["backup_1", "backup_6", "backup_2"]   # never tested first, the tested one last


def test_the_listing_rule_hides_pruned_and_supporting_rows_unless_asked(store: Store) -> None:
    add(store, "backup_1")
    add(store, "backup_1", KIND_MANIFEST, obj="backup_1/postgres-base.manifest.zst.aes")
    add(store, "backup_2", status="deleted")
    add(store, "backup_3", status="failed")
    add(store, "wal", WAL_KIND, obj=catalog.wal_object("000000010000000000000003"))

    assert run_ids(catalog.listing(store, limit=50)) == ["backup_3", "backup_1"]   # newest first, failed shown
    assert run_ids(catalog.listing(store, limit=50, include_deleted=True)) == ["backup_3", "backup_2", "backup_1"]
    assert run_ids(catalog.listing(store, limit=50, include_supporting=True)) == ["wal", "backup_3", "backup_1",
                                                                                  "backup_1"]
    assert run_ids(catalog.listing(store, limit=1)) == ["backup_3"]
    assert [r.object_name for r in catalog.retention_candidates(store)] == [
        "backup_1/pg_full.zst.aes", "backup_1/postgres-base.manifest.zst.aes", "backup_3/pg_full.zst.aes",
        catalog.wal_object("000000010000000000000003")]
    assert list(catalog.archived_wal(store)) == ["000000010000000000000003"]


def test_chain_lookup_walks_parents_and_refuses_a_broken_link(store: Store) -> None:
    add(store, "backup_f")
    add(store, "backup_i1", KIND_INCREMENTAL, parent="backup_f")
    third = add(store, "backup_i2", KIND_INCREMENTAL, parent="backup_i1")
    assert run_ids(catalog.chain_for(store, "backup_i2")) == ["backup_f", "backup_i1", "backup_i2"]
    assert run_ids(catalog.chain_for(store, third)) == ["backup_f", "backup_i1", "backup_i2"]
    assert run_ids(catalog.chain_for(store, third.object_name)) == ["backup_f", "backup_i1", "backup_i2"]

    add(store, "backup_x", status="failed")
    add(store, "backup_i3", KIND_INCREMENTAL, parent="backup_x")
    with pytest.raises(ChainError, match="needs backup_x, which is missing or failed"):
        catalog.chain_for(store, "backup_i3")
    add(store, "backup_orphan", KIND_INCREMENTAL)
    with pytest.raises(ChainError, match="no parent recorded"):
        catalog.chain_for(store, "backup_orphan")
    with pytest.raises(ChainError, match="no usable PostgreSQL base backup"):
        catalog.chain_for(store, "backup_missing")
    base = catalog.good_base(store, "backup_i1")
    assert base is not None and base.kind == KIND_INCREMENTAL
    newest_base = catalog.newest_good_base(store)
    assert newest_base is not None and newest_base.run_id == "backup_orphan"


def test_choose_takes_the_newest_good_run_or_the_one_named(store: Store) -> None:
    with pytest.raises(catalog.BackupNotFound, match="no good neo4j backup in the catalog yet"):
        catalog.choose(store, (NEO4J_KIND,))
    add(store, "backup_1", NEO4J_KIND, component="neo4j")
    add(store, "backup_2", NEO4J_KIND, component="neo4j", status="deleted")
    assert run_ids(catalog.choose(store, (NEO4J_KIND,))) == ["backup_1"]
    with pytest.raises(catalog.BackupNotFound, match="backup_2"):
        catalog.choose(store, (NEO4J_KIND,), "backup_2")    # pruned: not restorable


def test_cli_and_slack_listings_show_the_same_rows(tmp_path: Path) -> None:
    db = tmp_path / "aegis.db"
    store = Store(f"sqlite:///{db}")
    store.migrate()
    for run_id, status in [("backup_20260101_000001", "ok"), ("backup_20260101_000002", "deleted"),
                           ("backup_20260101_000003", "failed"), ("backup_20260101_000004", "ok")]:
        add(store, run_id, status=status)
    add(store, "wal", WAL_KIND, obj=catalog.wal_object("000000010000000000000003"))
    data = {"storage": [{"kind": "local", "path": str(tmp_path / "b"), "name": "local"}],
            "roster": {"database_lead": ["U0DB"]}}
    (tmp_path / "aegis.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "AEGIS_CONFIG": str(tmp_path / "aegis.yaml"), "AEGIS_DATABASE_URL": f"sqlite:///{db}",
           "AEGIS_BACKUP_KEY": "00" * 32, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def cli(*args: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "bot.cli", "backup", "list", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return [line.split()[0] for line in done.stdout.splitlines()]

    desk = BackupDesk(BackupDuty(validate_config(data, "test"), store, None))
    try:
        slack_text = json.dumps(desk.listing().blocks)
    finally:
        desk.shutdown()
    expected = run_ids(catalog.listing(store, limit=50))
    assert expected == ["backup_20260101_000004", "backup_20260101_000003", "backup_20260101_000001"]
    assert cli() == expected
    positions = [slack_text.find(run_id) for run_id in expected]
    assert -1 not in positions and positions == sorted(positions)   # the same rows, in the same order
    assert "backup_20260101_000002" not in slack_text and "000000010000000000000003" not in slack_text
    assert cli("--all") == ["backup_20260101_000004", "backup_20260101_000003", "backup_20260101_000002",
                            "backup_20260101_000001"]


def test_backup_command_permissions_are_policy_rules() -> None:
    roster = {"database_lead": ["U0DB"], "communications_lead": ["U0COMMS"]}
    assert policy.may_run_backup("U0DB", roster=roster).roles == ("database_lead",)
    refused = policy.may_run_backup("U0COMMS", roster=roster)
    assert not refused.allowed and refused.reason == "backup_run_not_allowed"
    assert policy.may_read_backups("U0COMMS", roster=roster).allowed
    assert not policy.may_read_backups("U0OUT", roster=roster).allowed
    assert not policy.may_run_backup("U0DB", roster={}).allowed      # an empty roster: nobody from Slack


def test_the_repository_falls_back_past_a_damaged_copy_and_refuses_when_none_is_good(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    store.migrate()
    first, second = LocalTarget(tmp_path / "a", name="a"), LocalTarget(tmp_path / "b", name="b")
    runner = BackupRunner(store, [first, second], KEY, Sources())
    payload = os.urandom(4096)
    record = runner.store_object("backup_1", NEO4J_KIND, "neo4j", "backup_1/neo4j-neo4j.jsonl.zst.aes",
                                 contextlib.nullcontext(io.BytesIO(payload)))
    assert record.status == "ok", record.reason
    repo = runner.repository
    stored = tmp_path / "a" / record.object_name
    damaged = bytearray(stored.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    stored.write_bytes(bytes(damaged))

    copy = repo.verified_copy(record)
    assert copy.target.name == "b" and len(copy.skipped) == 1 and copy.skipped[0].startswith("a: ")
    sink = io.BytesIO()
    assert repo.read_into(record.object_name, sink, expected_sha256=record.sha256).name == "b"
    assert sink.getvalue() == payload          # the half-written prefix of the damaged copy is gone

    (tmp_path / "b" / record.object_name).unlink()
    with pytest.raises(RestoreRefused) as refused:
        repo.verified_copy(record)
    assert [p.split(":")[0] for p in refused.value.problems] == ["a", "b"] and refused.value.previous is None
    with pytest.raises(NoGoodCopy):
        repo.read_into(record.object_name, io.BytesIO(), expected_sha256=record.sha256, skip_absent=True)
