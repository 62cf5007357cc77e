"""Which replica runs the scheduler: the holder of a PostgreSQL advisory lock.

APScheduler 3 must never share a job store between schedulers, so exactly one process of a
cluster schedules. On PostgreSQL that is the process holding a session-level
``pg_try_advisory_lock`` on a dedicated connection it keeps open; the others are standbys and try
again every ``poll_seconds``. When the leader dies its connection closes and PostgreSQL releases
the lock at once (SIGKILL, crash); for a vanished host, TCP keepalives (5 s idle, 2 s × 2 probes)
let the server drop the session within ~9 s. A standby therefore takes over within
``poll_seconds`` (2 s) of the release: ≤ 10 s after any leader death.

The leader checks its lock every ``poll_seconds`` (the connection answers and ``pg_locks`` still
shows the lock granted to its backend); when it cannot, it stops its scheduler at once, before
trying again — a process never schedules without the lock. On SQLite the single process is always
the leader. Advisory locks are per database, so clusters on other databases do not interfere.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

log = logging.getLogger("aegis.scheduler")
LOCK_KEY = 0x4AE615        # "aegis scheduler"; one bigint key, below 2^31 so pg_locks shows it in objid
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2}
SERVER_KEEPALIVES = ("SET tcp_keepalives_idle = 5", "SET tcp_keepalives_interval = 2", "SET tcp_keepalives_count = 2")


class Leadership:
    """Elects this process or not; calls ``on_elected`` / ``on_lost`` / ``on_tick`` from one thread."""

    def __init__(self, database_url: str, *, on_elected: Callable[[bool], None], on_lost: Callable[[], None],
                 on_tick: Callable[[], None], poll_seconds: float = 2.0) -> None:
        self.url = database_url
        self.on_elected = on_elected       # called with True when a standby took over from another leader
        self.on_lost = on_lost
        self.on_tick = on_tick
        self.poll_seconds = poll_seconds
        self.is_leader = False
        self._was_standby = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None
        self._conn: Connection | None = None

    @property
    def role(self) -> str:
        return "leader" if self.is_leader else "standby"

    def start(self) -> None:
        """Try once now (a lone replica schedules from its first second), then keep polling."""
        self._step()
        self._thread = threading.Thread(target=self._loop, name="aegis-leader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.is_leader:
            self._lose("shutting down", logging.INFO)
        self._close()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self._step()

    def _step(self) -> None:
        try:
            if self.is_leader:
                if self._still_held():
                    self.on_tick()
                else:
                    self._lose("the lock connection failed or the lock is gone")
            elif self._acquire():
                self.is_leader = True
                log.info("scheduler: leader (this process runs the schedules)")
                try:
                    self.on_elected(self._was_standby)
                except Exception:
                    log.exception("scheduler: could not start the schedules")
                    self._lose("the schedules did not start; the lock is released for another replica")
            elif not self._was_standby:
                self._was_standby = True
                log.info("scheduler: standby (another replica holds the scheduler lock)")
        except Exception:
            log.exception("scheduler leadership check failed; retrying in %ss", self.poll_seconds)

    def _lose(self, why: str, level: int = logging.WARNING) -> None:
        self.is_leader = False
        self._was_standby = True
        log.log(level, "scheduler: standby (%s); schedules stopped here", why)
        try:
            self.on_lost()
        finally:
            self._close()

    # --- the lock ---------------------------------------------------------------------------------

    def _acquire(self) -> bool:
        if self.url.startswith("sqlite"):
            return True
        try:
            conn = self._conn if self._conn is not None else self._connect()
            return bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY}).scalar())
        except Exception as exc:
            log.warning("scheduler lock: cannot reach the store (%s); retrying", type(exc).__name__)
            self._close()
            return False

    def _still_held(self) -> bool:
        if self.url.startswith("sqlite"):
            return True
        if self._conn is None:
            return False   # closed after a failure: the lock went with the connection
        try:
            held = self._conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                " AND objid = :key AND objsubid = 1 AND granted"), {"key": LOCK_KEY}).scalar()
            return bool(held)
        except Exception:
            return False

    def _connect(self) -> Connection:
        # its own engine without a pool: a dead lock connection is never handed back silently reconnected
        self._engine = create_engine(self.url, poolclass=NullPool, connect_args=KEEPALIVES)
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        for setting in SERVER_KEEPALIVES:     # the server drops the session (and the lock) of a vanished host
            conn.exec_driver_sql(setting)
        self._conn = conn
        return conn

    def _close(self) -> None:
        conn, engine, self._conn, self._engine = self._conn, self._engine, None, None
        try:
            if conn is not None:
                conn.close()
            if engine is not None:
                engine.dispose()
        except Exception:
            log.debug("closing the scheduler lock connection failed", exc_info=True)
