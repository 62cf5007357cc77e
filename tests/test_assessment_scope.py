"""The assessment asks every database, and a restore plan restores only the broken ones (issue 9, C1).

A PostgreSQL failure must not wipe a healthy graph: the assessment checks PostgreSQL, Neo4j
(``RETURN 1`` through the driver) and Milvus (a Lite database: present and readable), and
``restore_from_backup`` restores the components whose check failed. Real servers: the session's
Neo4j, a real Milvus Lite database, and a PostgreSQL port where nothing listens (a real refused
connection); the catalog is a real SQLite store.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot import wiring
from bot.config import Config, validate_config
from recovery.backup import catalog
from recovery.health import CREDENTIALS_REFUSED, run_checks
from recovery.planner import propose
from statemachines.models import BackupRecord
from statemachines.store import Store
from tests.harness.milvus_server import milvus_lite
from tests.harness.neo4j_server import Neo4jServer, neo4j_server  # noqa: F401  (the session's server)
from tests.harness.pgcluster import PgSingle, pg_single  # noqa: F401

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def milvus_db(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "milvus"
    directory.mkdir()
    with milvus_lite(directory) as client:
        client.create_collection("docs", dimension=4)
        client.close()
    yield next(directory.glob("*.db"))


def config_of(neo4j_uri: str, milvus_uri: str, tmp_path: Path, postgres_dsn: str | None = None) -> Config:
    dsn = postgres_dsn or f"host=127.0.0.1 port={free_port()} dbname=app user=app"   # nothing listens there
    return validate_config({"components": {
        "postgres": {"primary": {"dsn": dsn, "control": {"data_dir": str(tmp_path / "pgdata"),
                                                         "os_user": "postgres"}}},
        "neo4j": {"uri": neo4j_uri},
        "milvus": {"uri": milvus_uri}}}, "test.yaml")


def catalog_with_every_database(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    store.migrate()
    ok = {"ok": True, "problems": [], "reread": []}
    for kind, component, name in ((catalog.KIND_FULL, "postgres", "postgres-base.tar.zst.aes"),
                                  (catalog.NEO4J_KIND, "neo4j", "neo4j-neo4j.jsonl.zst.aes"),
                                  (catalog.MILVUS_KIND, "milvus", "milvus-docs.jsonl.zst.aes")):
        run = "backup_20261201_020000"
        record = catalog.insert_record(store, BackupRecord(run_id=run, kind=kind, component=component,
                                                           object_name=f"{run}/{name}", started_at=T0))
        assert record.id is not None
        catalog.update_record(store, record.id, status=catalog.STATUS_OK, finished_at=T0 + timedelta(minutes=5),
                              verified_at=T0 + timedelta(minutes=30), verify_result=ok)
    return store


def test_a_dead_postgres_is_restored_and_the_healthy_graph_and_vectors_are_left_alone(
        tmp_path: Path, neo4j_server: Neo4jServer, milvus_db: Path) -> None:  # noqa: F811
    config = config_of(neo4j_server.uri, str(milvus_db), tmp_path)
    results = {r.name: r for r in run_checks(wiring.component_specs(config))}
    assert set(results) == {"postgres primary", "neo4j", "milvus"}
    assert not results["postgres primary"].ok and "refused" in results["postgres primary"].detail
    assert results["neo4j"].ok and "RETURN 1" in results["neo4j"].detail, results["neo4j"]
    assert results["milvus"].ok and "present and readable" in results["milvus"].detail, results["milvus"]

    store = catalog_with_every_database(tmp_path)
    plan = propose(wiring.facts(config, "database_failure", list(results.values()), store=store))
    restores = [s.action for s in plan.steps if s.action.endswith("_restore")]
    assert restores == ["postgres_restore"], [s.title for s in plan.steps]
    assert plan.reason_ctx["scope"]["spared"] == ["neo4j", "milvus"]


def test_a_graph_that_does_not_answer_is_restored_within_the_timeout_and_postgres_is_not_touched(
        tmp_path: Path, pg_single: PgSingle) -> None:  # noqa: F811
    silent = socket.socket()      # accepts TCP, never speaks Bolt: a hung server
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        config = config_of(f"bolt://127.0.0.1:{silent.getsockname()[1]}", str(tmp_path / "gone.db"), tmp_path,
                           postgres_dsn=pg_single.primary.dsn())
        started = time.monotonic()
        results = {r.name: r for r in run_checks(wiring.component_specs(config))}
        assert time.monotonic() - started < 15      # the checks' 3 s timeouts, concurrently
    finally:
        silent.close()
    assert results["postgres primary"].ok, results["postgres primary"]
    assert not results["neo4j"].ok and not results["milvus"].ok and "missing" in results["milvus"].detail
    store = catalog_with_every_database(tmp_path)
    plan = propose(wiring.facts(config, "database_failure", list(results.values()), store=store))
    actions = [s.action for s in plan.steps]
    assert "neo4j_restore" in actions and "milvus_restore" in actions
    assert "postgres_restore" not in actions and not any(s.params.get("hook") == "fence_primary" for s in plan.steps)
    assert not any("Stop writes" in s.title for s in plan.steps)


def test_a_postgres_that_refuses_our_password_is_not_restored_over(
        tmp_path: Path, pg_single: PgSingle, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    primary = pg_single.primary
    primary.sql("ALTER ROLE postgres PASSWORD 'right'")
    (primary.data_dir / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    primary.sql("SELECT pg_reload_conf()")
    monkeypatch.setenv("SCOPE_TEST_PG_PASSWORD", "wrong")
    config = validate_config({"components": {"postgres": {"primary": {
        "dsn": primary.tcp_dsn(), "password_env": "SCOPE_TEST_PG_PASSWORD",
        "control": {"data_dir": str(primary.data_dir), "os_user": "postgres"}}}}}, "test.yaml")
    [result] = run_checks(wiring.component_specs(config))
    assert not result.ok and "password authentication failed" in result.detail and "wrong" not in result.detail
    assert result.facts.get(CREDENTIALS_REFUSED) is True
    facts = wiring.facts(config, "database_failure", [result], store=catalog_with_every_database(tmp_path))
    assert facts.inconclusive == {"postgres primary"}
    plan = propose(facts)
    # nothing else is configured, so the restore is still proposed (no check showed damage) — and says why
    assert plan.reason_ctx["scope"] == {"restored": ["postgres"], "spared": [], "inconclusive": ["postgres"],
                                        "basis": "no_check_failed"}
