"""What a PostgreSQL cluster holds, table by table: row counts and checksums (the restore test's yardstick).

The backup runner records a snapshot right before ``pg_basebackup`` starts and one right after it
ends (``record_contents``); the restore test takes the same snapshot of the restored copy and
compares (``compare``). A base backup is consistent at its end point, which lies between the two
snapshots, so:

- a table that did not change between them must match exactly (row count and checksum);
- a table written to during the backup can only be checked loosely: its restored row count must lie
  between the two counts, and its checksum is not comparable (said so, never passed silently).

A checksum is two sums of 60-bit slices of every row's md5 (``v2``), so row order does not matter and
no sort is needed; a checksum recorded in an older format is not compared (said so). Tables
larger than ``max_checksum_bytes`` get a row count only (the checksum would read the whole table
twice per backup); the comparison then says the checksum was not recorded and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from recovery.redact import redact
from statemachines.json_types import JsonObject

MAX_CHECKSUM_BYTES = 256 * 1024 * 1024
Snapshot = dict[str, dict[str, JsonObject]]   # database -> "schema.table" -> {"rows", "checksum"}

_TABLES = """
SELECT n.nspname, c.relname, pg_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
  AND c.relpersistence = 'p'
ORDER BY 1, 2
"""


# Two sums of 60-bit slices of every row's md5: a multiset hash, so no sort (a sorted string_agg cost more
# than the restore itself on a 232 MiB database) and row order does not matter.
CHECKSUM_FORMAT = "v2"
_CHECKSUM = ("SELECT count(*), coalesce(sum(('x' || substr(h, 1, 15))::bit(60)::bigint), 0), "
             "coalesce(sum(('x' || substr(h, 16, 15))::bit(60)::bigint), 0) "
             "FROM (SELECT md5(t::text) AS h FROM {} t) s")


def _databases(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
                            "ORDER BY datname").fetchall()
    return [str(r[0]) for r in rows]


def _in_database(dsn: str, database: str) -> str:
    return make_conninfo(dsn, dbname=database)


def _table_figures(conn: psycopg.Connection[TupleRow], schema: str, table: str, size: int,
                   max_checksum_bytes: int) -> JsonObject:
    name = sql.Identifier(schema, table)
    if size > max_checksum_bytes:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()
        return {"rows": int(row[0]) if row else 0, "checksum": None,
                "checksum_skipped": f"table is {size} bytes, above the {max_checksum_bytes}-byte checksum limit"}
    row = conn.execute(sql.SQL(_CHECKSUM).format(name)).fetchone()
    return {"rows": int(row[0]) if row else 0, "checksum": f"{CHECKSUM_FORMAT}:{row[1]}:{row[2]}" if row else None}


def snapshot(dsn: str, *, max_checksum_bytes: int = MAX_CHECKSUM_BYTES) -> Snapshot:
    """Row count and checksum of every permanent user table in every database of the cluster."""
    result: Snapshot = {}
    for database in _databases(dsn):
        tables: dict[str, JsonObject] = {}
        # one REPEATABLE READ transaction per database: every table of it seen at one moment
        with psycopg.connect(_in_database(dsn, database), connect_timeout=10) as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            for schema, table, size in conn.execute(_TABLES).fetchall():
                tables[f"{schema}.{table}"] = _table_figures(conn, schema, table, int(size), max_checksum_bytes)
        result[database] = tables
    return result


def record_contents(before: Snapshot | None, after: Snapshot | None, error: str = "") -> JsonObject:
    """The ``contents`` of a catalog row: both snapshots (or why there are none)."""
    if error or before is None or after is None:
        return {"error": redact(error or "no snapshot")[:300]}
    return {"kind": "postgres_tables", "before": before, "after": after}


def safe_snapshot(dsn: str) -> tuple[Snapshot | None, str]:
    """A snapshot, or None with the reason: recording contents must never fail a backup."""
    try:
        return snapshot(dsn), ""
    except (psycopg.Error, OSError) as exc:
        host = conninfo_to_dict(dsn).get("host", "")
        return None, redact(f"contents not recorded: {type(exc).__name__} on {host}: {exc}")[:300]


@dataclass
class TableCheck:
    database: str
    table: str
    ok: bool
    detail: str


@dataclass
class ContentsCheck:
    """The comparison of a restored copy with what the catalog recorded."""

    ok: bool | None                     # None: nothing recorded to compare with (unknown)
    tables: list[TableCheck] = field(default_factory=list)
    basis: str = ""

    @property
    def problems(self) -> list[str]:
        return [f"{t.database}.{t.table}: {t.detail}" for t in self.tables if not t.ok]


def _check_table(database: str, table: str, before: JsonObject | None, after: JsonObject | None,
                 restored: JsonObject | None) -> TableCheck:
    if restored is None:
        if before is None or after is None:   # created or dropped during the backup: either is consistent
            return TableCheck(database, table, True, "created or dropped during the backup; not compared")
        return TableCheck(database, table, False, "missing from the restored copy")
    if before is None or after is None:
        return TableCheck(database, table, True, f"{restored['rows']} rows; created or dropped during the backup")
    rows = int(restored["rows"])
    if before == after:
        if rows != after["rows"]:
            return TableCheck(database, table, False, f"{rows} rows restored, {after['rows']} recorded")
        if after.get("checksum") is None:
            return TableCheck(database, table, True, f"{rows} rows match; checksum not recorded "
                                                      f"({after.get('checksum_skipped', 'unknown reason')})")
        if not str(after["checksum"]).startswith(CHECKSUM_FORMAT + ":"):
            return TableCheck(database, table, True, f"{rows} rows match; the recorded checksum is of an older "
                                                      "format and was not compared")
        if restored.get("checksum") != after["checksum"]:
            return TableCheck(database, table, False, f"{rows} rows but the checksum differs from the recorded one")
        return TableCheck(database, table, True, f"{rows} rows and checksum match")
    low, high = sorted((int(before["rows"]), int(after["rows"])))
    if not low <= rows <= high:
        return TableCheck(database, table, False, f"{rows} rows restored, outside the {low}–{high} recorded "
                                                  "before and after the backup")
    return TableCheck(database, table, True, f"{rows} rows, within {low}–{high} (written during the backup: "
                                             "checksum not comparable)")


def compare(contents: JsonObject, restored: Snapshot) -> ContentsCheck:
    """Compare ``restored`` with a catalog row's ``contents`` (see the module rules)."""
    if contents.get("kind") != "postgres_tables":
        why = contents.get("error") or "the catalog recorded none for this backup (taken before Aegis recorded them)"
        return ContentsCheck(None, basis=f"row counts and checksums unknown: {why}")
    before: Snapshot = contents["before"]
    after: Snapshot = contents["after"]
    checks: list[TableCheck] = []
    for database in sorted(set(before) | set(after)):
        names = set(before.get(database, {})) | set(after.get(database, {}))
        for table in sorted(names):
            checks.append(_check_table(database, table, before.get(database, {}).get(table),
                                       after.get(database, {}).get(table), restored.get(database, {}).get(table)))
    exact = sum(1 for c in checks if c.ok and "checksum match" in c.detail)
    basis = (f"{len(checks)} table(s) compared with the counts and checksums the catalog recorded before and "
             f"after the backup; {exact} matched exactly")
    return ContentsCheck(all(c.ok for c in checks), checks, basis)
