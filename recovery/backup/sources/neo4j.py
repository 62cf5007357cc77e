"""Logical backup of one Neo4j 5 database through the Bolt driver, as a JSON-lines stream (B2).

Consistency. The whole export runs in ONE read transaction, and in Neo4j 5 that is **not** a snapshot. Neo4j's
isolation level is read-committed: every read inside the transaction sees whatever was committed at the moment
that read happens, not as of the transaction's start, and reads take no locks, so writers are never blocked.
If the database is written to while the export runs, the copy can be a state that never existed: nodes created
after the node scan passed their position are missing; a relationship can point to a node that was created too
late to be exported (the import then fails rather than drop it); a node or relationship changed mid-export can
appear with its old or its new properties; the schema is read before the data and can be out of date by the
end. What the single transaction does give: every read comes from one server and one database (in a cluster,
a read replica may lag behind the leader), and the export completes or fails as a whole — it is never retried
behind the caller's back, since part of it may already be written — with a trailer whose counts are exactly
the rows written. For a point-in-time consistent copy, stop the writers for the duration of the export, or use
``neo4j-admin database dump`` on a stopped database, or ``neo4j-admin database backup`` (online; Enterprise
Edition only).

Stream layout, one JSON object per line (UTF-8, ``\\n``-terminated):

1. ``{"type": "header", "format": "aegis.neo4j-export", "version": 1, "server_version", "server_edition",
   "database", "started_at", "consistency"}``.
2. ``{"type": "constraint", "name", "create"}`` per constraint (``SHOW CONSTRAINTS`` → ``createStatement``),
   then ``{"type": "index", ...}`` per index, without LOOKUP indexes (every database has them) and without
   indexes owned by a constraint (the constraint recreates them).
3. ``{"type": "nodes", "rows": [{"id", "labels", "props"}, ...]}``, one line per ``batch_size`` nodes.
4. ``{"type": "relationships", "rows": [{"type", "start", "end", "props"}, ...]}``, likewise.
5. ``{"type": "trailer", "nodes", "relationships", "labels": {label: n}, "relationship_types": {type: n},
   "constraints", "indexes", "finished_at"}`` — a stream without it is truncated and refused on import.

Nodes and relationships are streamed straight from a label-free scan (``AllNodesScan`` /
``DirectedAllRelationshipsScan``), which returns them in internal id order — a stable key for an unchanged
store. There is deliberately no ``ORDER BY``: it would make the server materialise and sort the whole graph;
without it the server produces rows lazily as the driver pulls ``batch_size`` records at a time, so memory
stays flat on both sides. ``id`` is the source ``elementId``, used only to wire relationships on import.

Property values are JSON scalars where JSON is exact (int, finite float, str, bool) and lists of them;
everything else is a one-key object tagged with ``$`` (property values are never maps in Neo4j, so an object is
always a tag): ``{"$bytes": base64}``, ``{"$float": "NaN" | "Infinity" | "-Infinity"}``, ``{"$date":
"YYYY-MM-DD"}``, ``{"$localtime": "hh:mm:ss.nnnnnnnnn"}``, ``{"$time": "hh:mm:ss.nnnnnnnnn", "offset":
seconds}``, ``{"$localdatetime": "YYYY-MM-DDThh:mm:ss.nnnnnnnnn"}``, ``{"$datetime": local wall time,
"offset": seconds, "zone": "Europe/Berlin" | null}`` (offset and zone together pin the instant even in a DST
fold), ``{"$duration": [months, days, seconds, nanoseconds]}``, ``{"$point": [x, y(, z)], "srid": n}``.

Known limits: an empty list property loses its element type (the driver returns a bare ``[]``; it comes back as
whatever Neo4j makes of an empty list parameter); temporal values outside the Python driver's range (years
1-9999, whole-minute UTC offsets) cannot be read by the driver at all, so such a graph fails to export.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import BinaryIO

import pytz
from neo4j import READ_ACCESS, WRITE_ACCESS, Driver, Transaction
from neo4j.spatial import CartesianPoint, Point, WGS84Point
from neo4j.time import Date, DateTime, Duration, Time

from recovery.backup.errors import CorruptExportError, DatabaseNotEmptyError, Neo4jExportError
from statemachines.json_types import JsonObject

FORMAT = "aegis.neo4j-export"
FORMAT_VERSION = 1
CONSISTENCY = (
    "One read transaction, read-committed: each read sees data committed at that moment, not a snapshot. "
    "Writes during the export may appear partially. Quiesce writers (or use neo4j-admin dump/backup) for a "
    "consistent copy."
)

# Temporary wiring used only during import: every imported node carries this label and property until the
# relationships are in, so each relationship finds its endpoints through an index seek on the old element id.
IMPORT_LABEL = "__AegisImport"
IMPORT_ID = "__aegis_import_id"
IMPORT_INDEX = "__aegis_import_id_index"

# indexes an export carries: not the LOOKUP ones every database has, not those a constraint owns
_USER_INDEXES = (
    "SHOW INDEXES YIELD name, type, owningConstraint, createStatement "
    "WHERE type <> 'LOOKUP' AND owningConstraint IS NULL "
    "RETURN name, createStatement ORDER BY name"
)
_READ_CHUNK = 1024 * 1024
_CLEANUP_BATCH = 10_000

_SRID_CLASSES: dict[int, type[Point]] = {7203: CartesianPoint, 9157: CartesianPoint, 4326: WGS84Point, 4979: WGS84Point}
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})$")
_TIME_RE = re.compile(r"(\d{2}):(\d{2}):(\d{2})\.(\d{9})$")
_DATETIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{9})$")


@dataclass
class ExportStats:
    nodes: int = 0
    relationships: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    relationship_types: dict[str, int] = field(default_factory=dict)
    constraints: int = 0
    indexes: int = 0
    server_version: str = ""
    bytes_written: int = 0


@dataclass
class ImportStats:
    nodes: int = 0
    relationships: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    relationship_types: dict[str, int] = field(default_factory=dict)
    constraints: int = 0
    indexes: int = 0
    source_server_version: str = ""
    # the names the export's schema lines created: a restore's checks compare names, not only how many
    constraint_names: list[str] = field(default_factory=list)
    index_names: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- values


def _offset_seconds(value: DateTime | Time) -> int:
    offset = value.utcoffset()
    if offset is None:
        raise Neo4jExportError(f"cannot determine the UTC offset of {value!r}")
    return int(offset.total_seconds())


def _zone_name(tz: object) -> str | None:
    # pytz zones (what the driver hydrates) have .zone; zoneinfo zones have .key; fixed offsets have neither
    name = getattr(tz, "zone", None) or getattr(tz, "key", None)
    return name if isinstance(name, str) else None


def _fmt_time(v: DateTime | Time) -> str:
    return f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.nanosecond:09d}"


def _fmt_date(v: DateTime | Date) -> str:
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}"


def encode_value(value: object) -> object:
    """A property value as JSON-ready data; non-JSON types get an explicit ``$`` tag (see module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    # Duration and Point are tuple subclasses: test the specific types before plain lists
    if isinstance(value, Duration):
        return {"$duration": [value.months, value.days, value.seconds, value.nanoseconds]}
    if isinstance(value, Point):
        return {"$point": [float(c) for c in value], "srid": value.srid}
    if isinstance(value, DateTime):  # not a subclass of Date or Time
        local = f"{_fmt_date(value)}T{_fmt_time(value)}"
        if value.tzinfo is None:
            return {"$localdatetime": local}
        return {"$datetime": local, "offset": _offset_seconds(value), "zone": _zone_name(value.tzinfo)}
    if isinstance(value, Date):
        return {"$date": _fmt_date(value)}
    if isinstance(value, Time):
        if value.tzinfo is None:
            return {"$localtime": _fmt_time(value)}
        return {"$time": _fmt_time(value), "offset": _offset_seconds(value)}
    if isinstance(value, list | tuple):
        return [encode_value(v) for v in value]
    raise Neo4jExportError(f"unsupported property value type {type(value).__name__}: {value!r}")


def _match(regex: re.Pattern[str], text: str, tag: str) -> list[int]:
    m = regex.match(text)
    if not m:
        raise CorruptExportError(f"bad {tag} value {text!r}")
    return [int(g) for g in m.groups()]


def _fixed_offset(seconds: int) -> tzinfo:
    # pytz, not datetime.timezone: the driver's Time encoder calls tzinfo.utcoffset(Time), which only pytz accepts
    minutes, rest = divmod(seconds, 60)
    if rest:
        raise CorruptExportError(f"UTC offset {seconds}s is not a whole number of minutes")
    return pytz.FixedOffset(minutes)


def decode_value(value: object) -> object:
    """The inverse of :func:`encode_value`: driver-native values that Bolt sends as the original types."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    tags = [k for k in value if k.startswith("$")]
    if len(tags) != 1:
        raise CorruptExportError(f"expected one $-tagged property value, got {value!r}")
    tag = tags[0]
    body = value[tag]
    if tag == "$bytes":
        return base64.b64decode(body)
    if tag == "$float":
        return float({"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}[body])
    if tag == "$date":
        year, month, day = _match(_DATE_RE, body, tag)
        return Date(year, month, day)
    if tag == "$localtime":
        hour, minute, second, nanosecond = _match(_TIME_RE, body, tag)
        return Time(hour, minute, second, nanosecond)
    if tag == "$time":
        hour, minute, second, nanosecond = _match(_TIME_RE, body, tag)
        return Time(hour, minute, second, nanosecond, tzinfo=_fixed_offset(int(value["offset"])))
    if tag == "$localdatetime":
        year, month, day, hour, minute, second, nanosecond = _match(_DATETIME_RE, body, tag)
        return DateTime(year, month, day, hour, minute, second, nanosecond)
    if tag == "$datetime":
        year, month, day, hour, minute, second, nanosecond = _match(_DATETIME_RE, body, tag)
        fixed = DateTime(year, month, day, hour, minute, second, nanosecond,
                         tzinfo=_fixed_offset(int(value["offset"])))
        zone = value.get("zone")
        # going through the recorded offset pins the exact instant, even for a wall time a DST fold repeats
        return fixed.astimezone(pytz.timezone(zone)) if zone else fixed
    if tag == "$duration":
        months, days, seconds, nanoseconds = body
        return Duration(months=months, days=days, seconds=seconds, nanoseconds=nanoseconds)
    if tag == "$point":
        srid = int(value["srid"])
        cls = _SRID_CLASSES.get(srid)
        if cls is not None:
            return cls(body)
        point = Point(body)
        point.srid = srid
        return point
    raise CorruptExportError(f"unknown tagged property value {value!r}")


def _encode_props(props: JsonObject) -> JsonObject:
    return {k: encode_value(v) for k, v in props.items()}


def _decode_props(props: JsonObject) -> JsonObject:
    return {k: decode_value(v) for k, v in props.items()}


# ---------------------------------------------------------------------------------------------------- export


def _schema(tx: Transaction) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    constraints = [
        {"name": r["name"], "create": r["createStatement"]}
        for r in tx.run("SHOW CONSTRAINTS YIELD name, createStatement RETURN name, createStatement ORDER BY name")
    ]
    indexes = [{"name": r["name"], "create": r["createStatement"]} for r in tx.run(_USER_INDEXES)]
    return constraints, indexes


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def export_graph(driver: Driver, database: str = "neo4j", *, out: BinaryIO, batch_size: int = 1000) -> ExportStats:
    """Write ``database`` to ``out`` as the JSON-lines stream described in the module docstring.

    Holds at most one batch in memory. Raises on any error; ``out`` then holds a stream without a trailer,
    which :func:`import_graph` refuses.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    stats = ExportStats()
    labels: Counter[str] = Counter()
    rel_types: Counter[str] = Counter()

    def emit(obj: JsonObject) -> None:
        # allow_nan=False: non-finite floats are tagged, so the output is strict JSON any reader accepts
        line = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        out.write(line)
        stats.bytes_written += len(line)

    # fetch_size=batch_size: the driver pulls (and buffers) one batch of records at a time
    with driver.session(database=database, default_access_mode=READ_ACCESS, fetch_size=batch_size) as session:
        # an unmanaged transaction, not execute_read: a retry after a transient error would re-write the output
        with session.begin_transaction() as tx:
            component = tx.run(
                "CALL dbms.components() YIELD name, versions, edition "
                "WHERE name = 'Neo4j Kernel' RETURN versions[0] AS version, edition"
            ).single()
            stats.server_version = component["version"] if component else "unknown"
            emit(
                {
                    "type": "header",
                    "format": FORMAT,
                    "version": FORMAT_VERSION,
                    "server_version": stats.server_version,
                    "server_edition": component["edition"] if component else "unknown",
                    "database": database,
                    "started_at": _now(),
                    "consistency": CONSISTENCY,
                }
            )
            constraints, indexes = _schema(tx)
            for c in constraints:
                emit({"type": "constraint", **c})
            for i in indexes:
                emit({"type": "index", **i})
            stats.constraints, stats.indexes = len(constraints), len(indexes)

            batch: list[JsonObject] = []
            result = tx.run("MATCH (n) RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS props")
            for record in result:
                node_labels = record["labels"]
                labels.update(node_labels)
                batch.append({"id": record["id"], "labels": node_labels, "props": _encode_props(record["props"])})
                if len(batch) >= batch_size:
                    emit({"type": "nodes", "rows": batch})
                    stats.nodes += len(batch)
                    batch = []
            if batch:
                emit({"type": "nodes", "rows": batch})
                stats.nodes += len(batch)
                batch = []

            result = tx.run(
                "MATCH (a)-[r]->(b) RETURN type(r) AS type, elementId(a) AS start, elementId(b) AS end, "
                "properties(r) AS props"
            )
            for record in result:
                rel_types[record["type"]] += 1
                batch.append(
                    {
                        "type": record["type"],
                        "start": record["start"],
                        "end": record["end"],
                        "props": _encode_props(record["props"]),
                    }
                )
                if len(batch) >= batch_size:
                    emit({"type": "relationships", "rows": batch})
                    stats.relationships += len(batch)
                    batch = []
            if batch:
                emit({"type": "relationships", "rows": batch})
                stats.relationships += len(batch)

    stats.labels = dict(sorted(labels.items()))
    stats.relationship_types = dict(sorted(rel_types.items()))
    emit(
        {
            "type": "trailer",
            "nodes": stats.nodes,
            "relationships": stats.relationships,
            "labels": stats.labels,
            "relationship_types": stats.relationship_types,
            "constraints": stats.constraints,
            "indexes": stats.indexes,
            "finished_at": _now(),
        }
    )
    out.flush()
    return stats


# ---------------------------------------------------------------------------------------------------- import


def _iter_lines(source: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    """Complete lines from a file or from arbitrary byte chunks (e.g. a decrypting pipeline's output)."""
    chunks: Iterable[bytes]
    if hasattr(source, "read"):
        reader: BinaryIO = source  # type: ignore[assignment]
        chunks = iter(lambda: reader.read(_READ_CHUNK), b"")
    else:
        chunks = source
    pending = bytearray()  # amortised appends: a long line split over many small chunks stays linear
    for chunk in chunks:
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            pending += chunk[start:newline]
            if pending.strip():
                yield bytes(pending)
            pending.clear()
            start = newline + 1
        pending += chunk[start:]
    if pending.strip():
        yield bytes(pending)


def _quote(name: str) -> str:
    """A label, type or property name as a Cypher identifier (backticks doubled inside)."""
    return "`" + name.replace("`", "``") + "`"


_IMPORT_LABEL_Q = _quote(IMPORT_LABEL)
_IMPORT_ID_Q = _quote(IMPORT_ID)


def _check_empty(driver: Driver, database: str) -> None:
    with driver.session(database=database) as session:
        nodes = session.run("MATCH (n) RETURN count(n) AS c").single(strict=True)["c"]
        constraints = [r["name"] for r in session.run("SHOW CONSTRAINTS YIELD name")]
        indexes = [r["name"] for r in session.run("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP' RETURN name")]
    found = []
    if nodes:
        found.append(f"{nodes} nodes")
    if constraints:
        found.append(f"constraints {', '.join(constraints)}")
    if indexes:
        found.append(f"indexes {', '.join(indexes)}")
    if found:
        raise DatabaseNotEmptyError(
            f"refusing to import into database {database!r}: it is not empty ({'; '.join(found)}). "
            "Import restores into an empty database only: create a new database, or delete its data and drop "
            "its constraints and indexes first."
        )


def _create_nodes(tx: Transaction, rows: list[JsonObject]) -> int:
    by_labels: dict[tuple[str, ...], list[JsonObject]] = {}
    for row in rows:
        props = _decode_props(row["props"])
        if IMPORT_ID in props:
            raise CorruptExportError(f"node {row['id']} has the reserved property {IMPORT_ID}")
        by_labels.setdefault(tuple(row["labels"]), []).append({"id": row["id"], "props": props})
    created = 0
    for node_labels, group in by_labels.items():
        # labels cannot be parameters in Cypher 5 before 5.26's dynamic labels: group rows by label set instead
        label_expr = "".join(":" + _quote(label) for label in (*node_labels, IMPORT_LABEL))
        summary = tx.run(
            f"UNWIND $rows AS row CREATE (n{label_expr}) SET n = row.props, n.{_IMPORT_ID_Q} = row.id", rows=group
        ).consume()
        created += summary.counters.nodes_created
    return created


def _create_relationships(tx: Transaction, rows: list[JsonObject]) -> int:
    by_type: dict[str, list[JsonObject]] = {}
    for row in rows:
        by_type.setdefault(row["type"], []).append(
            {"start": row["start"], "end": row["end"], "props": _decode_props(row["props"])}
        )
    created = 0
    for rel_type, group in by_type.items():
        summary = tx.run(
            f"UNWIND $rows AS row "
            f"MATCH (a:{_IMPORT_LABEL_Q} {{{_IMPORT_ID_Q}: row.start}}) "
            f"MATCH (b:{_IMPORT_LABEL_Q} {{{_IMPORT_ID_Q}: row.end}}) "
            f"CREATE (a)-[r:{_quote(rel_type)}]->(b) SET r = row.props",
            rows=group,
        ).consume()
        created += summary.counters.relationships_created
    return created


_BatchWriter = Callable[[Transaction, list[JsonObject]], int]


def _write_batch(driver: Driver, database: str, fn: _BatchWriter, rows: list[JsonObject]) -> int:
    # one explicit transaction per batch; no automatic retry, which could duplicate a batch whose commit
    # reply was lost (the count checks would catch it, but failing fast is clearer)
    with driver.session(database=database, default_access_mode=WRITE_ACCESS) as session:
        with session.begin_transaction() as tx:
            created = int(fn(tx, rows))
            tx.commit()
    return created


def _drop_import_wiring(driver: Driver, database: str) -> None:
    with driver.session(database=database) as session:
        # bounded transactions without CALL { } IN TRANSACTIONS, whose syntax changed within Neo4j 5
        while True:
            done = session.run(
                f"MATCH (n:{_IMPORT_LABEL_Q}) WITH n LIMIT $limit REMOVE n:{_IMPORT_LABEL_Q}, n.{_IMPORT_ID_Q} "
                "RETURN count(n) AS c",
                limit=_CLEANUP_BATCH,
            ).single(strict=True)["c"]
            if not done:
                break
        session.run(f"DROP INDEX {_quote(IMPORT_INDEX)} IF EXISTS").consume()


def _verify(driver: Driver, database: str, trailer: JsonObject, stats: ImportStats) -> None:
    problems = []
    for what in ("nodes", "relationships", "labels", "relationship_types", "constraints", "indexes"):
        if trailer.get(what) != getattr(stats, what):
            problems.append(f"{what}: export says {trailer.get(what)!r}, stream held {getattr(stats, what)!r}")
    with driver.session(database=database) as session:
        db_nodes = session.run("MATCH (n) RETURN count(n) AS c").single(strict=True)["c"]
        db_rels = session.run("MATCH ()-[r]->() RETURN count(r) AS c").single(strict=True)["c"]
        if db_nodes != trailer["nodes"]:
            problems.append(f"nodes: export says {trailer['nodes']}, database has {db_nodes}")
        if db_rels != trailer["relationships"]:
            problems.append(f"relationships: export says {trailer['relationships']}, database has {db_rels}")
        # per-label and per-type counts come from the count store: cheap, no scan
        for label, n in trailer["labels"].items():
            got = session.run(f"MATCH (n:{_quote(label)}) RETURN count(n) AS c").single(strict=True)["c"]
            if got != n:
                problems.append(f"label {label}: export says {n}, database has {got}")
        for rel_type, n in trailer["relationship_types"].items():
            got = session.run(f"MATCH ()-[r:{_quote(rel_type)}]->() RETURN count(r) AS c").single(strict=True)["c"]
            if got != n:
                problems.append(f"relationship type {rel_type}: export says {n}, database has {got}")
        leftover = session.run(f"MATCH (n:{_IMPORT_LABEL_Q}) RETURN count(n) AS c").single(strict=True)["c"]
        if leftover:
            problems.append(f"{leftover} nodes still carry the temporary label {IMPORT_LABEL}")
        constraints = sorted(str(r["name"]) for r in session.run("SHOW CONSTRAINTS YIELD name"))
        indexes = sorted(str(r["name"]) for r in session.run(_USER_INDEXES))
        if len(constraints) != trailer["constraints"] or len(indexes) != trailer["indexes"]:
            problems.append(
                f"schema: export says {trailer['constraints']} constraints / {trailer['indexes']} indexes, "
                f"database has {len(constraints)} / {len(indexes)}"
            )
        problems += schema_name_problems("constraints", stats.constraint_names, constraints)
        problems += schema_name_problems("indexes", stats.index_names, indexes)
    if problems:
        raise CorruptExportError("import verification failed: " + "; ".join(problems))


def schema_name_problems(what: str, expected: list[str], found: list[str]) -> list[str]:
    """``what`` the export created that the database lacks, and those it has that the export never named."""
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    problems = [f"{what}: the export's {', '.join(missing)} missing from the database"] if missing else []
    if extra:
        problems.append(f"{what}: the database has {', '.join(extra)}, which the export does not name")
    return problems


def import_graph(
    driver: Driver, database: str = "neo4j", *, source: BinaryIO | Iterable[bytes], batch_size: int = 1000
) -> ImportStats:
    """Restore an :func:`export_graph` stream into ``database``, which must be empty; verify the counts.

    ``batch_size`` only bounds each write transaction here; the export's own batches are split or kept as they
    are. On failure the database is left partially imported (with the temporary ``__AegisImport`` wiring):
    wipe it before trying again.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    _check_empty(driver, database)
    stats = ImportStats()
    labels: Counter[str] = Counter()
    rel_types: Counter[str] = Counter()
    lines = _iter_lines(source)

    first = next(lines, None)
    header = json.loads(first) if first else {}
    if header.get("type") != "header" or header.get("format") != FORMAT:
        raise CorruptExportError("not an Aegis Neo4j export: the first line is not its header")
    if header.get("version") != FORMAT_VERSION:
        raise CorruptExportError(f"unsupported export format version {header.get('version')!r} (need {FORMAT_VERSION})")
    stats.source_server_version = str(header.get("server_version", ""))

    with driver.session(database=database) as session:
        session.run(
            f"CREATE INDEX {_quote(IMPORT_INDEX)} IF NOT EXISTS FOR (n:{_IMPORT_LABEL_Q}) ON (n.{_IMPORT_ID_Q})"
        ).consume()
        session.run("CALL db.awaitIndex($name, 300)", name=IMPORT_INDEX).consume()

    trailer: JsonObject | None = None
    for raw in lines:
        if trailer is not None:
            raise CorruptExportError("data after the trailer line")
        entry = json.loads(raw)
        kind = entry.get("type")
        if kind in ("constraint", "index"):
            if stats.nodes:
                raise CorruptExportError("schema line after node data")
            with driver.session(database=database) as session:
                session.run(entry["create"]).consume()
            if kind == "constraint":
                stats.constraints += 1
                stats.constraint_names.append(str(entry.get("name", "")))
            else:
                stats.indexes += 1
                stats.index_names.append(str(entry.get("name", "")))
        elif kind == "nodes":
            rows = entry["rows"]
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                created = _write_batch(driver, database, _create_nodes, chunk)
                if created != len(chunk):
                    raise CorruptExportError(f"created {created} of {len(chunk)} nodes in a batch")
                for row in chunk:
                    labels.update(row["labels"])
            stats.nodes += len(rows)
        elif kind == "relationships":
            rows = entry["rows"]
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                created = _write_batch(driver, database, _create_relationships, chunk)
                if created != len(chunk):
                    raise CorruptExportError(
                        f"created {created} of {len(chunk)} relationships in a batch: some endpoints are not in the "
                        "export (was the source written to while it was exported?)"
                    )
                rel_types.update(row["type"] for row in chunk)
            stats.relationships += len(rows)
        elif kind == "trailer":
            trailer = entry
        else:
            raise CorruptExportError(f"unknown line type {kind!r}")
    if trailer is None:
        raise CorruptExportError("the export has no trailer line: it is truncated (the export failed or was cut)")

    _drop_import_wiring(driver, database)
    with driver.session(database=database) as session:
        session.run("CALL db.awaitIndexes(600)").consume()  # recreated indexes must be ONLINE before use
    stats.labels = dict(sorted(labels.items()))
    stats.relationship_types = dict(sorted(rel_types.items()))
    _verify(driver, database, trailer, stats)
    return stats
