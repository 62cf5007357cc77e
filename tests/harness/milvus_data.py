"""Sample Milvus collections and exact comparisons, for the export and restore round-trip tests.

``make_docs`` builds a collection with every scalar kind, dynamic fields, partitions and an index;
the views and ``all_rows``/``assert_rows_equal`` compare two collections bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient

DIM = 16
PARTITION_ROWS = {"_default": 200, "alpha": 1400, "beta": 1400}
# Floats that a lossy decimal encoding would get wrong.
TRICKY_FLOATS = [0.1, 1 / 3, -0.0, 1e-38, 3.4028234663852886e38, 2.0**-149, 123456.789]
TRICKY_DOUBLES = [0.1, 1 / 3, -0.0, 5e-324, 1.7976931348623157e308, math.pi, float("nan"), float("inf")]
_STATUS_KEYS = {"total_rows", "indexed_rows", "pending_index_rows", "state"}


def all_rows(client: MilvusClient, collection: str, pk: str) -> dict[Any, dict[str, Any]]:
    # One plain query (the collections here are small), so the check does not share the exporter's read path.
    fields = [f["name"] for f in client.describe_collection(collection)["fields"]]
    rows = client.query(collection, filter="", output_fields=["*", *fields], limit=10_000)
    assert len(rows) < 10_000
    return {row[pk]: dict(row) for row in rows}


def float32_bits(vector: Any) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def _same_scalar(a: Any, b: Any) -> bool:
    # Bit-level float comparison, so -0.0 vs 0.0 and NaN are judged exactly.
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    return type(a) is type(b) and a == b


def assert_rows_equal(source: dict[Any, dict[str, Any]], target: dict[Any, dict[str, Any]], vectors: set[str]):
    assert source.keys() == target.keys()
    for pk, row in source.items():
        restored = target[pk]
        assert row.keys() == restored.keys(), pk
        for name, value in row.items():
            if name in vectors:
                assert float32_bits(value) == float32_bits(restored[name]), (pk, name)
            else:
                assert _same_scalar(value, restored[name]), (pk, name, value, restored[name])


def schema_view(client: MilvusClient, collection: str) -> dict[str, Any]:
    desc = client.describe_collection(collection)
    fields = [{k: v for k, v in f.items() if k != "field_id"} for f in desc["fields"]]
    return {
        "fields": fields,
        "auto_id": desc["auto_id"],
        "enable_dynamic_field": desc["enable_dynamic_field"],
        "description": desc["description"],
    }


def index_view(client: MilvusClient, collection: str) -> list[dict[str, Any]]:
    views = []
    for name in sorted(client.list_indexes(collection)):
        info = client.describe_index(collection, name)
        views.append({k: v for k, v in info.items() if k not in _STATUS_KEYS})
    return views


def make_docs(client: MilvusClient) -> np.ndarray:
    """INT64 pk, 16-dim vectors, scalars of every kind, dynamic keys, 2 extra partitions, IVF_FLAT index."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("title", DataType.VARCHAR, max_length=128, nullable=True)
    schema.add_field("score", DataType.FLOAT)
    schema.add_field("weight", DataType.DOUBLE, default_value=0.5)
    schema.add_field("rank", DataType.INT32)
    schema.add_field("flag", DataType.BOOL)
    schema.add_field("meta", DataType.JSON)
    schema.add_field("tags", DataType.ARRAY, element_type=DataType.INT64, max_capacity=4)
    client.create_collection("docs", schema=schema)
    client.create_partition("docs", "alpha")
    client.create_partition("docs", "beta")

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((sum(PARTITION_ROWS.values()), DIM)).astype(np.float32)
    # Subnormal and negative zero must survive too (huge values would break faiss k-means, not the export).
    vectors[0] = [1e-45, -0.0, 1 / 3, *([0.1] * (DIM - 3))]
    next_id = 0
    for partition, count in PARTITION_ROWS.items():
        rows = []
        for i in range(next_id, next_id + count):
            row: dict[str, Any] = {
                "id": i * 7 + 3,  # sparse, non-sequential keys
                "vec": vectors[i],
                "title": None if i % 5 == 0 else f"doc {i} – ünïcode",
                "score": TRICKY_FLOATS[i % len(TRICKY_FLOATS)],
                "weight": TRICKY_DOUBLES[i % len(TRICKY_DOUBLES)],
                "rank": -i,
                "flag": i % 2 == 0,
                "meta": {"i": i, "x": 1 / (i + 1), "nested": {"list": [i, "s", None, True]}},
                "tags": list(range(i % 5)),
            }
            if i % 3 == 0:
                row["extra"] = {"dyn": i}  # dynamic field
            if i % 4 == 0:
                del row["weight"]  # default value applies
            rows.append(row)
        for start in range(0, len(rows), 500):
            client.insert("docs", rows[start : start + 500], partition_name=partition)
        next_id += count
    client.flush("docs")
    index = client.prepare_index_params()
    # Build params nested under "params": Milvus Lite drops them when pymilvus flattens them (module docstring).
    index.add_index("vec", index_type="IVF_FLAT", metric_type="L2", params={"params": {"nlist": 16}})
    client.create_index("docs", index)
    client.load_collection("docs")
    return vectors


def search_ids(client: MilvusClient, collection: str, queries: np.ndarray) -> list[list[tuple[Any, float]]]:
    # nprobe == nlist scans every IVF list, so the search is exhaustive and the exact top-10 must match on both
    # sides; a smaller nprobe would depend on k-means training, which differs with insertion order.
    results = client.search(
        collection,
        data=[q.tolist() for q in queries],
        anns_field="vec",
        limit=10,
        search_params={"params": {"nprobe": 16}},
        output_fields=["id"],
    )
    return [[(hit["id"], hit["distance"]) for hit in hits] for hits in results]
