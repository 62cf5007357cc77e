"""Config → what backups work with: the repository (store + storage targets + key), the sources, the
runner, the retention policy.

The one place a ``recovery.backup.repository.Repository`` is built from the config
(``repository_from``). Shared by the CLI (bot/cli/backup.py, restore.py, wal.py), the Slack desk,
the backup service and jobs, and the drills, so none of them imports another's module for it.
"""

from __future__ import annotations

import os

from bot.config import Config
from recovery.backup.catalog import (
    KIND_FULL,
    KIND_INCREMENTAL,
    KIND_MANIFEST,
    LOGICAL_KIND,
    MILVUS_KIND,
    NEO4J_KIND,
    WAL_KIND,
)
from recovery.backup.repository import Repository
from recovery.backup.retention import RetentionPolicy
from recovery.backup.runner import BackupRunner, Neo4jSource, Progress, Sources
from recovery.backup.storage.base import Target, target_from_config
from recovery.backup.stream.crypto import BackupKey, BackupKeyError, load_key
from statemachines.store import Store


class BackupSetupError(Exception):
    """Backups are not configured well enough to run; the message says what to add."""


def targets_from(config: Config) -> list[Target]:
    if not config.storage:
        raise BackupSetupError("no storage targets: add a `storage:` list (local, s3, azure) to the config")
    targets = []
    for index, entry in enumerate(config.storage):
        try:  # unset keys are left out, so storage.py's defaults apply; the name is filled in by Config
            targets.append(target_from_config(entry.model_dump(exclude_none=True)))
        except (ValueError, TypeError) as exc:
            raise BackupSetupError(f"storage[{index}]: {exc}") from None
    return targets


def key_from(config: Config) -> BackupKey:
    enc = config.encryption   # exactly one of the two (validated); no silent fall back to another source
    return load_key(key_file=enc.key_file) if enc.key_file else load_key(str(enc.key_env))


def sources_from(config: Config) -> Sources:
    pg = config.components.postgres
    neo4j = config.components.neo4j
    milvus = config.components.milvus
    neo: Neo4jSource | None = None
    if neo4j:
        password = os.environ.get(neo4j.password_env) if neo4j.password_env else None
        neo = {"uri": neo4j.uri, "user": neo4j.user, "password": password, "database": neo4j.database}
    return Sources(postgres_dsn=pg.primary.full_dsn() if pg else None, neo4j=neo,
                   milvus_uri=milvus.uri if milvus else None)


def repository_from(config: Config, store: Store) -> Repository:
    """What a backup, restore, verify, prune or WAL command works with."""
    return Repository(store, targets_from(config), key_from(config))


def runner_from(config: Config, store: Store, progress: Progress | None = None) -> BackupRunner:
    runner = BackupRunner.on(repository_from(config, store), sources_from(config), progress)
    runner.compress_threads = config.backups.compress_threads
    return runner


def retention_policy(config: Config) -> RetentionPolicy:
    r = config.backups.retention
    return RetentionPolicy({
        KIND_FULL: r.postgres_full_days, KIND_INCREMENTAL: r.postgres_incremental_days,
        KIND_MANIFEST: r.postgres_incremental_days, WAL_KIND: r.postgres_wal_days,
        LOGICAL_KIND: r.postgres_logical_days, NEO4J_KIND: r.neo4j_days, MILVUS_KIND: r.milvus_days,
    })


# Backups not configured well enough to run: shown as one line (the CLI exits 2, Slack says what to add).
FRIENDLY_ERRORS = (BackupSetupError, BackupKeyError)
