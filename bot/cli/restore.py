"""``aegis restore postgres|neo4j|milvus [ID]``: the restore primitives behind a command.

Without an id the newest good backup of that kind is restored. Nothing unverified is restored: a
full PostgreSQL backup is authenticated chunk by chunk while it streams into a staging directory that
becomes the data directory only after its final tag and checksum passed; every other restore
verifies one stored copy completely first. A damaged backup is refused with the previous good one
named (exit 1), and nothing is left written. Restores never overwrite: PostgreSQL goes into an empty data directory on a
scratch port (left running, its DSN printed), Neo4j into an empty database, Milvus into a collection
that does not exist yet (``--as`` renames it). Exit codes: 0 restored, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from datetime import datetime
from pathlib import Path

from bot.cli.checks import OneLineParser
from bot.cli.common import ProgressLine, setup

# The restore stack (psycopg, sqlmodel, the crypto, the drivers) is imported inside each command, so that
# building the parser (`aegis --help`, every other command) loads none of it.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _target_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise RestoreUsageError(f"--target-time {text!r} is not an ISO time, e.g. 2026-11-26T09:30:00+09:00") from None
    if value.tzinfo is None:
        raise RestoreUsageError("--target-time needs a time zone, e.g. 2026-11-26T09:30:00+00:00")
    return value


class RestoreUsageError(Exception):
    """A restore was asked for in a way that cannot work; the message says what to give instead."""


def _progress(args: argparse.Namespace) -> ProgressLine | None:
    return None if args.quiet else ProgressLine()


def _postgres(args: argparse.Namespace) -> int:
    from bot.backup_wiring import runner_from
    from recovery.backup.catalog import POSTGRES_BASE_KINDS
    from recovery.backup.catalog import choose as choose_backup
    from recovery.backup.repository import RestoreRefused, VerifiedCopy
    from recovery.backup.restore.from_catalog import restore_postgres
    from recovery.backup.wal.archive import TargetWalStore

    target_time = _target_time(args.target_time)
    config, store = setup(args)
    runner = runner_from(config, store)
    [record] = choose_backup(store, POSTGRES_BASE_KINDS, args.id)[:1]
    data_dir = Path(args.data_dir).absolute()
    port = args.port or _free_port()
    socket_dir = Path(args.socket_dir).absolute() if args.socket_dir else data_dir.with_name(data_dir.name + ".sock")
    print(f"restoring {record.run_id} ({record.object_name}) into {data_dir}", file=sys.stderr)

    def from_copy(copy: VerifiedCopy) -> None:
        passed = f" ({'; '.join(copy.skipped)} passed over)" if copy.skipped else ""
        print(f"{'' if args.quiet else chr(10)}{record.run_id} read from {copy.target.name}{passed}", file=sys.stderr)

    try:   # a full backup in one pass: streamed, authenticated, into <data-dir>.aegis-restoring, then moved
        cluster, wal_files = restore_postgres(
            store, record, TargetWalStore(runner), data_dir, port=port, socket_dir=socket_dir,
            target_time=target_time, replay_wal=not args.no_wal, pause_at_target=args.pause,
            progress=_progress(args), pg_bin=args.pg_bin, on_copy=from_copy)
    except RestoreRefused as refused:
        if refused.previous is None:
            raise
        raise RestoreRefused(refused.record, refused.problems, refused.previous,
                             f"to restore it: aegis restore postgres {refused.previous.run_id} "
                             f"--data-dir {shlex.quote(str(data_dir))}") from None
    sys.stderr.write("\n")
    print(f"restored {record.run_id}: PostgreSQL is running on port {cluster.port} "
          f"(replayed from {wal_files} archived WAL file(s){', to ' + args.target_time if args.target_time else ''})")
    # Quoted for a shell: the DSN quotes paths with spaces/quotes by libpq's rules, shlex wraps the whole.
    print(f"  connect: psql {shlex.quote(cluster.dsn)}")
    print(f"           {cluster.access}; nobody else can reach it (no trust, socket directory 0700)")
    print(f"  stop:    pg_ctl -D {shlex.quote(str(cluster.data_dir))} stop")
    return 0


def _neo4j(args: argparse.Namespace) -> int:
    from neo4j import GraphDatabase

    from bot.backup_wiring import repository_from, sources_from
    from recovery.backup.catalog import NEO4J_KIND
    from recovery.backup.catalog import choose as choose_backup
    from recovery.backup.restore.from_catalog import restore_neo4j
    from recovery.backup.runner import Neo4jSource

    config, store = setup(args)
    settings: Neo4jSource | dict[str, str] = sources_from(config).neo4j or {}   # {}: nothing configured
    uri = args.uri or settings.get("uri")
    if not uri:
        raise RestoreUsageError("no Neo4j to restore into: give --uri or configure components.neo4j")
    password = os.environ.get(args.password_env) if args.password_env else settings.get("password")
    user = args.user or settings.get("user", "neo4j")
    database = args.database or settings.get("database", "neo4j")
    repo = repository_from(config, store)
    [record] = choose_backup(store, (NEO4J_KIND,), args.id)[:1]
    copy = repo.verified_copy(record)
    with GraphDatabase.driver(uri, auth=(user, password) if password else None) as driver:
        stats = restore_neo4j(copy, repo.key, driver, database, progress=_progress(args))
    sys.stderr.write("\n")
    print(f"restored {record.run_id} into Neo4j database {database!r}: {stats.nodes} nodes, "
          f"{stats.relationships} relationships (counts checked against the export)")
    return 0


def _milvus(args: argparse.Namespace) -> int:
    from pymilvus import MilvusClient

    from bot.backup_wiring import repository_from, sources_from
    from recovery.backup.catalog import MILVUS_KIND, exported_name
    from recovery.backup.catalog import choose as choose_backup
    from recovery.backup.restore.from_catalog import restore_milvus

    config, store = setup(args)
    uri = args.uri or sources_from(config).milvus_uri
    if not uri:
        raise RestoreUsageError("no Milvus to restore into: give --uri or configure components.milvus")
    records = choose_backup(store, (MILVUS_KIND,), args.id)
    if args.collection:
        records = [r for r in records if exported_name(r.object_name, "milvus") == args.collection]
        if not records:
            raise RestoreUsageError(f"that backup has no collection {args.collection!r}")
    if args.as_name and len(records) != 1:
        raise RestoreUsageError("--as renames one collection: pick it with --collection")
    repo = repository_from(config, store)
    copies = [repo.verified_copy(r) for r in records]  # all verified before any import
    client = MilvusClient(uri=uri)
    try:
        for copy in copies:
            stats = restore_milvus(copy, repo.key, client, args.as_name, progress=_progress(args))
            sys.stderr.write("\n")
            print(f"restored {copy.record.object_name} as collection {stats.collection!r}: {stats.total_rows} rows")
    finally:
        client.close()
    return 0


def add_commands(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    restore = sub.add_parser("restore", help="restore a verified backup (never over existing data)")
    kinds = restore.add_subparsers(dest="restore_command", required=True)
    pg = kinds.add_parser("postgres", help="base backup + archived WAL into an empty data dir on a scratch port")
    pg.add_argument("--data-dir", required=True, help="an empty or new directory for the restored cluster")
    pg.add_argument("--port", type=int, help="port for the restored server (default: a free one)")
    pg.add_argument("--socket-dir", help="its unix socket directory (default: <data-dir>.sock)")
    pg.add_argument("--target-time", help="point in time to recover to, ISO with zone (default: end of the archive)")
    pg.add_argument("--pause", action="store_true", help="pause at --target-time instead of promoting")
    pg.add_argument("--no-wal", action="store_true", help="only the base backup, no archived WAL")
    pg.add_argument("--pg-bin", help="PostgreSQL binaries of the backup's major version (default: $AEGIS_PG_BIN "
                                     "or Debian's); a chain with incrementals needs 17+")
    pg.set_defaults(func=_postgres)
    neo = kinds.add_parser("neo4j", help="import an export into an empty Neo4j database")
    neo.add_argument("--uri", help="bolt URI (default: components.neo4j.uri)")
    neo.add_argument("--user")
    neo.add_argument("--password-env", help="environment variable holding the password")
    neo.add_argument("--database", help="database to import into (must be empty)")
    neo.set_defaults(func=_neo4j)
    mil = kinds.add_parser("milvus", help="recreate collections from an export")
    mil.add_argument("--uri", help="Milvus URI (default: components.milvus.uri)")
    mil.add_argument("--collection", help="only this collection of the backup")
    mil.add_argument("--as", dest="as_name", help="restore under this new collection name")
    mil.set_defaults(func=_milvus)
    for parser in (pg, neo, mil):
        parser.add_argument("id", nargs="?", help="run id or object name (default: the newest good backup)")
        parser.add_argument("--quiet", action="store_true", help="no progress line")


def friendly_errors() -> tuple[type[Exception], ...]:
    """A restore asked for in a way that cannot work, or of a backup that does not exist: exit 2.

    Imported here, on the error path only (by then the failing command has loaded them anyway).
    """
    from recovery.backup.catalog import BackupNotFound

    return (RestoreUsageError, BackupNotFound)


def refusals() -> tuple[type[Exception], ...]:
    """Refusals that protect data (damaged backup, a target that is not empty): exit 1 with the reason."""
    from recovery.backup.errors import CollectionExistsError, DatabaseNotEmptyError
    from recovery.backup.restore.postgres import RestoreError  # RestoreRefused is a RestoreError

    return (RestoreError, DatabaseNotEmptyError, CollectionExistsError)
