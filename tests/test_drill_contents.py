"""The restore test's yardstick (recovery/drills/contents.py) against a real PostgreSQL 15 cluster.

- ``v3`` (the format new backups record) is the same on one connection and in page ranges on three, does
  not depend on the session's output settings (TimeZone, DateStyle, extra_float_digits, bytea_output) —
  which ``v2`` does — and catches a changed value, a value swapped between two rows and a row replaced
  by a copy of another while the row count stays the same;
- a catalog row recorded in ``v2`` is recomputed in ``v2`` (``recorded_formats``) and still compared,
  and two checksums of different formats are never compared.
"""

from __future__ import annotations

import pytest

from recovery.drills import contents
from recovery.drills.contents import compare, record_contents, recorded_formats, snapshot
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


def _checks(recorded: contents.Snapshot, restored: contents.Snapshot) -> dict[str, str]:
    result = compare(record_contents(recorded, recorded), restored)
    return {t.table: t.detail for t in result.tables}


def test_v3_is_order_free_session_independent_and_catches_a_changed_row(
        cluster: PgSingle, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = cluster.primary.dsn()
    monkeypatch.setattr(contents, "SPLIT_BYTES", 64 * 1024)   # the 6000-row table is read in page ranges
    one = snapshot(dsn)
    assert str(one["postgres"]["public.a"]["checksum"]).startswith("v3:"), one
    assert one["postgres"]["public.a"]["rows"] == 6000
    assert snapshot(dsn, workers=3) == one                       # three connections, one exported snapshot
    assert snapshot(f"{dsn} {OTHER_SESSION}") == one             # the output settings are pinned
    v2 = {"postgres": {"public.a": "v2", "public.small": "v2"}}
    assert snapshot(f"{dsn} {OTHER_SESSION}", formats=v2) != snapshot(dsn, formats=v2)   # v2 is not
    checks = _checks(one, one)
    assert checks == {"public.a": "6000 rows and checksum match", "public.small": "3 rows and checksum match"}

    primary = cluster.primary
    primary.sql("UPDATE a SET ts = ts + interval '1 microsecond' WHERE id = 4321")   # one value of one row
    assert _checks(one, snapshot(dsn, workers=3))["public.a"] == "6000 rows but the checksum differs from the " \
                                                                  "recorded one"
    primary.sql("UPDATE a SET ts = ts - interval '1 microsecond' WHERE id = 4321")
    assert snapshot(dsn, workers=3) == one
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
    again = snapshot(dsn, workers=2, formats=recorded_formats(recorded))
    assert _checks(v2, again)["public.a"] == "6000 rows and checksum match"
    cluster.primary.sql("UPDATE a SET n = n + 1 WHERE id = 10")
    assert "checksum differs" in _checks(v2, snapshot(dsn, formats=recorded_formats(recorded)))["public.a"]
    # computed in v3 against a v2 record: counts compared, checksums not (and said so)
    detail = _checks(v2, snapshot(dsn))["public.a"]
    assert detail == ("6000 rows match; the checksum was recorded as v2 and the restored copy's computed as v3: "
                      "not compared"), detail
