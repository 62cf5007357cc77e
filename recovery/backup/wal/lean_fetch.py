"""``aegis wal fetch %f %p`` without the ORM and pydantic: the path taken when no archiver answers.

``restore_command`` runs once per segment during recovery, and the full command pays ~0.45 s of
imports for a few milliseconds of work (the catalog's SQLAlchemy/SQLModel models, the config's
pydantic models, psycopg). This reads only what a fetch needs:

- from the YAML config: ``storage`` (each target built by ``storage.base.target_from_config``, named
  as ``bot.config`` names them: ``<kind>`` for the first, ``<kind><index>`` after) and ``encryption``
  (``key_file`` or ``key_env``, default ``AEGIS_BACKUP_KEY``; the key file's permissions are checked
  by ``load_key`` as everywhere);
- from the catalog, with plain SQL (the standard library's ``sqlite3`` opened read-only, or psycopg for a
  PostgreSQL catalog): the schema revision (it must be this code's head) and the segment's good row (its
  ciphertext and plaintext sha256, the targets holding it).

The copy is decrypted chunk by chunk (every AES-GCM tag checked), pinned to the row's ciphertext
sha256, its plaintext compared with the row's ``source_sha256``, written to a temp file beside ``%p``
and renamed. The lean path only ever *succeeds*: anything it does not handle exactly as the full
command would — a catalog URL it does not know, a config it does not read, a schema that is not the head, a
segment without a good row (absent, or archived without a catalog), a copy that fails its checks — makes
``lean_fetch`` return None and the full command decides (and reports) with its own rules: absent
exits 1, a damaged copy or a store error 255.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Mapping
from pathlib import Path

from recovery.backup.wal.commands import CHUNK, check_wal_name

_DEFAULT_DATABASE_URL = "sqlite:///aegis.db"   # statemachines/store.py's default (importing it loads SQLAlchemy)
_DEFAULT_KEY_ENV = "AEGIS_BACKUP_KEY"           # bot/config.py's default
_WAL_RUN_ID = "wal"


class _NotLean(Exception):
    """This fetch is for the full command."""


def lean_fetch(name: str, dest: Path, config_option: str | None) -> int | None:
    """Restore ``name`` to ``dest``: 0 when done here, None when the full command must decide."""
    try:
        check_wal_name(name)
        config = _read_config(config_option)
        row = _good_row(name)
        return _restore(name, Path(dest), config, row)
    except Exception:  # noqa: BLE001 - whatever went wrong, the full command fetches (or fails) with its rules
        return None


def _read_config(config_option: str | None) -> Mapping[str, object]:
    import yaml

    explicit = config_option or os.environ.get("AEGIS_CONFIG")
    path = Path(explicit or "aegis.yaml")
    if not path.exists():
        raise _NotLean("no config file")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f, Loader=loader)   # noqa: S506 - a safe loader
    if not isinstance(data, dict):
        raise _NotLean("not a mapping")
    return data


def _head_revision() -> str:
    from statemachines.revisions import migration_revisions  # standard library only

    try:
        return migration_revisions()[0]
    except RuntimeError:
        raise _NotLean("not one head revision") from None


def _sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///") or "?" in url:
        raise _NotLean("not a plain SQLite or PostgreSQL catalog URL")
    path = Path(url.removeprefix("sqlite:///"))
    if not path.is_file():
        raise _NotLean("no catalog yet")
    return path


_ROWS = ("SELECT sha256, source_sha256, targets FROM backup_catalog WHERE run_id = {p} AND object_name = {p} "
         "AND status = 'ok' ORDER BY id")


def _catalog_rows(url: str, name: str) -> list[tuple[object, ...]]:
    """The segment's good rows, read with plain SQL: ``sqlite3`` read-only, or psycopg for PostgreSQL
    (the libpq form of the SQLAlchemy URL); the schema must be this code's head."""
    params = (_WAL_RUN_ID, f"wal/{name}.zst.aes")
    for prefix in ("postgresql+psycopg://", "postgresql://"):
        if url.startswith(prefix):
            import psycopg

            with psycopg.connect("postgresql://" + url.removeprefix(prefix), connect_timeout=10) as pg:
                if pg.execute("SELECT version_num FROM alembic_version").fetchall() != [(_head_revision(),)]:
                    raise _NotLean("schema is not this code's head")
                return list(pg.execute(_ROWS.format(p="%s"), params).fetchall())
    path = _sqlite_path(url)
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        if conn.execute("SELECT version_num FROM alembic_version").fetchall() != [(_head_revision(),)]:
            raise _NotLean("schema is not this code's head")
        return conn.execute(_ROWS.format(p="?"), params).fetchall()
    finally:
        conn.close()


def _good_row(name: str) -> tuple[str, str, dict[str, object]]:
    """(ciphertext sha256, plaintext sha256, targets) of the segment's good catalog row."""
    rows = _catalog_rows(os.environ.get("AEGIS_DATABASE_URL") or _DEFAULT_DATABASE_URL, name)
    if not rows or not rows[0][0] or not rows[0][1]:
        raise _NotLean("no good row")
    sha256, source_sha256, targets = rows[0]
    outcomes = json.loads(targets) if isinstance(targets, str) else targets   # PostgreSQL's json: already parsed
    return str(sha256), str(source_sha256), outcomes if isinstance(outcomes, dict) else {}


def _restore(name: str, dest: Path, config: Mapping[str, object], row: tuple[str, str, dict[str, object]]) -> int:
    from recovery.backup.storage.base import Target, target_from_config
    from recovery.backup.stream.crypto import load_key
    from recovery.backup.stream.pipeline import restore_stream

    sha256, source_sha256, outcomes = row
    encryption = config.get("encryption") or {}
    storage = config.get("storage") or []
    if not isinstance(encryption, dict) or not isinstance(storage, list) or not storage:
        raise _NotLean("no storage or encryption settings")
    key_file, key_env = encryption.get("key_file"), encryption.get("key_env")
    if key_file is not None and key_env is not None:
        raise _NotLean("both key_file and key_env")
    key = load_key(key_file=str(key_file)) if key_file else load_key(str(key_env or _DEFAULT_KEY_ENV))

    entries: list[dict[str, object]] = []
    for index, entry in enumerate(storage):
        if not isinstance(entry, dict):
            raise _NotLean("a storage entry is not a mapping")
        named = dict(entry)
        named["name"] = named.get("name") or f"{named.get('kind')}{'' if index == 0 else index}"
        entries.append(named)

    def holds(entry: Mapping[str, object]) -> bool:
        outcome = outcomes.get(str(entry["name"]))
        return isinstance(outcome, dict) and bool(outcome.get("ok")) and not outcome.get("removed")

    # the holders first, in config order (as the full command reads them); a target is built (and its
    # SDK imported) only when it is tried
    ordered = [e for e in entries if holds(e)] + [e for e in entries if not holds(e)]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as out:
            for entry in ordered:
                out.seek(0)
                out.truncate()
                try:
                    target: Target = target_from_config(entry)
                    restore_stream(target, f"wal/{name}.zst.aes", key, out, sha256, verify_first=False)
                except Exception:  # noqa: BLE001 - unreachable, absent or damaged here: the next target
                    continue
                out.seek(0)
                digest = hashlib.sha256()
                while chunk := out.read(CHUNK):
                    digest.update(chunk)
                if digest.hexdigest() == source_sha256:
                    break
            else:
                raise _NotLean("no good copy")
        os.replace(tmp, dest)
        return 0
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
