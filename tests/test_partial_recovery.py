"""Partial PostgreSQL recovery (issue 9): one table or one database back from a real backup + archived WAL.

A real PostgreSQL 15 primary archives its WAL with ``aegis wal push`` (the server-side install, as in
production); a base backup is taken by the real runner into a local target. Production then moves on
(batch B, the target time, batch C), and ``PostgresPartialRestore`` restores a scratch copy to the
target time and swaps the object back:

- a table holds exactly the rows committed before the target, the other tables keep their current
  rows, the old table is aside (and ``is_done`` recognises the step's work; discard drops only asides);
- restored rows that production's other tables no longer accept (a foreign key) → rolled back in the
  one transaction: the original table under its name, untouched; ``rollback`` after a committed swap
  renames the aside back;
- a table that is not in the backup → refused, production unchanged (every table's digest, every name);
- a whole database (an open session to it is terminated), and its rollback when pg_restore fails;
- after each: no scratch directory left and the scratch server's port closed.
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from recovery.actions.partial_restore import PostgresPartialRestore
from recovery.backup.runner import BackupRunner
from statemachines.json_types import JsonObject
from statemachines.store import Store
from tests.harness.archiving_primary import archive_all, archiving_primary
from tests.harness.cli_workspace import local, write_config
from tests.harness.pgcluster import PgNode, PgSingle

TABLES = ("customers", "orders")


@dataclass
class World:
    workdir: Path
    pg: PgSingle
    backup_id: str = ""
    target: datetime | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def primary(self) -> PgNode:
        return self.pg.primary

    @property
    def scratch_root(self) -> Path:
        return self.workdir / "scratch"

    def shop(self, query: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.primary.dsn("shop"), autocommit=True) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []


def _store_and_runner(world: World) -> tuple[Store, BackupRunner]:
    from bot.backup_wiring import runner_from
    from bot.config import load_config

    store = Store(f"sqlite:///{world.workdir}/aegis.db")
    return store, runner_from(load_config(world.workdir / "aegis.yaml"), store)


@pytest.fixture(scope="module")
def backed_up() -> Iterator[World]:
    """shop.customers + shop.orders; backup (batch A); batch B; the target time; batch C — all archived.

    Taken once for the module (initdb, the backup and the archiving are most of the time); each test
    gets production's shop afresh from ``shop_template`` (made after the target, so no restore sees it).
    """
    workdir = Path(tempfile.mkdtemp(prefix="aegis-partial-", dir="/tmp"))
    workdir.chmod(0o777)   # the archive_command (as postgres) writes the catalog here
    pg = archiving_primary(workdir)
    try:
        w = World(workdir, pg)
        pg.primary.sql("CREATE ROLE legacy")
        pg.primary.sql("CREATE DATABASE shop")
        w.shop("CREATE TABLE customers (id int PRIMARY KEY, batch text)")
        w.shop("CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers(id), "
               "batch text, v text)")
        w.shop("CREATE INDEX orders_batch_idx ON orders (batch)")
        w.shop("COMMENT ON TABLE orders IS 'what customers bought'")
        w.shop("CREATE TABLE ledger (id int PRIMARY KEY)")
        w.shop("ALTER TABLE ledger OWNER TO legacy")
        _batch(w, "A", customers=range(1, 11), orders=100)
        _store, runner = _store_and_runner(w)
        report = runner.run("postgresql")
        assert report.ok, report.errors + [r.reason for r in report.records]
        w.backup_id = report.run_id
        _batch(w, "B", customers=range(11, 16), orders=50)
        w.target = w.shop("SELECT clock_timestamp()")[0][0]  # type: ignore[assignment]
        time.sleep(0.3)  # separates batch C's commit time from the target (not a wait for a result)
        _batch(w, "C", customers=range(16, 21), orders=25)
        archive_all(pg.primary)
        pg.primary.sql("CREATE DATABASE shop_template TEMPLATE shop STRATEGY file_copy")
        yield w
    finally:
        pg.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def world(backed_up: World) -> World:
    """Production as the module fixture left it: shop (A, B, C) made afresh, role legacy owning ledger."""
    primary = backed_up.primary
    leftovers = "SELECT datname FROM pg_database WHERE datname = 'shop' OR datname LIKE 'shop\\_\\_aegis%'"
    for (name,) in primary.sql(leftovers):
        primary.sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    if not primary.sql("SELECT 1 FROM pg_roles WHERE rolname = 'legacy'"):
        primary.sql("CREATE ROLE legacy")
    with psycopg.connect(primary.dsn("shop_template"), autocommit=True) as conn:
        conn.execute("ALTER TABLE ledger OWNER TO legacy")
    primary.sql("CREATE DATABASE shop TEMPLATE shop_template STRATEGY file_copy")  # little WAL
    backed_up.lines.clear()
    return backed_up


def _batch(w: World, batch: str, *, customers: range, orders: int) -> None:
    w.shop("INSERT INTO customers SELECT g, %s FROM generate_series(%s::int, %s::int) g",
           batch, customers[0], customers[-1])
    w.shop("INSERT INTO orders (customer_id, batch, v) SELECT %s, %s, md5(g::text) FROM generate_series(1, %s::int) g",
           customers[0], batch, orders)


def _action(w: World, *, table: str | None, database: str = "shop", step: str = "7") -> PostgresPartialRestore:
    from recovery.backup.restore.partial import ScratchSettings

    store, runner = _store_and_runner(w)
    return PostgresPartialRestore(store=store, runner=runner, dsn=w.primary.dsn(), label="postgres primary",
                                  backup_id=w.backup_id, target_time=w.target, database=database, table=table,
                                  scratch=ScratchSettings(w.scratch_root), context={"incident": "INC-3", "step": step})


def _run(w: World, action: PostgresPartialRestore) -> JsonObject:
    action.precheck()
    output = action.execute(w.lines.append)
    action.verify()
    return output


def _digest(w: World, table: str, database: str = "shop") -> tuple[object, ...]:
    with psycopg.connect(w.primary.dsn(database), autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) "
                           f"FROM {table} t").fetchone()
    assert row is not None
    return tuple(row)


def _names(w: World, database: str = "shop") -> list[str]:
    with psycopg.connect(w.primary.dsn(database), autocommit=True) as conn:
        rows = conn.execute("SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = 'public' ORDER BY 1").fetchall()
    return [str(r[0]) for r in rows]


def _assert_scratch_gone(w: World) -> None:
    ports = [int(p) for p in re.findall(r"scratch copy running on port (\d+)", "\n".join(w.lines))]
    assert ports, w.lines
    for port in ports:
        with socket.socket() as s:
            s.settimeout(0.5)
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"scratch server on {port} still runs"
    assert not list(w.scratch_root.glob("partial-*")), list(w.scratch_root.iterdir())


@pytest.mark.timeout(300)
def test_a_table_restored_to_a_time_holds_exactly_the_rows_before_it_and_the_other_tables_keep_theirs(
        world: World) -> None:
    from recovery.actions.base import ActionError
    from recovery.actions.partial_restore import discard_postgres_object_aside

    customers_now, orders_now = _digest(world, "customers"), _digest(world, "orders")
    output = _run(world, _action(world, table="public.orders"))

    batches = world.shop("SELECT batch, count(*) FROM orders GROUP BY 1 ORDER BY 1")
    assert batches == [("A", 100), ("B", 50)], "exactly the rows committed before the target time"
    assert _digest(world, "customers") == customers_now, "the other tables keep their current rows"
    [aside] = output["aside"]
    assert aside["kind"] == "postgres_table" and aside["component"] == "postgres"
    database, schema, aside_table = aside["location"].split(".")
    assert (database, schema) == ("shop", "public")
    assert re.fullmatch(r"orders__aegis_aside_\d{8}_\d{6}", aside_table)
    assert _digest(world, aside_table) == orders_now, "the old table is aside, whole"
    assert output["evidence"] == [{"check": "rows in shop.public.orders", "observed": "150", "expected": "150",
                                   "ok": True}]
    assert world.target is not None and output["recovered_to"] is not None
    assert datetime.fromisoformat(output["recovered_to"]) <= world.target
    assert "pg_last_xact_replay_timestamp" in output["recovered_to_basis"]
    # what comes along: the index, the primary key, the comment, the sequence (next id after the restored ones)
    assert {"orders_pkey", "orders_batch_idx", "orders_id_seq"} <= set(_names(world))
    assert world.shop("SELECT obj_description('orders'::regclass)") == [("what customers bought",)]
    # (a recovered sequence may have skipped ahead: PostgreSQL logs 32 values in advance)
    [(new_id,)] = world.shop("INSERT INTO orders (customer_id, batch) VALUES (1, 'D') RETURNING id")
    assert int(new_id) > 150  # type: ignore[call-overload]
    world.shop("DELETE FROM orders WHERE batch = 'D'")
    _assert_scratch_gone(world)

    assert _action(world, table="public.orders").is_done() is True, "after a crash: the step's work is seen"
    assert _action(world, table="public.orders", step="8").is_done() is None, "another step's is not"
    with pytest.raises(ActionError, match="not an object Aegis put aside"):
        discard_postgres_object_aside(world.primary.dsn(), "shop.public.orders")
    assert "dropped table" in discard_postgres_object_aside(world.primary.dsn(), aside["location"])
    assert aside_table not in _names(world) and "orders" in _names(world)
    assert "already gone" in discard_postgres_object_aside(world.primary.dsn(), aside["location"])


@pytest.mark.timeout(300)
def test_rows_production_no_longer_accepts_roll_the_swap_back_and_writes_after_the_swap_are_no_failure(
        world: World) -> None:
    from recovery.actions.base import ActionError, RolledBack

    world.shop("DELETE FROM orders WHERE customer_id = 11")
    world.shop("DELETE FROM customers WHERE id = 11")   # batch B's orders point at it
    before, names = _digest(world, "orders"), _names(world)
    action = _action(world, table="public.orders")
    action.precheck()
    with pytest.raises(RolledBack, match=r"rolled back, production is unchanged.*orders_customer_id_fkey"):
        action.execute(world.lines.append)
    assert _digest(world, "orders") == before and _names(world) == names
    _assert_scratch_gone(world)

    world.shop("INSERT INTO customers VALUES (11, 'B')")
    world.lines.clear()
    action = _action(world, table="public.orders")
    action.precheck()
    action.execute(world.lines.append)
    restored = _digest(world, "orders")
    assert restored != before
    # the application writes to the restored table at once: that is no reason to fail (or undo) the step
    world.shop("INSERT INTO orders (customer_id, batch) VALUES (11, 'E')")
    action.verify()
    assert _digest(world, "orders") not in (before, restored)
    world.shop("ALTER TABLE orders RENAME TO orders_gone")
    with pytest.raises(ActionError, match="table shop.public.orders is not in"):
        action.verify()


@pytest.mark.timeout(300)
def test_a_table_that_is_not_in_the_backup_is_refused_and_production_is_unchanged(world: World) -> None:
    from recovery.actions.base import ActionError, RolledBack

    world.shop("CREATE TABLE returns (id int)")   # exists in production only, created after the target
    before = {t: _digest(world, t) for t in (*TABLES, "returns")}
    names = _names(world)
    action = _action(world, table="public.returns")
    action.precheck()
    with pytest.raises(ActionError, match=f"table public.returns is not in backup {world.backup_id}.*"
                                          "nothing in production was changed") as refused:
        action.execute(world.lines.append)
    assert not isinstance(refused.value, RolledBack), "nothing changed: a plain failure (Retry/Abort)"
    assert {t: _digest(world, t) for t in (*TABLES, "returns")} == before and _names(world) == names
    _assert_scratch_gone(world)
    with pytest.raises(ActionError, match="schema.table"):
        _action(world, table="a.b.c").precheck()


@pytest.mark.timeout(300)
def test_a_whole_database_goes_back_to_the_target_time_and_the_current_one_is_aside(world: World) -> None:
    current = {t: _digest(world, t) for t in TABLES}
    idle = psycopg.connect(world.primary.dsn("shop"), autocommit=True)   # an application session
    try:
        output = _run(world, _action(world, table=None))
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 1")   # terminated for the rename
    finally:
        idle.close()
    assert world.shop("SELECT batch, count(*) FROM orders GROUP BY 1 ORDER BY 1") == [("A", 100), ("B", 50)]
    assert world.shop("SELECT batch, count(*) FROM customers GROUP BY 1 ORDER BY 1") == [("A", 10), ("B", 5)]
    [aside] = output["aside"]
    assert aside["kind"] == "postgres_database" and re.fullmatch(r"shop__aegis_aside_\d{8}_\d{6}",
                                                                 aside["location"])
    assert {t: _digest(world, t, aside["location"]) for t in TABLES} == current
    assert all(e["ok"] for e in output["evidence"]) and len(output["evidence"]) == 4   # 3 tables + the total
    _assert_scratch_gone(world)
    assert _action(world, table=None).is_done() is True


@pytest.mark.timeout(300)
def test_a_database_restore_that_fails_in_pg_restore_puts_the_original_back(world: World) -> None:
    from recovery.actions.base import RolledBack

    for database in ("shop", "shop_template"):
        with psycopg.connect(world.primary.dsn(database), autocommit=True) as conn:
            conn.execute("ALTER TABLE ledger OWNER TO postgres")
    world.primary.sql("DROP ROLE legacy")   # the backup's ledger belongs to a role production no longer has
    current = {t: _digest(world, t) for t in TABLES}
    action = _action(world, table=None)
    action.precheck()
    with pytest.raises(RolledBack, match=r"pg_restore failed.*legacy.*original database is back"):
        action.execute(world.lines.append)
    assert {t: _digest(world, t) for t in TABLES} == current
    databases = [r[0] for r in world.primary.sql("SELECT datname FROM pg_database")]
    assert "shop" in databases and not [d for d in databases if "aegis_aside" in d]
    assert world.primary.sql("SELECT datallowconn FROM pg_database WHERE datname = 'shop'") == [(True,)]
    _assert_scratch_gone(world)


def test_the_step_is_built_from_its_params_and_the_config(tmp_path: Path) -> None:
    from bot import wiring
    from bot.config import load_config
    from recovery.actions.base import ActionError
    from statemachines.models import PlanStep

    write_config(tmp_path, [local(tmp_path)], dsn="host=/tmp port=5999 user=postgres dbname=postgres")
    config = load_config(tmp_path / "aegis.yaml")
    step = PlanStep(incident_id=1, revision=1, position=1, title="t", action="postgres_partial_restore", id=9,
                    params={"backup_id": "backup_20261201_020000", "backup_time": "2026-12-01T02:00:00+00:00",
                            "target_time": "2026-12-01T09:00:00+00:00", "database": "shop", "table": "public.orders"})
    action = wiring.build_action(config, step, {"incident": "INC-4", "step": "9"},
                                 store=Store(f"sqlite:///{tmp_path}/aegis.db"))
    assert isinstance(action, PostgresPartialRestore) and action.destructive
    assert (action.table, action.database, action.step) == ("public.orders", "shop", "INC-4 step 9")
    assert action.scratch.root == Path(config.drills.scratch_dir)
    assert "backup_20261201_020000 (taken 2026-12-01T02:00:00+00:00) to 2026-12-01T09:00:00+00:00" in action.describe()
    with pytest.raises(ActionError, match="catalog"):
        wiring.build_action(config, step, {})
    step.params = {**step.params, "target_time": "2026-12-01 09:00"}
    with pytest.raises(ActionError, match="no time zone"):
        wiring.build_action(config, step, {}, store=Store(f"sqlite:///{tmp_path}/aegis.db"))


_CRASHING_CHILD = """
import sys, threading
from bot.backup_wiring import runner_from
from bot.config import load_config
from recovery.backup.catalog import good_base
from recovery.backup.restore.partial import ScratchSettings, scratch_copy
from recovery.backup.wal.archive import TargetWalStore
from statemachines.store import Store

workdir, backup_id = sys.argv[1], sys.argv[2]
store = Store(f"sqlite:///{workdir}/aegis.db")
runner = runner_from(load_config(f"{workdir}/aegis.yaml"), store)
copy = runner.repository.verified_copy(good_base(store, backup_id))
with scratch_copy(store, copy, TargetWalStore(runner), ScratchSettings(__import__("pathlib").Path(workdir) / "scratch"),
                  target_time=None, say=lambda line: print(line, flush=True)):
    threading.Event().wait()   # killed here, the scratch copy running
"""


@pytest.mark.timeout(300)
def test_a_scratch_copy_left_by_a_killed_process_is_removed_when_the_engine_asks_is_done(world: World) -> None:
    import subprocess
    import sys

    from tests.harness.cli_workspace import REPO

    child = subprocess.Popen([sys.executable, "-c", _CRASHING_CHILD, str(world.workdir), world.backup_id],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        for line in child.stdout:
            world.lines.append(line)
            if "scratch copy running on port" in line:
                break
        else:
            pytest.fail(f"the child never started its scratch copy: {child.stderr.read() if child.stderr else ''}")
        child.kill()   # SIGKILL: no finally runs, the scratch server keeps running
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    [port] = [int(p) for p in re.findall(r"port (\d+)", "".join(world.lines))]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) == 0, "the dead process's scratch server still runs"
    assert list(world.scratch_root.glob("partial-*"))

    assert _action(world, table="public.orders").is_done() is None   # nothing of this step is in production
    _assert_scratch_gone(world)
