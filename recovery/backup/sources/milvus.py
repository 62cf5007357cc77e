"""Logical export and import of one Milvus collection as a JSON-lines stream (B3).

Stream layout, one JSON object per line (UTF-8, ``\\n``-terminated):

1. ``{"type": "header", "format": "aegis.milvus-export", "version": 1, "collection": ..., "schema": {...},
   "partitions": [...], "indexes": [...], "properties": {...}, ...}`` — everything needed to recreate the
   collection: fields (name, type, dim / max_length / max_capacity and other type params, element type,
   is_primary, auto_id, nullable, default value, partition/clustering key, description), dynamic-field flag,
   partitions and index definitions (field, index name, index type, metric type, build params).
2. ``{"type": "rows", "partition": name, "rows": [...]}`` — one line per ``query_iterator`` batch, so neither
   side ever holds more than one batch. Rows carry every schema field plus dynamic keys. Floats are written
   with Python's shortest round-trip ``repr``; FLOAT_VECTOR values are base64 of little-endian float32
   (exact and ~3x smaller than decimal text), BINARY_VECTOR base64 of its bytes, SPARSE_FLOAT_VECTOR a list
   of ``[index, value]`` pairs.
3. ``{"type": "trailer", "rows": {partition: count}, "total": n}`` — a stream without it is truncated and
   refused on import; the counts are checked against what the restored collection reports.

auto_id collections: the restored collection keeps ``auto_id=True`` (the schema is restored as it was) and
the original primary keys are inserted anyway. Milvus ≥ 2.6 rejects caller-supplied keys on an auto_id
collection unless the collection property ``allow_insert_auto_id`` is ``"true"``, so the import sets it for
the duration of the copy and drops it afterwards (unless the source had it). Milvus Lite accepts the keys
without it. Every insert's returned ids are compared with the keys sent, so a server that silently
reassigns keys fails the import instead of producing a restore whose ids differ. Caveat: the target's id
allocator does not know about the imported keys. Real Milvus allocates from its timestamp oracle, which is
ahead of any key it issued before; Milvus Lite allocates from its row sequence, so after restoring a
collection whose keys exceed its row count (rows were deleted) a later auto-assigned key can collide.

Index build params are sent as one JSON ``params`` entry (the wire format older pymilvus used) rather than
flattened keys: Milvus accepts both, and Milvus Lite only reads the JSON entry — flattened keys are silently
dropped there.

Rows are read with ``query_iterator`` (one MVCC snapshot per partition on Milvus). For VARCHAR primary keys
the export pages with its own key cursor instead, because pymilvus's iterator pastes the last key into its
filter unescaped and fails on keys containing a quote, backslash or newline; those pages are each read at
Strong consistency rather than from one snapshot.

Not supported (refused at export with a clear error): collections with functions (BM25, embeddings), struct
array fields, FLOAT16/BFLOAT16/INT8 vectors and other types not listed in ``_SUPPORTED_TYPES``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

# pymilvus ships no types: its schema and index objects, protobuf defaults and row values are the Any here.
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.client.types import LoadState

from recovery.backup.errors import CollectionExistsError, ExportFormatError, MilvusBackupError
from statemachines.json_types import JsonObject

FORMAT = "aegis.milvus-export"
FORMAT_VERSION = 1
DEFAULT_PARTITION = "_default"
ALLOW_INSERT_AUTO_ID = "allow_insert_auto_id"
_READ_CHUNK = 1024 * 1024

_SCALAR_TYPES = {
    DataType.BOOL,
    DataType.INT8,
    DataType.INT16,
    DataType.INT32,
    DataType.INT64,
    DataType.FLOAT,
    DataType.DOUBLE,
    DataType.VARCHAR,
    DataType.JSON,
    DataType.ARRAY,
}
_VECTOR_TYPES = {DataType.FLOAT_VECTOR, DataType.BINARY_VECTOR, DataType.SPARSE_FLOAT_VECTOR}
_SUPPORTED_TYPES = _SCALAR_TYPES | _VECTOR_TYPES

# describe_index keys that describe build progress, not the index definition.
_INDEX_STATUS_KEYS = {
    "field_name",
    "index_name",
    "total_rows",
    "indexed_rows",
    "pending_index_rows",
    "state",
    "index_state_fail_reason",
}
_DEFAULT_VALUE_KINDS = ("bool_data", "int_data", "long_data", "float_data", "double_data", "string_data")


@dataclass
class ExportStats:
    collection: str
    rows_by_partition: dict[str, int] = field(default_factory=dict)
    total_rows: int = 0
    bytes_written: int = 0
    seconds: float = 0.0


@dataclass
class ImportStats:
    collection: str
    source_collection: str
    rows_by_partition: dict[str, int] = field(default_factory=dict)
    total_rows: int = 0
    indexes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def list_collections(client: MilvusClient) -> list[str]:
    """Names of the collections in the client's database, sorted so backup runs are reproducible."""
    return sorted(client.list_collections())


# ---------------------------------------------------------------- schema and index description


def _type_name(value: int) -> str:
    name: str = DataType(value).name   # pymilvus is untyped: DataType is Any here
    return name


def _default_value(raw: Any) -> JsonObject | None:
    """pymilvus hands defaults back as a protobuf ValueField; keep the kind and the plain value."""
    if raw is None:
        return None
    kind = raw.WhichOneof("data")
    if kind is None:
        return None
    if kind not in _DEFAULT_VALUE_KINDS:
        raise MilvusBackupError(f"default value of kind {kind!r} is not supported by the Milvus export")
    return {"kind": kind, "value": getattr(raw, kind)}


def _describe_schema(desc: JsonObject) -> JsonObject:
    collection = desc["collection_name"]
    if desc.get("functions"):
        raise MilvusBackupError(
            f"collection {collection!r} uses functions (BM25/embedding); the Milvus export does not support them"
        )
    if desc.get("struct_array_fields"):
        raise MilvusBackupError(f"collection {collection!r} has struct array fields, which the export does not support")
    fields = []
    for f in desc["fields"]:
        dtype = DataType(f["type"])
        if dtype not in _SUPPORTED_TYPES:
            raise MilvusBackupError(
                f"field {f['name']!r} of collection {collection!r} has type {dtype.name}, "
                "which the Milvus export does not support"
            )
        out: JsonObject = {
            "name": f["name"],
            "type": dtype.name,
            "description": f.get("description", ""),
            "params": dict(f.get("params") or {}),
            "is_primary": bool(f.get("is_primary", False)),
            "auto_id": bool(f.get("auto_id", False)),
            "nullable": bool(f.get("nullable", False)),
            "is_partition_key": bool(f.get("is_partition_key", False)),
            "is_clustering_key": bool(f.get("is_clustering_key", False)),
        }
        if f.get("element_type") is not None:
            out["element_type"] = _type_name(f["element_type"])
        default = _default_value(f.get("default_value"))
        if default is not None:
            out["default_value"] = default
        fields.append(out)
    if sum(1 for f in fields if f["is_primary"]) != 1:
        raise MilvusBackupError(f"collection {collection!r} has no single primary key field")
    return {
        "fields": fields,
        "enable_dynamic_field": bool(desc.get("enable_dynamic_field", False)),
        "description": desc.get("description", ""),
    }


def _describe_index(client: MilvusClient, collection: str, index_name: str) -> JsonObject:
    info = dict(client.describe_index(collection, index_name) or {})
    if not info:
        raise MilvusBackupError(f"index {index_name!r} of collection {collection!r} vanished during the export")
    params: JsonObject = {}
    nested = info.pop("params", None)
    if isinstance(nested, dict):
        params.update(nested)
    definition: JsonObject = {
        "field_name": info.get("field_name", ""),
        "index_name": info.get("index_name", index_name),
        "index_type": info.pop("index_type", ""),
        "metric_type": info.pop("metric_type", ""),
    }
    # Milvus Lite reports search defaults separately as JSON text; keep them so they are recreated too.
    search_params = info.pop("search_params", None)
    if isinstance(search_params, str):
        search_params = json.loads(search_params)
    # Real Milvus reports build params as flat keys next to index_type/metric_type.
    for key, value in info.items():
        if key not in _INDEX_STATUS_KEYS:
            params[key] = value
    definition["params"] = params
    if search_params:
        definition["search_params"] = search_params
    return definition


# ---------------------------------------------------------------- row encoding


def _encode_row(row: JsonObject, vector_types: dict[str, DataType]) -> JsonObject:
    out = dict(row)
    for name, dtype in vector_types.items():
        value = out.get(name)
        if value is None:
            continue
        if dtype == DataType.FLOAT_VECTOR:
            out[name] = base64.b64encode(np.asarray(value, dtype="<f4").tobytes()).decode("ascii")
        elif dtype == DataType.BINARY_VECTOR:
            # pymilvus returns a binary vector as bytes, or as a one-element list of bytes.
            raw = value[0] if isinstance(value, list) else value
            out[name] = base64.b64encode(bytes(raw)).decode("ascii")
        else:
            out[name] = [[int(i), float(v)] for i, v in _sparse_items(value)]
    return out


def _sparse_items(value: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(value, dict):
        return sorted(value.items())
    raise MilvusBackupError(f"unexpected sparse vector value of type {type(value).__name__}")


def _decode_row(row: JsonObject, vector_types: dict[str, DataType]) -> JsonObject:
    for name, dtype in vector_types.items():
        value = row.get(name)
        if value is None:
            continue
        if dtype == DataType.FLOAT_VECTOR:
            # Kept as float32 so no float64 round trip can alter a bit on the way back in.
            row[name] = np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
        elif dtype == DataType.BINARY_VECTOR:
            row[name] = base64.b64decode(value)
        else:
            row[name] = {int(i): float(v) for i, v in value}
    return row


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__} in a Milvus export")


def _line(obj: JsonObject) -> bytes:
    # json writes floats with repr (shortest exact round trip) and NaN/Infinity as tokens json.loads reads back.
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_json_default) + "\n").encode()


# ---------------------------------------------------------------- export


def _iter_batches(
    client: MilvusClient,
    collection: str,
    partition: str,
    primary: JsonObject,
    output_fields: list[str],
    batch_size: int,
) -> Iterator[list[JsonObject]]:
    """Every row of one partition, ``batch_size`` at a time, in primary-key order."""
    if primary["type"] != DataType.VARCHAR.name:
        # query_iterator pins one snapshot (MVCC timestamp) for the whole partition on Milvus.
        iterator = client.query_iterator(
            collection, batch_size=batch_size, output_fields=output_fields, partition_names=[partition]
        )
        try:
            while batch := iterator.next():
                yield batch
        finally:
            iterator.close()
        return
    # pymilvus's query_iterator pastes the last string key into `pk > "<key>"` unescaped, so a key holding
    # a quote, backslash or newline at a batch boundary breaks it. The same key cursor, with the key quoted.
    pk = primary["name"]
    last: str | None = None
    while True:
        batch = client.query(
            collection,
            filter="" if last is None else f"{pk} > {_string_literal(last)}",
            output_fields=output_fields,
            partition_names=[partition],
            limit=batch_size,
            consistency_level="Strong",
            # The flags query_iterator sends: results in primary-key order, each page cut at its limit.
            iterator="True",
            reduce_stop_for_best="True",
        )
        # Only an empty page ends the partition: with reduce_stop_for_best a page may be short.
        if not batch:
            return
        yield list(batch)
        last = batch[-1][pk]


def _string_literal(value: str) -> str:
    """A double-quoted Milvus filter literal (C-style escapes, which both Milvus and Milvus Lite read)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def export_collection(client: MilvusClient, collection: str, out: BinaryIO, batch_size: int = 1000) -> ExportStats:
    """Write ``collection`` (schema, partitions, indexes, every row) to ``out``; see the module docstring.

    Rows are read partition by partition with ``query_iterator`` (VARCHAR keys: an equivalent key cursor, see
    ``_iter_batches``); a collection that is not loaded is loaded for the export and released again afterwards.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    started = time.monotonic()
    if not client.has_collection(collection):
        raise MilvusBackupError(f"collection {collection!r} does not exist; check the name with list_collections")
    desc = client.describe_collection(collection)
    schema = _describe_schema(desc)
    partitions = list(client.list_partitions(collection))
    indexes = [_describe_index(client, collection, name) for name in client.list_indexes(collection)]
    vector_types = {f["name"]: DataType[f["type"]] for f in schema["fields"] if DataType[f["type"]] in _VECTOR_TYPES}
    primary = next(f for f in schema["fields"] if f["is_primary"])
    header = {
        "type": "header",
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "collection": collection,
        "exported_at": datetime.now(UTC).isoformat(),
        "schema": schema,
        "partitions": partitions,
        "indexes": indexes,
        "properties": dict(desc.get("properties") or {}),
        "consistency_level": desc.get("consistency_level"),
        "num_shards": desc.get("num_shards"),
        "num_partitions": desc.get("num_partitions"),
    }
    stats = ExportStats(collection=collection)

    def write(obj: JsonObject) -> None:
        data = _line(obj)
        out.write(data)
        stats.bytes_written += len(data)

    write(header)
    # "*" alone may leave vector fields out on some server versions; naming them makes sure they come along.
    output_fields = ["*", *vector_types]
    was_loaded = client.get_load_state(collection)["state"] == LoadState.Loaded
    if not was_loaded:
        client.load_collection(collection)
    try:
        for partition in partitions:
            count = 0
            for batch in _iter_batches(client, collection, partition, primary, output_fields, batch_size):
                rows = [_encode_row(dict(row), vector_types) for row in batch]
                write({"type": "rows", "partition": partition, "rows": rows})
                count += len(rows)
            stats.rows_by_partition[partition] = count
            stats.total_rows += count
    finally:
        if not was_loaded:
            client.release_collection(collection)
    write({"type": "trailer", "rows": stats.rows_by_partition, "total": stats.total_rows})
    stats.seconds = time.monotonic() - started
    return stats


# ---------------------------------------------------------------- import


def _iter_lines(source: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    """Whole lines from a file object or from arbitrary byte chunks (e.g. a decrypting stream)."""
    if hasattr(source, "read"):
        reader = source

        def chunks() -> Iterator[bytes]:
            while piece := reader.read(_READ_CHUNK):
                yield piece

        pieces: Iterable[bytes] = chunks()
    else:
        pieces = source
    # bytearray appends in place, so a long line arriving in many small pieces stays linear.
    pending = bytearray()
    for piece in pieces:
        if not piece:
            continue
        pending += piece
        if b"\n" not in piece:
            continue
        *lines, rest = pending.split(b"\n")
        pending = bytearray(rest)
        yield from (bytes(line) for line in lines if line)
    if pending:
        yield bytes(pending)


def _iter_records(source: BinaryIO | Iterable[bytes]) -> Iterator[JsonObject]:
    for number, line in enumerate(_iter_lines(source), start=1):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ExportFormatError(f"line {number} of the Milvus export is not valid JSON: {exc}") from None
        if not isinstance(record, dict) or "type" not in record:
            raise ExportFormatError(f"line {number} of the Milvus export is not an export record")
        yield record


def _build_schema(spec: JsonObject) -> Any:
    fields = spec["fields"]
    primary = next(f for f in fields if f["is_primary"])
    schema = MilvusClient.create_schema(
        auto_id=primary["auto_id"],
        enable_dynamic_field=spec["enable_dynamic_field"],
        description=spec.get("description", ""),
    )
    for f in fields:
        kwargs: dict[str, object] = dict(f.get("params") or {})
        kwargs["description"] = f.get("description", "")
        if f["is_primary"]:
            kwargs["is_primary"] = True
            kwargs["auto_id"] = f["auto_id"]
        for flag in ("nullable", "is_partition_key", "is_clustering_key"):
            if f.get(flag):
                kwargs[flag] = True
        if "element_type" in f:
            kwargs["element_type"] = DataType[f["element_type"]]
        if "default_value" in f:
            kwargs["default_value"] = f["default_value"]["value"]
        schema.add_field(f["name"], DataType[f["type"]], **kwargs)
    return schema


def _index_params(client: MilvusClient, indexes: list[JsonObject]) -> Any:
    params = client.prepare_index_params()
    for index in indexes:
        kwargs: dict[str, object] = {}
        if index.get("metric_type"):
            kwargs["metric_type"] = index["metric_type"]
        if index.get("params"):
            # Nested under "params" so it travels as one JSON entry (see the module docstring).
            kwargs["params"] = {"params": index["params"]}
        if index.get("search_params"):
            kwargs["search_params"] = index["search_params"]
        params.add_index(
            index["field_name"], index_type=index["index_type"], index_name=index.get("index_name", ""), **kwargs
        )
    return params


def _count_rows(client: MilvusClient, collection: str) -> int:
    result = client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
    return int(result[0]["count(*)"])


def _count_partition_rows(client: MilvusClient, collection: str, partition: str) -> int:
    # Milvus Lite ignores partition_names on an unfiltered count(*). Partition stats count deleted rows
    # until compaction, which is exact here: the collection is fresh and nothing was deleted.
    return int(client.get_partition_stats(collection, partition)["row_count"])


def import_collection(
    client: MilvusClient,
    source: BinaryIO | Iterable[bytes],
    target_name: str | None = None,
    batch_size: int = 1000,
) -> ImportStats:
    """Recreate an exported collection as ``target_name`` (default: its original name), which must not exist.

    Creates the collection with the exported schema and partitions, inserts the rows partition by partition
    with their original primary keys, flushes, builds the exported indexes, loads it and checks the row counts
    against the trailer. On any failure the half-built collection is dropped so that a retry starts clean.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    started = time.monotonic()
    records = _iter_records(source)
    header = next(records, None)
    if header is None or header.get("type") != "header" or header.get("format") != FORMAT:
        raise ExportFormatError("this is not an Aegis Milvus export (no header line)")
    if header.get("version") != FORMAT_VERSION:
        raise ExportFormatError(
            f"Milvus export format version {header.get('version')} is not supported (expected {FORMAT_VERSION})"
        )
    name = target_name or header["collection"]
    if client.has_collection(name):
        raise CollectionExistsError(
            f"collection {name!r} already exists; drop it first or import under another name (target_name)"
        )

    schema_spec = header["schema"]
    fields = schema_spec["fields"]
    primary = next(f for f in fields if f["is_primary"])
    vector_types = {f["name"]: DataType[f["type"]] for f in fields if DataType[f["type"]] in _VECTOR_TYPES}
    partition_key = any(f.get("is_partition_key") for f in fields)
    properties = dict(header.get("properties") or {})
    create_kwargs: dict[str, object] = {}
    if header.get("consistency_level") is not None:
        create_kwargs["consistency_level"] = header["consistency_level"]
    if header.get("num_shards"):
        create_kwargs["num_shards"] = header["num_shards"]
    if partition_key and header.get("num_partitions"):
        create_kwargs["num_partitions"] = header["num_partitions"]
    if properties:
        create_kwargs["properties"] = properties

    client.create_collection(name, schema=_build_schema(schema_spec), **create_kwargs)
    stats = ImportStats(collection=name, source_collection=header["collection"])
    stats.rows_by_partition = dict.fromkeys(header["partitions"], 0)
    try:
        # With a partition key Milvus owns the partitions: they were created with the collection.
        if not partition_key:
            for partition in header["partitions"]:
                if partition != DEFAULT_PARTITION:
                    client.create_partition(name, partition)
        unlock_auto_id = primary["auto_id"] and properties.get(ALLOW_INSERT_AUTO_ID) != "true"
        if unlock_auto_id:
            client.alter_collection_properties(name, {ALLOW_INSERT_AUTO_ID: "true"})

        trailer: JsonObject | None = None
        for record in records:
            if trailer is not None:
                raise ExportFormatError("the Milvus export has data after its trailer")
            kind = record["type"]
            if kind == "trailer":
                trailer = record
            elif kind == "rows":
                partition = record["partition"]
                rows = [_decode_row(row, vector_types) for row in record["rows"]]
                for start in range(0, len(rows), batch_size):
                    _insert(client, name, rows[start : start + batch_size], primary["name"], partition, partition_key)
                stats.rows_by_partition[partition] = stats.rows_by_partition.get(partition, 0) + len(rows)
                stats.total_rows += len(rows)
            else:
                raise ExportFormatError(f"unknown record type {kind!r} in the Milvus export")
        if trailer is None:
            raise ExportFormatError("the Milvus export is truncated (no trailer); use a complete backup")
        expected = {p: int(n) for p, n in trailer["rows"].items() if int(n)}
        got = {p: n for p, n in stats.rows_by_partition.items() if n}
        if expected != got or int(trailer["total"]) != stats.total_rows:
            raise ExportFormatError(f"the Milvus export's rows {got} do not match its trailer {expected}")

        if unlock_auto_id:
            client.drop_collection_properties(name, [ALLOW_INSERT_AUTO_ID])
        # Milvus Lite (and sealed-segment index builds on Milvus) need the data flushed before indexing.
        client.flush(name)
        if header["indexes"]:
            client.create_index(name, _index_params(client, header["indexes"]))
            stats.indexes = [index.get("index_name") or index["field_name"] for index in header["indexes"]]
        client.load_collection(name)
        _verify_counts(client, name, stats, partition_key)
    except BaseException:
        # Leave nothing half-restored behind; the original error matters more than a failed cleanup.
        with contextlib.suppress(Exception):
            client.drop_collection(name)
        raise
    stats.seconds = time.monotonic() - started
    return stats


def _insert(
    client: MilvusClient, name: str, rows: list[JsonObject], pk: str, partition: str, partition_key: bool
) -> None:
    kwargs = {} if partition_key else {"partition_name": partition}
    result = client.insert(name, rows, **kwargs)
    sent = [row[pk] for row in rows]
    if list(result["ids"]) != sent:
        raise MilvusBackupError(
            f"Milvus did not keep the original primary keys while restoring {name!r}; "
            f"the server must allow inserting ids into auto_id collections ({ALLOW_INSERT_AUTO_ID})"
        )


def _verify_counts(client: MilvusClient, name: str, stats: ImportStats, partition_key: bool) -> None:
    total = _count_rows(client, name)
    if total != stats.total_rows:
        raise MilvusBackupError(f"restored collection {name!r} has {total} rows, the export has {stats.total_rows}")
    if partition_key:
        return
    for partition, expected in stats.rows_by_partition.items():
        actual = _count_partition_rows(client, name, partition)
        if actual != expected:
            raise MilvusBackupError(
                f"partition {partition!r} of restored collection {name!r} has {actual} rows, the export has {expected}"
            )
