"""Milvus export/import round trips against a real Milvus Lite (see tests/harness/milvus_server.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from pymilvus import DataType, MilvusClient

from recovery.backup.sources.milvus import (
    CollectionExistsError,
    ExportFormatError,
    export_collection,
    import_collection,
    list_collections,
)
from tests.harness.milvus_data import (
    DIM,
    PARTITION_ROWS,
    all_rows,
    assert_rows_equal,
    float32_bits,
    index_view,
    make_docs,
    schema_view,
    search_ids,
)
from tests.harness.milvus_server import milvus_client  # noqa: F401  (fixture)


def test_round_trip_preserves_rows_partitions_indexes_and_search(milvus_client: MilvusClient) -> None:  # noqa: F811
    client = milvus_client
    vectors = make_docs(client)
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
    assert schema_view(client, "docs_restored") == schema_view(client, "docs")
    assert index_view(client, "docs_restored") == index_view(client, "docs")
    assert index_view(client, "docs")[0]["params"] == {"nlist": 16}

    source = all_rows(client, "docs", "id")
    target = all_rows(client, "docs_restored", "id")
    assert_rows_equal(source, target, {"vec"})
    # Vectors are also bit-identical to what was originally inserted, not just to the source's read-back.
    for i, vector in enumerate(vectors):
        assert float32_bits(target[i * 7 + 3]["vec"]) == vector.tobytes()
    assert target[3 * 7 + 3]["extra"] == {"dyn": 3}
    assert target[4 * 7 + 3]["weight"] == 0.5
    assert target[0 * 7 + 3]["title"] is None

    queries = np.random.default_rng(11).standard_normal((5, DIM)).astype(np.float32)
    before = search_ids(client, "docs", queries)
    after = search_ids(client, "docs_restored", queries)
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

    source = all_rows(client, "names", "key")
    target = all_rows(client, "names_restored", "key")
    assert set(target) == {row["key"] for row in rows}
    assert {k: v["sparse"] for k, v in target.items()} == {k: v["sparse"] for k, v in source.items()}
    for row in source.values():
        row.pop("sparse")
    for row in target.values():
        row.pop("sparse")
    assert_rows_equal(source, target, {"emb"})
    assert schema_view(client, "names_restored") == schema_view(client, "names")


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

    target = all_rows(client, "auto_restored", "pk")
    assert set(target) == original_ids
    assert_rows_equal(all_rows(client, "auto", "pk"), target, {"v"})
    desc = client.describe_collection("auto_restored")
    assert desc["auto_id"] is True
    assert "allow_insert_auto_id" not in desc["properties"]  # the temporary unlock is gone again
    assert index_view(client, "auto_restored") == index_view(client, "auto")
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
