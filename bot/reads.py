"""Read-only sessions for the request threads: they never wait for SQLite's write lock.

``Store.session()`` opens every SQLite transaction with ``BEGIN IMMEDIATE`` (statemachines/store.py),
so even a read queues behind every writer — and SQLite's busy handler sleeps in growing steps, which
is what a click's tail latency was made of. A check before a decision (which incident is this
channel's, does this step belong to it) needs no write lock: on SQLite these sessions run each
SELECT in autocommit (WAL readers never block), on PostgreSQL they use the store's own engine.

The one-column lookups are statements built once (SQLAlchemy then only binds the parameter: a
third of the cost of building the select per call), and what they find is remembered: an
incident's channel is set once and never changes, and a step never moves to another incident,
so a channel's or a step's incident, once found, is the answer for the life of the process. Only
found ids are remembered — "not found" may change when the row is created.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Select, bindparam, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from statemachines.models import Incident, PlanStep
from statemachines.store import Store


def read_engine(store: Store) -> Engine:
    if not store.url.startswith("sqlite"):
        return store.engine
    # as many connections as request threads: a checkout never waits, a returned one is never closed
    engine = create_engine(store.url, connect_args={"check_same_thread": False, "timeout": 30},
                           pool_size=32, max_overflow=8)

    @event.listens_for(engine, "connect")
    def _autocommit(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None     # no BEGIN at all: each SELECT reads the last commit
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


CHANNEL_INCIDENT = (select(col(Incident.id)).where(col(Incident.channel_id) == bindparam("key"))
                    .order_by(col(Incident.id).desc()).limit(1))
STEP_INCIDENT = select(col(PlanStep.incident_id)).where(col(PlanStep.id) == bindparam("key"))
INCIDENT_ID = select(col(Incident.id)).where(col(Incident.id) == bindparam("key"))
REMEMBERED = 10_000     # found ids kept per lookup; past that the memory starts again
K = TypeVar("K", str, int)


class Reads:
    def __init__(self, store: Store) -> None:
        self.engine = read_engine(store)
        self._channels: dict[str, int] = {}
        self._steps: dict[int, int] = {}

    # one-column lookups, no ORM objects: they run on the request thread before the ack
    def channel_incident(self, channel_id: str) -> int | None:
        """The id of the newest incident whose channel this is."""
        return self._remembered(self._channels, channel_id, CHANNEL_INCIDENT)

    def step_incident(self, step_id: int) -> int | None:
        """The incident a plan step belongs to; None for a step that does not exist."""
        return self._remembered(self._steps, step_id, STEP_INCIDENT)

    def incident_exists(self, incident_id: int) -> bool:
        return self._scalar(INCIDENT_ID, incident_id) is not None

    def _remembered(self, memory: dict[K, int], key: K, query: Select[int | None] | Select[int]) -> int | None:
        found = memory.get(key)
        if found is None:
            found = self._scalar(query, key)
            if found is not None:
                if len(memory) >= REMEMBERED:
                    memory.clear()
                memory[key] = found
        return found

    def _scalar(self, query: Select[int | None] | Select[int], key: str | int) -> int | None:
        with self.engine.connect() as connection:
            value = connection.execute(query, {"key": key}).scalar()
        return None if value is None else int(value)

    @contextmanager
    def session(self) -> Iterator[Session]:
        # reads only: nothing is committed; closing releases the connection and keeps what was loaded
        with Session(self.engine, expire_on_commit=False) as session:
            yield session
