"""A small journal for the in-place Neo4j and Milvus restores: what the last restore of a target did.

One JSON file per restored target (``<aside_dir>/neo4j-restore-<database>.json``,
``<aside_dir>/milvus-restore-collections.json``), written by the restores' one ``Journal``
(``recovery/backup/restore/journal.py``: replaced atomically with fsync, 0600, with a short history of
phases), naming the incident and step that wrote it. Per target rather than per step, so that any
later restore of the same target — the same step approved again after a crash, or a step of a new
plan revision — finds an interrupted one.

It exists for two readers: ``is_done`` after a crash (the engine's ledger rule: done → succeeded,
not done → ask again), and the next restore of that target, which must roll back from the export or
aside copy the interrupted attempt made — not from a fresh copy of a half-restored database.

Phases, in order: ``saving`` (the rollback copy is being made; nothing changed yet) → ``saved`` (the
copy is complete) → ``restoring`` (the live data is being replaced) → ``restored`` (replaced and
verified: the step's effect is in place) or ``rolled_back`` (the original data is back).
"""

from __future__ import annotations

import re
from pathlib import Path

from recovery.backup.restore.journal import Journal, owner_only_directory
from statemachines.json_types import JsonObject

SAVING, SAVED, RESTORING, RESTORED, ROLLED_BACK = "saving", "saved", "restoring", "restored", "rolled_back"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class StepJournal:
    """The journal of the in-place restores of one target, read and written by one plan step."""

    def __init__(self, aside_dir: Path, component: str, target: str, context: dict[str, str]) -> None:
        self.path = aside_dir / f"{component}-restore-{_UNSAFE.sub('_', target)}.json"
        self.owner = {"incident": context.get("incident", "manual"), "step": context.get("step", "0")}

    def read(self) -> JsonObject:
        """The last phase written (``{}`` when no restore of the target started, or the file is unreadable)."""
        return Journal(self.path).read()

    def mine(self, entry: JsonObject) -> bool:
        """Whether ``entry`` was written by this plan step."""
        return all(entry.get(key) == value for key, value in self.owner.items())

    def interrupted(self, entry: JsonObject) -> bool:
        """A restore that changed the target and neither finished nor rolled back — or this step's own
        finished one (run again): its rollback copy is the one to keep using."""
        return entry.get("phase") in (SAVED, RESTORING) or (entry.get("phase") == RESTORED and self.mine(entry))

    def done(self) -> bool:
        """This step restored the target and verified it (its effect is in place)."""
        entry = self.read()
        return entry.get("phase") == RESTORED and self.mine(entry)

    def write(self, phase: str, **facts: object) -> JsonObject:
        """Record ``phase`` with ``facts`` merged over the previous entry's; durable when it returns."""
        owner_only_directory(self.path.parent)
        return Journal(self.path).write(phase, **self.owner, **facts)
