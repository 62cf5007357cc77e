"""``aegis wal push %p`` (archive_command) and ``aegis wal fetch %f %p`` (restore_command).

Both run as the PostgreSQL server's OS user, so the config, the key (prefer ``encryption.key_file``
readable only by that user: a key in archive_command's environment shows up in ``pg_settings``) and
the catalog database must be reachable from there, e.g.::

    archive_command = 'AEGIS_CONFIG=/etc/aegis/aegis.yaml /opt/aegis/bin/aegis wal push %p'
    restore_command = 'AEGIS_CONFIG=/etc/aegis/aegis.yaml /opt/aegis/bin/aegis wal fetch %f %p'

Exit codes follow what PostgreSQL expects: push 0 archived (or already archived identically), 1
not archived (PostgreSQL retries; the segment stays in pg_wal); fetch 0 restored, 1 absent (the
normal end of recovery), 255 any error — including a bad config or key — so recovery stops instead
of ending early and promoting on a gap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bot.backup_cli import runner_from, setup
from recovery.backup.wal import FETCH_ERROR_EXIT, PUSH_FAILED_EXIT, fetch_main, push_main
from recovery.backup.wal_archive import TargetWalStore
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


def add_commands(sub: Any) -> None:
    wal = sub.add_parser("wal", help="WAL archive on the backup targets (archive_command / restore_command)")
    actions = wal.add_subparsers(dest="wal_command", required=True)
    push = actions.add_parser("push", help="archive_command: aegis wal push %%p")
    push.add_argument("path", help="the WAL file PostgreSQL hands over (%%p)")
    push.set_defaults(func=_push)
    fetch = actions.add_parser("fetch", help="restore_command: aegis wal fetch %%f %%p")
    fetch.add_argument("name", help="the WAL file name PostgreSQL asks for (%%f)")
    fetch.add_argument("dest", help="where to write it (%%p)")
    fetch.set_defaults(func=_fetch)
