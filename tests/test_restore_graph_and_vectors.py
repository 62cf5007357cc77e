"""``aegis backup run neo4j|milvus`` then ``aegis restore neo4j|milvus`` as processes: exact round trips.

Real Neo4j 5.26 (tests/harness/neo4j_server.py) and Milvus Lite; backups go to a local directory and moto S3.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.milvus_data import all_rows, assert_rows_equal, index_view, make_docs, schema_view, search_ids
from tests.harness.milvus_server import milvus_lite
from tests.harness.neo4j_data import build_graph, snapshot
from tests.harness.neo4j_server import Neo4jServer
from tests.harness.storage_servers import MotoS3, aws_env, moto_s3  # noqa: F401

pytest_plugins = ["tests.harness.neo4j_server"]
KEY = "ab" * 32


def configure(workdir: Path, s3: MotoS3, components: dict[str, Any]) -> None:
    storage = [{"kind": "local", "path": str(workdir / "staging"), "name": "local"},
               {"kind": "s3", "bucket": s3.create_bucket(), "endpoint_url": s3.endpoint_url, "name": "s3"}]
    (workdir / "aegis.yaml").write_text(yaml.safe_dump({"storage": storage, "components": components}))


def aegis(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AEGIS_CONFIG": str(workdir / "aegis.yaml"),
           "AEGIS_DATABASE_URL": f"sqlite:///{workdir}/aegis.db", "AEGIS_BACKUP_KEY": KEY}
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=workdir, env=env, text=True,
                          capture_output=True, timeout=600)


def rows(workdir: Path, kind: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(workdir / "aegis.db") as conn:
        return list(conn.execute("SELECT run_id, object_name, status FROM backup_catalog WHERE kind = ?", (kind,)))


@pytest.mark.timeout(600)
def test_neo4j_backup_and_restore_commands_round_trip_exactly(
    tmp_path: Path, neo4j_clean: Neo4jServer, moto_s3: MotoS3,  # noqa: F811
) -> None:
    configure(tmp_path, moto_s3, {"neo4j": {"uri": neo4j_clean.uri}})
    with neo4j_clean.driver() as driver:
        build_graph(driver)
        before = snapshot(driver)
    backup = aegis(tmp_path, "backup", "run", "neo4j", "--quiet")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    [(run_id, obj, status)] = rows(tmp_path, "neo4j")
    assert status == "ok" and obj == f"{run_id}/neo4j-neo4j.jsonl.zst.aes"

    refused = aegis(tmp_path, "restore", "neo4j", "--quiet")
    assert refused.returncode == 1 and "not empty" in refused.stderr  # never imported over live data

    neo4j_clean.wipe()
    restored = aegis(tmp_path, "restore", "neo4j", run_id, "--quiet")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert f"{len(before['nodes'])} nodes" in restored.stdout
    with neo4j_clean.driver() as driver:
        after = snapshot(driver)
    # node and relationship counts, labels, every property with its type, constraints and indexes
    assert after == before


@pytest.mark.timeout(600)
def test_milvus_backup_and_restore_commands_round_trip_exactly(
    tmp_path: Path, moto_s3: MotoS3,  # noqa: F811
) -> None:
    uri = str(tmp_path / "milvus.db")
    configure(tmp_path, moto_s3, {"milvus": {"uri": uri}})
    # Milvus Lite serves one process per database: the test lets go of it while Aegis runs.
    with milvus_lite(tmp_path) as client:
        vectors = make_docs(client)
        source_rows = all_rows(client, "docs", "id")
        schema, indexes = schema_view(client, "docs"), index_view(client, "docs")
        searches = search_ids(client, "docs", vectors[:5])
    backup = aegis(tmp_path, "backup", "run", "milvus", "--quiet")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    [(run_id, obj, status)] = rows(tmp_path, "milvus")
    assert status == "ok" and obj == f"{run_id}/milvus-docs.jsonl.zst.aes"

    exists = aegis(tmp_path, "restore", "milvus", "--quiet")
    assert exists.returncode == 1 and "docs" in exists.stderr  # the live collection is never replaced

    renamed = aegis(tmp_path, "restore", "milvus", run_id, "--as", "docs_restored", "--quiet")
    assert renamed.returncode == 0, renamed.stdout + renamed.stderr
    with milvus_lite(tmp_path) as client:
        client.drop_collection("docs")
    again = aegis(tmp_path, "restore", "milvus", run_id, "--quiet")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(source_rows)} rows" in again.stdout

    with milvus_lite(tmp_path) as client:
        for name in ("docs", "docs_restored"):
            client.load_collection(name)  # a restarted Milvus Lite starts with collections released
            assert_rows_equal(source_rows, all_rows(client, name, "id"), {"vec"})
            assert schema_view(client, name) == schema
            assert index_view(client, name) == indexes
            assert search_ids(client, name, vectors[:5]) == searches


def test_restore_of_a_kind_never_backed_up_says_what_to_do(tmp_path: Path, moto_s3: MotoS3) -> None:  # noqa: F811
    configure(tmp_path, moto_s3, {"neo4j": {"uri": "bolt://127.0.0.1:1"}})
    out = aegis(tmp_path, "restore", "neo4j")
    assert out.returncode == 2 and "aegis backup run" in out.stderr and "Traceback" not in out.stderr
