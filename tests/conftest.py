"""Shared fixtures: real PostgreSQL (tests.harness.pgcluster), the built-in Slack emulator, and helpers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from recovery.monitor.history import MonitorHistory
from slack_emulator.server import EmulatorServer
from statemachines.store import Store
from tests.harness.aegis_process import BOT_TOKEN, SIGNING_SECRET
from tests.harness.flows_harness import serve_pg, store_for
from tests.harness.pgcluster import PgSingle

pytest_plugins = ["tests.harness.pgcluster", "tests.harness.neo4j_server", "tests.harness.cli_workspace"]


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, bot_url="", signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_tmp() -> Iterator[Path]:
    """A temp dir the postgres user can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="aegis-pgtmp-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def history(tmp_path: Path) -> Iterator[MonitorHistory]:
    """The monitor's history on a fresh, migrated SQLite store."""
    store = Store(f"sqlite:///{tmp_path / 'aegis.db'}")
    store.migrate()
    try:
        yield MonitorHistory(store)
    finally:
        store.dispose()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PgSingle]:
    """One PostgreSQL server per test module (each test makes its own database on it)."""
    yield from serve_pg()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated store, once on SQLite and once on PostgreSQL (a module may define its own ``store``)."""
    yield from store_for(request, tmp_path)
