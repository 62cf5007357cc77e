"""Issue 7: a restored cluster is private, paths and passwords survive quoting, key files must be private.

Real PostgreSQL 15 clusters and the ``aegis`` CLI as a process, as in ``tests/test_wal_and_restore.py``.
"""

from __future__ import annotations

import pwd
import re
import shlex
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from tests.harness.cli_workspace import (
    aegis,
    catalog,
    local,
    migrate_shared_catalog,
    restored_dsn,
    stop_restored,
    table_digest,
    write_config,
)
from tests.harness.pgcluster import PG_BIN, PgSingle, free_port

PSQL = str(PG_BIN / "psql")
INFO_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO ")


def psql_as(os_user: str, dsn: str, query: str) -> subprocess.CompletedProcess[str]:
    """psql run as another local OS user (from /tmp, which every user may enter)."""
    return subprocess.run([PSQL, dsn, "-XAtc", query], user=os_user, extra_groups=[], cwd="/tmp",
                          capture_output=True, text=True, timeout=30, check=False)


def archive_everything(pg: PgSingle, workdir: Path) -> None:
    """Switch WAL, wait for the cluster's own archiver, then push every archived file with ``aegis wal push``."""
    last = pg.primary.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    deadline = time.monotonic() + 60
    while pg.primary.sql("SELECT coalesce(last_archived_wal, '') >= %s FROM pg_stat_archiver", last)[0][0] is False:
        assert time.monotonic() < deadline, pg.primary.log_tail()
        time.sleep(0.2)
    for path in sorted(pg.archive_dir.iterdir()):
        pushed = aegis(workdir, "wal", "push", str(path))
        assert pushed.returncode == 0, pushed.stderr


def hba_rules(data_dir: Path) -> list[str]:
    lines = (data_dir / "pg_hba.conf").read_text().splitlines()
    return [line for line in lines if line.split("#", 1)[0].strip()]


@pytest.mark.timeout(300)
def test_a_restore_into_a_path_with_a_space_and_a_quote_is_private_to_the_server_user(
    shared_dir: Path, pg_single: PgSingle,
) -> None:
    """End to end through ``aegis restore postgres`` with WAL replay: the data dir, its WAL staging dir (in
    restore_command) and its socket dir all contain a space and a single quote. The restored server admits
    no one but its OS user (and the restoring root) — not ``nobody``, neither by socket nor by TCP."""
    primary = pg_single.primary
    write_config(shared_dir, [local(shared_dir)], dsn=primary.dsn())
    migrate_shared_catalog(shared_dir)
    primary.sql("CREATE TABLE t (id int primary key, batch text, v text)")
    primary.sql("INSERT INTO t SELECT g, 'A', md5(g::text) FROM generate_series(1, 500) g")
    backup = aegis(shared_dir, "backup", "run", "postgresql", "--quiet")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    primary.sql("INSERT INTO t SELECT g, 'B', md5(g::text) FROM generate_series(501, 900) g")  # only in WAL
    archive_everything(pg_single, shared_dir)
    expected = table_digest(primary.dsn())

    odd = shared_dir / "it's a dir"
    odd.mkdir()
    odd.chmod(0o755)
    data_dir = odd / "da'ta x"
    port = free_port()
    restored = aegis(shared_dir, "restore", "postgres", "--data-dir", str(data_dir), "--port", str(port), "--quiet")
    try:
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "WAL file" in restored.stdout and "replayed from 0 " not in restored.stdout, restored.stdout
        dsn = restored_dsn(restored.stdout)
        socket_dir = Path(odd / "da'ta x.sock")
        assert conninfo_to_dict(dsn)["host"] == str(socket_dir), dsn  # libpq-quoted path, parsed back
        assert table_digest(dsn) == expected  # the backup and the WAL after it, through the quoted restore_command

        rules = hba_rules(data_dir)
        assert rules and not any("trust" in rule.split() for rule in rules), rules
        assert all(rule.split()[0] == "local" for rule in rules), "no TCP entry at all"
        mode = socket_dir.stat()
        assert stat.S_IMODE(mode.st_mode) == 0o700 and mode.st_uid == pwd.getpwnam("postgres").pw_uid
        assert "as the OS user postgres" in restored.stdout

        documented = psql_as("postgres", dsn, "SELECT count(*) FROM t")
        assert documented.returncode == 0 and documented.stdout.strip() == "900", documented.stderr
        intruder = psql_as("nobody", dsn, "SELECT count(*) FROM t")
        assert intruder.returncode != 0 and "Permission denied" in intruder.stderr, intruder.stdout + intruder.stderr
        by_tcp = psql_as("nobody", f"host=127.0.0.1 port={port} user=postgres dbname=postgres", "SELECT 1")
        assert by_tcp.returncode != 0 and "no pg_hba.conf entry" in by_tcp.stderr, by_tcp.stderr
        as_role = psql_as("postgres", f"{dsn} user=nobody", "SELECT 1")  # peer map: the OS user's own role only
        assert as_role.returncode != 0 and "Peer authentication failed" in as_role.stderr, as_role.stderr
    finally:
        stop_restored(data_dir)
    assert not Path(str(data_dir) + ".wal-stage").exists()


@pytest.mark.timeout(180)
def test_a_dsn_password_with_a_space_and_a_quote_works(shared_dir: Path, pg_single: PgSingle,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``password_env`` holding ``p w'd\\x``: libpq quoting carries it to pg_basebackup over scram-sha-256."""
    primary = pg_single.primary
    password = "p w'd\\x \"q"
    primary.sql(f"ALTER ROLE postgres PASSWORD {quote_literal(password)}")
    hba = ("local all all trust\n"
           "host all all 127.0.0.1/32 scram-sha-256\n"
           "host replication all 127.0.0.1/32 scram-sha-256\n")
    (primary.data_dir / "pg_hba.conf").write_text(hba)
    primary.sql("SELECT pg_reload_conf()")
    primary.sql("CREATE TABLE t (id int primary key, batch text, v text)")
    primary.sql("INSERT INTO t SELECT g, 'A', md5(g::text) FROM generate_series(1, 100) g")

    config = write_config(shared_dir, [local(shared_dir)], dsn=primary.tcp_dsn())
    settings = yaml.safe_load(config.read_text())
    settings["components"]["postgres"]["primary"]["password_env"] = "RESTORE_TEST_PG_PASSWORD"
    config.write_text(yaml.safe_dump(settings))
    wrong = aegis(shared_dir, "backup", "run", "postgresql", "--quiet", env={"RESTORE_TEST_PG_PASSWORD": "nope"})
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stdout + wrong.stderr
    right = aegis(shared_dir, "backup", "run", "postgresql", "--quiet", env={"RESTORE_TEST_PG_PASSWORD": password})
    assert right.returncode == 0, right.stdout + right.stderr
    assert password not in right.stdout + right.stderr
    rows = catalog(shared_dir, "kind = 'pg_full' AND status = 'ok'")
    assert len(rows) == 1


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_can_read_is_refused_with_the_chmod_to_run(shared_dir: Path, mode: int) -> None:
    write_config(shared_dir, [local(shared_dir)], dsn="host=/nonexistent port=5 user=postgres")
    key_file = shared_dir / "backup.key"
    key_file.chmod(mode)
    segment = shared_dir / "000000010000000000000007"
    segment.write_bytes(b"\0" * 4096)
    for args, code in ((("backup", "run", "postgresql", "--quiet"), 2), (("wal", "push", str(segment)), 1)):
        refused = aegis(shared_dir, *args)
        assert refused.returncode == code, refused.stdout + refused.stderr
        # the refusal is one line; INFO log records of the command (e.g. aegis.secrets) are not part of it
        lines = [line for line in refused.stderr.strip().splitlines() if not INFO_LOG.match(line)]
        assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert f"chmod 600 {shlex.quote(str(key_file))}" in lines[0] and f"{mode:04o}" in lines[0], lines[0]
    staged = shared_dir / "staging"
    assert not any(staged.rglob("*")), "nothing may be written with a refused key"
    assert not (shared_dir / "aegis.db").exists() or not catalog(shared_dir)

    key_file.chmod(0o600)  # the fix the message names works
    pushed = aegis(shared_dir, "wal", "push", str(segment))
    assert pushed.returncode == 0, pushed.stderr
