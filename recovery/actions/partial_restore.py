"""``postgres_partial_restore``: one table or one database of production back from a backup, the rest untouched.

Step params (contract, issue 9): ``{"backup_id", "backup_time", "target_time": ISO|null, "database",
"table": "schema.table"|null}`` — ``table`` null restores the whole database. The work is
``recovery.backup.restore.partial``'s; this class puts it in the action order:

- ``precheck`` (nothing restored, nothing changed): the names are usable, the backup is a good base
  backup in the catalog and one stored copy verifies completely (checksum and every chunk tag; the
  copy is kept for ``execute``), the target time is not before the backup ended, production answers
  and, for a table, its database exists there.
- ``execute``: the scratch copy is restored first; whether the table/database is in the backup can
  only be seen there, so a missing one is refused in ``execute`` — before the first statement
  against production ("table x is not in backup …; nothing in production was changed"). The
  scratch copy is always stopped and removed, also on failure; copies left by a process that died
  (``partial-<pid>-…`` of a pid no longer alive) are removed first, and by ``is_done``, which the
  engine asks right after a crash.
  A failure after production was changed whose undo worked (the table's transaction rolled back, or
  the restored database dropped and the aside one renamed back) fails the step with ``RolledBack``:
  the engine sends the incident back to ``assessed`` with the reason. A refusal before production
  was touched, or an undo that failed, is a plain ``ActionError`` (Retry / Abort).
- ``verify``: the restored object is in production under its name and can be read (its row count was
  compared inside the swap; from then on the application may write to it). There is no undo after a
  committed swap: the aside object is the way back, listed for the clean-up step.
- ``is_done`` (after a crash): the aside object this step made is found by the comment it carries
  (``aegis: put aside by INC-n step m …; restored rows=N``) and the restored object holds N rows →
  True; no such aside → False when the object is absent, None ("cannot tell") when it exists — a
  restore into a production without the object leaves no aside to recognise it by.

Output: ``evidence`` (row counts against the scratch copy's), ``aside`` (``postgres_table`` at
``D.schema.table__aegis_aside_<stamp>`` or ``postgres_database`` at ``D__aegis_aside_<stamp>``),
``recovered_to`` / ``recovered_to_basis`` (``pg_last_xact_replay_timestamp()`` of the scratch copy,
else the recovery target, else the backup's end), ``notes`` (what did not come along).
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from recovery.actions.base import Action, ActionError, Progress, RolledBack
from recovery.backup.catalog import BackupNotFound, good_base
from recovery.backup.repository import VerifiedCopy
from recovery.backup.restore import partial
from recovery.backup.restore.postgres import RestoreError
from recovery.backup.runner import BackupRunner
from recovery.backup.wal.archive import TargetWalStore
from recovery.health import describe_error
from statemachines.json_types import JsonObject
from statemachines.models import BackupRecord
from statemachines.store import Store

__all__ = ["PostgresPartialRestore", "discard_postgres_object_aside"]


def discard_postgres_object_aside(dsn: str, location: str) -> str:
    """Drop one table or database a partial restore put aside (only a name matching the aside pattern)."""
    try:
        return partial.discard_aside(dsn, location)
    except partial.PartialRestoreError as exc:
        raise ActionError(str(exc)) from None


class PostgresPartialRestore(Action):
    kind = "postgres_partial_restore"
    destructive = True

    def __init__(self, *, store: Store, runner: BackupRunner, dsn: str, label: str, backup_id: str,
                 target_time: datetime | None, database: str, table: str | None,
                 scratch: partial.ScratchSettings, context: dict[str, str] | None = None,
                 backup_time: str | None = None) -> None:
        self.store, self.runner, self.dsn, self.label = store, runner, dsn, label
        self.backup_id, self.backup_time, self.target_time = backup_id, backup_time, target_time
        self.database, self.table, self.scratch = database, table, scratch
        context = context or {}
        self.step = f"{context.get('incident', 'manual')} step {context.get('step', '0')}"
        self._copy: VerifiedCopy | None = None
        self._swap: partial.Swap | None = None

    @property
    def what(self) -> str:
        return f"table {self.database}.{self.table}" if self.table else f"database {self.database}"

    def describe(self) -> str:
        to = self.target_time.isoformat() if self.target_time else "the latest archived WAL"
        taken = f" (taken {self.backup_time})" if self.backup_time else ""
        extra = f"; connections to {self.database} are terminated for the rename" if not self.table else ""
        return (f"Partial restore of {self.what} on {self.label} from backup {self.backup_id}{taken} to {to}: "
                f"restored into a scratch copy first, then the current one is renamed aside "
                f"(…{partial.ASIDE}<time>) and replaced{extra}")

    # --- before anything ------------------------------------------------------------------------------

    def _record(self) -> BackupRecord:
        record = good_base(self.store, self.backup_id)
        if record is None:
            raise ActionError(f"backup {self.backup_id} is not a good PostgreSQL base backup in the catalog "
                              "(see `aegis backup list`); nothing was changed")
        return record

    def precheck(self) -> None:
        try:
            partial.check_database_name(self.database)
            if self.table:
                partial.split_table(self.table)
        except partial.PartialRestoreError as exc:
            raise ActionError(str(exc)) from None
        record = self._record()
        ended = record.finished_at
        if self.target_time is not None and ended is not None and \
                self.target_time < (ended if ended.tzinfo else ended.replace(tzinfo=UTC)):
            raise ActionError(f"target time {self.target_time.isoformat()} is before backup {self.backup_id} "
                              f"ended ({ended.isoformat()}): choose a later time or an older backup")
        try:
            self._copy = self.runner.repository.verified_copy(record)
        except RestoreError as exc:
            raise ActionError(str(exc)) from None
        try:
            databases = partial.databases_of(partial.in_database(self.dsn, "postgres"))
        except psycopg.Error as exc:
            raise ActionError(f"{self.label} is unreachable: {describe_error(exc)}") from None
        if self.table and self.database not in databases:
            raise ActionError(f"database {self.database} does not exist on {self.label}: restore the whole "
                              "database instead of one table; nothing was changed")

    # --- the work -------------------------------------------------------------------------------------

    def execute(self, progress: Progress) -> JsonObject:
        for gone in partial.remove_leftovers(self.scratch):
            progress(f"removed a scratch copy left by a process that died: {gone}")
        copy = self._copy or self.runner.repository.verified_copy(self._record())
        stamp = partial.stamp_now()
        try:
            with partial.scratch_copy(self.store, copy, TargetWalStore(self.runner), self.scratch,
                                      target_time=self.target_time, say=progress) as cluster:
                recovered, basis = partial.recovered_to(cluster, self.target_time, copy.record.finished_at)
                if self.table:
                    swap = partial.restore_table(cluster.dsn, self.dsn, self.database, self.table,
                                                 run_id=self.backup_id, step=self.step, stamp=stamp,
                                                 pg_bin=self.scratch.pg_bin, say=progress)
                else:
                    swap = partial.restore_database(cluster.dsn, self.dsn, self.database, run_id=self.backup_id,
                                                    step=self.step, stamp=stamp, work_dir=cluster.data_dir.parent,
                                                    pg_bin=self.scratch.pg_bin, say=progress)
        except partial.SwapRolledBack as exc:   # production is as it was: the engine returns the incident to assessed
            raise RolledBack(str(exc)) from None
        except partial.PartialRestoreError as exc:
            raise ActionError(str(exc)) from None
        except (RestoreError, BackupNotFound) as exc:   # the scratch copy did not come up: production untouched
            raise ActionError(f"the scratch copy of {self.backup_id} could not be restored: {exc}; "
                              "nothing in production was changed") from None
        except psycopg.Error as exc:
            raise ActionError(f"{self.what}: {describe_error(exc)}") from None
        self._swap = swap
        kind = "postgres_table" if self.table else "postgres_database"
        aside = [{"kind": kind, "location": swap.location, "component": "postgres"}] if swap.location else []
        return {"evidence": swap.evidence, "aside": aside, "recovered_to": recovered, "recovered_to_basis": basis,
                "backup_id": self.backup_id, "target_time": self.target_time.isoformat() if self.target_time else None,
                "database": self.database, "table": self.table, "rows": swap.rows, "notes": swap.notes,
                "scratch_copy": "removed"}

    def _rows_now(self) -> int | None:
        if self.table:
            return partial.table_rows(self.dsn, self.database, self.table)
        if self.database not in partial.databases_of(partial.in_database(self.dsn, "postgres")):
            return None
        return sum(partial.table_counts(partial.in_database(self.dsn, self.database)).values())

    def verify(self) -> None:
        """The restored object is in production under its name and can be read. Its row count is not
        compared again: the swap compared it inside its transaction (the step's evidence), and the
        application may write to the restored object from the moment that transaction committed."""
        if self._swap is None:
            return
        try:
            rows = self._rows_now()
        except psycopg.Error as exc:
            raise ActionError(f"{self.what}: {describe_error(exc)}") from None
        if rows is None:
            raise ActionError(f"{self.what} is not in {self.label} after the restore")

    def is_done(self) -> bool | None:
        partial.remove_leftovers(self.scratch)   # asked after a crash: the dead process's scratch copy goes now
        try:
            if self.table:
                found = partial.find_table_aside(self.dsn, self.database, self.table, self.step)
            else:
                aside = partial.find_database_aside(self.dsn, self.database, self.step)
                found = (aside[0], aside[1]) if aside else None
            rows = self._rows_now()
        except psycopg.Error:
            return None
        if found is None:
            return None if rows is not None else False
        return rows == found[1]
