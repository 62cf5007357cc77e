"""Config → the in-place Neo4j and Milvus restore actions (``neo4j_restore``, ``milvus_restore``).

``bot/wiring.build_action`` calls these for the two step kinds; the step's params name only the backup
and what to restore (``backup_id``, ``backup_time``, ``database`` / ``collections``), the connection and
the password come from config and the environment here, at the moment of use.

Where the rollback copy lives (``aside_dir``): beside Aegis's own backups, ``<the first local storage
target>/aegis-aside``; without a local target, ``<drills.scratch_dir>/aegis-aside``. Both are local
disk Aegis already writes to; the directory is created 0700.
"""

from __future__ import annotations

from pathlib import Path

from bot.backup_wiring import FRIENDLY_ERRORS, repository_from, sources_from
from bot.config import Config
from recovery.actions.base import ActionError
from recovery.actions.graph_restore import ASIDE_DIR_NAME, Neo4jRestoreInPlace
from recovery.actions.vector_restore import MilvusRestoreInPlace
from recovery.actions.verify import IntegrityQuery
from recovery.backup.repository import Repository
from statemachines.json_types import JsonObject
from statemachines.store import Store


def aside_dir(config: Config) -> Path:
    """Where an in-place Neo4j or Milvus restore keeps its rollback export and its journal."""
    local = next((target for target in config.storage if target.kind == "local"), None)
    return Path(local.path if local else config.drills.scratch_dir).absolute() / ASIDE_DIR_NAME


def _repository(config: Config, store: Store | None) -> Repository:
    if store is None:
        raise ActionError("an in-place restore needs the backup catalog, and none was given")
    try:
        return repository_from(config, store)
    except FRIENDLY_ERRORS as exc:   # no storage targets, no key: what to add, in one line
        raise ActionError(str(exc)) from None


def _backup_id(params: JsonObject) -> str:
    if not params.get("backup_id"):
        raise ActionError("the restore step names no backup (params.backup_id); re-plan the incident")
    return str(params["backup_id"])


def neo4j_restore(config: Config, params: JsonObject, context: dict[str, str],
                  store: Store | None) -> Neo4jRestoreInPlace:
    neo4j, source = config.components.neo4j, sources_from(config).neo4j
    if neo4j is None or source is None:
        raise ActionError("no Neo4j is configured to restore into (components.neo4j)")
    source = {**source, "database": str(params.get("database") or neo4j.database)}
    check = neo4j.verify
    query = (IntegrityQuery(check.cypher[:80], check.cypher, check.expect, check.min, check.timeout_seconds)
             if check else None)
    return Neo4jRestoreInPlace(_repository(config, store), source, backup_id=_backup_id(params),
                               backup_time=params.get("backup_time"), aside_dir=aside_dir(config), check=query,
                               context=context)


def milvus_restore(config: Config, params: JsonObject, context: dict[str, str],
                   store: Store | None) -> MilvusRestoreInPlace:
    milvus = config.components.milvus
    if milvus is None:
        raise ActionError("no Milvus is configured to restore into (components.milvus)")
    check = milvus.verify
    return MilvusRestoreInPlace(_repository(config, store), milvus.uri, backup_id=_backup_id(params),
                                backup_time=params.get("backup_time"),
                                collections=[str(name) for name in params.get("collections") or []],
                                aside_dir=aside_dir(config), check_collection=check.collection if check else None,
                                check_min_rows=check.min_rows if check else 1, context=context)
