"""What the backup, restore, wal and drill commands share: loading the config and store, the progress line.

Only the standard library is imported at load time: the config loader, the store and everything behind
them load when a command runs ``setup``, so building the parser (``aegis --help``) stays fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from bot.cli.checks import CommandLineError, check_database_url

if TYPE_CHECKING:
    from bot.config import Config
    from statemachines.store import SchemaStatus, Store


# The stores this command opened, closed by close_stores() before the fast exit (bot/cli/main.py).
_OPENED: list[Store] = []


class ProgressLine:
    """``postgres-base…: 512.0 MiB read, 48.2 MiB/s`` redrawn at most twice a second."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.last = 0.0

    def __call__(self, name: str, done: int) -> None:
        now = time.monotonic()
        start = self.started.setdefault(name, now)
        if now - self.last < 0.5:
            return
        self.last = now
        rate = done / max(now - start, 1e-6) / 2**20
        sys.stderr.write(f"\r{name}: {done / 2**20:8.1f} MiB read, {rate:6.1f} MiB/s ")
        sys.stderr.flush()


def setup(args: argparse.Namespace) -> tuple[Config, Store]:
    from bot.config import load_config
    from bot.secrets import install_masking

    config = load_config(args.config)
    install_masking(config)   # the backup, wal and restore commands log and print redacted, like serve
    return config, open_store()


def open_store() -> Store:
    """The store of a one-shot command: its schema checked, never migrated (only serve and migrate do).

    A store with no schema at all is created at once when it is SQLite (the embedded default: a first
    ``aegis backup run`` just works); a PostgreSQL store is shared by the bot's replicas, so its schema
    is created only by ``aegis migrate`` or ``aegis serve``, and a one-shot command refuses until then.
    """
    from statemachines.store import Store, database_url

    check_database_url(database_url())
    store = Store()
    _OPENED.append(store)
    status = store.schema_status()
    if status.current is None and store.engine.dialect.name == "sqlite":
        store.migrate()
    elif not status.up_to_date:
        raise CommandLineError(schema_refusal(status))
    return store


def schema_refusal(status: SchemaStatus) -> str:
    """The one line a command prints for a store whose schema it cannot work with."""
    if status.current is None:
        return "the store has no schema yet: run `aegis migrate` first"
    if status.behind:
        return (f"the store's schema is at revision {status.current}, older than this Aegis needs "
                f"({status.head}): run `aegis migrate` first")
    return (f"the store's schema revision {status.current} is unknown to this Aegis (newest {status.head}): "
            "a newer Aegis migrated it; upgrade Aegis here, or point AEGIS_DATABASE_URL at this version's store")


def close_stores() -> None:
    """Close the connections of the stores this command opened (their sessions committed in their blocks)."""
    while _OPENED:
        _OPENED.pop().dispose()
