"""Milvus Lite for tests: a real Milvus (gRPC server in this process) on a fresh temp db path.

pymilvus starts Milvus Lite itself when the URI is a path ending in ``.db``; that path becomes the data
directory, and only one server may own it, so every test gets its own path and the server is stopped
(and its directory lock released) at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from milvus_lite.server_manager import server_manager_instance
from pymilvus import MilvusClient


@contextmanager
def milvus_lite(directory: Path) -> Iterator[MilvusClient]:
    """A client on a Milvus Lite database under ``directory``; the server stops when the block ends."""
    uri = str(directory / "milvus.db")
    client = MilvusClient(uri=uri)
    try:
        yield client
    finally:
        client.close()
        server_manager_instance.release_server(uri)


@pytest.fixture
def milvus_client(tmp_path: Path) -> Iterator[MilvusClient]:
    with milvus_lite(tmp_path) as client:
        yield client
