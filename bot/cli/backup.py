"""``aegis backup run|list|verify``: config → storage targets, key and sources → the backup runner.

Long runs print a progress line with throughput to stderr. Exit codes: 0 ok, 1 the run or the
verification failed (the reason is printed), 2 a usage or configuration problem.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from bot.cli.checks import OneLineParser
from bot.cli.common import ProgressLine, setup

if TYPE_CHECKING:   # the backup stack is imported inside each command: the parser loads none of it
    from recovery.backup.runner import RunReport
    from statemachines.models import BackupRecord


def describe(record: BackupRecord) -> str:
    where = ", ".join(f"{name}:{'ok' if t.get('ok') else 'FAILED'}{' (removed)' if t.get('removed') else ''}"
                      for name, t in record.targets.items())
    lsn = f" lsn {record.start_lsn}..{record.stop_lsn}" if record.start_lsn else ""
    reason = f" — {record.reason}" if record.reason else ""
    return (f"{record.run_id}  {record.kind:<10} {record.status:<6} {record.stored_size:>12} B  "
            f"{(record.sha256 or '')[:12]}  key {record.key_id}{lsn}  [{where}]{reason}")


def report_lines(report: RunReport) -> list[str]:
    lines = [f"{report.run_id} ({report.kind}): {'ok' if report.ok else 'FAILED'}"]
    lines += ["  " + describe(r) for r in report.records]
    lines += [f"  error: {e}" for e in report.errors]
    return lines


def _run(args: argparse.Namespace) -> int:
    from bot.backup_wiring import runner_from

    config, store = setup(args)
    runner = runner_from(config, store, None if args.quiet else ProgressLine())
    report = runner.run(args.kind, incremental=args.incremental)
    sys.stderr.write("\n")
    print("\n".join(report_lines(report)))
    return 0 if report.ok else 1


def _prune(args: argparse.Namespace) -> int:
    from bot.backup_wiring import repository_from, retention_policy
    from recovery.backup.retention import prune

    config, store = setup(args)
    repo = repository_from(config, store)
    report = prune(repo.store, repo.targets, retention_policy(config), dry_run=args.dry_run)
    verb = "would delete" if report.dry_run else "deleted"
    for name in report.deleted:
        print(f"{verb} {name}")
    for name, why in report.kept:
        print(f"kept {name}: {why}")
    for error in report.errors:
        print(f"error: {error} (left in place; the next prune retries)")
    print(f"{len(report.deleted)} object(s) {verb}, {len(report.kept)} expired object(s) kept, "
          f"{len(report.errors)} error(s)")
    return 1 if report.errors else 0


def _list(args: argparse.Namespace) -> int:
    from recovery.backup.catalog import listing

    _config, store = setup(args)
    rows = listing(store, limit=args.limit, include_deleted=args.all, include_supporting=args.wal)
    for row in rows:
        print(describe(row))
    if not rows:
        print("no backups yet: run `aegis backup run full`")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from bot.backup_wiring import repository_from
    from recovery.backup.catalog import previous_good, records_for
    from recovery.backup.verify import verify

    config, store = setup(args)
    records = records_for(store, args.id)
    if not records:
        print(f"no backup {args.id!r}: see `aegis backup list`", file=sys.stderr)
        return 2
    checks = verify(repository_from(config, store), args.id, deep=args.deep)
    failed = False
    for record, check in zip(records, checks, strict=True):
        state = "ok" if check.ok else "FAILED"
        print(f"{check.run_id} {check.object_name}: {state} (re-read: {', '.join(check.reread) or 'none'})")
        for problem in check.problems:
            print(f"  {problem}")
        if not check.ok:
            failed = True
            good = previous_good(store, record)
            print(f"  previous good backup: {good.run_id} ({good.object_name})" if good
                  else "  no earlier good backup of this kind")
    return 1 if failed else 0


def add_commands(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    backup = sub.add_parser("backup", help="encrypted, verified backups (B1-B6)")
    actions = backup.add_subparsers(dest="backup_command", required=True)
    run = actions.add_parser("run", help="take a backup now")
    run.add_argument("kind", nargs="?", default="full", choices=["full", "postgresql", "neo4j", "milvus"])
    run.add_argument("--incremental", action="store_true", help="the daily PostgreSQL slot (full on PostgreSQL < 17)")
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.set_defaults(func=_run)
    lister = actions.add_parser("list", help="the catalog, newest first (pruned backups hidden)")
    lister.add_argument("--limit", type=int, default=50)
    lister.add_argument("--wal", action="store_true", help="include archived WAL segments and manifests")
    lister.add_argument("--all", action="store_true", help="include pruned (deleted) backups")
    lister.set_defaults(func=_list)
    check = actions.add_parser("verify", help="check existence and size everywhere, re-read one copy")
    check.add_argument("id", help="a run id (backup_YYYYMMDD_HHMMSS) or an object name")
    check.add_argument("--deep", action="store_true", help="re-read every copy, not just one")
    check.set_defaults(func=_verify)
    pruning = actions.add_parser("prune", help="apply retention (B1-B3); never the newest good backup or needed WAL")
    pruning.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    pruning.set_defaults(func=_prune)


