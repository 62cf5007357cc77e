"""The schema's migration revisions, read from the migration files' text.

Standard library only, so a one-shot command (``aegis wal fetch``'s lean path) can check that a catalog
is at this code's head without importing Alembic, SQLAlchemy or SQLModel.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
# `revision = '0009'` / `down_revision = '0008'` (or None) at the top of each migration file.
_REVISION_LINE = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*['\"]?([^'\"\s]+)['\"]?", re.M)


@cache
def migration_revisions() -> tuple[str, frozenset[str]]:
    """The head revision and all revisions (``RuntimeError`` unless the migrations have exactly one head)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for field, value in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            if field == "revision":
                revisions.add(value)
            elif value != "None":
                parents.add(value)
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"statemachines/migrations has {len(heads)} heads ({sorted(heads)}); expected one")
    return heads.pop(), frozenset(revisions)
