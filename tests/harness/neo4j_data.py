"""A sample Neo4j graph (every property type, awkward labels, schema) and a snapshot to compare graphs by."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

import neo4j
import pytz
from neo4j.spatial import CartesianPoint, WGS84Point
from neo4j.time import Date, DateTime, Duration, Time

BERLIN = pytz.timezone("Europe/Berlin")
# every property type the driver returns, including awkward values (nanoseconds, a DST fold, NaN, odd text)
EVERY_TYPE: dict[str, Any] = {
    "int": -(2**63),
    "big": 2**62 + 1,
    "float": 3.141592653589793,
    "float_whole": 2.0,
    "inf": float("inf"),
    "nan": float("nan"),
    "text": 'héllo `wörld`\n"quoted" 한국어',
    "empty_text": "",
    "flag": True,
    "ints": [1, 2, 3],
    "floats": [0.5, -1.25],
    "texts": ["a", "b"],
    "flags": [True, False],
    "date": Date(2024, 2, 29),
    "datetime_zone": DateTime(2024, 3, 1, 10, 11, 12, 123456789, tzinfo=BERLIN),
    # 02:30 happens twice in Berlin on 2024-10-27; this is the second one (+01:00)
    "datetime_fold": DateTime(2024, 10, 27, 2, 30, 0, 5, tzinfo=timezone(timedelta(hours=1))).astimezone(BERLIN),
    "datetime_offset": DateTime(1969, 7, 20, 20, 17, 40, 1, tzinfo=pytz.FixedOffset(-330)),
    "localdatetime": DateTime(2000, 1, 1, 0, 0, 0, 999999999),
    "time": Time(10, 11, 12, 100000000, tzinfo=pytz.FixedOffset(60)),
    "localtime": Time(23, 59, 59, 999999999),
    "duration": Duration(months=14, days=3, seconds=14706, nanoseconds=7),
    "negative_duration": Duration(days=-2, seconds=-5),
    "point2d": CartesianPoint((1.5, -2.0)),
    "point3d": CartesianPoint((1.0, 2.0, 3.0)),
    "geo": WGS84Point((126.978, 37.5665)),
    "geo3d": WGS84Point((2.35, 48.85, 35.0)),
    "bytes": bytes(range(256)),
    "dates": [Date(2020, 1, 1), Date(1900, 12, 31)],
    "points": [CartesianPoint((0.0, 0.0)), CartesianPoint((1.0, 1.0))],
    "durations": [Duration(seconds=1), Duration(months=1)],
}

SCHEMA = [
    "CREATE CONSTRAINT person_uid FOR (p:Person) REQUIRE p.uid IS UNIQUE",
    "CREATE CONSTRAINT company_uid FOR (c:Company) REQUIRE c.uid IS UNIQUE",
    "CREATE INDEX company_name FOR (c:Company) ON (c.name)",
    "CREATE INDEX person_name_age FOR (p:Person) ON (p.name, p.age)",
    "CREATE INDEX works_since FOR ()-[r:WORKS_AT]-() ON (r.since)",
    "CREATE TEXT INDEX city_name_text FOR (c:City) ON (c.name)",
]


def build_graph(driver: neo4j.Driver) -> None:
    for statement in SCHEMA:
        driver.execute_query(statement)
    driver.execute_query(
        """
        CREATE (alice:Person:Employee {uid: 'alice', name: 'Alice', age: 34})
        CREATE (bob:Person {uid: 'bob', name: 'Bob', age: 41})
        CREATE (carol:Person:Employee:Manager {uid: 'carol', name: 'Carol', age: 50})
        CREATE (acme:Company {uid: 'acme', name: 'ACME'})
        CREATE (seoul:City {uid: 'seoul', name: 'Seoul'})
        CREATE (odd:`Odd ``Label`` here` {uid: 'odd'})
        CREATE (bare {uid: 'bare'})
        CREATE (alice)-[:WORKS_AT {since: 2019, title: 'engineer'}]->(acme)
        CREATE (carol)-[:WORKS_AT {since: 2010}]->(acme)
        CREATE (alice)-[:KNOWS]->(bob)
        CREATE (bob)-[:KNOWS {weight: 0.5}]->(alice)
        CREATE (alice)-[:KNOWS]->(alice)
        CREATE (acme)-[:LOCATED_IN {hq: true, address: ['1 Main St', 'Seoul']}]->(seoul)
        CREATE (odd)-[:`weird type`]->(bare)
        """
    )
    driver.execute_query("CREATE (:Sample:Typed $props)", props={"uid": "typed", **EVERY_TYPE})
    driver.execute_query(
        "MATCH (t:Sample {uid: 'typed'}), (c:City {uid: 'seoul'}) CREATE (t)-[:SAMPLED_IN $props]->(c)",
        props=EVERY_TYPE,
    )


def _canon(value: Any) -> str:
    # type name + repr: Date(…) vs DateTime(…), 2 vs 2.0, zone vs fixed offset all count as differences
    if isinstance(value, list):
        return "[" + ", ".join(_canon(v) for v in value) + "]"
    return f"{type(value).__name__}:{value!r}"


def snapshot(driver: neo4j.Driver) -> dict[str, Any]:
    """Everything import must restore, keyed by business id (element ids change)."""
    with driver.session() as session:
        nodes = {
            r["props"]["uid"]: (sorted(r["labels"]), {k: _canon(v) for k, v in r["props"].items()})
            for r in session.run("MATCH (n) RETURN labels(n) AS labels, properties(n) AS props")
        }
        rels = sorted(
            (r["a"], r["type"], r["b"], sorted((k, _canon(v)) for k, v in r["props"].items()))
            for r in session.run(
                "MATCH (a)-[r]->(b) RETURN a.uid AS a, type(r) AS type, b.uid AS b, properties(r) AS props"
            )
        )
        constraints = sorted(
            tuple(str(v) for v in r.values())
            for r in session.run("SHOW CONSTRAINTS YIELD name, type, entityType, labelsOrTypes, properties")
        )
        indexes = sorted(
            tuple(str(v) for v in r.values())
            for r in session.run(
                "SHOW INDEXES YIELD name, type, entityType, labelsOrTypes, properties, owningConstraint, state"
            )
        )
        labels = {
            r["label"]: r["n"] for r in session.run("MATCH (n) UNWIND labels(n) AS label RETURN label, count(*) AS n")
        }
    return {"nodes": nodes, "rels": rels, "constraints": constraints, "indexes": indexes, "labels": labels}
