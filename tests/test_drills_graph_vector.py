"""Drills restore-test Neo4j and Milvus backups without touching production (issue 10, D1/D2).

Real servers: the session's Neo4j 5.26 Community (tests/harness/neo4j_server.py) plays production, a
second one started by this module plays the scratch server of ``drills.scratch.neo4j`` (Community cannot
``CREATE DATABASE``, which is why the option exists); Milvus Lite files for production and scratch.
Backups are taken by the real runner onto a local directory.

- a Neo4j and a Milvus backup are restore-tested in one ``backup_restore_test``: the graph in the scratch
  server (nodes/relationships against what the backup recorded), the collection as ``aegis_drill_*`` in a
  scratch Lite file; production unchanged, the scratch server empty and the scratch file gone afterwards;
  without the scratch server the Community server's result is "not tested" and says what to configure;
- a scratch server holding data the drill did not put there → refused, the drill fails, nothing deleted;
- leftovers of an interrupted drill (a half-done import in the scratch server, a scratch Milvus
  collection) are removed by the sweep that runs at the next start; a scratch server whose data is not
  provably the drill's is left untouched and reported.
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.backup_wiring import runner_from
from bot.config import Config, ConfigError, load_config
from statemachines.store import Store
from tests.harness.milvus_data import all_rows, assert_rows_equal, make_docs, schema_view
from tests.harness.milvus_server import milvus_lite
from tests.harness.neo4j_data import build_graph, snapshot
from tests.harness.neo4j_server import Neo4jServer

pytest_plugins = ["tests.harness.neo4j_server"]
KEY = "ef" * 32


@pytest.fixture(autouse=True)
def backup_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEGIS_BACKUP_KEY", KEY)


@pytest.fixture(scope="module")
def scratch_neo4j() -> Iterator[Neo4jServer]:
    """A second Neo4j: the drills' own scratch server."""
    data_dir = Path(tempfile.mkdtemp(prefix="aegis-neo4j-scratch-"))
    server = Neo4jServer.start(data_dir)
    print(f"scratch Neo4j started in {server.startup_seconds:.1f} s")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def scratch_clean(scratch_neo4j: Neo4jServer) -> Neo4jServer:
    scratch_neo4j.wipe()
    return scratch_neo4j


def _world(workdir: Path, components: dict[str, Any], scratch: Neo4jServer | None) -> tuple[Config, Store]:
    (workdir / "staging").mkdir()
    drills: dict[str, Any] = {"scratch_dir": str(workdir / "scratch"), "report_dir": str(workdir / "reports")}
    if scratch is not None:
        drills["scratch"] = {"neo4j": {"uri": scratch.uri}}
    config = {"storage": [{"kind": "local", "path": str(workdir / "staging"), "name": "local"}],
              "components": components, "drills": drills}
    (workdir / "aegis.yaml").write_text(yaml.safe_dump(config))
    store = Store(f"sqlite:///{workdir}/aegis.db")
    store.migrate()
    return load_config(workdir / "aegis.yaml"), store


def _backup(config: Config, store: Store, kind: str) -> str:
    report = runner_from(config, store).run(kind)
    assert report.ok, report
    return report.run_id


def _graph(server: Neo4jServer) -> dict[str, Any]:
    with server.driver() as driver:
        return snapshot(driver)


def _scratch_contents(server: Neo4jServer) -> Any:  # -> GraphContents
    from recovery.drills.graph_scratch import contents

    with server.driver() as driver:
        return contents(driver, "neo4j")


@pytest.mark.timeout(600)
def test_neo4j_and_milvus_backups_are_restore_tested_in_scratch_and_production_is_untouched(
        tmp_path: Path, neo4j_clean: Neo4jServer, scratch_clean: Neo4jServer) -> None:
    from bot.flows.drills import drill_context
    from recovery.backup.catalog import restore_test_queue
    from recovery.drills import runs
    from recovery.drills.drills import run_drill

    milvus_dir = tmp_path / "production-milvus"
    milvus_dir.mkdir()
    with milvus_lite(milvus_dir) as client:
        make_docs(client)
        milvus_before = (all_rows(client, "docs", "id"), schema_view(client, "docs"))
    components = {"neo4j": {"uri": neo4j_clean.uri}, "milvus": {"uri": str(milvus_dir / "milvus.db")}}
    config, store = _world(tmp_path, components, scratch_clean)
    with neo4j_clean.driver() as driver:
        build_graph(driver)
    graph_before = _graph(neo4j_clean)
    neo4j_run, milvus_run = _backup(config, store, "neo4j"), _backup(config, store, "milvus")

    outcome = run_drill(drill_context(config, store), "backup_restore_test", "cli")
    assert outcome.status == "passed", (outcome.error, outcome.steps)
    results = {r["run_id"]: r for r in outcome.figures["restores"]}
    graph, vectors = results[neo4j_run], results[milvus_run]
    nodes, rels = len(graph_before["nodes"]), len(graph_before["rels"])
    assert graph["ok"] is True, graph
    assert f"{nodes} nodes, {rels} relationships" in graph["reason"], graph
    assert "equal to what the backup recorded" in graph["reason"] and "emptied afterwards" in graph["reason"]
    assert f"label Person: {graph_before['labels']['Person']} nodes" in graph["details"], graph["details"]
    assert vectors["ok"] is True and "recreated 'docs' as a scratch collection: 3000 rows" in vectors["reason"], vectors
    queue = {r.run_id: r for r in restore_test_queue(store)}
    assert queue[neo4j_run].restore_test_ok is True and queue[milvus_run].restore_test_ok is True

    # production untouched; the scratch server empty again; the scratch Lite file gone with the drill's dir
    assert _graph(neo4j_clean) == graph_before
    assert _scratch_contents(scratch_clean).empty
    run = runs.get(store, outcome.run_id)
    assert run is not None and run.cleaned_at is not None
    kinds = {r["kind"]: r for r in run.scratch}
    assert kinds["neo4j_scratch_server"]["observed"]["nodes"] == nodes, kinds
    assert kinds["milvus_collection"]["name"].startswith(f"aegis_drill_{outcome.run_id}_")
    assert all(r["state"] == "removed" for r in run.scratch), run.scratch
    assert not Path(kinds["dir"]["path"]).exists()
    with milvus_lite(milvus_dir) as client:
        assert client.list_collections() == ["docs"]
        client.load_collection("docs")
        assert_rows_equal(milvus_before[0], all_rows(client, "docs", "id"), {"vec"})   # bit for bit (NaN too)
        assert schema_view(client, "docs") == milvus_before[1]

    # Community without a scratch server: honestly not tested, saying what to configure; nothing marked
    bare = replace(drill_context(config, store), neo4j_scratch=None)
    again = run_drill(bare, "backup_restore_test", "cli")
    [untested] = [r for r in again.figures["restores"] if r["run_id"] == neo4j_run]
    assert untested["ok"] is None and untested["reason"].startswith("not tested"), untested
    assert "drills.scratch.neo4j" in untested["reason"], untested
    assert _graph(neo4j_clean) == graph_before


@pytest.mark.timeout(600)
def test_a_scratch_server_holding_data_the_drill_did_not_put_there_is_refused_and_nothing_is_deleted(
        tmp_path: Path, neo4j_clean: Neo4jServer, scratch_clean: Neo4jServer) -> None:
    from bot.flows.drills import drill_context
    from recovery.backup.catalog import restore_test_queue
    from recovery.drills import runs
    from recovery.drills.drills import run_drill

    config, store = _world(tmp_path, {"neo4j": {"uri": neo4j_clean.uri}}, scratch_clean)
    with neo4j_clean.driver() as driver:
        driver.execute_query("CREATE (:Person {uid: 'p1'})-[:KNOWS]->(:Person {uid: 'p2'})")
    run_id = _backup(config, store, "neo4j")
    with scratch_clean.driver() as driver:
        driver.execute_query("CREATE (:Experiment {name: 'someone else'})")

    outcome = run_drill(drill_context(config, store), "backup_restore_test", "cli")
    assert outcome.status == "failed", outcome
    [result] = outcome.figures["restores"]
    assert result["ok"] is None and result["blocked"] is True, result
    assert "is not empty (1 nodes, 0 relationships)" in result["reason"], result
    assert "never deletes data it did not put there" in result["reason"]
    step = next(s for s in outcome.steps if s["name"].startswith("restore-test"))
    assert step["ok"] is False and "not empty" in step["detail"]
    with scratch_clean.driver() as driver:
        [[name]] = driver.execute_query("MATCH (e:Experiment) RETURN e.name").records
    assert name == "someone else" and _scratch_contents(scratch_clean).nodes == 1
    [row] = restore_test_queue(store)
    assert row.run_id == run_id and row.restore_test_ok is None     # the backup is not blamed
    run = runs.get(store, outcome.run_id)
    assert run is not None and "neo4j_scratch_server" not in {r["kind"] for r in run.scratch}


def _dead_owner() -> str:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:0"


@pytest.mark.timeout(600)
def test_leftovers_of_an_interrupted_drill_are_removed_at_the_next_start_and_foreign_data_is_left_alone(
        tmp_path: Path, neo4j_clean: Neo4jServer, scratch_clean: Neo4jServer) -> None:
    from pymilvus import MilvusClient

    from bot.flows.drills import droppers_for, sweep_leftovers
    from recovery.backup.sources.neo4j import IMPORT_INDEX, CorruptExportError, export_graph, import_graph
    from recovery.drills import runs
    from recovery.drills.scratch import Scratch
    from tests.harness.milvus_data import DIM

    config, store = _world(tmp_path, {"neo4j": {"uri": neo4j_clean.uri}}, scratch_clean)
    with neo4j_clean.driver() as driver:
        build_graph(driver)
        export = io.BytesIO()
        export_graph(driver, "neo4j", out=export)
    graph_before = _graph(neo4j_clean)

    # what a drill SIGKILLed part-way leaves: its row (owner gone), a half-done import in the scratch
    # server (the import's index and labelled nodes, no trailer reached) and a scratch Milvus collection
    run = runs.start(store, "backup_restore_test", "cli")
    run_id = int(run.id or 0)
    scratch = Scratch.prepare(store, run_id, Path(config.drills.scratch_dir), droppers_for(config))
    scratch.neo4j_server(scratch_clean.uri, "neo4j")
    lines = export.getvalue().splitlines(keepends=True)
    with scratch_clean.driver() as driver, pytest.raises(CorruptExportError, match="no trailer"):
        import_graph(driver, "neo4j", source=iter(lines[:-1]))
    half = _scratch_contents(scratch_clean)
    assert half.nodes == len(graph_before["nodes"]) and IMPORT_INDEX in half.indexes, half
    uri = str(scratch.own_dir("milvus") / "milvus.db")
    name, index = scratch.milvus_collection(uri, "docs")
    client = MilvusClient(uri=uri)
    client.create_collection(name, dimension=DIM)
    scratch.mark(index, "created")
    client.close()
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)
    assert Path(uri).exists()
    runs._change(store, run_id, owner=_dead_owner())

    lines_swept = sweep_leftovers(config, store)     # what `aegis serve` runs at start
    assert any(f"drill {run_id}" in line and "interrupted" in line for line in lines_swept), lines_swept
    swept = runs.get(store, run_id)
    assert swept is not None and swept.status == "interrupted" and swept.cleaned_at is not None
    assert all(r["state"] == "removed" for r in swept.scratch), swept.scratch
    assert _scratch_contents(scratch_clean).empty
    assert not Path(uri).exists() and not scratch.root.exists()
    assert _graph(neo4j_clean) == graph_before

    # the same interrupted drill, but someone wrote to the scratch server since: left untouched, reported
    run = runs.start(store, "backup_restore_test", "cli")
    run_id = int(run.id or 0)
    scratch = Scratch.prepare(store, run_id, Path(config.drills.scratch_dir), droppers_for(config))
    scratch.neo4j_server(scratch_clean.uri, "neo4j")
    with scratch_clean.driver() as driver:
        with pytest.raises(CorruptExportError):
            import_graph(driver, "neo4j", source=iter(lines[:-1]))
        driver.execute_query("CREATE (:Experiment {name: 'not the drill'})")
    runs._change(store, run_id, owner=_dead_owner())
    lines_swept = sweep_leftovers(config, store)
    assert any("left the scratch Neo4j database 'neo4j'" in line and "untouched" in line for line in lines_swept), \
        lines_swept
    kept = _scratch_contents(scratch_clean)
    assert kept.nodes == len(graph_before["nodes"]) + 1
    stuck = runs.get(store, run_id)
    assert stuck is not None and stuck.cleaned_at is None
    assert [r["state"] for r in stuck.scratch if r["kind"] == "neo4j_scratch_server"] == ["registered"]


def test_the_scratch_neo4j_option_is_validated(tmp_path: Path) -> None:
    def load(drills: dict[str, Any]) -> Config:
        path = tmp_path / "aegis.yaml"
        path.write_text(yaml.safe_dump({"components": {"neo4j": {"uri": "bolt://db.internal:7687"}},
                                        "drills": drills}))
        return load_config(path)

    ok = load({"scratch": {"neo4j": {"uri": "bolt://drill-graph:7687", "password_env": "DRILL_NEO4J_PASSWORD"}}})
    assert ok.drills.scratch.neo4j is not None and ok.drills.scratch.neo4j.database == "neo4j"
    with pytest.raises(ConfigError, match="names the production Neo4j server"):
        load({"scratch": {"neo4j": {"uri": "neo4j://DB.internal"}}})
    with pytest.raises(ConfigError, match="password"):
        load({"scratch": {"neo4j": {"uri": "bolt://neo4j:secret@drill-graph:7687"}}})
    with pytest.raises(ConfigError, match="environment variable"):
        load({"scratch": {"neo4j": {"uri": "bolt://drill-graph:7687", "password_env": "not a name"}}})
