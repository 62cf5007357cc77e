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
deleted from the spool once archived.

A primary outage must not end streaming. ``pg_receivewal`` retries by itself every few seconds
while the primary is away and says so on stderr each time; that stderr is drained continuously
by a reader thread and logged (redacted), because a pipe nobody reads fills up in an hours-long
outage and then blocks the receiver for good. When the receiver exits (it does when it cannot
connect at start) it is restarted with an exponential back-off that is reset only after a
receiver stayed up for ``stable_seconds``, so a receiver that keeps dying is not restarted in a
tight loop.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from recovery.backup.sources.postgres import client_env
from recovery.backup.wal import commands as wal
from recovery.redact import redact

log = logging.getLogger("aegis.wal.stream")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0


@dataclass
class StreamStats:
    shipped: list[str] = field(default_factory=list)
    already_archived: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)   # conflicts: left in the spool
    restarts: int = 0
    receiver_output_bytes: int = 0  # stderr drained from pg_receivewal (and logged)


def restart_delay(previous: float | None, uptime: float, stable_seconds: float) -> float:
    """How long to wait before restarting a receiver that exited after running ``uptime`` seconds.

    Doubles on every quick exit up to ``BACKOFF_MAX``; only a receiver that stayed up
    ``stable_seconds`` (or the first exit, ``previous`` None) starts again at ``BACKOFF_FIRST``.
    """
    if previous is None or uptime >= stable_seconds:
        return BACKOFF_FIRST
    return min(previous * 2, BACKOFF_MAX)


class WalStreamer:
    def __init__(self, dsn: str, spool: Path, slot: str, store: wal.WalStore, *, synchronous: bool = False,
                 pg_bin: str | Path | None = None, interval: float = 2.0, stable_seconds: float = 60.0) -> None:
        self.dsn, self.spool, self.slot, self.store = dsn, Path(spool), slot, store
        self.argv = wal.receivewal_command(dsn, self.spool, slot, synchronous=synchronous, pg_bin=pg_bin)
        self.interval = interval
        self.stable_seconds = stable_seconds
        self.stats = StreamStats()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._last_line = ""

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

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv, env=client_env(self.dsn), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

    def _drain(self, stderr: IO[bytes]) -> None:
        """Reader thread: log every line pg_receivewal writes, so its pipe can never fill and block it."""
        for raw in iter(stderr.readline, b""):
            self.stats.receiver_output_bytes += len(raw)
            line = redact(raw.decode(errors="replace").rstrip())
            if line:
                self._last_line = line
                log.info("pg_receivewal: %s", line[:1000])
        stderr.close()

    def _start_receiver(self) -> subprocess.Popen[bytes]:
        process = self._spawn()
        assert process.stderr is not None
        self._reader = threading.Thread(target=self._drain, args=(process.stderr,), name="pg_receivewal-stderr",
                                        daemon=True)
        self._reader.start()
        return process

    def _exited_output(self) -> str:
        if self._reader is not None:
            self._reader.join(timeout=5)  # the rest of its output, up to the exit
        return self._last_line or "no output"

    def run(self, stop: threading.Event) -> StreamStats:
        """Stream until ``stop`` is set; ship completed segments every ``interval`` seconds."""
        self.spool.mkdir(parents=True, exist_ok=True)
        wal.create_slot_if_missing(self.dsn, self.slot)
        delay: float | None = None
        started = time.monotonic()
        try:
            while not stop.is_set():
                if self._process is None or self._process.poll() is not None:
                    if self._process is not None:
                        uptime = time.monotonic() - started
                        delay = restart_delay(delay, uptime, self.stable_seconds)
                        log.warning("pg_receivewal exited (%s) after %.0f s: %s; restarting in %.0f s",
                                    self._process.returncode, uptime, self._exited_output(), delay)
                        self.stats.restarts += 1
                        if stop.wait(delay):
                            break
                    self._last_line = ""
                    self._process = self._start_receiver()
                    started = time.monotonic()
                try:
                    self.ship_completed()
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
            if self._reader is not None:
                self._reader.join(timeout=5)
        self.ship_completed()
        return self.stats
