"""Read-only sessions for the request threads: they never wait for SQLite's write lock.

``Store.session()`` opens every SQLite transaction with ``BEGIN IMMEDIATE`` (statemachines/store.py),
so even a read queues behind every writer — and SQLite's busy handler sleeps in growing steps, which
is what a click's tail latency was made of. A check before a decision (which incident is this
channel's, does this step belong to it) needs no write lock: on SQLite these sessions run each
SELECT in autocommit (WAL readers never block), on PostgreSQL they use the store's own engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlmodel import Session

from statemachines.store import Store


def read_engine(store: Store) -> Engine:
    if not store.url.startswith("sqlite"):
        return store.engine
    engine = create_engine(store.url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _autocommit(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None     # no BEGIN at all: each SELECT reads the last commit
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


class Reads:
    def __init__(self, store: Store) -> None:
        self.engine = read_engine(store)

    @contextmanager
    def session(self) -> Iterator[Session]:
        # reads only: nothing is committed; closing releases the connection and keeps what was loaded
        with Session(self.engine, expire_on_commit=False) as session:
            yield session
