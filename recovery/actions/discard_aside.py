"""The clean-up step: remove what recovery steps put aside, and nothing else.

A restore (or a base-backup re-protect) never deletes the data it replaces: it renames it aside and
lists it in its output (``"aside": [{"kind", "location", "component"}]``). Once the incident is
closed the planner proposes one ``discard_aside`` step over those items; only after its approval
are they removed. Each kind has its own remover, which refuses a location that is not something
Aegis put aside; the bot wires them (bot/wiring.py) since some need a connection from config:

- ``postgres_data_dir``: a data directory moved aside — by an in-place restore (its remover checks
  the restore's journal) or by a base-backup re-protect (``discard_postgres_data_dir``: it must
  carry the marker file :data:`MARKER` written when it was moved, must not be a configured live
  data directory, and must not hold a running server);
- ``neo4j_export``, ``milvus_collection``, the partial restore's objects: their restore modules' own
  removers.

An unknown kind refuses the whole step before anything is removed. Removing twice is harmless:
an item already gone is reported as such.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from recovery.actions.base import Action, ActionError, Progress, evidence
from statemachines.json_types import JsonObject

MARKER = "AEGIS_ASIDE.json"   # written into a data directory the moment Aegis moves it aside

Discarder = Callable[[str], str]   # location → what was done ("removed …", "… was already removed")


def mark_aside(aside: Path, *, original: Path, reason: str, step: str = "") -> None:
    """Record in a moved-aside data directory that Aegis put it there (the clean-up checks for it);
    ``step`` names the step that did it, so a re-run of that step after a crash can list it again."""
    (aside / MARKER).write_text(json.dumps({"original": str(original), "reason": reason, "step": step,
                                            "at": datetime.now(UTC).isoformat()}) + "\n", encoding="utf-8")


def aside_mark(path: Path) -> JsonObject | None:
    """The marker :func:`mark_aside` wrote in ``path``; None when there is none (or it is unreadable)."""
    try:
        found = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def discard_postgres_data_dir(location: str, *, live_data_dirs: tuple[str, ...] = ()) -> str:
    """Remove a PostgreSQL data directory Aegis moved aside; refuse any other path."""
    path = Path(location)
    if not path.is_absolute():
        raise ActionError(f"refusing to remove {location}: not an absolute path")
    if any(path.resolve() == Path(live).resolve() for live in live_data_dirs):
        raise ActionError(f"refusing to remove {location}: it is a configured live data directory")
    if not path.exists():
        return f"{location} was already removed"
    if not (path / MARKER).is_file():
        raise ActionError(f"refusing to remove {location}: Aegis did not put it aside (no {MARKER} in it)")
    if (path / "postmaster.pid").exists():
        raise ActionError(f"refusing to remove {location}: a server may be running on it (postmaster.pid)")
    shutil.rmtree(path)
    return f"removed the data directory {location}"


class DiscardAside(Action):
    kind = "discard_aside"
    destructive = True

    def __init__(self, items: list[JsonObject], discarders: Mapping[str, Discarder]) -> None:
        self.items = [dict(item) for item in items]
        self.discarders = dict(discarders)

    def describe(self) -> str:
        return "Remove what the recovery put aside: " + ", ".join(
            f"{item.get('kind')} {item.get('location')}" for item in self.items)

    def precheck(self) -> None:
        unknown = sorted({str(item.get("kind")) for item in self.items} - set(self.discarders))
        if unknown:
            raise ActionError(f"cannot remove aside items of kind {', '.join(unknown)}: no remover for it "
                              f"(known: {', '.join(sorted(self.discarders)) or 'none'}); nothing was removed")
        if any(not str(item.get("location") or "") for item in self.items):
            raise ActionError("an aside item has no location; nothing was removed")

    def execute(self, progress: Progress) -> JsonObject:
        self.precheck()
        observed: list[JsonObject] = []
        for item in self.items:
            kind, location = str(item["kind"]), str(item["location"])
            try:
                done = self.discarders[kind](location)
            except ActionError as exc:
                removed = [e["observed"] for e in observed]
                raise ActionError(f"{exc}" + (f" (already done: {'; '.join(removed)})" if removed else "")) from None
            progress(done)
            observed.append(evidence(f"{kind} {location}", done, "removed", True))
        return {"removed": [str(item["location"]) for item in self.items], "evidence": observed}
