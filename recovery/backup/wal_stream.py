"""Continuous WAL streaming (RPO near zero): ``pg_receivewal`` into a spool directory, shipped to the targets.

``archive_command`` ships a segment only when it is complete (or ``archive_timeout`` forces it), so
up to that much committed work exists only on the primary. ``pg_receivewal`` receives WAL as it is
written, through a replication slot (the primary keeps WAL until it was received — set
``max_slot_wal_keep_size`` so a dead streamer cannot fill the primary's disk); with
``--synchronous`` and the streamer's ``application_name`` in ``synchronous_standby_names`` commits
wait for it (RPO zero, at a latency cost).

The streamer runs on a host other than the primary. Its spool holds the open segment as
``<name>.partial``; every completed segment is pushed through the same encrypting pipeline and
catalog as ``aegis wal push`` (idempotent — a segment that ``archive_command`` already archived
identically is recognised, a different one is refused and kept in the spool for an operator) and
deleted from the spool once archived. ``pg_receivewal`` is restarted with a back-off if it exits.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from recovery.backup import wal
from recovery.backup.postgres import client_env
from recovery.redact import redact

log = logging.getLogger("aegis.wal.stream")


@dataclass
class StreamStats:
    shipped: list[str] = field(default_factory=list)
    already_archived: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)   # conflicts: left in the spool
    restarts: int = 0


class WalStreamer:
    def __init__(self, dsn: str, spool: Path, slot: str, store: wal.WalStore, *, synchronous: bool = False,
                 pg_bin: str | Path | None = None, interval: float = 2.0) -> None:
        self.dsn, self.spool, self.slot, self.store = dsn, Path(spool), slot, store
        self.argv = wal.receivewal_command(dsn, self.spool, slot, synchronous=synchronous, pg_bin=pg_bin)
        self.interval = interval
        self.stats = StreamStats()
        self._process: subprocess.Popen[bytes] | None = None

    def ship_completed(self) -> None:
        """Push every completed segment in the spool, oldest first; delete each once archived."""
        for path in sorted(self.spool.iterdir()):
            # .partial is the segment pg_receivewal is still writing: never ship or touch it
            if path.name in self.stats.refused or path.name.endswith(".partial") or not path.is_file():
                continue
            try:
                wal.check_wal_name(path.name)
            except ValueError:
                continue
            try:
                result = wal.push(path, self.store)
            except wal.WalConflictError as exc:
                self.stats.refused.append(path.name)
                log.error("WAL %s from the stream conflicts with the archive; kept in %s: %s", path.name,
                          self.spool, exc)
                continue
            (self.stats.already_archived if result.already_archived else self.stats.shipped).append(path.name)
            path.unlink()

    def _start_receiver(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv, env=client_env(self.dsn), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

    def run(self, stop: threading.Event) -> StreamStats:
        """Stream until ``stop`` is set; ship completed segments every ``interval`` seconds."""
        self.spool.mkdir(parents=True, exist_ok=True)
        wal.create_slot_if_missing(self.dsn, self.slot)
        backoff = 1.0
        try:
            while not stop.is_set():
                if self._process is None or self._process.poll() is not None:
                    if self._process is not None:
                        err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                        log.warning("pg_receivewal exited (%s): %s; restarting in %.0f s", self._process.returncode,
                                    redact(err.strip().splitlines()[-1] if err.strip() else "no output"), backoff)
                        self.stats.restarts += 1
                        if stop.wait(backoff):
                            break
                        backoff = min(backoff * 2, 60)
                    self._process = self._start_receiver()
                try:
                    self.ship_completed()
                    backoff = 1.0
                except Exception as exc:  # noqa: BLE001 - a target outage: keep streaming, ship later
                    log.warning("shipping streamed WAL failed, will retry: %s", redact(str(exc))[:300])
                stop.wait(self.interval)
        finally:
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
        self.ship_completed()
        return self.stats
