"""A small per-step journal for the in-place Neo4j and Milvus restores: what has been done so far.

One JSON file per plan step (``<aside_dir>/<component>-restore-<incident>-step<id>.json``), replaced
atomically (temporary file, fsync, rename) at each phase boundary, mode 0600. It exists for two
readers: ``is_done`` after a crash (the engine's ledger rule: done → succeeded, not done → ask again),
and a re-run of the same step, which must roll back from the export or aside copy the first attempt
made — not from a fresh copy of a half-restored database.

Phases, in order: ``saving`` (the rollback copy is being made; nothing changed yet) → ``saved`` (the
copy is complete) → ``restoring`` (the live data is being replaced) → ``restored`` (replaced and
verified: the step's effect is in place) or ``rolled_back`` (the original data is back).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from statemachines.json_types import JsonObject

SAVING, SAVED, RESTORING, RESTORED, ROLLED_BACK = "saving", "saved", "restoring", "restored", "rolled_back"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def aside_directory(path: Path) -> Path:
    """``path`` created if needed, owner-only (0700) when this call creates it."""
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        path.chmod(0o700)
    return path


class StepJournal:
    """The journal of one plan step of one component's in-place restore."""

    def __init__(self, aside_dir: Path, component: str, context: dict[str, str]) -> None:
        incident = _UNSAFE.sub("_", context.get("incident", "manual"))
        step = _UNSAFE.sub("_", context.get("step", "0"))
        self.path = aside_dir / f"{component}-restore-{incident}-step{step}.json"

    def read(self) -> JsonObject:
        """The last phase written (``{}`` when the step never started, or the file is unreadable)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def phase(self) -> str | None:
        phase = self.read().get("phase")
        return phase if isinstance(phase, str) else None

    def write(self, phase: str, **facts: object) -> JsonObject:
        """Record ``phase`` with ``facts`` merged over the previous entry's; durable when it returns."""
        entry = {**self.read(), **facts, "phase": phase}
        aside_directory(self.path.parent)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(entry, out, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return entry
