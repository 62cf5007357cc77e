"""``aegis wal push %p`` (archive_command), ``aegis wal fetch %f %p`` (restore_command), ``aegis wal stream``.

Both run as the PostgreSQL server's OS user, so the config, the key (prefer ``encryption.key_file``
readable only by that user: a key in archive_command's environment shows up in ``pg_settings``) and
the catalog database must be reachable from there, e.g.::

    archive_command = 'AEGIS_CONFIG=/etc/aegis/aegis.yaml /opt/aegis/bin/aegis wal push %p'
    restore_command = 'AEGIS_CONFIG=/etc/aegis/aegis.yaml /opt/aegis/bin/aegis wal fetch %f %p'

Exit codes follow what PostgreSQL expects: push 0 archived (or already archived identically), 1
not archived (PostgreSQL retries; the segment stays in pg_wal); fetch 0 restored, 1 absent (the
normal end of recovery), 255 any error — including a bad config or key, and a segment the catalog
lists as archived that no target holds — so recovery stops instead of ending early and promoting on
a gap.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from bot.backup_wiring import BackupSetupError, runner_from, sources_from
from bot.cli.checks import OneLineParser
from bot.cli.common import setup
from recovery.backup.wal.archive import TargetWalStore
from recovery.backup.wal.commands import FETCH_ERROR_EXIT, PUSH_FAILED_EXIT, fetch_main, push_main
from recovery.backup.wal.stream import WalStreamer
from recovery.redact import redact


def failure_exit(argv: list[str]) -> int | None:
    """The exit code for a setup or usage error of a ``wal`` command (None: not a wal command)."""
    words = [a for a in argv if not a.startswith("-")]
    if words[:2] == ["wal", "fetch"]:
        return FETCH_ERROR_EXIT
    if words[:2] == ["wal", "push"]:
        return PUSH_FAILED_EXIT
    return None


def _store(args: argparse.Namespace) -> TargetWalStore:
    config, store = setup(args)
    return TargetWalStore(runner_from(config, store))


def _push(args: argparse.Namespace) -> int:
    try:
        return push_main(Path(args.path), _store(args))
    except Exception as exc:  # noqa: BLE001 - e.g. the catalog database is down: not archived, retry later
        print(f"aegis wal push: {redact(str(exc))[:300]}", file=sys.stderr)
        return PUSH_FAILED_EXIT


def _fetch(args: argparse.Namespace) -> int:
    try:
        return fetch_main(args.name, Path(args.dest), _store(args))
    except Exception as exc:  # noqa: BLE001 - an error must stop recovery, never read as "absent"
        print(f"aegis wal fetch: {redact(str(exc))[:300]}", file=sys.stderr)
        return FETCH_ERROR_EXIT


def _stream(args: argparse.Namespace) -> int:
    config, store = setup(args)
    dsn = sources_from(config).postgres_dsn
    if not dsn:
        raise BackupSetupError("no PostgreSQL to stream from: configure components.postgres.primary")
    streamer = WalStreamer(dsn, Path(args.dir), args.slot, TargetWalStore(runner_from(config, store)),
                           synchronous=args.synchronous, interval=args.interval)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"streaming WAL through slot {args.slot} into {args.dir}; completed segments go to the targets",
          file=sys.stderr)
    stats = streamer.run(stop)
    print(f"stopped: {len(stats.shipped)} shipped, {len(stats.already_archived)} already archived, "
          f"{len(stats.refused)} refused (left in {args.dir}), {stats.restarts} receiver restart(s)")
    return 1 if stats.refused else 0


def add_commands(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    wal = sub.add_parser("wal", help="WAL archive on the backup targets (archive_command / restore_command)")
    actions = wal.add_subparsers(dest="wal_command", required=True)
    push = actions.add_parser("push", help="archive_command: aegis wal push %%p")
    push.add_argument("path", help="the WAL file PostgreSQL hands over (%%p)")
    push.set_defaults(func=_push)
    fetch = actions.add_parser("fetch", help="restore_command: aegis wal fetch %%f %%p")
    fetch.add_argument("name", help="the WAL file name PostgreSQL asks for (%%f)")
    fetch.add_argument("dest", help="where to write it (%%p)")
    fetch.set_defaults(func=_fetch)
    stream = actions.add_parser("stream", help="pg_receivewal continuously (RPO near zero), ship completed segments")
    stream.add_argument("--dir", required=True, help="spool directory for the open segment (another host)")
    stream.add_argument("--slot", default="aegis_wal", help="replication slot (created if missing)")
    stream.add_argument("--synchronous", action="store_true", help="flush and confirm each write at once")
    stream.add_argument("--interval", type=float, default=2.0, help="seconds between shipping passes")
    stream.set_defaults(func=_stream)
