"""``drill_run`` rows: the accessors every drill step writes through (one short transaction each).

A run is written before anything is prepared, and every scratch resource is appended to its
``scratch`` list *before* it is created (``register``), so a process that dies mid-drill leaves a
row from which its leftovers can be found (``recovery.drills.scratch.sweep``). A running drill
renews ``lease_until``; ``owner`` is ``host:pid:start-time`` so a dead owner on this host is
recognised at once, and one on another host once its lease lapsed.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import col, select

from statemachines.json_types import JsonObject
from statemachines.models import DrillRun, require_id, utcnow
from statemachines.store import Store

LEASE = timedelta(seconds=60)
TRIGGERS = ("schedule", "slack", "cli")


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): tells pid reuse apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def this_owner() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '?'}"


def owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host; None when it is another host's (only its lease can tell)."""
    host, _, rest = owner.partition(":")
    pid_text, _, ticks = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    return _start_ticks(int(pid_text)) == ticks


def start(store: Store, name: str, trigger: str, *, requested_by: str | None = None,
          scenario: str | None = None) -> DrillRun:
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger must be one of {TRIGGERS}")
    run = DrillRun(name=name, trigger=trigger, requested_by=requested_by, scenario=scenario,
                   owner=this_owner(), lease_until=utcnow() + LEASE)
    with store.session() as session:
        session.add(run)
        session.flush()
        session.refresh(run)
    return run


def get(store: Store, run_id: int) -> DrillRun | None:
    with store.session() as session:
        return session.get(DrillRun, run_id)


def _change(store: Store, run_id: int, **values: object) -> None:
    with store.session() as session:
        session.execute(update(DrillRun).where(col(DrillRun.id) == run_id).values(**values))


def _append(store: Store, run_id: int, column: str, item: JsonObject) -> int:
    """Append to a JSON list column under the row's lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: FOR UPDATE)."""
    with store.session() as session:
        row = session.exec(select(DrillRun).where(DrillRun.id == run_id).with_for_update()).one()
        items = [*getattr(row, column), item]
        session.execute(update(DrillRun).where(col(DrillRun.id) == run_id).values({column: items}))
        return len(items) - 1


def register(store: Store, run_id: int, resource: JsonObject) -> int:
    """Record a scratch resource about to be created; returns its index in ``scratch``."""
    return _append(store, run_id, "scratch", {**resource, "state": "registered"})


def set_resource_state(store: Store, run_id: int, index: int, state: str) -> None:
    update_resource(store, run_id, index, state=state)


def update_resource(store: Store, run_id: int, index: int, **values: object) -> None:
    """Change fields of one registered resource (its state, what it was seen to hold) under the row's lock."""
    with store.session() as session:
        row = session.exec(select(DrillRun).where(DrillRun.id == run_id).with_for_update()).one()
        items = [dict(item) for item in row.scratch]
        items[index].update(values)
        session.execute(update(DrillRun).where(col(DrillRun.id) == run_id).values(scratch=items))


def add_step(store: Store, run_id: int, step: JsonObject) -> None:
    _append(store, run_id, "steps", step)


def renew(store: Store, run_id: int) -> None:
    _change(store, run_id, lease_until=utcnow() + LEASE)


def finish(store: Store, run_id: int, *, status: str, figures: JsonObject, objectives: list[JsonObject],
           report_path: str | None, error: str = "") -> None:
    _change(store, run_id, status=status, finished_at=utcnow(), figures=figures, objectives=objectives,
            report_path=report_path, error=error[:2000], lease_until=None)


def set_report_path(store: Store, run_id: int, path: str) -> None:
    _change(store, run_id, report_path=path)


def mark_cleaned(store: Store, run_id: int) -> None:
    _change(store, run_id, cleaned_at=utcnow())


def interrupted(store: Store, now: datetime | None = None) -> list[DrillRun]:
    """Running drills whose process is gone: dead on this host, or a lapsed lease elsewhere."""
    now = now or utcnow()
    with store.session() as session:
        running = list(session.exec(select(DrillRun).where(DrillRun.status == "running")))
    dead = []
    for run in running:
        alive = owner_alive(run.owner)
        lapsed = run.lease_until is None or run.lease_until < now
        if alive is False or (alive is None and lapsed):
            dead.append(run)
    return dead


def claim_interrupted(store: Store, run: DrillRun) -> bool:
    """Take over a dead drill for cleanup (compare-and-set on its owner): one cleaner per dead drill."""
    with store.session() as session:
        won = session.execute(
            update(DrillRun).where(col(DrillRun.id) == require_id(run), col(DrillRun.status) == "running",
                                   col(DrillRun.owner) == run.owner)
            .values(status="interrupted", finished_at=utcnow(), owner=this_owner(), lease_until=None,
                    error="the drill's process stopped before it finished (found at the next start)")
        ).rowcount == 1  # type: ignore[attr-defined]
    return bool(won)


def uncleaned(store: Store) -> list[DrillRun]:
    """Finished or interrupted drills whose scratch resources were not all removed (a failed cleanup)."""
    with store.session() as session:
        rows = list(session.exec(select(DrillRun).where(DrillRun.status != "running",
                                                        col(DrillRun.cleaned_at).is_(None))))
    return [r for r in rows if any(item.get("state") != "removed" for item in r.scratch)]


def recent(store: Store, limit: int = 20, name: str | None = None) -> list[DrillRun]:
    with store.session() as session:
        query = select(DrillRun)
        if name:
            query = query.where(DrillRun.name == name)
        return list(session.exec(query.order_by(col(DrillRun.id).desc()).limit(limit)))
