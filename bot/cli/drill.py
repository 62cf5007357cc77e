"""``aegis drill run NAME | list | sweep``: drills from the command line.

``run`` prints a progress line per step while the drill runs and the scored result at the end; with
Slack credentials in the environment (``SLACK_BOT_TOKEN``, ``SLACK_API_URL``) the result is also
posted to ``slack.ops_channel``. Exit status 0 only when the drill passed (1 failed, 2 usage).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from bot.cli.checks import OneLineParser
from bot.cli.common import setup

if TYPE_CHECKING:   # the drills' stack is imported inside each command: the parser loads none of it
    from bot.slack.gateway import SlackGateway



class _DrillNames:
    """``recovery.drills.drills.DRILLS`` as argparse choices, imported only when argparse looks at them
    (``aegis drill run NAME`` or its help), so that building the parser does not import the drills."""

    @staticmethod
    def _names() -> tuple[str, ...]:
        from recovery.drills.drills import DRILLS

        return DRILLS

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def _say(line: str) -> None:
    print(line, flush=True)


def _gateway() -> SlackGateway | None:
    token = os.environ.get("SLACK_BOT_TOKEN", "").strip()
    if not token:
        return None   # nothing to post: Slack's client is not even imported
    from bot.slack.gateway import DEFAULT_API_URL, SlackGateway

    return SlackGateway(token, os.environ.get("SLACK_API_URL") or DEFAULT_API_URL)


def _run(args: argparse.Namespace) -> int:
    from bot.flows.drills import drill_context, post_outcome
    from recovery.drills.drills import run_drill

    config, store = setup(args)
    ctx = drill_context(config, store, _say, args.budget_minutes)
    outcome = run_drill(ctx, args.name, "cli", os.environ.get("USER"))
    for score in outcome.scores:
        value = "unknown" if score.value is None else f"{score.value:.1f} s"
        verdict = {True: "met", False: "MISSED", None: "unknown"}[score.passed]
        print(f"{score.objective}: {value} (target {score.target:.0f} s) {verdict} — {score.basis.text}")
    if outcome.error:
        print(f"error: {outcome.error}")
    print(f"drill {outcome.run_id} {outcome.name}: {outcome.status.upper()}; report: {outcome.report_path}")
    if post_outcome(_gateway(), config, outcome, trigger="cli", requested_by=None):
        print(f"result posted to {config.slack.ops_channel}")
    return 0 if outcome.status == "passed" else 1


def _list(args: argparse.Namespace) -> int:
    from recovery.drills import runs
    from recovery.drills.drills import describe

    _config, store = setup(args)
    rows = runs.recent(store, args.limit)
    print("\n".join(describe(r) for r in rows) if rows else "no drill has run yet")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from bot.flows.drills import sweep_leftovers

    config, store = setup(args)
    lines = sweep_leftovers(config, store)
    print("\n".join(lines) if lines else "no leftovers of interrupted drills")
    return 0


def add_commands(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    drill = sub.add_parser("drill", help="DR drills in an isolated scratch environment (D1, D2)")
    actions = drill.add_subparsers(dest="drill_command", required=True)
    run = actions.add_parser("run", help="run a drill now; exit 0 only when it passed")
    # metavar given: otherwise argparse iterates the choices while building the parser; %(choices)s is
    # expanded only when the help is shown
    run.add_argument("name", choices=_DrillNames(), metavar="NAME", help="the drill: %(choices)s")
    run.add_argument("--budget-minutes", type=float, help="backup_restore_test: stop starting restores after this")
    run.set_defaults(func=_run)
    listing = actions.add_parser("list", help="recent drills, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=_list)
    actions.add_parser("sweep", help="remove what interrupted drills left behind").set_defaults(func=_sweep)


