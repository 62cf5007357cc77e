"""The plan step ``postgres_restore``: restore the production PostgreSQL in place, with rollback.

The mechanics and their order are ``recovery.backup.restore.in_place`` (precheck before anything
is stopped → stop → aside → restore → start → verify, rollback on any failure after the stop).
This action maps them onto the engine's contract (recovery/actions/base.py):

- ``precheck`` runs the whole precheck (backup in the catalog, a full backup streamed once and
  verified into its staging directory — a chain's copies verified —, every WAL file staged and
  gap-free), so a backup that vanished between plan and approval fails the step before
  the server is touched; it also completes the rollback of an attempt a crash interrupted;
- ``execute`` does the rest, verification included — a failing check must roll back, which it could
  not do later — and returns the evidence, what was put aside (``aside``), ``recovered_to`` and
  ``recovered_to_basis``; a rollback fails it with ``RolledBack`` (the engine sends the incident back
  to ``assessed`` with the reason), whose ``aside`` names the failed restore kept for diagnosis
  (``<data_dir>.aegis-failed-…``, kind ``postgres_data_dir``; a later successful restore of the same
  incident names it again, since the clean-up plan reads succeeded steps only); a step whose restore
  the journal already records as verified returns that output again instead of restoring twice;
- ``verify`` confirms the server still takes writes; ``is_done`` reads the journal;
- ``prepare`` (ahead of the approval, ``Action.prepare``) runs the precheck's non-destructive part
  while the step waits: the backup streamed and verified into the staging directory, the WAL staged;
  the approved step's ``precheck`` reuses it after cheap re-checks (``InPlaceRestore.prepare_ahead``,
  ``_reuse``); ``withdraw`` removes it when the step will not run.

``discard_postgres_aside`` is the clean-up piece the ``discard_aside`` step calls for kind
``postgres_data_dir``: the saved directory or a kept failed restore, only as the journal recorded them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from recovery.actions.base import Action, ActionError, Evidence, Progress, RolledBack
from recovery.actions.postgres import connect_action, is_in_recovery
from recovery.backup.restore.in_place import (
    InPlaceError,
    InPlaceRestore,
    Prepared,
    RolledBackError,
    aside_item,
    discard_aside,
)
from statemachines.json_types import JsonObject


class PostgresRestoreInPlace(Action):
    kind = "postgres_restore"
    destructive = True
    prepares_ahead = True

    def __init__(self, restore: InPlaceRestore, *, control: str, backup_time: str | None = None) -> None:
        self.restore = restore
        self.control = control   # "pg_ctl" | "hooks", for the description
        self.backup_time = backup_time
        self.prepared: Prepared | None = None
        self.lines: list[str] = []

    def describe(self) -> str:
        restore = self.restore
        when = f" (taken {self.backup_time})" if self.backup_time else ""
        to = restore.target_time.isoformat() if restore.target_time else "the end of the archived WAL"
        how = "pg_ctl" if self.control == "pg_ctl" else "the stop/start hooks"
        return (f"Restore {restore.server.label} in place from {restore.backup_id}{when} to {to}: stop it with {how}, "
                f"move {restore.data_dir} aside, restore, start, verify (rolled back on failure)")

    def _remember(self, line: str) -> None:
        self.lines.append(line)

    def prepare(self, progress: Progress) -> JsonObject | None:
        if self.restore.recorded_output() is not None:
            return None
        try:
            return self.restore.prepare_ahead(progress)
        except InPlaceError as exc:
            raise ActionError(str(exc)) from None

    def withdraw(self) -> None:
        self.restore.withdraw_ahead()

    def precheck(self) -> None:
        if self.restore.recorded_output() is not None:
            return   # already restored and verified for this incident: execute returns that
        try:
            self.prepared = self.restore.precheck(self._remember)
        except InPlaceError as exc:
            raise ActionError(str(exc)) from None

    def execute(self, progress: Progress) -> JsonObject:
        for line in self.lines:   # what the precheck found, on the step's progress too
            progress(line)
        recorded = self.restore.recorded_output()
        if recorded is not None:
            progress(f"{self.restore.backup_id} was already restored and verified for this incident: not again")
            return recorded
        try:
            prepared = self.prepared or self.restore.precheck(progress)
            return self.restore.run(prepared, progress)
        except RolledBackError as exc:   # the original data is back: the engine returns the incident to assessed
            raise RolledBack(str(exc), aside=[aside_item(exc.kept)] if exc.kept else []) from None
        except InPlaceError as exc:
            raise ActionError(str(exc)) from None
        finally:
            self.prepared = None
            self.restore.release()

    def verify(self) -> None:
        server = self.restore.server
        with connect_action(server.dsn, server.label) as conn:
            if is_in_recovery(conn):
                raise ActionError(f"{server.label} is in recovery (read-only) after the restore")

    def is_done(self) -> bool | None:
        return self.restore.is_done()


def restore_checks(dsn: str, label: str, observe: Callable[[], list[Evidence]]) -> Callable[[], list[Evidence]]:
    """The checks a restore runs before it counts as done (``PostgresVerification.observe``); a driver
    error is a failed check (so the restore rolls back), never a crash."""
    def checks() -> list[Evidence]:
        try:
            return observe()
        except ActionError as exc:
            return [{"check": f"{label} accepts writes", "observed": str(exc), "expected": "a committed write",
                     "ok": False}]
    return checks


def discard_postgres_aside(location: str) -> str:
    """Remove one data directory an in-place restore put aside (only that: see ``in_place.discard_aside``);
    returns what was done, ``ActionError`` when refused."""
    try:
        return discard_aside(location)
    except InPlaceError as exc:
        raise ActionError(str(exc)) from None
    except OSError as exc:
        raise ActionError(f"could not remove {location}: {exc.strerror or exc}") from None


def parse_time(value: object, what: str) -> datetime | None:
    """A step param's ISO time (None stays None); a naive or unreadable one is refused."""
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise ActionError(f"{what} {value!r} is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise ActionError(f"{what} {value!r} has no time zone")
    return parsed
