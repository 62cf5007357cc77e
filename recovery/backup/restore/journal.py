"""A restore's journal: the last phase of one restore as a small JSON file, durable before the next phase.

The one writer for every in-place restore (issue 9): the PostgreSQL one (``in_place.py``, beside the
data directory) and the Neo4j / Milvus / partial ones through ``recovery/actions/restore_journal.py``
(one file per restored target in the aside directory). Kept here, under ``recovery/backup/restore``,
because both the restore mechanics and the actions may import it (actions import restore modules, not
the other way round).

Each write merges the new facts over the previous entry's, sets ``phase`` and appends it to a short
``history`` (the last 50), then replaces the file atomically: a temporary file in the same directory,
fsynced, renamed over the old one, the directory fsynced. A crash leaves the old entry or the new one,
never half of one. The file is 0600 (``mkstemp``): it names data directories and collections.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from statemachines.json_types import JsonObject

HISTORY = 50


def owner_only_directory(path: Path) -> Path:
    """``path`` created if needed, owner-only (0700) when this call creates it."""
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        path.chmod(0o700)
    return path


@dataclass
class Journal:
    """The last phase of one restore (JSON, 0600, replaced atomically)."""

    path: Path

    def read(self) -> JsonObject:
        """The last entry written (``{}`` when none was, or the file is unreadable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, phase: str, **facts: object) -> JsonObject:
        """Record ``phase`` (facts merged over the previous entry's); durable when it returns."""
        entry = {**self.read(), **facts, "phase": phase}
        entry["history"] = [*entry.get("history", []), _moment(phase)][-HISTORY:]
        self._replace(entry)
        return entry

    def note(self, **facts: object) -> JsonObject:
        """Merge ``facts`` into the last entry without a new phase (e.g. that a staging prepared ahead was
        reused); durable when it returns."""
        entry = {**self.read(), **facts}
        self._replace(entry)
        return entry

    def restart(self, phase: str, *, keep: tuple[str, ...] = (), **facts: object) -> JsonObject:
        """A new attempt: the phases and facts start over, but for the ``keep`` keys of the old entry."""
        old = self.read()
        entry: JsonObject = {**{key: old[key] for key in keep if key in old}, **facts, "phase": phase,
                             "history": [_moment(phase)]}
        self._replace(entry)
        return entry

    def _replace(self, entry: JsonObject) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(entry, out, sort_keys=True, default=str)
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


def _moment(phase: str) -> JsonObject:
    return {"phase": phase, "at": datetime.now(UTC).isoformat()}
