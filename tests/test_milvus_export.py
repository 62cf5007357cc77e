"""Milvus export/import round trips against a real Milvus Lite (see tests/milvus_server.py)."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import pytest
from pymilvus import DataType, MilvusClient

from recovery.backup.milvus_export import (
    CollectionExistsError,
    ExportFormatError,
    export_collection,
    import_collection,
    list_collections,
)
from tests.milvus_server import milvus_client  # noqa: F401  (fixture)

DIM = 16
PARTITION_ROWS = {"_default": 200, "alpha": 1400, "beta": 1400}
# Floats that a lossy decimal encoding would get wrong.
TRICKY_FLOATS = [0.1, 1 / 3, -0.0, 1e-38, 3.4028234663852886e38, 2.0**-149, 123456.789]
TRICKY_DOUBLES = [0.1, 1 / 3, -0.0, 5e-324, 1.7976931348623157e308, math.pi, float("nan"), float("inf")]
_STATUS_KEYS = {"total_rows", "indexed_rows", "pending_index_rows", "state"}


def _all_rows(client: MilvusClient, collection: str, pk: str) -> dict[Any, dict[str, Any]]:
    # One plain query (the collections here are small), so the check does not share the exporter's read path.
    fields = [f["name"] for f in client.describe_collection(collection)["fields"]]
    rows = client.query(collection, filter="", output_fields=["*", *fields], limit=10_000)
    assert len(rows) < 10_000
    return {row[pk]: dict(row) for row in rows}


def _float32_bits(vector: Any) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def _same_scalar(a: Any, b: Any) -> bool:
    # Bit-level float comparison, so -0.0 vs 0.0 and NaN are judged exactly.
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    return type(a) is type(b) and a == b


def _assert_rows_equal(source: dict[Any, dict[str, Any]], target: dict[Any, dict[str, Any]], vectors: set[str]):
    assert source.keys() == target.keys()
    for pk, row in source.items():
        restored = target[pk]
        assert row.keys() == restored.keys(), pk
        for name, value in row.items():
            if name in vectors:
                assert _float32_bits(value) == _float32_bits(restored[name]), (pk, name)
            else:
                assert _same_scalar(value, restored[name]), (pk, name, value, restored[name])


def _schema_view(client: MilvusClient, collection: str) -> dict[str, Any]:
    desc = client.describe_collection(collection)
    fields = [{k: v for k, v in f.items() if k != "field_id"} for f in desc["fields"]]
    return {
        "fields": fields,
        "auto_id": desc["auto_id"],
        "enable_dynamic_field": desc["enable_dynamic_field"],
        "description": desc["description"],
    }


def _index_view(client: MilvusClient, collection: str) -> list[dict[str, Any]]:
    views = []
    for name in sorted(client.list_indexes(collection)):
        info = client.describe_index(collection, name)
        views.append({k: v for k, v in info.items() if k not in _STATUS_KEYS})
    return views


def _make_docs(client: MilvusClient) -> np.ndarray:
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


def _search_ids(client: MilvusClient, collection: str, queries: np.ndarray) -> list[list[tuple[Any, float]]]:
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


def test_round_trip_preserves_rows_partitions_indexes_and_search(milvus_client: MilvusClient) -> None:  # noqa: F811
    client = milvus_client
    vectors = _make_docs(client)
    out = io.BytesIO()
    exported = export_collection(client, "docs", out, batch_size=700)
    assert exported.rows_by_partition == PARTITION_ROWS
    assert exported.total_rows == 3000
    assert exported.bytes_written == len(out.getvalue())

    imported = import_collection(client, io.BytesIO(out.getvalue()), target_name="docs_restored", batch_size=400)
    assert imported.total_rows == 3000
    assert imported.rows_by_partition == PARTITION_ROWS
    assert list_collections(client) == ["docs", "docs_restored"]

    assert client.get_collection_stats("docs_restored")["row_count"] == 3000
    assert sorted(client.list_partitions("docs_restored")) == sorted(client.list_partitions("docs"))
    for partition, count in PARTITION_ROWS.items():
        # A filter, because Milvus Lite ignores partition_names on an unfiltered count(*).
        got = client.query("docs_restored", filter="id >= 0", output_fields=["count(*)"], partition_names=[partition])
        assert got[0]["count(*)"] == count
    assert _schema_view(client, "docs_restored") == _schema_view(client, "docs")
    assert _index_view(client, "docs_restored") == _index_view(client, "docs")
    assert _index_view(client, "docs")[0]["params"] == {"nlist": 16}

    source = _all_rows(client, "docs", "id")
    target = _all_rows(client, "docs_restored", "id")
    _assert_rows_equal(source, target, {"vec"})
    # Vectors are also bit-identical to what was originally inserted, not just to the source's read-back.
    for i, vector in enumerate(vectors):
        assert _float32_bits(target[i * 7 + 3]["vec"]) == vector.tobytes()
    assert target[3 * 7 + 3]["extra"] == {"dyn": 3}
    assert target[4 * 7 + 3]["weight"] == 0.5
    assert target[0 * 7 + 3]["title"] is None

    queries = np.random.default_rng(11).standard_normal((5, DIM)).astype(np.float32)
    before = _search_ids(client, "docs", queries)
    after = _search_ids(client, "docs_restored", queries)
    assert [[pk for pk, _ in hits] for hits in after] == [[pk for pk, _ in hits] for hits in before]
    assert after == before
    assert all(len(hits) == 10 for hits in after)


def test_varchar_pk_round_trip_from_byte_chunks(milvus_client: MilvusClient) -> None:  # noqa: F811
    client = milvus_client
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description="varchar keys")
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("emb", DataType.FLOAT_VECTOR, dim=8)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("words", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=3, max_length=16)
    client.create_collection("names", schema=schema)
    rng = np.random.default_rng(3)
    rows = [
        {
            "key": f"doc-{i:04d}-日本" if i % 2 else f'k\n{i}"quoted"',
            "emb": rng.standard_normal(8).astype(np.float32),
            "sparse": {int(j): float(np.float32(1 / (j + 1))) for j in range(i % 4 + 1)},
            "words": ["a", "b\nc"][: i % 3],
        }
        for i in range(250)
    ]
    client.insert("names", rows)
    client.flush("names")

    out = io.BytesIO()
    stats = export_collection(client, "names", out, batch_size=64)
    assert stats.total_rows == 250
    data = out.getvalue()
    # Arbitrary chunk boundaries, as a decrypting/decompressing stream would deliver them.
    chunks = (data[i : i + 777] for i in range(0, len(data), 777))
    import_collection(client, chunks, target_name="names_restored", batch_size=100)

    source = _all_rows(client, "names", "key")
    target = _all_rows(client, "names_restored", "key")
    assert set(target) == {row["key"] for row in rows}
    assert {k: v["sparse"] for k, v in target.items()} == {k: v["sparse"] for k, v in source.items()}
    for row in source.values():
        row.pop("sparse")
    for row in target.values():
        row.pop("sparse")
    _assert_rows_equal(source, target, {"emb"})
    assert _schema_view(client, "names_restored") == _schema_view(client, "names")


def test_auto_id_collection_keeps_original_keys(milvus_client: MilvusClient) -> None:  # noqa: F811
    client = milvus_client
    schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=True)
    schema.add_field("pk", DataType.INT64, is_primary=True, auto_id=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    client.create_collection("auto", schema=schema)
    # Two inserts so the keys are not simply 0..n-1 of one batch.
    first = client.insert("auto", [{"v": [float(i), 0.0, 1.0, -1.0], "n": i} for i in range(60)])["ids"]
    second = client.insert("auto", [{"v": [0.0, float(i), 2.0, 0.5], "n": 100 + i} for i in range(40)])["ids"]
    original_ids = set(first) | set(second)
    client.flush("auto")
    index = client.prepare_index_params()
    index.add_index("v", index_type="HNSW", metric_type="COSINE", params={"params": {"M": 8, "efConstruction": 40}})
    client.create_index("auto", index)
    client.load_collection("auto")

    out = io.BytesIO()
    export_collection(client, "auto", out)
    import_collection(client, io.BytesIO(out.getvalue()), target_name="auto_restored")

    target = _all_rows(client, "auto_restored", "pk")
    assert set(target) == original_ids
    _assert_rows_equal(_all_rows(client, "auto", "pk"), target, {"v"})
    desc = client.describe_collection("auto_restored")
    assert desc["auto_id"] is True
    assert "allow_insert_auto_id" not in desc["properties"]  # the temporary unlock is gone again
    assert _index_view(client, "auto_restored") == _index_view(client, "auto")
    # The restored collection still assigns keys itself, and (no deletes here) they do not collide.
    new_id = client.insert("auto_restored", [{"v": [1.0, 1.0, 1.0, 1.0]}])["ids"][0]
    assert new_id not in original_ids


def test_import_refuses_existing_collection_and_truncated_streams(milvus_client: MilvusClient) -> None:  # noqa: F811
    client = milvus_client
    client.create_collection("small", dimension=4)
    client.insert("small", [{"id": i, "vector": [float(i)] * 4} for i in range(20)])
    out = io.BytesIO()
    export_collection(client, "small", out)
    data = out.getvalue()

    with pytest.raises(CollectionExistsError, match="already exists"):
        import_collection(client, io.BytesIO(data))
    with pytest.raises(CollectionExistsError):
        import_collection(client, io.BytesIO(data), target_name="small")
    assert client.get_collection_stats("small")["row_count"] == 20

    lines = data.splitlines(keepends=True)
    assert json.loads(lines[-1])["type"] == "trailer"
    with pytest.raises(ExportFormatError, match="truncated"):
        import_collection(client, io.BytesIO(b"".join(lines[:-1])), target_name="small_partial")
    # A failed import leaves nothing half-restored behind, so a retry can use the same name.
    assert not client.has_collection("small_partial")
    import_collection(client, io.BytesIO(data), target_name="small_partial")
    assert client.get_collection_stats("small_partial")["row_count"] == 20

    with pytest.raises(ExportFormatError):
        import_collection(client, io.BytesIO(b'{"type": "rows"}\n'), target_name="other")
    assert not client.has_collection("other")
