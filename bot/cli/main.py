"""``aegis`` command line: ``serve``, ``migrate``, ``config check``.

``aegis serve`` with no Slack credentials runs the embedded default: SQLite store, built-in Slack
emulator, and prints the emulator page's URL to open in a browser.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from bot.backup_wiring import FRIENDLY_ERRORS as BACKUP_SETUP_ERRORS
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
    log_level,
    port_number,
    require_loopback_for_emulator,
)
from bot.config import ConfigError, load_config
from bot.extras import installed_version
from bot.logs import setup_logging
from recovery.redact import redact
from statemachines.store import Store, database_url

if TYPE_CHECKING:   # imported by `aegis serve` only (it pulls in psycopg and the demo's servers)
    from bot.demo.session import DemoSession

log = logging.getLogger("aegis")


def _serve(args: argparse.Namespace) -> int:
    from bot.runtime import (
        Runtime,
        SlackSettings,
        StartupError,
        emulator_database_path,
        emulator_settings,
        slack_settings_from_env,
    )

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
    print(f"Aegis is listening on {http.url}/slack/events (health: {http.url}/healthz)", flush=True)
    if emulator is not None:
        print(f"Built-in Slack emulator: open {emulator.url}/ in a browser "
              f"(store: {store.url.split('://', 1)[0]})", flush=True)
    for line in demo.banner() if demo is not None else []:
        print(line, flush=True)
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
    import atexit

    from bot.demo.session import DemoError, open_demo

    try:
        demo, notices = open_demo(getattr(args, "config", None), slack_configured=slack_configured,
                                  with_postgres=args.demo, store_url=database_url())
    except DemoError as exc:
        raise CommandLineError(str(exc)) from None
    for line in notices:
        print(line, flush=True)
    if demo is not None:
        atexit.register(demo.close)
    return demo


def _migrate(_args: argparse.Namespace) -> int:
    check_database_url(database_url())
    store = Store()
    store.migrate()
    print("schema is up to date")
    return 0


def _config_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"config OK: locale {config.locale}, {len(config.services)} service(s), "
          f"{sum(len(v) for v in config.roster.values())} rostered user(s), {len(config.hooks)} hook(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="aegis", description="Aegis disaster-recovery ChatOps bot")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    parser.add_argument("--config", help="config file (default: $AEGIS_CONFIG or ./aegis.yaml)")
    parser.add_argument("--log-level", type=log_level, default=os.environ.get("AEGIS_LOG_LEVEL") or "INFO",
                        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default: $AEGIS_LOG_LEVEL or INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the bot (HTTP mode; Socket Mode when SLACK_APP_TOKEN is set)")
    serve.add_argument("--config", default=argparse.SUPPRESS, help="config file (as before the subcommand)")
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
    argv = sys.argv[1:] if argv is None else argv
    if (handed := wal_cli.fast_push(argv)) is not None:   # `wal push` answered by `aegis wal archiver`
        return handed
    # archive/restore_command read exit codes: a usage or config error must not look like "absent".
    error_exit = wal_cli.failure_exit(argv) or 2
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            return error_exit
        raise
    setup_logging(args.log_level)
    # Every failure ends as one line on stderr and a non-zero exit, never a traceback (bot/cli/checks.py).
    try:
        return int(args.func(args))
    except ConfigError as exc:  # one line per problem, each naming the file and the key (bot/config.py)
        for problem in exc.problems:
            fail(redact(problem), error_exit)
        return error_exit
    except (CommandLineError, *BACKUP_SETUP_ERRORS, *restore_cli.FRIENDLY_ERRORS) as exc:
        return fail(redact(str(exc)), error_exit)
    except restore_cli.REFUSALS as exc:
        return fail(redact(str(exc)), 1)
    except SQLAlchemyError as exc:
        return fail(redact(database_problem(exc, database_url())), error_exit)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.debug("unexpected failure", exc_info=True)
        return fail(redact(f"unexpected {type(exc).__name__}: {exc} (run with --log-level DEBUG for details)"),
                    error_exit)


if __name__ == "__main__":
    sys.exit(main())
