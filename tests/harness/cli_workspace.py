"""The ``aegis`` CLI (wal, backup, restore) run as a process against a shared work dir and catalog.

The archive_command runs as the ``postgres`` OS user, so it uses Aegis installed where that user
can run it (``SERVER_AEGIS``: ``.tools/server-venv``, made by ``scripts/install-server-side``), with
the key in a key file, the catalog in a shared SQLite file and the config in ``shared_dir``
(a fixture; tests/conftest.py registers this module as a plugin).
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.pgcluster import PG_BIN

REPO = Path(__file__).resolve().parents[2]
SERVER_AEGIS = REPO / ".tools" / "server-venv" / "bin" / "aegis"
KEY = base64.b64encode(bytes(range(32))).decode()
SEGMENT = "000000010000000000000007"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A work dir both root (the test) and postgres (archive_command) can write: /tmp, 0777."""
    path = Path(tempfile.mkdtemp(prefix="aegis-wal-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(workdir: Path, storage: list[dict[str, Any]], dsn: str | None = None) -> Path:
    key_file = workdir / "backup.key"
    key_file.write_text(KEY)
    shutil.chown(key_file, "postgres", "postgres")
    key_file.chmod(0o600)  # only the server user (and root) may read the key
    (workdir / "staging").mkdir(exist_ok=True)
    (workdir / "staging").chmod(0o777)
    config: dict[str, Any] = {"storage": storage, "encryption": {"key_file": str(key_file)}}
    if dsn:
        config["components"] = {"postgres": {"primary": {"dsn": dsn}}}
    path = workdir / "aegis.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)
    return path


def local(workdir: Path) -> dict[str, Any]:
    return {"kind": "local", "path": str(workdir / "staging"), "name": "local"}


def aegis(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "AEGIS_CONFIG": str(workdir / "aegis.yaml"),
                "AEGIS_DATABASE_URL": f"sqlite:///{workdir}/aegis.db", **(env or {})}
    full_env.pop("AEGIS_BACKUP_KEY", None)
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=workdir, env=full_env, text=True,
                          capture_output=True, timeout=600)


def migrate_shared_catalog(workdir: Path) -> None:
    assert aegis(workdir, "migrate").returncode == 0
    (workdir / "aegis.db").chmod(0o666)


def catalog(workdir: Path, where: str = "1=1") -> list[sqlite3.Row]:
    with sqlite3.connect(workdir / "aegis.db") as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(f"SELECT * FROM backup_catalog WHERE {where} ORDER BY id"))


def flip_byte(path: Path, offset: int = 300) -> None:
    data = bytearray(path.read_bytes())
    data[min(offset, len(data) - 1)] ^= 0x01
    path.write_bytes(bytes(data))


def stop_restored(data_dir: Path) -> None:
    subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "stop"], user="postgres",
                   group="postgres", extra_groups=[], cwd="/tmp", capture_output=True, check=False)


def restored_dsn(output: str) -> str:
    found = re.search(r"connect: psql (.+)$", output, re.M)
    assert found, output
    [dsn] = shlex.split(found.group(1))  # printed shell-quoted
    return dsn


def table_digest(dsn: str, where: str = "true") -> tuple[int, str]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*), md5(coalesce(string_agg(id || ':' || batch || ':' || v, ',' "
                           f"ORDER BY id), '')) FROM t WHERE {where}").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])
