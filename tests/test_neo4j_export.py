"""Neo4j logical backup (B2) against a real Neo4j 5.26: export → wipe → import gives back the same graph."""

from __future__ import annotations

import io
import json
import math
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import neo4j
import pytest
from neo4j.time import Date

from recovery.backup.sources.neo4j import (
    CONSISTENCY,
    IMPORT_ID,
    IMPORT_LABEL,
    CorruptExportError,
    DatabaseNotEmptyError,
    export_graph,
    import_graph,
)
from tests.harness.neo4j_data import build_graph, snapshot
from tests.harness.neo4j_server import Neo4jServer

pytest_plugins = ["tests.harness.neo4j_server"]

def _lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines()]


@pytest.fixture
def driver(neo4j_clean: Neo4jServer) -> Iterator[neo4j.Driver]:
    with neo4j_clean.driver() as drv:
        yield drv


def test_round_trip_restores_every_node_relationship_type_and_schema(
    neo4j_clean: Neo4jServer, driver: neo4j.Driver
) -> None:
    build_graph(driver)
    before = snapshot(driver)
    assert len(before["nodes"]) == 8 and len(before["rels"]) == 8
    assert before["nodes"]["typed"][1]["datetime_fold"].endswith("CET+1:00:00 STD>)")  # the fold survived the write

    buf = io.BytesIO()
    exported = export_graph(driver, "neo4j", out=buf, batch_size=3)
    assert exported.nodes == 8 and exported.relationships == 8
    assert exported.labels == {
        "City": 1,
        "Company": 1,
        "Employee": 2,
        "Manager": 1,
        "Odd `Label` here": 1,
        "Person": 3,
        "Sample": 1,
        "Typed": 1,
    }
    assert exported.relationship_types == {"KNOWS": 3, "LOCATED_IN": 1, "SAMPLED_IN": 1, "WORKS_AT": 2, "weird type": 1}
    assert (exported.constraints, exported.indexes) == (2, 4)

    lines = _lines(buf.getvalue())
    header, trailer = lines[0], lines[-1]
    assert header["type"] == "header" and header["server_version"].startswith("5.26")
    assert header["database"] == "neo4j" and header["consistency"] == CONSISTENCY
    assert [line["type"] for line in lines[1:7]] == ["constraint"] * 2 + ["index"] * 4
    assert sum(len(line["rows"]) for line in lines if line["type"] == "nodes") == 8
    assert max(len(line["rows"]) for line in lines if line["type"] in ("nodes", "relationships")) == 3
    assert trailer["type"] == "trailer" and trailer["nodes"] == 8 and trailer["relationships"] == 8

    neo4j_clean.wipe()
    assert snapshot(driver)["nodes"] == {}

    buf.seek(0)
    imported = import_graph(driver, "neo4j", source=buf, batch_size=2)
    assert (imported.nodes, imported.relationships) == (8, 8)
    assert imported.labels == exported.labels and imported.relationship_types == exported.relationship_types
    assert (imported.constraints, imported.indexes) == (2, 4)
    assert imported.source_server_version == exported.server_version

    after = snapshot(driver)
    assert after["labels"] == before["labels"]
    assert after["nodes"] == before["nodes"]  # labels and every property, type for type
    assert after["rels"] == before["rels"]  # type, endpoints, properties
    assert after["constraints"] == before["constraints"]
    assert after["indexes"] == before["indexes"]
    # the temporary import wiring is gone
    with driver.session() as session:
        assert session.run(f"MATCH (n) WHERE n.{IMPORT_ID} IS NOT NULL RETURN count(n) AS c").single()["c"] == 0
        assert IMPORT_LABEL not in [r["label"] for r in session.run("CALL db.labels()")]
    # NaN survives as NaN (repr compares equal, but check the value too)
    typed = driver.execute_query("MATCH (n {uid: 'typed'}) RETURN n.nan AS nan, n.bytes AS b").records[0]
    assert math.isnan(typed["nan"]) and typed["b"] == bytes(range(256))


def test_import_refuses_a_database_that_is_not_empty(driver: neo4j.Driver) -> None:
    buf = io.BytesIO()
    driver.execute_query("CREATE (:Thing {uid: 'one'})")
    export_graph(driver, out=buf)

    buf.seek(0)
    with pytest.raises(DatabaseNotEmptyError, match=r"not empty \(1 nodes\)"):
        import_graph(driver, source=buf)
    # nothing was written: still exactly the one node, no temporary index
    assert driver.execute_query("MATCH (n) RETURN count(n) AS c").records[0]["c"] == 1
    assert (
        driver.execute_query("SHOW INDEXES YIELD type WHERE type <> 'LOOKUP' RETURN count(*) AS c").records[0]["c"] == 0
    )


def test_import_refuses_leftover_schema(neo4j_clean: Neo4jServer, driver: neo4j.Driver) -> None:
    buf = io.BytesIO()
    export_graph(driver, out=buf)
    driver.execute_query("CREATE INDEX stray FOR (n:Stray) ON (n.x)")
    buf.seek(0)
    with pytest.raises(DatabaseNotEmptyError, match="indexes stray"):
        import_graph(driver, source=buf)


def test_truncated_export_is_refused(neo4j_clean: Neo4jServer, driver: neo4j.Driver) -> None:
    build_graph(driver)
    buf = io.BytesIO()
    export_graph(driver, out=buf, batch_size=2)
    data = buf.getvalue()
    without_trailer = data[: data.rstrip(b"\n").rfind(b"\n") + 1]
    neo4j_clean.wipe()
    with pytest.raises(CorruptExportError, match="no trailer"):
        import_graph(driver, source=io.BytesIO(without_trailer))

    neo4j_clean.wipe()
    with pytest.raises(CorruptExportError, match="not an Aegis Neo4j export"):
        import_graph(driver, source=[b'{"type": "nodes", "rows": []}\n'])


def test_empty_database_round_trips(driver: neo4j.Driver) -> None:
    buf = io.BytesIO()
    stats = export_graph(driver, out=buf)
    assert (stats.nodes, stats.relationships, stats.constraints, stats.indexes) == (0, 0, 0, 0)
    imported = import_graph(driver, source=[buf.getvalue()])
    assert (imported.nodes, imported.relationships) == (0, 0)


class _CountingSink(io.RawIOBase):
    """A write-only stream that keeps only a byte count, so tracemalloc sees the exporter's own memory."""

    def __init__(self, target: io.BufferedWriter) -> None:
        self.target = target
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.size += len(data)
        return self.target.write(data)


def test_large_graph_round_trips_with_flat_export_memory(
    neo4j_clean: Neo4jServer, driver: neo4j.Driver, tmp_path: Path
) -> None:
    n = 12_000      # with a 300-byte pad: >5 MB of export (tracemalloc makes every node costly to export)
    driver.execute_query("CREATE CONSTRAINT item_uid FOR (i:Item) REQUIRE i.uid IS UNIQUE")
    driver.execute_query(
        "UNWIND range(0, $n - 1) AS i "
        "CREATE (:Item {uid: i, name: 'item-' + toString(i), pad: $pad, at: date('2024-01-01') + duration({days: i})})",
        n=n,
        pad="x" * 300,
    )
    driver.execute_query(
        "MATCH (a:Item) MATCH (b:Item {uid: (a.uid + 1) % $n}) CREATE (a)-[:NEXT {step: a.uid}]->(b)", n=n
    )

    path = tmp_path / "graph.jsonl"
    with path.open("wb") as f:
        sink = _CountingSink(f)
        tracemalloc.start()
        try:
            stats = export_graph(driver, out=sink, batch_size=500)  # type: ignore[arg-type]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (stats.nodes, stats.relationships) == (n, n)
    assert sink.size == path.stat().st_size > 5_000_000
    # one batch of 500 nodes is ~150 KB of JSON; the whole export is >5 MB: memory must not grow with it
    assert peak < sink.size / 4, f"export peak {peak} bytes for {sink.size} bytes of output"

    neo4j_clean.wipe()

    def chunks() -> Iterator[bytes]:
        # odd-sized chunks, as a decrypting pipeline would hand them over: lines straddle chunk borders
        with path.open("rb") as f:
            while chunk := f.read(65_537):
                yield chunk

    imported = import_graph(driver, source=chunks(), batch_size=1000)
    assert (imported.nodes, imported.relationships) == (n, n)
    assert imported.labels == {"Item": n} and imported.relationship_types == {"NEXT": n}
    broken = driver.execute_query(
        "MATCH (a:Item)-[r:NEXT]->(b:Item) WHERE b.uid <> (a.uid + 1) % $n OR r.step <> a.uid RETURN count(*) AS c", n=n
    ).records[0]["c"]
    assert broken == 0
    assert driver.execute_query("MATCH (i:Item {uid: 11999}) RETURN i.at AS at").records[0]["at"] == Date(2056, 11, 7)
