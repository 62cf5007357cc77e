"""What the backup, restore and wal commands share: loading the config and store, the progress line."""

from __future__ import annotations

import argparse
import sys
import time

from bot.config import Config, load_config
from bot.secrets import install_masking
from statemachines.store import Store


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
    config = load_config(args.config)
    install_masking(config)   # the backup, wal and restore commands log and print redacted, like serve
    store = Store()
    store.migrate()
    return config, store
