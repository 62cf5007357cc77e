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
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from bot.cli.checks import OneLineParser
from recovery.backup.wal.commands import FETCH_ERROR_EXIT, PUSH_FAILED_EXIT
from recovery.backup.wal.handoff import default_socket, fetch_over, hand_over, segment_lock, wal_dir_of
from recovery.redact import redact
from statemachines.json_types import JsonObject

if TYPE_CHECKING:   # the store stack (sqlalchemy, SDKs) is imported only by the commands that use it
    from recovery.backup.wal.archive import TargetWalStore


def failure_exit(argv: list[str]) -> int | None:
    """The exit code for a setup or usage error of a ``wal`` command (None: not a wal command)."""
    words = [a for a in argv if not a.startswith("-")]
    if words[:2] == ["wal", "fetch"]:
        return FETCH_ERROR_EXIT
    if words[:2] == ["wal", "push"]:
        return PUSH_FAILED_EXIT
    return None


def _store(args: argparse.Namespace) -> TargetWalStore:
    from bot.backup_wiring import runner_from
    from bot.cli.common import setup
    from recovery.backup.wal.archive import TargetWalStore

    config, store = setup(args)
    return TargetWalStore(runner_from(config, store))


def _push(args: argparse.Namespace) -> int:
    """The push without an archiver (or the fallback when none answered): today's one-shot push."""
    from recovery.backup.wal.commands import push_main

    try:
        store = _store(args)
        with segment_lock(Path(args.path)):   # never at once with an archiver pushing the same segment
            return push_main(Path(args.path), store)
    except Exception as exc:  # noqa: BLE001 - e.g. the catalog database is down: not archived, retry later
        print(f"aegis wal push: {redact(str(exc))[:300]}", file=sys.stderr)
        return PUSH_FAILED_EXIT


def _fetch(args: argparse.Namespace) -> int:
    from recovery.backup.wal.commands import fetch_main

    try:
        return fetch_main(args.name, Path(args.dest), _store(args))
    except Exception as exc:  # noqa: BLE001 - an error must stop recovery, never read as "absent"
        print(f"aegis wal fetch: {redact(str(exc))[:300]}", file=sys.stderr)
        return FETCH_ERROR_EXIT


def _stream(args: argparse.Namespace) -> int:
    from bot.backup_wiring import BackupSetupError, runner_from, sources_from
    from bot.cli.common import setup
    from recovery.backup.wal.archive import TargetWalStore
    from recovery.backup.wal.stream import WalStreamer

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


# --- the fast path of `aegis wal push %p`: hand the segment to a running archiver --------------------

def _push_words(argv: list[str]) -> tuple[str | None, Path] | None:
    """(the --config given, %p) when ``argv`` is exactly a ``wal push PATH`` command line, else None."""
    words = _wal_words(argv, "push", 1)
    return None if words is None else (words[0], Path(words[1][0]))


def _wal_words(argv: list[str], command: str, count: int) -> tuple[str | None, list[str]] | None:
    """(the --config given, the arguments) when ``argv`` is exactly ``wal COMMAND ARG…`` (``count`` of
    them) with at most ``--config`` / ``--log-level`` before it, else None (the full parser's case)."""
    config: str | None = None
    words: list[str] = []
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        option, _, value = arg.partition("=")
        if option in ("--config", "--log-level"):
            if not value:
                if not rest:
                    return None
                value = rest.pop(0)
            config = value if option == "--config" else config
        elif arg.startswith("-"):
            return None   # anything else (--help…) is for the full parser
        else:
            words.append(arg)
    if len(words) != 2 + count or words[:2] != ["wal", command]:
        return None
    return config, words[2:]


def _archiver_settings(config_option: str | None) -> JsonObject:
    """``backups.archiver`` read straight from the YAML: loading bot.config (pydantic) per segment
    would cost more than the hand-over. Validation is the archiver's job (it loads the whole config)."""
    import yaml

    explicit = config_option or os.environ.get("AEGIS_CONFIG")
    path = Path(explicit or "aegis.yaml")
    if not path.exists():
        return {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f, Loader=loader) or {}   # noqa: S506 - a safe loader
    settings = (data.get("backups") or {}).get("archiver") or {} if isinstance(data, dict) else {}
    return settings if isinstance(settings, dict) else {}


def _socket_path(setting: object, data_dir: Path) -> Path:
    """The configured socket (relative: to the data directory), else pg_wal/aegis-archiver.sock."""
    if isinstance(setting, str) and setting:
        return data_dir / setting   # an absolute setting replaces data_dir
    return default_socket(data_dir / "pg_wal")


def fast_push(argv: list[str]) -> int | None:
    """``aegis wal push %p`` through the archiver: its exit code, or None to push the segment here.

    None when this is not a plain ``wal push PATH`` or no archiver answered (none running, a stale
    socket, killed mid-push): the caller then runs today's one-shot push, under the segment's lock.
    """
    words = _push_words(argv)
    if words is None:
        return None
    config_option, segment = words
    try:
        settings = _archiver_settings(config_option)
    except Exception:  # noqa: BLE001 - a broken config is reported by the full path, one line
        return None
    # PostgreSQL runs archive_command in the data directory, %p being pg_wal/<name>
    data_dir = wal_dir_of(segment).parent
    socket_path = _socket_path(settings.get("socket"), data_dir)
    timeout = settings.get("answer_timeout_seconds", 600)
    answer = hand_over(socket_path, segment, float(timeout) if isinstance(timeout, (int, float)) else 600.0)
    if answer is None:
        # said only when an archiver was expected (its socket is there): without one, pushing here is the
        # normal path and PostgreSQL's log should not get a line per segment about it
        if socket_path.exists():
            print(f"aegis wal push: no archiver answered on {socket_path}; pushing {segment.name} here",
                  file=sys.stderr)
        return None
    print(f"aegis wal push: {answer.message}", file=sys.stderr, flush=True)
    return 0 if answer.durable else PUSH_FAILED_EXIT


def fast_fetch(argv: list[str]) -> int | None:
    """``aegis wal fetch %f %p`` without the full stack: its exit code, or None for the full command.

    First the running archiver (it holds the key, targets and catalog: recovery/backup/wal/client.py),
    then the lean path (recovery/backup/wal/lean_fetch.py: no ORM, no pydantic), which only ever
    succeeds — an absent segment, a damaged copy or a config it does not read go to the full command.
    """
    words = _wal_words(argv, "fetch", 2)
    if words is None:
        return None
    config_option, (name, dest) = words
    try:
        settings = _archiver_settings(config_option)
    except Exception:  # noqa: BLE001 - a broken config is reported by the full path, one line
        return None
    # PostgreSQL runs restore_command in the data directory, %p being pg_wal/RECOVERYXLOG
    socket_path = _socket_path(settings.get("socket"), wal_dir_of(Path(dest)).parent)
    answer = fetch_over(socket_path, name, Path(dest))
    if answer is not None:
        if answer.exit_code == FETCH_ERROR_EXIT:
            print(f"aegis wal fetch: {answer.message}", file=sys.stderr, flush=True)
        return answer.exit_code
    from recovery.backup.wal.lean_fetch import lean_fetch

    return lean_fetch(name, Path(dest), config_option)


def _archiver(args: argparse.Namespace) -> int:
    from bot.backup_wiring import BackupSetupError
    from bot.cli.common import setup
    from recovery.backup.wal.archiver import WalArchiver

    data_dir = args.data_dir or os.environ.get("PGDATA")
    config, _store_unused = setup(args)
    settings = config.backups.archiver
    setting = args.socket or settings.socket
    if not data_dir and not (setting and os.path.isabs(setting)):
        raise BackupSetupError("the archiver needs the data directory (--data-dir or PGDATA) or an absolute "
                               "backups.archiver.socket")
    base = Path(data_dir or "/")
    socket_path = _socket_path(setting, base)
    wal_dir = base / "pg_wal" if data_dir else None
    archiver = WalArchiver(_store(args), socket_path, parallel=args.parallel or settings.parallel,
                           wal_dir=wal_dir, look_ahead=not args.no_look_ahead)
    archiver.bind()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"aegis wal archiver: listening on {socket_path} (pid {os.getpid()}, {archiver.parallel} at once)",
          file=sys.stderr, flush=True)
    for line in _fast_command_lines(socket_path, wal_dir, args.config or os.environ.get("AEGIS_CONFIG")):
        print(f"aegis wal archiver: {line}", file=sys.stderr, flush=True)
    stats = archiver.serve(stop)
    print(f"aegis wal archiver: stopped: {len(stats.pushed)} pushed, {len(stats.already_archived)} already "
          f"archived, {len(stats.failed)} failed attempt(s), {stats.answered} answered", file=sys.stderr)
    return 0


def _config_in_use(option: str | None) -> str | None:
    """The config file a command read (--config, AEGIS_CONFIG, else ./aegis.yaml if there is one)."""
    return option or os.environ.get("AEGIS_CONFIG") or ("aegis.yaml" if os.path.exists("aegis.yaml") else None)


def postgresql_conf_lines(config: str | None, socket_setting: str | None) -> list[str]:
    """``archive_command`` / ``restore_command`` of the stdlib-only fast path (with ``aegis wal archiver``
    running beside the server; without it they run ``aegis wal push`` / ``fetch`` themselves)."""
    from recovery.backup.wal.handoff import command_lines

    push, fetch = command_lines(Path(socket_setting) if socket_setting else None, _config_in_use(config))
    return [f"archive_command = '{push}'", f"restore_command = '{fetch}'"]


def _fast_command_lines(socket_path: Path, wal_dir: Path | None, config: str | None) -> list[str]:
    """The exact postgresql.conf lines of the stdlib-only fast path to this archiver (``aegis wal push %p``
    and ``aegis wal fetch %f %p`` keep working; these start faster)."""
    from recovery.backup.wal.handoff import command_lines

    default = wal_dir is not None and socket_path == default_socket(wal_dir)
    push, fetch = command_lines(None if default else socket_path, _config_in_use(config))
    return [f"fastest archive_command = '{push}'", f"fastest restore_command = '{fetch}'"]


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
    archiver = actions.add_parser("archiver", help="long-running: archive_command's segments pushed at "
                                  "PostgreSQL's pace (run beside the server, as its OS user)")
    archiver.add_argument("--data-dir", help="the cluster's data directory (default: $PGDATA)")
    archiver.add_argument("--socket", help="listen here (default: backups.archiver.socket, else "
                          "pg_wal/aegis-archiver.sock in the data directory)")
    archiver.add_argument("--parallel", type=int, choices=range(1, 33), metavar="N",
                          help="pushes at once (default: backups.archiver.parallel, 4)")
    archiver.add_argument("--no-look-ahead", action="store_true",
                          help="push only what archive_command hands over (no pushing of ready segments ahead)")
    archiver.set_defaults(func=_archiver)
