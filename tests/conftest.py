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
