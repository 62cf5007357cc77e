"""Partial PostgreSQL recovery: one table or one database from a scratch copy, the current one put aside.

How (issue 9, "Partial recovery"): the chosen base backup is restored, with archived WAL, to the
chosen time into a scratch data directory on a free port (``from_catalog.restore_postgres``, the
primitive behind ``aegis restore postgres`` and the drills). Only once the object is found in that
copy is production touched; the scratch copy is stopped and removed afterwards, also on failure
(``scratch_copy``).

A table ``schema.table`` of database D goes back in ONE production transaction (``lock_timeout``
30 s, so a busy table fails fast instead of queueing the application behind it):
rename the current table aside (``<table>__aegis_aside_<stamp>``, with its indexes and owned
sequences, whose names are schema-wide and would collide) → create it from the scratch copy's own
definition (``pg_dump --section=pre-data`` / ``post-data`` of that one table: columns, defaults,
owned and identity sequences, CHECK/NOT NULL, comment, grants, then primary key, unique and other
indexes, triggers, its own foreign keys to other tables) → rows copied with ``COPY … (FORMAT
binary)`` from the scratch copy → owned sequences set to the scratch copy's values → the row count
compared with the scratch copy's inside the transaction: a mismatch, a foreign key the restored
rows break, any error, and nothing was changed. The aside table carries a comment naming the step
that put it there and the rows restored (``is_done`` reads it after a crash). If the table does not
exist in production, nothing is renamed (said so).

What does NOT come along, said in the output's notes: foreign keys of *other* tables pointing at
the table, views, and publications keep pointing at the aside table (PostgreSQL binds them by
object id); the trigger functions and types the table uses must exist in production; a
partitioned table is refused (its partitions are separate tables: restore them one by one).

A whole database D: ``pg_dump -Fc`` of D from the scratch copy into the scratch directory →
in production, connections to D refused (``ALLOW_CONNECTIONS false``) and terminated, then
``ALTER DATABASE D RENAME TO D__aegis_aside_<stamp>`` (its own connection setting restored) →
``pg_restore -C`` creates D from the dump → every table's row count compared with the scratch
copy's. This cannot be one transaction (CREATE DATABASE never is), so a failure after the rename
drops what was created and renames the aside back (``undo_database``).

Names containing a dot are refused: locations are written ``D.schema.table``. The password never
reaches an argv: libpq clients get it in ``PGPASSWORD`` (``client_env``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from recovery.backup.repository import VerifiedCopy
from recovery.backup.restore.from_catalog import restore_postgres
from recovery.backup.restore.in_place import pid_alive
from recovery.backup.restore.postgres import PG_OS_USER, RestoredCluster, RestoreError, last_line, run_command
from recovery.backup.sources.postgres import client_env, pg_bin_dir, split_password
from recovery.backup.wal.archive import TargetWalStore
from recovery.objectives import recovered_point
from recovery.redact import redact
from statemachines.json_types import JsonObject
from statemachines.store import Store

ASIDE = "__aegis_aside_"
ASIDE_PATTERN = re.compile(r"__aegis_aside_\d{8}_\d{6}$")
MAX_NAME = 63                     # NAMEDATALEN - 1
LOCK_TIMEOUT = "30s"
SCRATCH_PREFIX = "partial-"
_META = re.compile(r"^\\(un)?restrict [A-Za-z0-9]+$")   # pg_dump ≥ 15.14 wraps plain output in these
Say = Callable[[str], None]


class PartialRestoreError(RestoreError):
    """A partial restore could not be done; the message says whether production was changed."""


class SwapRolledBack(PartialRestoreError):
    """Production was changed (the object renamed aside, the restored one created) and the change was
    undone: production is as it was before. Only raised when the undo worked."""


class NotInBackup(PartialRestoreError):  # noqa: N818 (a refusal, like RestoreRefused)
    """The object asked for is not in the restored copy: refused, production untouched."""


def stamp_now(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d_%H%M%S")


def aside_name(name: str, stamp: str, number: int | None = None) -> str:
    """``name__aegis_aside_<stamp>``, ``name`` shortened to fit 63 bytes (``number`` keeps shortened ones apart)."""
    suffix = f"{ASIDE}{stamp}"
    room = MAX_NAME - len(suffix)
    if len(name.encode()) <= room:
        return name + suffix
    tag = f"_{number}" if number is not None else ""
    short = name.encode()[:room - len(tag)].decode(errors="ignore")
    return f"{short}{tag}{suffix}"


def split_table(table: str) -> tuple[str, str]:
    """``schema.table`` → (schema, table); a bare name is in ``public``. Dots inside names are refused."""
    parts = table.split(".")
    if len(parts) == 1:
        parts = ["public", *parts]
    if len(parts) != 2 or not all(parts):
        raise PartialRestoreError(f"table {table!r}: give it as schema.table (names with a dot are not supported)")
    return parts[0], parts[1]


def check_database_name(database: str) -> None:
    if not database or "." in database:
        raise PartialRestoreError(f"database {database!r}: give a database name without a dot")


def in_database(dsn: str, database: str) -> str:
    return make_conninfo(dsn, dbname=database)


def _connect(dsn: str, *, autocommit: bool = True) -> psycopg.Connection[TupleRow]:
    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=10)


def _error(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {str(exc).strip()}")[:500]


# --- the scratch copy ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScratchSettings:
    root: Path                      # scratch copies live in <root>/partial-<pid>-<stamp>/
    os_user: str = PG_OS_USER
    pg_bin: str | None = None


def remove_leftovers(settings: ScratchSettings) -> list[str]:
    """Scratch copies of processes that died (their pid is in the directory name): stopped and removed."""
    removed: list[str] = []
    if not settings.root.is_dir():
        return removed
    for work in sorted(settings.root.glob(f"{SCRATCH_PREFIX}*")):
        pid = work.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        _remove_work_dir(work, settings)
        removed.append(str(work))
    return removed


def _remove_work_dir(work: Path, settings: ScratchSettings) -> None:
    data_dir = work / "pg"
    if (data_dir / "postmaster.pid").exists():
        cluster = RestoredCluster(data_dir, 0, work / "pg.sock", work / "pg.log", pg_bin_dir(settings.pg_bin),
                                  os_user=settings.os_user)
        with contextlib.suppress(RestoreError, subprocess.SubprocessError, OSError):
            cluster.stop("immediate")
    shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def scratch_copy(store: Store, copy: VerifiedCopy, wal_store: TargetWalStore, settings: ScratchSettings, *,
                 target_time: datetime | None, say: Say) -> Iterator[RestoredCluster]:
    """The backup restored (base + archived WAL to ``target_time`` or the end) on a free port; removed after."""
    from recovery.drills.scratch import free_port

    settings.root.mkdir(parents=True, exist_ok=True)
    settings.root.chmod(settings.root.stat().st_mode | 0o011)   # the server user must traverse it
    work = settings.root / f"{SCRATCH_PREFIX}{os.getpid()}-{stamp_now()}"
    work.mkdir(mode=0o711)
    work.chmod(0o711)
    try:
        say(f"restoring {copy.record.run_id} into a scratch copy ({work}) "
            f"{'to ' + target_time.isoformat() if target_time else 'to the end of the archived WAL'}")
        cluster, wal_files = restore_postgres(store, copy, wal_store, work / "pg", port=free_port(),
                                              socket_dir=work / "pg.sock", target_time=target_time,
                                              os_user=settings.os_user, pg_bin=settings.pg_bin)
        say(f"scratch copy running on port {cluster.port} ({wal_files} archived WAL file(s) replayed)")
        yield cluster
    finally:
        _remove_work_dir(work, settings)
        say("scratch copy stopped and removed")


def recovered_to(cluster: RestoredCluster, target_time: datetime | None,
                 backup_end: datetime | None) -> tuple[str | None, str]:
    """The time the scratch copy holds data up to, and what that figure was measured from."""
    with _connect(cluster.dsn) as conn:
        row = conn.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()
    return recovered_point(row[0] if row else None, target_time, backup_end)


def databases_of(dsn: str) -> list[str]:
    with _connect(dsn) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1").fetchall()
    return [str(r[0]) for r in rows]


# --- one table ---------------------------------------------------------------------------------------

def _relation(conn: psycopg.Connection[TupleRow], schema: str, table: str) -> tuple[int, str] | None:
    row = conn.execute("SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def _count(conn: psycopg.Connection[TupleRow], schema: str, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()
    return int(row[0]) if row else 0


def _owned_sequences(conn: psycopg.Connection[TupleRow], oid: int) -> list[str]:
    rows = conn.execute("SELECT s.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
                        "WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
                        "AND d.refobjid = %s AND d.deptype IN ('a', 'i') AND s.relkind = 'S' ORDER BY 1",
                        (oid,)).fetchall()
    return [str(r[0]) for r in rows]


def _indexes(conn: psycopg.Connection[TupleRow], oid: int) -> list[str]:
    rows = conn.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        "WHERE i.indrelid = %s ORDER BY 1", (oid,)).fetchall()
    return [str(r[0]) for r in rows]


def check_table_in(scratch_dsn: str, database: str, table: str, run_id: str) -> int:
    """The table's row count in the scratch copy; ``NotInBackup`` when it (or its database) is not there."""
    schema, name = split_table(table)
    if database not in databases_of(scratch_dsn):
        raise NotInBackup(f"table {table} is not in backup {run_id}: it has no database {database!r}; "
                          "nothing in production was changed")
    with _connect(in_database(scratch_dsn, database)) as conn:
        found = _relation(conn, schema, name)
        if found is None or found[1] not in ("r", "p"):
            raise NotInBackup(f"table {table} is not in backup {run_id} (database {database}); "
                              "nothing in production was changed")
        if found[1] == "p":
            raise PartialRestoreError(f"{table} is a partitioned table: restore its partitions one by one; "
                                      "nothing in production was changed")
        return _count(conn, schema, name)


def _dump_section(scratch_dsn: str, database: str, table: str, section: str, pg_bin: str | None) -> str:
    schema, name = split_table(table)
    pattern = f'"{schema}"."{name}"'
    proc = run_command([str(pg_bin_dir(pg_bin) / "pg_dump"), "-d", in_database(scratch_dsn, database),
                        "--section", section, "-t", pattern, "--no-publications", "--no-subscriptions"],
                       timeout=600)
    if proc.returncode != 0:
        raise PartialRestoreError(f"pg_dump of {table} from the scratch copy failed: {last_line(proc.stderr)}; "
                                  "nothing in production was changed")
    lines = []
    for line in proc.stdout.splitlines():
        if line.startswith("\\"):
            if not _META.match(line):
                raise PartialRestoreError(f"pg_dump wrote a psql command Aegis does not run ({line[:40]!r}); "
                                          "nothing in production was changed")
            continue
        lines.append(line)
    return "\n".join(lines)


def _marker(step: str, run_id: str, rows: int) -> str:
    return f"aegis: put aside by {step} (partial restore from {run_id}); restored rows={rows}"


def _copy_rows(scratch: psycopg.Connection[TupleRow], prod: psycopg.Connection[TupleRow],
               schema: str, name: str) -> None:
    columns = [str(r[0]) for r in scratch.execute(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
        "AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
        (schema, name)).fetchall()]
    target = sql.Identifier(schema, name)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    with scratch.cursor().copy(sql.SQL("COPY {} ({}) TO STDOUT (FORMAT binary)").format(target, cols)) as out, \
            prod.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(target, cols)) as into:
        for chunk in out:
            into.write(chunk)


def _copy_sequences(scratch: psycopg.Connection[TupleRow], prod: psycopg.Connection[TupleRow],
                    schema: str, oid: int) -> None:
    for seq in _owned_sequences(scratch, oid):
        row = scratch.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
            sql.Identifier(schema, seq))).fetchone()
        if row is not None:
            prod.execute("SELECT setval(%s::regclass, %s, %s)", (sql.Identifier(schema, seq).as_string(prod),
                                                                 row[0], row[1]))


@dataclass
class Swap:
    """What a partial restore did in production."""

    location: str | None                      # the aside object (D.schema.table__aegis_aside_… / D__aegis_aside_…)
    rows: int                                 # rows restored (a database: over every table)
    evidence: list[JsonObject] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str, str]] = field(default_factory=list)   # (INDEX|SEQUENCE|TABLE, old, aside)
    comment: str | None = None                # the table's own comment, replaced on the aside by the marker


def _rename(prod: psycopg.Connection[TupleRow], kind: str, schema: str, old: str, new: str) -> None:
    prod.execute(sql.SQL("ALTER {} {} RENAME TO {}").format(sql.SQL(kind), sql.Identifier(schema, old),
                                                            sql.Identifier(new)))


def _put_table_aside(prod: psycopg.Connection[TupleRow], schema: str, name: str, oid: int, stamp: str,
                     marker: str) -> tuple[list[tuple[str, str, str]], str | None]:
    """Rename the table, its indexes and owned sequences (schema-wide names) aside; mark the aside table."""
    renamed = [("INDEX", index, aside_name(index, stamp, n)) for n, index in enumerate(_indexes(prod, oid))]
    renamed += [("SEQUENCE", seq, aside_name(seq, stamp, n)) for n, seq in enumerate(_owned_sequences(prod, oid))]
    renamed.append(("TABLE", name, aside_name(name, stamp)))
    row = prod.execute("SELECT obj_description(%s, 'pg_class')", (oid,)).fetchone()
    for kind, old, new in renamed:
        _rename(prod, kind, schema, old, new)
    prod.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(schema, renamed[-1][2]),
                                                             sql.Literal(marker)))
    return renamed, (str(row[0]) if row and row[0] is not None else None)


def restore_table(scratch_dsn: str, prod_dsn: str, database: str, table: str, *, run_id: str, step: str,
                  stamp: str, pg_bin: str | None, say: Say) -> Swap:
    """Replace production's ``table`` with the scratch copy's, in one transaction (see the module docstring)."""
    schema, name = split_table(table)
    expected = check_table_in(scratch_dsn, database, table, run_id)
    pre = _dump_section(scratch_dsn, database, table, "pre-data", pg_bin)
    post = _dump_section(scratch_dsn, database, table, "post-data", pg_bin)
    swap = Swap(None, expected, notes=[
        "not restored with the table: foreign keys of other tables, views and publications that refer to it "
        "keep referring to the aside table; recreate them if they should follow the restored one"])
    lock_timeout = sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT))
    began = False   # whether production's transaction started (a failure after it is a rollback)
    try:
        with _connect(in_database(scratch_dsn, database)) as scratch, \
                _connect(in_database(prod_dsn, database), autocommit=False) as prod:
            source = _relation(scratch, schema, name)
            assert source is not None   # check_table_in found it
            with prod.transaction():
                began = True
                prod.execute(lock_timeout)
                current = _relation(prod, schema, name)
                if current is not None:
                    swap.renamed, swap.comment = _put_table_aside(prod, schema, name, current[0], stamp,
                                                                  _marker(step, run_id, expected))
                    swap.location = f"{database}.{schema}.{swap.renamed[-1][2]}"
                    say(f"renaming {database}.{table} aside to {swap.location} (in the restore's transaction)")
                else:
                    swap.notes.append(f"{database}.{table} did not exist in production: nothing was renamed aside")
                    say(swap.notes[-1])
                prod.execute(pre)
                prod.execute(lock_timeout)   # the dump's SETs reset it
                _copy_rows(scratch, prod, schema, name)
                _copy_sequences(scratch, prod, schema, source[0])
                prod.execute(post)
                restored = _count(prod, schema, name)
                if restored != expected:
                    raise SwapRolledBack(f"restored {restored} rows of {table} but the scratch copy holds "
                                         f"{expected}; the transaction was rolled back, nothing changed")
    except psycopg.Error as exc:
        if not began:
            raise PartialRestoreError(f"restoring {database}.{table} failed before production was changed: "
                                      f"{_error(exc)}") from None
        raise SwapRolledBack(f"restoring {database}.{table} failed and was rolled back, production is "
                             f"unchanged: {_error(exc)}") from None
    with contextlib.suppress(psycopg.Error), _connect(in_database(prod_dsn, database)) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, name)))   # fresh planner statistics
    say(f"{database}.{table} restored: {restored} rows, as in the scratch copy")
    swap.rows = restored
    swap.evidence = [{"check": f"rows in {database}.{table}", "observed": str(restored), "expected": str(expected),
                      "ok": True}]
    return swap


def find_table_aside(prod_dsn: str, database: str, table: str, step: str) -> tuple[str, int] | None:
    """The aside table ``step`` left for ``table`` and the rows it restored (from the aside's comment), if any."""
    schema, name = split_table(table)
    with _connect(in_database(prod_dsn, database)) as conn:
        rows = conn.execute(
            "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' "
            "AND obj_description(c.oid, 'pg_class') LIKE %s",
            (schema, f"aegis: put aside by {step} (%")).fetchall()
    for relname, comment in rows:
        found = re.search(r"restored rows=(\d+)$", str(comment))
        stem = str(relname).split(ASIDE)[0]
        if ASIDE_PATTERN.search(str(relname)) and name.startswith(stem) and found:
            return f"{database}.{schema}.{relname}", int(found.group(1))
    return None


def table_rows(prod_dsn: str, database: str, table: str) -> int | None:
    schema, name = split_table(table)
    with _connect(in_database(prod_dsn, database)) as conn:
        return _count(conn, schema, name) if _relation(conn, schema, name) else None


# --- one database ------------------------------------------------------------------------------------

def _maintenance(prod_dsn: str, database: str) -> str:
    return in_database(prod_dsn, "template1" if database == "postgres" else "postgres")


def table_counts(dsn: str) -> dict[str, int]:
    with _connect(dsn) as conn:
        tables = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                              "ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN "
                              "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
                              "AND c.relpersistence = 'p' ORDER BY 1, 2").fetchall()
        return {f"{s}.{t}": _count(conn, str(s), str(t)) for s, t in tables}


def _close_database(conn: psycopg.Connection[TupleRow], database: str) -> bool:
    """Refuse new connections to ``database`` and end the open ones; returns its previous ALLOW_CONNECTIONS."""
    row = conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (database,)).fetchone()
    allowed = bool(row and row[0])
    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(database)))
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                 "AND pid <> pg_backend_pid()", (database,))
    return allowed


def _rename_database(conn: psycopg.Connection[TupleRow], old: str, new: str) -> None:
    """ALTER DATABASE … RENAME, retried while terminated sessions are still on their way out."""
    import time

    deadline = time.monotonic() + 30
    while True:
        try:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                         "AND pid <> pg_backend_pid()", (old,))
            time.sleep(0.2)


def restore_database(scratch_dsn: str, prod_dsn: str, database: str, *, run_id: str, step: str, stamp: str,
                     work_dir: Path, pg_bin: str | None, say: Say) -> Swap:
    """Replace production's ``database`` with the scratch copy's (see the module docstring)."""
    check_database_name(database)
    if database not in databases_of(scratch_dsn):
        raise NotInBackup(f"database {database} is not in backup {run_id}; nothing in production was changed")
    expected = table_counts(in_database(scratch_dsn, database))
    dump = work_dir / "database.dump"
    bin_dir = pg_bin_dir(pg_bin)
    proc = run_command([str(bin_dir / "pg_dump"), "-Fc", "-d", in_database(scratch_dsn, database), "-f", str(dump)],
                       timeout=3600)
    if proc.returncode != 0:
        raise PartialRestoreError(f"pg_dump of database {database} from the scratch copy failed: "
                                  f"{last_line(proc.stderr)}; nothing in production was changed")
    say(f"dumped database {database} from the scratch copy ({dump.stat().st_size} bytes)")
    aside = put_database_aside(prod_dsn, database, stamp, _marker(step, run_id, sum(expected.values())), say)
    notes = [] if aside else [f"database {database} did not exist in production: nothing was renamed aside"]
    maintenance, _ = split_password(_maintenance(prod_dsn, database))   # the password goes in PGPASSWORD
    proc = _run_client([str(bin_dir / "pg_restore"), "-C", "--exit-on-error", "-d", maintenance, str(dump)],
                       prod_dsn)
    problem = f"pg_restore failed: {last_line(proc.stderr)}" if proc.returncode != 0 else None
    restored: dict[str, int] = {}
    if problem is None:
        restored = table_counts(in_database(prod_dsn, database))
        if restored != expected:
            differ = sorted(t for t in set(expected) | set(restored) if expected.get(t) != restored.get(t))
            problem = f"row counts differ from the scratch copy's in {', '.join(differ[:10])}"
    if problem is not None:
        # a D that appeared after the rename (not pg_restore's) is someone else's: never dropped
        created = f'database "{database}" already exists' not in proc.stderr
        try:
            undo_database(prod_dsn, database, aside, created=created)
        except psycopg.Error as exc:
            raise PartialRestoreError(f"restoring database {database} failed: {problem}; rolling back failed too "
                                      f"({_error(exc)}): the original is {aside or 'not renamed'}") from None
        raise SwapRolledBack(f"restoring database {database} failed: {problem}; the restored copy was dropped and "
                             "the original database is back under its name")
    notes.append("roles are cluster-wide and not in a database dump: the restored objects belong to the "
                 "production roles of the same names")
    rows = sum(restored.values())
    say(f"database {database} restored: {len(restored)} table(s), {rows} rows, as in the scratch copy")
    evidence: list[JsonObject] = [{"check": f"rows in {database}.{t}", "observed": str(n),
                                   "expected": str(expected[t]), "ok": True} for t, n in list(restored.items())[:50]]
    evidence.append({"check": f"tables of {database} with the scratch copy's row count",
                     "observed": str(len(restored)), "expected": str(len(expected)), "ok": True})
    return Swap(aside, rows, evidence, notes)


def _run_client(argv: list[str], dsn: str) -> subprocess.CompletedProcess[str]:
    """A libpq client (pg_restore) against production, its password in the environment only."""
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600, env=client_env(dsn))


def put_database_aside(prod_dsn: str, database: str, stamp: str, marker: str, say: Say) -> str | None:
    """Rename production's ``database`` aside (connections refused and ended first); None when it does not exist.

    On failure the database keeps its name and its connection setting."""
    maintenance = _maintenance(prod_dsn, database)
    if database not in databases_of(maintenance):
        say(f"database {database} did not exist in production: nothing was renamed aside")
        return None
    aside = aside_name(database, stamp)
    with _connect(maintenance) as conn:
        allowed = _close_database(conn, database)
        try:
            say(f"connections to {database} refused and the open ones terminated")
            _rename_database(conn, database, aside)
        except psycopg.Error as exc:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(database), sql.SQL("true" if allowed else "false")))
            raise PartialRestoreError(f"could not rename database {database} aside: {_error(exc)}; "
                                      "it keeps its name, nothing was restored") from None
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(aside), sql.SQL("true" if allowed else "false")))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(aside), sql.Literal(marker)))
    say(f"current database {database} renamed aside to {aside}")
    return aside


def undo_database(prod_dsn: str, database: str, aside: str | None, *, created: bool) -> None:
    """Drop the restored ``database`` (``created``: Aegis made it) and rename the aside one back."""
    maintenance = _maintenance(prod_dsn, database)
    with _connect(maintenance) as conn:
        if created and database in databases_of(maintenance):
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
        if aside is not None and aside in databases_of(maintenance):
            _close_database(conn, aside)
            _rename_database(conn, aside, database)
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(database)))
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(database)))


def find_database_aside(prod_dsn: str, database: str, step: str) -> tuple[str, int] | None:
    with _connect(_maintenance(prod_dsn, database)) as conn:
        rows = conn.execute("SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
                            "WHERE shobj_description(oid, 'pg_database') LIKE %s",
                            (f"aegis: put aside by {step} (%",)).fetchall()
    for datname, comment in rows:
        found = re.search(r"restored rows=(\d+)$", str(comment))
        if ASIDE_PATTERN.search(str(datname)) and found:
            return str(datname), int(found.group(1))
    return None


# --- clean-up ----------------------------------------------------------------------------------------

def discard_aside(dsn: str, location: str) -> str:
    """Drop one aside object: ``D.schema.table__aegis_aside_<stamp>`` or ``D__aegis_aside_<stamp>``.

    Only a name matching the aside pattern is ever dropped; a table something else still depends on
    (a view, another table's foreign key) is refused with PostgreSQL's reason, never dropped with CASCADE.
    """
    parts = location.split(".")
    if not ASIDE_PATTERN.search(parts[-1]) or len(parts) not in (1, 3):
        raise PartialRestoreError(f"refusing to drop {location!r}: not an object Aegis put aside")
    try:
        if len(parts) == 1:
            with _connect(in_database(dsn, "postgres")) as conn:
                if location not in databases_of(in_database(dsn, "postgres")):
                    return f"database {location} was already gone"
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(location)))
            return f"dropped database {location}"
        database, schema, table = parts
        with _connect(in_database(dsn, database)) as conn:
            if _relation(conn, schema, table) is None:
                return f"table {location} was already gone"
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, table)))
        return f"dropped table {location}"
    except psycopg.Error as exc:
        raise PartialRestoreError(f"could not drop {location}: {_error(exc)}") from None
