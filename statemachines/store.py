"""The database behind the incident store: engine, sessions, and Alembic migrations.

SQLite (``sqlite:///aegis.db``) is the embedded default; PostgreSQL
(``postgresql+psycopg://…``) is for production, where several bot replicas share one store.
The schema is created and upgraded only by Alembic (``migrate()``), never by ``create_all``.
``schema_status()`` is the cheap check for everything else: one look at ``alembic_version`` against the
revisions named in the migration files, without importing Alembic.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from statemachines.revisions import MIGRATIONS, migration_revisions

DEFAULT_DATABASE_URL = "sqlite:///aegis.db"


@dataclass(frozen=True)
class SchemaStatus:
    """The store's schema revision beside the ones this code ships."""

    current: str | None        # alembic_version of the store; None: no schema yet (a fresh store)
    head: str                  # the newest revision of statemachines/migrations
    known: frozenset[str]      # every revision of statemachines/migrations

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def behind(self) -> bool:
        """An older revision of ours: ``migrate()`` brings it up to date."""
        return self.current is not None and self.current in self.known and not self.up_to_date


def database_url() -> str:
    return os.environ.get("AEGIS_DATABASE_URL") or DEFAULT_DATABASE_URL


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _sqlite_engine(url: str) -> Engine:
    """SQLite with real transactions: SQLAlchemy's documented pysqlite recipe.

    pysqlite's own transaction handling starts a transaction only before an INSERT/UPDATE and not
    before a SAVEPOINT, so a ``begin_nested()`` block (role claims, votes, ledger rows) became its
    own transaction that RELEASE committed, independently of the surrounding one: a rolled-back
    claim stayed stored. With ``isolation_level = None`` pysqlite never issues BEGIN/COMMIT by
    itself and the ``begin`` event below opens every transaction explicitly.

    ``BEGIN IMMEDIATE`` takes the write lock up front. With a plain (deferred) BEGIN, two sessions
    that both read and then write deadlock on the lock upgrade, and SQLite fails one of them with
    SQLITE_BUSY at once instead of waiting ``busy_timeout``; IMMEDIATE makes writers queue. Readers
    queue too, which is fine for a bot whose transactions last milliseconds.
    """
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        # WAL lets readers proceed while one writer commits; the busy timeout serialises
        # writers instead of failing them.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Store:
    def __init__(self, url: str | None = None) -> None:
        self.url = url or database_url()
        self.engine = make_engine(self.url)

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest Alembic revision."""
        # Imported here: alembic costs ~11 MiB and is not needed by a process that never migrates.
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    def schema_status(self) -> SchemaStatus:
        """Where the store's schema stands, from ``alembic_version`` alone (for commands that never migrate)."""
        head, known = migration_revisions()
        with self.engine.connect() as connection:
            if not self.engine.dialect.has_table(connection, "alembic_version"):
                return SchemaStatus(None, head, known)
            current = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        return SchemaStatus(None if current is None else str(current), head, known)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work commits as one transaction, or rolls back on any error."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
