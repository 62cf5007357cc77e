"""In-place restores of Neo4j and Milvus (issue 9): the plan steps ``neo4j_restore`` and ``milvus_restore``.

Real Neo4j 5.26 (tests/harness/neo4j_server.py; Community has one user database, so the restore goes into
it) and Milvus Lite; the backups are taken by the real backup runner onto a local directory and moto's S3
server. For each component: the restore leaves exactly the backup's data (not the pre-restore state) and
keeps the pre-restore data aside for the clean-up step; a failing verification rolls back to the
pre-restore data exactly; a backup missing from every target refuses the step before anything changes.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pymilvus import DataType, MilvusClient

from bot import restore_wiring, wiring
from bot.backup_wiring import repository_from, runner_from
from bot.config import Config, ConfigError, load_config
from recovery.actions.base import Action, ActionError, RolledBack
from recovery.actions.graph_restore import discard_neo4j_aside
from recovery.actions.vector_restore import discard_milvus_aside
from recovery.backup.sources.neo4j import ImportStats
from statemachines.models import PlanStep
from statemachines.store import Store
from tests.harness.engine_step import through_the_engine
from tests.harness.milvus_data import all_rows, assert_rows_equal, index_view, schema_view, search_ids
from tests.harness.milvus_server import milvus_lite
from tests.harness.neo4j_data import build_graph, snapshot
from tests.harness.neo4j_server import Neo4jServer
from tests.harness.storage_servers import MotoS3, aws_env, moto_s3  # noqa: F401

pytest_plugins = ["tests.harness.neo4j_server"]
KEY = "cd" * 32
CONTEXT = {"incident": "INC-7", "step": "3"}


@pytest.fixture(autouse=True)
def backup_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEGIS_BACKUP_KEY", KEY)


def setup_world(workdir: Path, s3: MotoS3, components: dict[str, Any]) -> tuple[Config, Store]:
    storage = [{"kind": "local", "path": str(workdir / "staging"), "name": "local"},
               {"kind": "s3", "bucket": s3.create_bucket(), "endpoint_url": s3.endpoint_url, "name": "s3"}]
    (workdir / "aegis.yaml").write_text(yaml.safe_dump({"storage": storage, "components": components}))
    store = Store(f"sqlite:///{workdir}/aegis.db")
    store.migrate()
    return load_config(workdir / "aegis.yaml"), store


def backup(config: Config, store: Store, kind: str) -> str:
    report = runner_from(config, store).run(kind)
    assert report.ok, report
    return report.run_id


def step(action: str, params: dict[str, Any]) -> PlanStep:
    return PlanStep(incident_id=7, revision=1, position=3, title=action, action=action, params=params)


def build(config: Config, store: Store, plan_step: PlanStep, context: dict[str, str] = CONTEXT) -> Action:
    return wiring.build_action(config, plan_step, context, store=store)


def run(action: Action) -> tuple[dict[str, Any], list[str]]:
    lines: list[str] = []
    action.precheck()
    out = action.execute(lines.append)
    action.verify()
    return out, lines


class Crash(BaseException):
    """Stands in for SIGKILL: raised from a progress line, it skips every rollback the action has."""


def crash_at(prefix: str) -> Any:
    def progress(line: str) -> None:
        if line.startswith(prefix):
            raise Crash(line)
    return progress


def aside_files(workdir: Path) -> list[Path]:
    return sorted((workdir / "staging" / "aegis-aside").glob("neo4j-*.jsonl.zst.aes"))


# --- Neo4j -------------------------------------------------------------------------------------------

def mutate_graph(server: Neo4jServer) -> None:
    """What happened after the backup: a node gone, one added, an index dropped and another created."""
    with server.driver() as driver:
        driver.execute_query("MATCH (b:Person {uid: 'bob'}) DETACH DELETE b")
        driver.execute_query("CREATE (:Person {uid: 'mallory', name: 'Mallory', age: 1})-[:OWNS]->(:Loot {uid: 'x'})")
        driver.execute_query("DROP INDEX company_name")
        driver.execute_query("CREATE INDEX loot_uid FOR (l:Loot) ON (l.uid)")
        driver.execute_query("CALL db.awaitIndexes(60)")


def graph_now(server: Neo4jServer) -> dict[str, Any]:
    with server.driver() as driver:
        return snapshot(driver)


def neo4j_components(server: Neo4jServer, verify: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"neo4j": {"uri": server.uri, **({"verify": verify} if verify else {})}}


def backed_up_graph(workdir: Path, server: Neo4jServer, s3: MotoS3,  # noqa: F811
                    verify: dict[str, Any] | None = None) -> tuple[Config, Store, str]:
    """The test graph built and backed up (local + S3); the config, the catalog and the backup's run id."""
    config, store = setup_world(workdir, s3, neo4j_components(server, verify))
    with server.driver() as driver:
        build_graph(driver)
    return config, store, backup(config, store, "neo4j")


@pytest.mark.timeout(300)
def test_neo4j_restore_in_place_leaves_the_backup_and_keeps_the_graph_as_it_was(
    tmp_path: Path, neo4j_clean: Neo4jServer, moto_s3: MotoS3,  # noqa: F811
) -> None:
    config, store, run_id = backed_up_graph(tmp_path, neo4j_clean, moto_s3,
                                            {"cypher": "MATCH (p:Person) RETURN count(p)", "min": 3})
    backed_up = graph_now(neo4j_clean)
    mutate_graph(neo4j_clean)
    assert graph_now(neo4j_clean) != backed_up

    action = build(config, store, step("neo4j_restore", {"backup_id": run_id, "backup_time": "t",
                                                         "database": "neo4j"}))
    assert action.destructive and action.is_done() is False and run_id in action.describe()
    out, lines = run(action)

    assert graph_now(neo4j_clean) == backed_up          # nodes, relationships, every property, schema
    checks = {e["check"]: e for e in out["evidence"]}
    assert all(e["ok"] for e in out["evidence"]), out["evidence"]
    assert checks["neo4j neo4j: nodes"]["observed"] == str(len(backed_up["nodes"]))
    assert checks["neo4j query: MATCH (p:Person) RETURN count(p)"]["observed"] == "3"
    assert out["replaced"]["nodes"] == len(backed_up["nodes"]) + 1   # the mutated graph: -bob +mallory +loot
    assert action.is_done() is True and any("exporting the current graph" in line for line in lines)
    assert "company_name" in checks["neo4j neo4j: indexes"]["expected"]

    # the schema checks compare names: as many indexes, one of them another name, does not pass
    with neo4j_clean.driver() as driver:
        names = [r["name"] for r in driver.execute_query(
            "SHOW INDEXES YIELD name, type, owningConstraint WHERE type <> 'LOOKUP' AND owningConstraint IS NULL "
            "RETURN name").records]
        constraint_names = [r["name"] for r in driver.execute_query("SHOW CONSTRAINTS YIELD name").records]
        backup_schema = ImportStats(nodes=len(backed_up["nodes"]), relationships=len(backed_up["rels"]),
                                    constraints=len(constraint_names), indexes=len(names),
                                    constraint_names=constraint_names, index_names=names)
        assert all(e["ok"] for e in action.observe(driver, backup_schema))     # type: ignore[attr-defined]
        driver.execute_query("DROP INDEX company_name")
        driver.execute_query("CREATE INDEX company_label FOR (c:Company) ON (c.name)")
        driver.execute_query("CALL db.awaitIndexes(60)")
        rechecked = {e["check"]: e for e in action.observe(driver, backup_schema)}  # type: ignore[attr-defined]
    assert rechecked["neo4j neo4j: indexes"]["ok"] is False
    assert "company_label" in rechecked["neo4j neo4j: indexes"]["observed"]
    assert rechecked["neo4j neo4j: nodes"]["ok"] and rechecked["neo4j neo4j: constraints"]["ok"]

    # the graph as it was is kept: one encrypted, owner-only file, named in the step's output
    [kept] = aside_files(tmp_path)
    assert out["aside"] == [{"kind": "neo4j_export", "location": str(kept), "component": "neo4j"}]
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and stat.S_IMODE(kept.parent.stat().st_mode) == 0o700
    assert b"mallory" not in kept.read_bytes() and not kept.read_bytes().startswith(b"{")

    # the clean-up step removes that file and nothing else
    with pytest.raises(ActionError, match="not a Neo4j export Aegis kept aside"):
        discard_neo4j_aside(str(tmp_path / "aegis.db"))
    assert (tmp_path / "aegis.db").exists()
    assert "removed" in discard_neo4j_aside(str(kept)) and not kept.exists()
    assert "already removed" in discard_neo4j_aside(str(kept))


@pytest.mark.timeout(300)
def test_neo4j_failing_verification_rolls_back_to_the_graph_as_it_was(
    tmp_path: Path, neo4j_clean: Neo4jServer, moto_s3: MotoS3,  # noqa: F811
) -> None:
    # the configured query writes: a read transaction refuses it, so the check fails (and nothing is written)
    config, store, run_id = backed_up_graph(tmp_path, neo4j_clean, moto_s3, {"cypher": "CREATE (n:Intruder) RETURN 1"})
    mutate_graph(neo4j_clean)
    before = graph_now(neo4j_clean)

    action = build(config, store, step("neo4j_restore", {"backup_id": run_id, "database": "neo4j"}))
    with pytest.raises(RolledBack, match="^rolled back: verification failed") as failure:
        run(action)
    assert graph_now(neo4j_clean) == before             # exactly as before the restore, mallory and all
    [query] = [e for e in failure.value.evidence if e["check"].startswith("neo4j query")]
    assert query["ok"] is False and "query failed" in query["observed"]
    assert all(e["ok"] for e in failure.value.evidence if e is not query)   # the backup itself was imported
    assert action.is_done() is False


@pytest.mark.timeout(300)
def test_neo4j_backup_missing_from_every_target_changes_nothing(
    tmp_path: Path, neo4j_clean: Neo4jServer, moto_s3: MotoS3,  # noqa: F811
) -> None:
    config, store, run_id = backed_up_graph(tmp_path, neo4j_clean, moto_s3)
    repository = repository_from(config, store)
    for target in repository.targets:
        target.delete(f"{run_id}/neo4j-neo4j.jsonl.zst.aes")
    mutate_graph(neo4j_clean)
    before = graph_now(neo4j_clean)

    action = build(config, store, step("neo4j_restore", {"backup_id": run_id, "database": "neo4j"}))
    with pytest.raises(ActionError, match="no intact copy.*nothing was written"):
        action.precheck()
    with pytest.raises(ActionError, match="no intact copy"):
        action.execute(lambda _line: None)
    assert graph_now(neo4j_clean) == before and aside_files(tmp_path) == []
    assert action.is_done() is False


@pytest.mark.timeout(300)
def test_neo4j_rerun_after_a_crash_rolls_back_from_the_first_attempts_export(
    tmp_path: Path, neo4j_clean: Neo4jServer, moto_s3: MotoS3,  # noqa: F811
) -> None:
    config, store, run_id = backed_up_graph(tmp_path, neo4j_clean, moto_s3)
    mutate_graph(neo4j_clean)
    before = graph_now(neo4j_clean)
    params = {"backup_id": run_id, "database": "neo4j"}

    first = build(config, store, step("neo4j_restore", params))
    first.precheck()
    with pytest.raises(Crash):
        first.execute(crash_at("importing"))               # killed after the wipe, before the import
    assert graph_now(neo4j_clean)["nodes"] == {}

    # after the restart the step is not done; its re-run (approved again) must not export the empty graph
    # as "the state before": with a failing check it rolls back to the graph as it was before the first run
    config, store = setup_world(tmp_path, moto_s3, neo4j_components(
        neo4j_clean, {"cypher": "MATCH (n) RETURN count(n)", "min": 1000}))
    again = build(config, store, step("neo4j_restore", params))
    assert again.is_done() is False
    lines: list[str] = []
    again.precheck()
    with pytest.raises(RolledBack, match="^rolled back"):
        again.execute(lines.append)
    assert graph_now(neo4j_clean) == before
    assert any("keeping its export" in line for line in lines) and len(aside_files(tmp_path)) == 1


# --- Milvus ------------------------------------------------------------------------------------------

DIM = 8


def make_collection(client: MilvusClient, name: str, ids: range, seed: int) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("title", DataType.VARCHAR, max_length=64)
    client.create_collection(name, schema=schema)
    vectors = np.random.default_rng(seed).standard_normal((len(ids), DIM)).astype(np.float32)
    client.insert(name, [{"id": i, "vec": v, "title": f"{name} {i}"} for i, v in zip(ids, vectors, strict=True)])
    client.flush(name)
    index = client.prepare_index_params()
    index.add_index("vec", index_type="IVF_FLAT", metric_type="L2", params={"params": {"nlist": 8}})
    client.create_index(name, index)
    client.load_collection(name)


def view(client: MilvusClient, name: str) -> dict[str, Any]:
    client.load_collection(name)
    probe = np.random.default_rng(99).standard_normal((3, DIM)).astype(np.float32)
    return {"rows": all_rows(client, name, "id"), "schema": schema_view(client, name),
            "indexes": index_view(client, name), "search": search_ids(client, name, probe)}


def same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert_rows_equal(a["rows"], b["rows"], {"vec"})
    assert (a["schema"], a["indexes"], a["search"]) == (b["schema"], b["indexes"], b["search"])


def mutate_collections(client: MilvusClient) -> None:
    """After the backup: rows of docs deleted and added, notes dropped altogether."""
    client.delete("docs", filter="id < 50")
    client.insert("docs", [{"id": 1000 + i, "vec": [0.5] * DIM, "title": "new"} for i in range(10)])
    client.flush("docs")
    client.drop_collection("notes")


@pytest.fixture
def milvus_world(tmp_path: Path, moto_s3: MotoS3) -> Iterator[tuple[Path, MotoS3]]:  # noqa: F811
    with milvus_lite(tmp_path) as client:
        make_collection(client, "docs", range(300), seed=1)
        make_collection(client, "notes", range(40), seed=2)
        yield tmp_path, moto_s3


def milvus_step(run_id: str, collections: tuple[str, ...] = ("docs", "notes")) -> PlanStep:
    return step("milvus_restore", {"backup_id": run_id, "backup_time": "t", "collections": list(collections)})


@pytest.mark.timeout(300)
def test_milvus_restore_in_place_leaves_the_backup_and_keeps_the_collection_aside(
    milvus_world: tuple[Path, MotoS3],
) -> None:
    workdir, s3 = milvus_world
    uri = str(workdir / "milvus.db")
    config, store = setup_world(workdir, s3, {"milvus": {"uri": uri, "verify": {"collection": "docs",
                                                                                "min_rows": 300}}})
    client = MilvusClient(uri=uri)
    backed_up = {name: view(client, name) for name in ("docs", "notes")}
    run_id = backup(config, store, "milvus")
    mutate_collections(client)
    changed = view(client, "docs")

    action = build(config, store, milvus_step(run_id, ()))   # no names: every collection in the backup
    assert action.destructive and action.is_done() is False
    out, _lines = run(action)

    assert all(e["ok"] for e in out["evidence"]), out["evidence"]
    for name in ("docs", "notes"):
        same(view(client, name), backed_up[name])           # the backup's rows, schema, index, searches
    [aside] = [n for n in client.list_collections() if n.startswith("docs__aegis_aside_")]
    assert sorted(client.list_collections()) == sorted(["docs", "notes", aside])   # notes had nothing aside
    same(view(client, aside), changed)                     # the collection as it was, untouched
    assert out["aside"] == [{"kind": "milvus_collection", "location": aside, "component": "milvus"}]
    assert action.is_done() is True
    checks = [e["check"] for e in out["evidence"]]
    assert "milvus docs: search with a stored vector" in checks and "milvus check: docs rows" in checks

    with pytest.raises(ActionError, match="not one Aegis put aside"):
        discard_milvus_aside(uri, "docs")
    assert "dropped" in discard_milvus_aside(uri, aside)
    assert sorted(client.list_collections()) == ["docs", "notes"]
    client.close()


@pytest.mark.timeout(300)
def test_milvus_failing_verification_rolls_back_every_collection_of_the_step(
    milvus_world: tuple[Path, MotoS3],
) -> None:
    workdir, s3 = milvus_world
    uri = str(workdir / "milvus.db")
    # the check is on the second collection, so the first was already restored when it fails
    config, store = setup_world(workdir, s3, {"milvus": {"uri": uri, "verify": {"collection": "notes",
                                                                                "min_rows": 1000}}})
    client = MilvusClient(uri=uri)
    run_id = backup(config, store, "milvus")
    mutate_collections(client)
    before = view(client, "docs")

    action = build(config, store, milvus_step(run_id))
    result = through_the_engine(store, action, kind="milvus_restore")   # RolledBack: back to assessed
    assert (result.state, result.step.status) == ("assessed", "failed"), (result.state, result.step.detail)
    assert re.match("^rolled back: verification failed.*notes rows", result.step.detail), result.step.detail
    assert result.output["rolled_back"] is True and "aside" not in result.output   # nothing left aside
    assert client.list_collections() == ["docs"]            # notes did not exist before: it is gone again
    same(view(client, "docs"), before)                     # the aside copy renamed back, exactly as it was
    evidence = result.step.evidence or []
    assert [e["check"] for e in evidence if not e["ok"]] == ["milvus check: notes rows"]
    assert action.is_done() is False
    client.close()


@pytest.mark.timeout(300)
def test_milvus_rerun_after_a_crash_never_puts_its_own_restore_aside(milvus_world: tuple[Path, MotoS3]) -> None:
    workdir, s3 = milvus_world
    uri = str(workdir / "milvus.db")
    config, store = setup_world(workdir, s3, {"milvus": {"uri": uri}})
    client = MilvusClient(uri=uri)
    backed_up = view(client, "docs")
    run_id = backup(config, store, "milvus")
    mutate_collections(client)
    changed = view(client, "docs")

    first = build(config, store, milvus_step(run_id))
    first.precheck()
    with pytest.raises(Crash):
        first.execute(crash_at("recreating notes"))        # killed with docs restored, notes not yet
    # a step of a re-planned revision finds the interrupted restore too (the journal is per target)
    again = build(config, store, milvus_step(run_id), {"incident": "INC-7", "step": "9"})
    assert again.is_done() is False
    out, lines = run(again)

    [aside] = [n for n in client.list_collections() if "__aegis_aside_" in n]   # one, the original
    same(view(client, aside), changed)
    same(view(client, "docs"), backed_up)
    assert out["aside"] == [{"kind": "milvus_collection", "location": aside, "component": "milvus"}]
    assert any("dropping its partial restore of docs" in line for line in lines) and again.is_done() is True
    client.close()


@pytest.mark.timeout(300)
def test_milvus_backup_missing_from_every_target_changes_nothing(milvus_world: tuple[Path, MotoS3]) -> None:
    workdir, s3 = milvus_world
    uri = str(workdir / "milvus.db")
    config, store = setup_world(workdir, s3, {"milvus": {"uri": uri}})
    client = MilvusClient(uri=uri)
    run_id = backup(config, store, "milvus")
    for target in repository_from(config, store).targets:
        target.delete(f"{run_id}/milvus-notes.jsonl.zst.aes")   # one of the two: still nothing may change
    mutate_collections(client)
    before = view(client, "docs")

    action = build(config, store, milvus_step(run_id))
    with pytest.raises(ActionError, match="no intact copy.*nothing was written") as refused:
        action.precheck()
    assert not isinstance(refused.value, RolledBack)
    # through the engine: a plain failure (Retry/Abort), the incident stays in recovery
    result = through_the_engine(store, action, kind="milvus_restore")
    assert (result.state, result.step.status) == ("recovering", "failed"), (result.state, result.step.detail)
    assert "no intact copy" in result.step.detail and "rolled_back" not in result.output
    assert client.list_collections() == ["docs"]
    same(view(client, "docs"), before)
    assert not os.path.exists(workdir / "staging" / "aegis-aside" / "milvus-restore-collections.json")
    client.close()


# --- config and wiring: refused in one line, before anything runs -------------------------------------

def test_restore_steps_without_what_they_need_say_what_to_configure(tmp_path: Path) -> None:
    path = tmp_path / "aegis.yaml"
    path.write_text(yaml.safe_dump({"storage": [{"kind": "s3", "bucket": "b"}],
                                    "drills": {"scratch_dir": str(tmp_path / "scratch")},
                                    "components": {"milvus": {"uri": str(tmp_path / "m.db")}}}))
    config = load_config(path)
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    with pytest.raises(ActionError, match=r"no Neo4j is configured .*components\.neo4j"):
        build(config, store, step("neo4j_restore", {"backup_id": "backup_20260101_000000"}))
    with pytest.raises(ActionError, match="names no backup"):
        build(config, store, step("milvus_restore", {"collections": ["docs"]}))
    # without a local storage target the rollback copy and journal go under the drills' scratch directory
    assert restore_wiring.aside_dir(config) == tmp_path / "scratch" / "aegis-aside"

    path.write_text(yaml.safe_dump({"components": {"neo4j": {"uri": "bolt://127.0.0.1:1", "verify": {
        "cypher": "MATCH (n) RETURN count(n)", "expect": "3", "min": 1}}}}))
    with pytest.raises(ConfigError, match="at most one of expect or min"):
        load_config(path)
