"""``aegis`` command line: ``serve``, ``migrate``, ``config check``.

``aegis serve`` with no Slack credentials runs the embedded default: SQLite store, built-in Slack
emulator, and prints the emulator page's URL to open in a browser.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

from bot.cli import backup as backup_cli
from bot.cli import drill as drill_cli
from bot.cli import restore as restore_cli
from bot.cli import wal as wal_cli
from bot.cli.checks import (
    CommandLineError,
    OneLineParser,
    check_database_url,
    database_problem,
    fail,
    loaded,
    log_level,
    port_number,
    require_loopback_for_emulator,
)
from bot.cli.common import close_stores
from bot.logs import check_format, setup_logging
from recovery.redact import redact

# Building the parser and `aegis --help` / `--version` import only the standard library and the light
# modules above; each command imports its own stack (config, store, storage, drivers) when it runs, and
# the error handler below names heavy exception classes only once their modules are loaded (checks.loaded).
if TYPE_CHECKING:   # imported by `aegis serve` only (it pulls in psycopg and the demo's servers)
    from bot.demo.session import DemoSession

log = logging.getLogger("aegis")


def _serve(args: argparse.Namespace) -> int:
    from bot.config import load_config
    from bot.runtime import (
        Runtime,
        SlackSettings,
        StartupError,
        emulator_database_path,
        emulator_settings,
        slack_settings_from_env,
    )
    from statemachines.store import Store, database_url

    try:
        slack = slack_settings_from_env()
    except StartupError as exc:
        raise CommandLineError(str(exc)) from None
    if slack is None:   # the built-in emulator: anyone can act as anyone, so loopback only
        require_loopback_for_emulator(args.host)
    check_database_url(database_url())
    demo = _open_demo(args, slack_configured=slack is not None)   # no config file, no Slack: bot/demo/
    config = demo.config() if demo is not None else load_config(args.config)
    store = Store()
    store.migrate()
    emulator = None
    if slack is None:
        from slack_emulator.server import EmulatorServer

        token, secret = emulator_settings()
        bot_url = f"http://{args.host}:{args.port}"
        # the workspace lives beside the store, so a restart keeps the open incidents' channels
        emulator = EmulatorServer(host=args.host, port=args.emulator_port, bot_url=bot_url,
                                  signing_secret=secret, bot_token=token,
                                  database_path=emulator_database_path(store.url))
        try:
            emulator.start()
        except OSError as exc:
            raise CommandLineError(f"cannot start the Slack emulator on {args.host}:{args.emulator_port}: "
                                   f"{exc.strerror or exc} (choose another --emulator-port)") from None
        slack = SlackSettings(token=token, signing_secret=secret, api_url=emulator.api_url)
    runtime = Runtime(config, store, slack, sweep_seconds=args.sweep_seconds)
    try:
        http = runtime.start(args.host, args.port)
    except OSError as exc:
        runtime.stop()
        if emulator is not None:
            emulator.stop()
        raise CommandLineError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
                               "(choose another --port, or stop what is using it)") from None
    announce(args, f"Aegis is listening on {http.url}/slack/events (health: {http.url}/healthz)")
    if emulator is not None:
        announce(args, f"Built-in Slack emulator: open {emulator.url}/ in a browser "
                       f"(store: {store.url.split('://', 1)[0]})")
    for line in demo.banner() if demo is not None else []:
        announce(args, line)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    runtime.stop()
    if emulator is not None:
        emulator.stop()
    if demo is not None:
        demo.close()   # the demo's servers and their run directory (atexit does it on a failed start)
    return 0


def _open_demo(args: argparse.Namespace, *, slack_configured: bool) -> DemoSession | None:
    """The demo workspace when there is no config file and no Slack (``--demo``: with real PostgreSQL)."""
    from bot.demo.session import DemoError, open_demo
    from statemachines.store import database_url

    try:
        demo, notices = open_demo(getattr(args, "config", None), slack_configured=slack_configured,
                                  with_postgres=args.demo, store_url=database_url())
    except DemoError as exc:
        raise CommandLineError(str(exc)) from None
    for line in notices:
        announce(args, line)
    if demo is not None:
        atexit.register(demo.close)
    return demo


def _migrate(_args: argparse.Namespace) -> int:
    from statemachines.store import Store, database_url

    check_database_url(database_url())
    store = Store()
    try:
        store.migrate()
    finally:
        # closed before the fast exit: a SQLite connection left open keeps its -wal/-shm files, owned by
        # whoever migrated, and the server's OS user (archive_command) could then not write the catalog
        store.dispose()
    print("schema is up to date")
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from bot.config import load_config

    config = load_config(args.config)
    print(f"config OK: locale {config.locale}, {len(config.services)} service(s), "
          f"{sum(len(v) for v in config.roster.values())} rostered user(s), {len(config.hooks)} hook(s)")
    if config.storage:   # WAL archiving is configured: the exact postgresql.conf lines of the fastest path
        for line in wal_cli.postgresql_conf_lines(args.config or os.environ.get("AEGIS_CONFIG"),
                                                  config.backups.archiver.socket):
            print(line)
    return 0


class _VersionAction(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **_: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the installed version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from bot.extras import installed_version

        print(f"{parser.prog} {installed_version()}")   # stdout, like argparse's own version action
        parser.exit()


def announce(args: argparse.Namespace, line: str) -> None:
    """A line of ``aegis serve`` for the person who started it: printed, or with ``--log-format json``
    a log record (so that every line of the output is one JSON object)."""
    if getattr(args, "log_format", "text") == "json":
        log.info("%s", line)
    else:
        print(line, flush=True)


def log_format(value: str) -> str:
    try:
        return check_format(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="aegis", description="Aegis disaster-recovery ChatOps bot")
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("--config", help="config file (default: $AEGIS_CONFIG or ./aegis.yaml)")
    parser.add_argument("--log-level", type=log_level, default=os.environ.get("AEGIS_LOG_LEVEL") or "INFO",
                        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default: $AEGIS_LOG_LEVEL or INFO)")
    parser.add_argument("--log-format", type=log_format, default=os.environ.get("AEGIS_LOG_FORMAT") or "text",
                        help="text (default) or json: one JSON object per line (default: $AEGIS_LOG_FORMAT)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the bot (HTTP mode; Socket Mode when SLACK_APP_TOKEN is set)")
    serve.add_argument("--config", default=argparse.SUPPRESS, help="config file (as before the subcommand)")
    serve.add_argument("--log-format", type=log_format, default=argparse.SUPPRESS,
                       help="text or json (as before the subcommand)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port_number, default=3000)
    serve.add_argument("--emulator-port", type=port_number, default=3001,
                       help="port of the built-in Slack emulator (used when SLACK_BOT_TOKEN is unset)")
    serve.add_argument("--sweep-seconds", type=float, default=5.0,
                       help="how often to look for steps a crash interrupted")
    serve.add_argument("--demo", action="store_true",
                       help="on the built-in emulator with no config file: also start a local PostgreSQL "
                            "primary + standby and a sample service to fail over (bot/demo/)")
    serve.set_defaults(func=_serve)
    sub.add_parser("migrate", help="create or upgrade the database schema").set_defaults(func=_migrate)
    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate the config file")
    # also after the subcommand (`aegis config check --config FILE`); SUPPRESS keeps a top-level --config
    check.add_argument("--config", default=argparse.SUPPRESS, help="config file to check")
    check.set_defaults(func=_config_check)
    backup_cli.add_commands(sub)
    wal_cli.add_commands(sub)
    restore_cli.add_commands(sub)
    drill_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``aegis`` command and return its exit code (what tests call in-process)."""
    return _dispatch(sys.argv[1:] if argv is None else argv)[0]


def run() -> NoReturn:
    """The console script and ``python -m bot.cli``: :func:`main`, then the fast exit of a one-shot command."""
    try:
        code, command = _dispatch(sys.argv[1:])
    except SystemExit as exc:   # --help, --version: printed, nothing else to do
        if not isinstance(exc.code, int | None):
            raise
        code, command = exc.code or 0, None
    if command == "serve":      # serve stops its own servers; the interpreter's ordinary exit after that
        sys.exit(code)
    fast_exit(code)


def _dispatch(argv: list[str]) -> tuple[int, str | None]:
    """The exit code and the command that ran (None: the arguments did not parse)."""
    if (handed := wal_cli.fast_push(argv)) is not None:   # `wal push` answered by `aegis wal archiver`
        return handed, "wal"
    if (fetched := wal_cli.fast_fetch(argv)) is not None:   # `wal fetch` by the archiver or the lean path
        return fetched, "wal"
    # archive/restore_command read exit codes: a usage or config error must not look like "absent".
    error_exit = wal_cli.failure_exit(argv) or 2
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            return error_exit, None
        raise
    setup_logging(args.log_level, args.log_format)
    return _execute(args, error_exit), str(args.command)


def _execute(args: argparse.Namespace, error_exit: int) -> int:
    # Every failure ends as one line on stderr and a non-zero exit, never a traceback (bot/cli/checks.py).
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return _failure(exc, error_exit)


def _failure(exc: Exception, error_exit: int) -> int:
    """Report a failed command in one line (one per problem for a config) and return its exit code."""
    if isinstance(exc, loaded("bot.config", "ConfigError")):   # each line names the file and the key
        for problem in getattr(exc, "problems", [str(exc)]):
            fail(redact(problem), error_exit)
        return error_exit
    if isinstance(exc, CommandLineError):   # first: the restore's classes below are imported to be named
        return fail(redact(str(exc)), error_exit)
    if isinstance(exc, (*loaded("bot.backup_wiring", "FRIENDLY_ERRORS"), *restore_cli.friendly_errors())):
        return fail(redact(str(exc)), error_exit)
    if isinstance(exc, restore_cli.refusals()):
        return fail(redact(str(exc)), 1)
    if isinstance(exc, loaded("sqlalchemy.exc", "SQLAlchemyError")):
        from statemachines.store import database_url

        return fail(redact(database_problem(exc, database_url())), error_exit)
    log.debug("unexpected failure", exc_info=True)
    return fail(redact(f"unexpected {type(exc).__name__}: {exc} (run with --log-level DEBUG for details)"),
                error_exit)


def fast_exit(code: int) -> NoReturn:
    """End a one-shot command without the interpreter's teardown (0.35-0.5 s of freeing the imported stack).

    Everything that matters is done first: the stores' connections closed (their sessions committed when
    their ``with`` blocks ended), the atexit functions run (logging's flush and close, temporary files'
    finalizers), stdout and stderr flushed. A thread of the command still running (not a daemon) gets the
    ordinary exit instead, which waits for it.
    """
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    close_stores()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe or stream: nothing more can be written anyway
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
