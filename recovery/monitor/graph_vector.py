"""Monitor probes for Neo4j and Milvus that ask the server something, not just open a TCP port.

A server that accepts TCP connections may still be unable to answer (a hung JVM, a port taken by
something else, a wrong password): only a round trip says it serves. Each probe keeps its client
across cycles (a driver is costly to build: a connection pool, a routing table) and builds a new one
after any failure, so a restarted server is reconnected to and a broken pool is never reused.

- :class:`Neo4jProbe`: ``RETURN 1`` in a read session on the configured database, with the
  configured credentials (given as a callable, read when the driver is built; never logged or put
  in a reason). Connect, handshake, pool acquisition and the query are each bounded by the check's
  timeout; the loop's own timeout (``recovery.monitor.loop``) bounds the whole.
- :class:`MilvusProbe`: a Milvus server (``http(s)://``): ``list_collections`` under the timeout.
- :func:`milvus_lite_probe`: a Milvus Lite database (a file or directory path) has one owner, the
  process that serves it; opening it from the monitor would start a second server on the same
  data, so it is only checked to be present and readable, and its reason says it was not queried.

The observed value is the round trip in ms; a failure's reason is the error in one redacted line.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from recovery.monitor.checks import Observation
from recovery.redact import redact

if TYPE_CHECKING:
    from neo4j import Driver
    from pymilvus import MilvusClient

Credentials = Callable[[], tuple[str, str] | None]     # (user, password), or None: no authentication

_probing = threading.local()      # set while this thread runs a Milvus probe's call


class _QuietWhileProbing(logging.Filter):
    """pymilvus logs every failed call at ERROR with a traceback (and its reconnects at WARNING) to its
    own stderr handlers; while the Milvus server is down the monitor would print that every cycle. The
    probe reports the failure itself, in one line, so pymilvus's records are dropped — for the probe's
    calls only (a backup's or restore's failure stays logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_probing, "active", False)


def _quiet_pymilvus_while_probing() -> None:
    """Put the filter on pymilvus's handlers (its loggers do not propagate); after pymilvus is imported,
    since importing it configures them."""
    for name in ("pymilvus", "pymilvus.milvus_client"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _QuietWhileProbing) for f in handler.filters):
                handler.addFilter(_QuietWhileProbing())


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The error's message on one redacted line (a driver's ``message`` without its codes).

    Unlike ``recovery.redact.error_line`` it keeps every line, joined: the Neo4j driver's first
    line ("Couldn't connect to …:") says where and its second why.
    """
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    return redact(text)[:limit] or type(exc).__name__


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


class Neo4jProbe:
    """``RETURN 1`` on ``database``; the value is the round trip in ms (driver reused, rebuilt on failure)."""

    def __init__(self, uri: str, credentials: Credentials, database: str = "neo4j") -> None:
        self.uri, self.credentials, self.database = uri, credentials, database
        self._lock = threading.Lock()
        self._driver: Driver | None = None
        self.drivers_built = 0                   # how many drivers this probe built (reuse is observable)

    def _get(self, timeout: float) -> Driver:
        from neo4j import GraphDatabase

        with self._lock:
            if self._driver is None:
                self._driver = GraphDatabase.driver(
                    self.uri, auth=self.credentials(), connection_timeout=timeout,
                    connection_acquisition_timeout=timeout, max_connection_pool_size=2,
                    max_transaction_retry_time=0, keep_alive=True)
                self.drivers_built += 1
            return self._driver

    def close(self) -> None:
        with self._lock:
            driver, self._driver = self._driver, None
        if driver is not None:
            try:
                driver.close()
            except Exception:      # closing a broken pool: nothing more to do with it
                pass

    def __call__(self, timeout: float) -> Observation:
        from neo4j import READ_ACCESS, Query
        from neo4j.exceptions import AuthError, Neo4jError

        started = time.monotonic()
        try:
            driver = self._get(timeout)
            with driver.session(database=self.database, default_access_mode=READ_ACCESS) as session:
                session.run(Query("RETURN 1 AS ok", timeout=timeout)).single(strict=True)
        except AuthError as exc:
            self.close()
            return Observation(False, None, "ms", f"authentication refused: {one_line(exc)}",
                               {"reachable": True, "answered": False, "credentials_refused": True})
        except Neo4jError as exc:
            self.close()
            return Observation(False, None, "ms", f"query failed on database {self.database}: {one_line(exc)}",
                               {"reachable": True, "answered": False})
        except Exception as exc:
            self.close()
            return Observation(False, None, "ms", f"unreachable: {one_line(exc)}",
                               {"reachable": False, "answered": False})
        took = _ms(started)
        return Observation(True, took, "ms", f"RETURN 1 on database {self.database} answered in {took:g} ms",
                           {"reachable": True, "answered": True})


class MilvusProbe:
    """A Milvus server: ``list_collections`` under the timeout; the value is the round trip in ms."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._lock = threading.Lock()
        self._client: MilvusClient | None = None
        self.clients_built = 0

    def _get(self, timeout: float) -> MilvusClient:
        from pymilvus import MilvusClient

        with self._lock:
            if self._client is None:
                _quiet_pymilvus_while_probing()
                self._client = MilvusClient(uri=self.uri, timeout=timeout)
                self.clients_built += 1
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def __call__(self, timeout: float) -> Observation:
        started = time.monotonic()
        _probing.active = True
        try:
            names = self._get(timeout).list_collections(timeout=timeout)
        except Exception as exc:
            self.close()
            return Observation(False, None, "ms", f"unreachable: {one_line(exc)}", {"reachable": False})
        finally:
            _probing.active = False
        took = _ms(started)
        return Observation(True, took, "ms", f"list_collections answered in {took:g} ms: {len(names)} collection(s)",
                           {"reachable": True, "collections": len(names)})


def milvus_probe(uri: str) -> Callable[[float], Observation]:
    """The probe of ``components.milvus.uri``: a server (``http(s)://…``) is asked, a Lite path looked at."""
    return MilvusProbe(uri) if "://" in uri else milvus_lite_probe(uri)


def milvus_lite_probe(path: str) -> Callable[[float], Observation]:
    """A Milvus Lite database (a file, or the directory milvus-lite 3 keeps): present and readable.

    Not queried: its one owner is the process that serves it (opening it here would start a second
    server on the same data). The value is its size in bytes.
    """
    def probe(timeout: float) -> Observation:
        target = Path(path)
        if not target.exists():
            return Observation(False, None, "bytes", f"Milvus Lite database {path} is missing", {"reachable": False})
        if not os.access(target, os.R_OK | (os.X_OK if target.is_dir() else 0)):
            return Observation(False, None, "bytes", f"Milvus Lite database {path} is not readable",
                               {"reachable": False})
        size = _size(target)
        return Observation(True, float(size), "bytes",
                           f"Milvus Lite database present and readable ({size} bytes); not queried: "
                           "it has one owner, the process that serves it", {"reachable": True})
    return probe


def _size(target: Path) -> int:
    if target.is_file():
        return target.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(target):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:          # a file the owner removed meanwhile
                continue
    return total
