"""Checks the ``aegis`` command line makes before it starts anything, each failing with one line.

A mistake on the command line or in the environment must end in one readable line on stderr and a
non-zero exit, never a traceback: ``--log-level BOGUS``, ``--port 99999``, an
``AEGIS_DATABASE_URL`` that is garbage, names a database Aegis does not support, points into a
missing directory or cannot be reached, and ``aegis serve --host 0.0.0.0`` without Slack
credentials (the built-in emulator lets anyone act as anyone, so it only ever listens on loopback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from bot.logs import check_level, escape
from slack_emulator.network import is_loopback

SUPPORTED_DATABASES = {"sqlite": "sqlite:///aegis.db", "postgresql": "postgresql+psycopg://user@host/db"}


class CommandLineError(Exception):
    """A problem with how ``aegis`` was invoked; printed as ``aegis: <text>``."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``aegis: error: …; see aegis --help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def one_line(text: object, limit: int = 1000) -> str:
    """Any message as one printable line: lines joined with "; ", control characters escaped."""
    lines = [line.strip() for line in str(text).strip().strip("'").splitlines() if line.strip()]
    joined = escape("; ".join(lines))
    return joined if len(joined) <= limit else joined[:limit] + "…"


def log_level(value: str) -> str:
    try:
        return check_level(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port_number(value: str) -> int:
    """A TCP port, 0–65535 (0: any free port)."""
    text = value.strip()
    if not text.isascii() or not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{escape(value)[:20]!r} is not a port; "
                                         "use a number from 1 to 65535 (0: any free port)")
    return int(text)


def check_database_url(url: str) -> None:
    """Refuse a database URL Aegis cannot use, before anything tries to connect to it."""
    from sqlalchemy.engine import make_url  # imported here: the parser and --help load no database library
    from sqlalchemy.exc import ArgumentError

    hint = "; set AEGIS_DATABASE_URL to e.g. " + " or ".join(SUPPORTED_DATABASES.values())
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise CommandLineError(f"AEGIS_DATABASE_URL is not a database URL{hint}") from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_DATABASES:
        raise CommandLineError(f"AEGIS_DATABASE_URL names {escape(backend)[:30]!r}, which Aegis does not "
                               f"support (SQLite and PostgreSQL only){hint}")
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:" \
            and not parsed.database.startswith("file:"):
        folder = Path(parsed.database).expanduser().absolute().parent
        if not folder.is_dir():
            raise CommandLineError(f"AEGIS_DATABASE_URL points into {str(folder)!r}, which does not exist; "
                                   "create the directory or choose another path")


def database_problem(exc: Exception, url: str) -> str:
    """One line for a database that could not be opened or reached (the password is never shown)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        shown = "AEGIS_DATABASE_URL"
    cause = getattr(exc, "orig", None) or exc
    return f"cannot use the database {shown}: {one_line(cause, 300)}"


def require_loopback_for_emulator(host: str) -> None:
    if not is_loopback(host):
        raise CommandLineError(
            f"refusing to serve the built-in Slack emulator on {escape(host)[:60]!r}: it lets anyone act as "
            "any user, so it only listens on loopback. For the demo run `aegis serve` (127.0.0.1); for real "
            "Slack set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET (or SLACK_APP_TOKEN)")


def loaded(module: str, attribute: str) -> tuple[type[BaseException], ...]:
    """The exception class(es) ``module.attribute`` if that module is already imported, else none.

    An exception whose module was never imported cannot have been raised, so the error handler of
    ``aegis`` can name the classes of heavy modules (SQLAlchemy, the restore stack) without importing
    them on every start.
    """
    found = getattr(sys.modules.get(module), attribute, ())
    return tuple(found) if isinstance(found, tuple) else (found,)


def fail(text: str, code: int = 2) -> int:
    print(f"aegis: {one_line(text)}", file=sys.stderr)
    return code
