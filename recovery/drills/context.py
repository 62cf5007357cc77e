"""What a drill works with: the catalog and its targets, the scratch settings, the objectives, and
the plain descriptions of what else is configured (resolved by the caller from its config)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from recovery.backup.runner import BackupRunner, Neo4jSource
from recovery.drills import runs
from recovery.drills.scoring import Objectives
from recovery.drills.scratch import Droppers
from recovery.redact import redact
from statemachines.json_types import JsonObject
from statemachines.models import utcnow
from statemachines.store import Store

Say = Callable[[str], None]      # a progress line for the person or job that started the drill


@dataclass(frozen=True)
class DrillSettings:
    scratch_dir: Path
    report_dir: Path
    restore_budget_seconds: float = 3600.0    # D1: backup_restore_test has 1 h
    retest_days: float = 7.0                  # every retained backup restore-tested at least this often
    os_user: str = "postgres"
    pg_bin: str | None = None
    step_delay_seconds: float = 0.0           # tests only: hold after each step so a crash can be timed


@dataclass(frozen=True)
class ServiceProbe:
    """A configured service and where its drill instance answers (``drill_url``: http(s):// or tcp://)."""

    name: str
    tier: int
    depends_on: tuple[str, ...] = ()
    drill_url: str | None = None


@dataclass
class DrillContext:
    store: Store
    runner: BackupRunner                      # targets, key and catalog of the backups
    settings: DrillSettings
    objectives: Objectives = field(default_factory=Objectives)
    neo4j: Neo4jSource | None = None
    neo4j_scratch: Neo4jSource | None = None     # drills.scratch.neo4j: a server of the drills' own
    milvus_uri: str | None = None
    services: list[ServiceProbe] = field(default_factory=list)
    droppers: Droppers = field(default_factory=Droppers)
    say: Say = field(default=lambda _line: None)


#: the drills' step names (``Steps.step``'s ``code``); each locale's drill_steps.j2 has a macro for each
STEP_CODES = ("prepare", "restore_test", "standby", "promote_write", "restore_component", "service", "clean_up")


class Steps:
    """Per-step timings written to the drill's row as each step ends (plain dicts, in order)."""

    def __init__(self, store: Store, run_id: int, say: Say, delay: float = 0.0) -> None:
        self.store, self.run_id, self.say, self.delay = store, run_id, say, delay
        self.failed: list[str] = []

    @contextmanager
    def step(self, name: str, code: str, params: JsonObject | None = None) -> Iterator[JsonObject]:
        """Time ``name`` (English; ``code`` + ``params`` name it in other languages: one of STEP_CODES,
        rendered by templates/<locale>/drill_steps.j2); the body may fill ``detail``/``ok`` in the
        yielded dict; an exception fails it."""
        began, started = time.monotonic(), utcnow()
        entry: JsonObject = {"name": name, "name_data": {"code": code, "params": params or {}}, "ok": True,
                             "detail": ""}
        self.say(f"… {name}")
        try:
            yield entry
        except Exception as exc:
            entry["ok"] = False
            entry["detail"] = redact(f"{type(exc).__name__}: {exc}")[:600]
            raise
        finally:
            self._end(entry, started, began)

    def _end(self, entry: JsonObject, started: datetime, began: float) -> None:
        entry.update(started_at=started.isoformat(), finished_at=utcnow().isoformat(),
                     seconds=round(time.monotonic() - began, 3))
        if not entry["ok"]:
            self.failed.append(entry["name"])
        runs.add_step(self.store, self.run_id, entry)
        mark = "ok" if entry["ok"] else "FAILED"
        detail = f": {entry['detail']}" if entry["detail"] else ""
        self.say(f"{mark} {entry['name']} ({entry['seconds']:.1f} s){detail}")
        if self.delay:
            time.sleep(self.delay)


@contextmanager
def lease_renewed(store: Store, run_id: int, every: float = 15.0) -> Iterator[None]:
    """Keep the drill's lease alive while it runs (another host tells a dead drill by a lapsed lease)."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(every):
            try:
                runs.renew(store, run_id)
            except Exception:   # a store blip: the next renewal may succeed; the drill goes on
                continue

    thread = threading.Thread(target=renew, name=f"aegis-drill-{run_id}-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
