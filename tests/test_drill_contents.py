"""The restore test's yardstick (recovery/drills/contents.py) against a real PostgreSQL 15 cluster.

- ``v4`` (the format new backups record) and ``v3`` (older backups) are the same from a serial scan and
  from a parallel one (PostgreSQL's workers, each summing a share of the pages), do not depend on the
  session's output settings (TimeZone, DateStyle, extra_float_digits, bytea_output) — which ``v2`` does —
  and catch a changed value, a value swapped
  between two rows and a row replaced by a copy of another while the row count stays the same;
- ``v4``'s typed columns: NULL is not zero, ``int8`` values whose halves XOR alike differ, a value swapped
  between two columns of a row or between two rows is seen, an unconstrained ``bpchar``'s trailing blank
  counts, a text column's collation does not matter;
- a catalog row recorded in ``v2`` is recomputed in ``v2`` (``recorded_formats``) and still compared,
  and two checksums of different formats are never compared.
"""

from __future__ import annotations

from functools import partial

import psycopg
import pytest
from psycopg import sql

from recovery.drills import contents
from recovery.drills.contents import compare, record_contents, recorded_formats, snapshot
from recovery.drills.row_hash import row_hash
from tests.harness.pgcluster import PgSingle

pytestmark = pytest.mark.timeout(300)

# other output settings than the server's defaults: a text-based row hash must not see them
OTHER_SESSION = "options='-c TimeZone=Asia/Seoul -c DateStyle=German -c extra_float_digits=0 -c bytea_output=escape'"


@pytest.fixture
def cluster(pg_single: PgSingle) -> PgSingle:
    primary = pg_single.primary
    primary.sql("CREATE TABLE a (id int PRIMARY KEY, v text, n numeric, f float8, ts timestamptz, j json, "
                "p point, b bytea)")
    primary.sql("INSERT INTO a SELECT g, md5(g::text), g / 7.0, g / 3.0, timestamptz '2026-01-01 00:00+00' + "
                "g * interval '1 minute', json_build_object('g', g), point(g, -g), decode(md5(g::text), 'hex') "
                "FROM generate_series(1, 6000) g")
    primary.sql("CREATE TABLE small (k text)")
    primary.sql("INSERT INTO small VALUES ('x'), ('y'), ('x')")
    return pg_single


def _plan_parallel_scans(cluster: PgSingle) -> None:
    """Make even a 6000-row table worth a parallel scan, for the sessions that connect from now on."""
    for setting in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0",
                    "parallel_leader_participation = on"):
        cluster.primary.sql(f"ALTER DATABASE postgres SET {setting}")


def _checksum_plan(cluster: PgSingle, fmt: str) -> str:
    """The plan of the snapshot's checksum query of table ``a`` with 3 parallel workers allowed, as run."""
    with psycopg.connect(cluster.primary.dsn()) as conn:
        conn.execute("SET max_parallel_workers_per_gather = 3")
        columns = contents._columns(conn)[("public", "a")]
        query = sql.SQL(contents._CHECKSUMS[fmt]).format(table=sql.Identifier("public", "a"), row=row_hash(columns))
        return "\n".join(str(r[0]) for r in conn.execute(sql.SQL("EXPLAIN (ANALYZE, COSTS OFF) ") + query))


def _checks(recorded: contents.Snapshot, restored: contents.Snapshot) -> dict[str, str]:
    result = compare(record_contents(recorded, recorded), restored)
    return {t.table: t.detail for t in result.tables}


@pytest.mark.parametrize("fmt", ["v4", "v3"])
def test_the_checksum_is_order_free_session_independent_and_catches_a_changed_row(
        cluster: PgSingle, fmt: str) -> None:
    dsn = cluster.primary.dsn()
    snapshot = partial(contents.snapshot, formats={"postgres": {"public.a": fmt, "public.small": fmt}})

    one = snapshot(dsn, parallel_workers=0)
    assert str(one["postgres"]["public.a"]["checksum"]).startswith(f"{fmt}:"), one
    assert one["postgres"]["public.a"]["rows"] == 6000
    _plan_parallel_scans(cluster)
    assert "Workers Launched: 3" in _checksum_plan(cluster, fmt)   # the 6000-row table on four processes
    assert snapshot(dsn, parallel_workers=3) == one
    assert snapshot(f"{dsn} {OTHER_SESSION}") == one             # the output settings are pinned
    v2 = {"postgres": {"public.a": "v2", "public.small": "v2"}}
    assert snapshot(f"{dsn} {OTHER_SESSION}", formats=v2) != snapshot(dsn, formats=v2)   # v2 is not
    checks = _checks(one, one)
    assert checks == {"public.a": "6000 rows and checksum match", "public.small": "3 rows and checksum match"}

    primary = cluster.primary
    primary.sql("UPDATE a SET ts = ts + interval '1 microsecond' WHERE id = 4321")   # one value of one row
    changed = _checks(one, snapshot(dsn, parallel_workers=3))["public.a"]
    assert changed == "6000 rows but the checksum differs from the recorded one"
    primary.sql("UPDATE a SET ts = ts - interval '1 microsecond' WHERE id = 4321")
    assert snapshot(dsn, parallel_workers=3) == one
    # a column's values swapped between two rows: every column's multiset of values is unchanged
    primary.sql("UPDATE a SET v = CASE id WHEN 1 THEN (SELECT v FROM a WHERE id = 2) "
                "ELSE (SELECT v FROM a WHERE id = 1) END WHERE id IN (1, 2)")
    assert "checksum differs" in _checks(one, snapshot(dsn))["public.a"]
    # a row replaced by a copy of another: same count, different multiset
    primary.sql("UPDATE small SET k = 'y' WHERE ctid = (SELECT min(ctid) FROM small WHERE k = 'x')")
    assert "checksum differs" in _checks(one, snapshot(dsn))["public.small"]


def test_a_v2_row_is_recomputed_in_v2_and_formats_are_never_compared_across(cluster: PgSingle) -> None:
    dsn = cluster.primary.dsn()
    v2 = snapshot(dsn, formats={"postgres": {"public.a": "v2", "public.small": "v2"}})
    assert str(v2["postgres"]["public.a"]["checksum"]).startswith("v2:"), v2
    recorded = record_contents(v2, v2)
    assert recorded_formats(recorded) == {"postgres": {"public.a": "v2", "public.small": "v2"}}
    again = snapshot(dsn, parallel_workers=2, formats=recorded_formats(recorded))
    assert _checks(v2, again)["public.a"] == "6000 rows and checksum match"
    cluster.primary.sql("UPDATE a SET n = n + 1 WHERE id = 10")
    assert "checksum differs" in _checks(v2, snapshot(dsn, formats=recorded_formats(recorded)))["public.a"]
    # computed in v4 against a v2 record: counts compared, checksums not (and said so)
    detail = _checks(v2, snapshot(dsn))["public.a"]
    assert detail == ("6000 rows match; the checksum was recorded as v2 and the restored copy's computed as v4: "
                      "not compared"), detail


def test_v4_hashes_typed_columns_by_value_and_position(pg_single: PgSingle) -> None:
    primary = pg_single.primary
    dsn = primary.dsn()
    primary.sql("CREATE TABLE typed (i2 int2, i4 int4 NOT NULL, i8 int8, b bool, o oid, t text COLLATE \"C\", "
                "v varchar(20), c char(5), u uuid, x int4, bp bpchar, n numeric)")
    primary.sql("INSERT INTO typed SELECT g, g, g * 4294967297, g % 2 = 0, g, 'row ' || g, 'v' || g, 'c' || g, "
                "md5(g::text)::uuid, g + 1, 'p', 1.0 FROM generate_series(1, 50) g")

    def checksum() -> str:
        figures = snapshot(dsn)["postgres"]["public.typed"]
        assert figures["rows"] == 50 and str(figures["checksum"]).startswith("v4:"), figures
        return str(figures["checksum"])

    recorded = checksum()
    changes = [   # (a change, its undo): each must move the checksum, its undo bring it back
        ("UPDATE typed SET i2 = NULL WHERE i4 = 7", "UPDATE typed SET i2 = 7 WHERE i4 = 7"),
        ("UPDATE typed SET x = 0 WHERE i4 = 3", "UPDATE typed SET x = 4 WHERE i4 = 3"),
        ("UPDATE typed SET i8 = 0 WHERE i4 = 1", "UPDATE typed SET i8 = 4294967297 WHERE i4 = 1"),
        ("UPDATE typed SET i8 = 1 WHERE i4 = 1", "UPDATE typed SET i8 = 4294967297 WHERE i4 = 1"),
        ("UPDATE typed SET i2 = x, x = i2 WHERE i4 = 5", "UPDATE typed SET i2 = x, x = i2 WHERE i4 = 5"),
        ("UPDATE typed SET t = CASE i4 WHEN 1 THEN 'row 2' ELSE 'row 1' END WHERE i4 IN (1, 2)",
         "UPDATE typed SET t = 'row ' || i4 WHERE i4 IN (1, 2)"),
        ("UPDATE typed SET bp = 'p ' WHERE i4 = 9", "UPDATE typed SET bp = 'p' WHERE i4 = 9"),
        ("UPDATE typed SET n = 1.00 WHERE i4 = 9", "UPDATE typed SET n = 1.0 WHERE i4 = 9"),
        ("UPDATE typed SET b = NULL WHERE i4 = 2", "UPDATE typed SET b = true WHERE i4 = 2"),
        ("UPDATE typed SET u = NULL WHERE i4 = 4", "UPDATE typed SET u = md5('4')::uuid WHERE i4 = 4"),
    ]
    for change, undo in changes:
        primary.sql(change)
        assert checksum() != recorded, change
        primary.sql(undo)
        assert checksum() == recorded, undo
    # the text column's bytes, not its collation's idea of equality: the same figure under another collation
    primary.sql("ALTER TABLE typed ALTER COLUMN t TYPE text COLLATE \"POSIX\"")
    assert checksum() == recorded
