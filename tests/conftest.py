"""Shared fixtures: real PostgreSQL (tests.pgcluster), the built-in Slack emulator, and helpers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.emulator.server import EmulatorServer
from tests.aegis_process import BOT_TOKEN, SIGNING_SECRET

pytest_plugins = ["tests.pgcluster", "tests.neo4j_server"]


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, bot_url="", signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN).start()
    try:
        yield server
    finally:
        server.stop()
