"""One-shot ``aegis`` commands start in a blink (issue 12), as real processes.

- The parser (``--help``, ``--version``, a subcommand's ``--help``) imports no database, storage,
  crypto, driver, Slack or web library: each command imports its own stack when it runs.
- Only ``serve`` and ``migrate`` migrate; every other command checks the schema's revision cheaply and
  refuses a store that is behind (or newer than this code) in one line naming ``aegis migrate``. A fresh
  SQLite store is created at once; a fresh PostgreSQL store is refused.
- Storage SDKs load only for the targets a command touches.
- The console script's entry ends with ``os._exit`` after the store is closed, the atexit functions
  ran and the output was flushed.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from statemachines.revisions import MIGRATIONS, migration_revisions
from statemachines.store import Store
from tests.harness.aegis_process import wait_for
from tests.harness.flows_harness import pg_url
from tests.harness.pgcluster import PgSingle, free_port

ROOT = Path(__file__).resolve().parents[1]
KEY = base64.b64encode(bytes(range(32))).decode()
# What building the parser must not load (top-level import names). yaml and pydantic are the config
# loader's, which --help does not need either.
HEAVY = ("sqlalchemy", "sqlmodel", "alembic", "psycopg", "boto3", "botocore", "azure", "neo4j", "pymilvus",
         "zstandard", "cryptography", "slack_bolt", "slack_sdk", "flask", "waitress", "jinja2", "pydantic",
         "yaml", "transitions", "requests")
SEGMENT = "000000010000000000000042"
# what `aegis wal fetch` of an archived segment must not load (issue 12: ≤ 0.3 s per segment)
LEAN_FETCH_NEVER = {"sqlalchemy", "sqlmodel", "alembic", "psycopg", "pydantic", "transitions", "slack_bolt",
                    "slack_sdk", "flask", "waitress", "jinja2"}


def environment(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "AEGIS_"))}
    env.update({"PYTHONPATH": str(ROOT), "AEGIS_CONFIG": str(workdir / "aegis.yaml"),
                "AEGIS_DATABASE_URL": f"sqlite:///{workdir}/aegis.db", "AEGIS_BACKUP_KEY": KEY, **extra})
    return env


def aegis(workdir: Path, *args: str, importtime: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    if not (workdir / "aegis.yaml").exists():
        (workdir / "aegis.yaml").write_text("locale: en\n")
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", "bot.cli", *args], cwd=workdir,
                          env=environment(workdir, **env), capture_output=True, text=True, timeout=120)


def imported(stderr: str) -> set[str]:
    """Every module a ``-X importtime`` run imported, by its full name."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":   # the header line
                names.add(name)
    return names


def top_level(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def revision_of(database: Path) -> list[tuple[str]]:
    with closing(sqlite3.connect(database)) as conn:   # closed: the tests look at the -wal file too
        return list(conn.execute("SELECT version_num FROM alembic_version"))


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["backup", "--help"], ["wal", "fetch", "--help"],
                                  ["restore", "postgres", "--help"], ["drill", "--help"]])
def test_the_parser_loads_no_heavy_library(tmp_path: Path, argv: list[str]) -> None:
    result = aegis(tmp_path, *argv, importtime=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: aegis" if "--help" in argv else "aegis "), result.stdout
    loaded = top_level(imported(result.stderr))
    assert "bot" in loaded   # the measurement saw the CLI's own imports
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_drill_names_are_checked_against_the_drills_own_list(tmp_path: Path) -> None:
    """The parser looks the names up in recovery.drills only when a drill command is parsed."""
    from recovery.drills.drills import DRILLS

    result = aegis(tmp_path, "drill", "run", "no_such_drill")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "no_such_drill" in line and all(name in line for name in DRILLS), line


def test_the_head_revision_read_from_the_files_is_alembics() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(config)
    head, known = migration_revisions()
    assert head == script.get_current_head()
    assert known == {revision.revision for revision in script.walk_revisions()}


def _migrate_to(url: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    store = Store(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    store.dispose()


def test_a_store_behind_is_refused_in_one_line_until_migrated(tmp_path: Path) -> None:
    head, _known = migration_revisions()
    _migrate_to(f"sqlite:///{tmp_path}/aegis.db", "0007")
    listing = aegis(tmp_path, "--log-level", "WARNING", "backup", "list")
    assert listing.returncode == 2
    line = one_error_line(listing)
    assert line.startswith("aegis: ") and "0007" in line and head in line and "`aegis migrate`" in line, line
    (tmp_path / "aegis.yaml").write_text(yaml.safe_dump(
        {"storage": [{"kind": "local", "path": str(tmp_path / "archive")}]}))
    fetch = aegis(tmp_path, "wal", "fetch", SEGMENT, str(tmp_path / "out"))
    assert fetch.returncode == 255, fetch.stderr   # recovery stops; "absent" (1) would end it and promote
    assert "`aegis migrate`" in fetch.stderr
    assert revision_of(tmp_path / "aegis.db") == [("0007",)]   # the check changed nothing

    assert aegis(tmp_path, "migrate").returncode == 0
    assert not (tmp_path / "aegis.db-wal").exists()   # closed before the fast exit (no files left to others)
    after = aegis(tmp_path, "backup", "list")
    assert after.returncode == 0 and "no backups yet" in after.stdout, after.stderr


def test_a_store_newer_than_this_code_is_refused(tmp_path: Path) -> None:
    assert aegis(tmp_path, "migrate").returncode == 0
    with closing(sqlite3.connect(tmp_path / "aegis.db")) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00d'")
    result = aegis(tmp_path, "--log-level", "WARNING", "backup", "list")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "f00d" in line and "unknown" in line and "upgrade Aegis" in line, line


def test_a_fresh_sqlite_store_is_created_a_fresh_postgresql_store_refused(tmp_path: Path,
                                                                         pg_single: PgSingle) -> None:
    head, _known = migration_revisions()
    fresh = aegis(tmp_path, "backup", "list")
    assert fresh.returncode == 0 and "no backups yet" in fresh.stdout, fresh.stderr
    assert revision_of(tmp_path / "aegis.db") == [(head,)]

    url = pg_url(pg_single, "postgres")
    refused = aegis(tmp_path, "--log-level", "WARNING", "backup", "list", AEGIS_DATABASE_URL=url)
    assert refused.returncode == 2
    assert "no schema yet" in one_error_line(refused) and "`aegis migrate`" in refused.stderr
    assert pg_single.primary.sql("SELECT to_regclass('alembic_version') IS NULL")[0][0] is True  # nothing made
    assert aegis(tmp_path, "migrate", AEGIS_DATABASE_URL=url).returncode == 0
    listed = aegis(tmp_path, "backup", "list", AEGIS_DATABASE_URL=url)
    assert listed.returncode == 0 and "no backups yet" in listed.stdout, listed.stderr


def test_wal_fetch_loads_no_sdk_of_targets_it_does_not_touch(tmp_path: Path) -> None:
    archive = {"kind": "local", "path": str(tmp_path / "archive"), "name": "local"}
    (tmp_path / "aegis.yaml").write_text(yaml.safe_dump({"storage": [archive]}))
    segment = tmp_path / "data" / "pg_wal" / SEGMENT
    segment.parent.mkdir(parents=True)
    segment.write_bytes(os.urandom(1024) * 1024)
    pushed = aegis(tmp_path, "wal", "push", str(segment))
    assert pushed.returncode == 0, pushed.stderr
    # S3 and Azure added later (unreachable: a client made for them would fail or hang the fetch)
    dead = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "aegis.yaml").write_text(yaml.safe_dump({"storage": [
        archive, {"kind": "s3", "bucket": "never-touched", "endpoint_url": dead, "name": "s3"},
        {"kind": "azure", "container": "never-touched", "name": "azure"}]}))
    fetched = aegis(tmp_path, "wal", "fetch", SEGMENT, str(tmp_path / "restored"), importtime=True,
                    AZURE_STORAGE_CONNECTION_STRING=f"DefaultEndpointsProtocol=http;AccountName=x;"
                                                    f"AccountKey={KEY};BlobEndpoint={dead}/x;")
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    assert (tmp_path / "restored").read_bytes() == segment.read_bytes()
    loaded = imported(fetched.stderr)
    assert "cryptography" in top_level(loaded)   # it did the real work (decrypted, authenticated)
    # the lean path (recovery/backup/wal/lean_fetch.py): no ORM, no pydantic, no psycopg, no Alembic
    assert top_level(loaded).isdisjoint(LEAN_FETCH_NEVER), sorted(top_level(loaded) & LEAN_FETCH_NEVER)
    # (the config check looks the extras up with find_spec, which imports only the empty namespace `azure`)
    sdks = {name for name in loaded if name.startswith(("boto3", "botocore", "azure.storage.", "azure.core"))}
    assert not sdks, sorted(sdks)


def test_the_fast_exit_runs_atexit_flushes_and_closes_the_store(tmp_path: Path) -> None:
    """``run()`` (the console script) ends with os._exit only after everything is written and closed."""
    (tmp_path / "aegis.yaml").write_text("locale: en\n")
    child = textwrap.dedent(f"""
        import atexit, os, sys
        marker = {str(tmp_path / "marker")!r}
        real_exit = os._exit
        def recording_exit(code):
            with open(marker, "a") as f:
                f.write(f"os._exit({{code}})\\n")
            real_exit(code)
        os._exit = recording_exit
        atexit.register(lambda: open(marker, "a").write("atexit ran\\n"))
        sys.argv = ["aegis", "backup", "list"]
        sys.stdout.write("x" * 100000)   # more than a pipe holds: buffered until the flush
        from bot.cli.main import run
        run()
        """)
    result = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, env=environment(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("no backups yet: run `aegis backup run full`\n"), result.stdout[-200:]
    assert (tmp_path / "marker").read_text() == "atexit ran\nos._exit(0)\n"
    # every connection closed: SQLite removes the write-ahead log when its last connection closes
    assert (tmp_path / "aegis.db").exists() and not (tmp_path / "aegis.db-wal").exists()

    (tmp_path / "aegis.yaml").write_text(yaml.safe_dump({"storage": [{"kind": "local", "path": str(tmp_path)}]}))
    absent = aegis(tmp_path, "wal", "fetch", SEGMENT, str(tmp_path / "out"))
    assert absent.returncode == 1, absent.stderr   # exit codes survive the fast exit (1: absent)


def test_wal_push_and_fetch_through_the_archiver_load_no_heavy_library(tmp_path: Path) -> None:
    """With ``aegis wal archiver`` running, ``aegis wal push %p`` / ``aegis wal fetch %f %p`` hand over and
    exit: of the heavy libraries only yaml (to read ``backups.archiver``) is loaded."""
    archive = {"kind": "local", "path": str(tmp_path / "archive"), "name": "local"}
    (tmp_path / "aegis.yaml").write_text(yaml.safe_dump({"storage": [archive]}))
    pg_wal = tmp_path / "data" / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    (pg_wal / SEGMENT).write_bytes(os.urandom(1024) * 1024)
    log = tmp_path / "archiver.log"
    with open(log, "w") as out:
        archiver = subprocess.Popen([sys.executable, "-m", "bot.cli", "wal", "archiver", "--data-dir",
                                     str(tmp_path / "data")], cwd=tmp_path, env=environment(tmp_path),
                                    stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "listening on" in log.read_text() or archiver.poll() is not None, timeout=60,
                 what="the archiver to listen")
        pushed = aegis(tmp_path, "wal", "push", str(pg_wal / SEGMENT), importtime=True)
        assert pushed.returncode == 0 and "archived by the archiver" in pushed.stderr, pushed.stderr[-2000:]
        fetched = aegis(tmp_path, "wal", "fetch", SEGMENT, str(pg_wal / "RECOVERYXLOG"), importtime=True)
        assert fetched.returncode == 0, fetched.stderr[-2000:]
        assert (pg_wal / "RECOVERYXLOG").read_bytes() == (pg_wal / SEGMENT).read_bytes()
        assert f"archiver: fetched {SEGMENT} (restored)" in log.read_text()   # the archiver did the work
        for run in (pushed, fetched):
            loaded = top_level(imported(run.stderr))
            assert "bot" in loaded and "yaml" in loaded
            assert loaded.isdisjoint(set(HEAVY) - {"yaml"}), sorted(loaded & set(HEAVY))
    finally:
        archiver.terminate()
        archiver.wait(timeout=60)


def test_wal_fetch_from_a_postgresql_catalog_takes_the_lean_path(tmp_path: Path, pg_single: PgSingle) -> None:
    """The segment's row read with psycopg and plain SQL: no ORM, no pydantic, the right bytes."""
    url = pg_url(pg_single, "postgres")
    (tmp_path / "aegis.yaml").write_text(yaml.safe_dump({"storage": [
        {"kind": "local", "path": str(tmp_path / "archive"), "name": "local"}]}))
    assert aegis(tmp_path, "migrate", AEGIS_DATABASE_URL=url).returncode == 0
    segment = tmp_path / "data" / "pg_wal" / SEGMENT
    segment.parent.mkdir(parents=True)
    segment.write_bytes(os.urandom(1024) * 1024)
    pushed = aegis(tmp_path, "wal", "push", str(segment), AEGIS_DATABASE_URL=url)
    assert pushed.returncode == 0, pushed.stderr
    fetched = aegis(tmp_path, "wal", "fetch", SEGMENT, str(tmp_path / "restored"), importtime=True,
                    AEGIS_DATABASE_URL=url)
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    assert (tmp_path / "restored").read_bytes() == segment.read_bytes()
    loaded = top_level(imported(fetched.stderr))
    assert {"psycopg", "cryptography"} <= loaded   # the catalog read in PostgreSQL, the copy decrypted
    never = LEAN_FETCH_NEVER - {"psycopg"}
    assert loaded.isdisjoint(never), sorted(loaded & never)
    absent = aegis(tmp_path, "wal", "fetch", "0000000100000000000000FF", str(tmp_path / "none"),
                   AEGIS_DATABASE_URL=url)
    assert absent.returncode == 1, absent.stderr   # absent: decided by the full command, as before


def test_a_postgresql_backup_loads_no_driver_sdk_or_web_library_it_does_not_use(tmp_path: Path,
                                                                                 pg_single: PgSingle) -> None:
    """``aegis backup run postgresql`` to a local target (issue 12, peak RSS ≤ 150 MiB): no Milvus or Neo4j
    driver, no Slack or web library, no storage SDK of a target that is not configured."""
    pg_single.primary.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
    (tmp_path / "aegis.yaml").write_text(yaml.safe_dump({
        "components": {"postgres": {"primary": {"dsn": pg_single.primary.dsn()}}},
        "storage": [{"kind": "local", "path": str(tmp_path / "staging"), "name": "local"}]}))
    assert aegis(tmp_path, "migrate").returncode == 0   # a fresh store would be created (with Alembic) first
    run = aegis(tmp_path, "backup", "run", "postgresql", "--quiet", importtime=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "(postgresql): ok" in run.stdout, run.stdout
    loaded = top_level(imported(run.stderr))
    assert {"psycopg", "zstandard", "cryptography"} <= loaded   # it did the real work
    never = {"pymilvus", "neo4j", "numpy", "slack_sdk", "slack_bolt", "flask", "waitress", "jinja2", "alembic",
             "boto3", "botocore", "requests"}
    assert loaded.isdisjoint(never), sorted(loaded & never)
    sdks = {name for name in imported(run.stderr) if name.startswith(("azure.storage.", "azure.core"))}
    assert not sdks, sorted(sdks)
