"""A drill's own overhead: ``aegis drill run backup_restore_test`` against a bare ``aegis restore`` (issue 10).

Set-up, as tests/test_drills.py does it: a PostgreSQL 15 primary archiving WAL with ``aegis wal push``
(``.tools/server-venv``) to a local target, a shared SQLite catalog, ``pgbench -i --scale N`` (default 5,
about 75 MB), then one real backup (``aegis backup run postgresql``). With that one backup in the catalog,
each round times, as processes, from spawn to exit (the order alternates between rounds):

- **bare**: ``aegis restore postgres RUN_ID --data-dir D --port P --no-wal --quiet`` into a scratch dir
  (verify the stored copy, restore it, start the server; only the WAL inside the base backup, as the
  drill restores it). The restored server is stopped and removed afterwards, outside the timing;
- **drill**: ``aegis drill run backup_restore_test``: the same restore of the same backup into its
  scratch environment, plus what makes it a drill — the row counts and checksums of every table compared
  with what the catalog recorded at backup time, the scratch server stopped and removed, the result
  recorded in the catalog, scored, and the report written. No Slack is configured, so nothing is posted.

It prints the load, each round (with the restore test's own split from the drill's report: restore,
contents check, scratch server stopped), the medians, the ratio drill/bare, the drill's step timings
(where the extra time goes), and the goal: ratio ≤ 1.2. Exit status 0 whether or not the goal is
met, 1 when a step fails, 130 on interrupt.

    python bench/drill_overhead.py                  # 3 rounds at scale 5, under a minute
    python bench/drill_overhead.py --rounds 5 --scale 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recovery.backup.catalog import KIND_FULL, STATUS_OK  # noqa: E402
from tests.harness.cli_workspace import SERVER_AEGIS, local, stop_restored, write_config  # noqa: E402
from tests.harness.pgcluster import PG_BIN, PgSingle, free_port  # noqa: E402

GOAL_RATIO = 1.2


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


class Workspace:
    """The shared work dir (root and postgres both write it), its config, catalog and CLI environment."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {**os.environ, "AEGIS_CONFIG": str(path / "aegis.yaml"),
                    "AEGIS_DATABASE_URL": f"sqlite:///{path}/aegis.db", "PYTHONUNBUFFERED": "1"}
        for name in [k for k in self.env if k.startswith("SLACK_")] + ["AEGIS_BACKUP_KEY"]:
            self.env.pop(name, None)     # the key comes from the config's key file; no Slack: nothing posted

    def aegis(self, *args: str, timeout: float = 1800) -> tuple[float, str]:
        """Run ``aegis ARGS`` as a process; (wall seconds, stdout). Exits the bench when it fails."""
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=self.path, env=self.env, text=True,
                              capture_output=True, timeout=timeout)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"aegis {' '.join(args)}: exit {done.returncode}\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-3000:]}")
        return seconds, done.stdout

    def configure(self, dsn: str | None) -> None:
        import yaml

        write_config(self.path, [local(self.path)], dsn=dsn)
        config_path = self.path / "aegis.yaml"
        config = yaml.safe_load(config_path.read_text())
        (self.path / "scratch").mkdir(exist_ok=True)
        config["drills"] = {"scratch_dir": str(self.path / "scratch"), "report_dir": str(self.path / "reports")}
        config["monitoring"] = {"enabled": False}
        config_path.write_text(yaml.safe_dump(config))

    def base_backups(self) -> list[str]:
        with sqlite3.connect(self.path / "aegis.db") as conn:
            rows = conn.execute("SELECT run_id FROM backup_catalog WHERE kind = ? AND status = ? ORDER BY id",
                                (KIND_FULL, STATUS_OK)).fetchall()
        return [str(r[0]) for r in rows]


def _set_up(ws: Workspace, scale: int) -> tuple[PgSingle, str]:
    ws.configure(None)
    ws.aegis("migrate")
    (ws.path / "aegis.db").chmod(0o666)
    archive_command = (f"AEGIS_CONFIG={ws.path}/aegis.yaml AEGIS_DATABASE_URL=sqlite:///{ws.path}/aegis.db "
                       f"{SERVER_AEGIS} wal push %p")
    pg = PgSingle.create(settings={"archive_command": archive_command, "archive_timeout": 0})
    ws.configure(pg.primary.dsn())
    subprocess.run([str(PG_BIN / "pgbench"), "-i", "-q", "--scale", str(scale), "-h", str(pg.primary.socket_dir),
                    "-p", str(pg.primary.port), "-U", "postgres", "postgres"], user="postgres", group="postgres",
                   extra_groups=[], cwd="/tmp", check=True, capture_output=True)
    seconds, _ = ws.aegis("backup", "run", "postgresql", "--quiet")
    backups = ws.base_backups()
    if len(backups) != 1:
        raise RuntimeError(f"expected one base backup in the catalog, found {backups}")
    size = pg.primary.sql("SELECT pg_database_size('postgres')")[0][0]
    print(f"scale {scale}: database {size / 2**20:.0f} MiB; backup {backups[0]} took {seconds:.1f} s", flush=True)
    return pg, backups[0]


def _bare_restore(ws: Workspace, run_id: str, round_no: int) -> float:
    target = ws.path / f"bare-{round_no}"
    data = target / "data"
    target.mkdir()
    shutil.chown(target, "postgres", "postgres")
    try:
        seconds, _ = ws.aegis("restore", "postgres", run_id, "--data-dir", str(data), "--port", str(free_port()),
                              "--no-wal", "--quiet")
        return seconds
    finally:
        stop_restored(data)
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(f"{data}.sock", ignore_errors=True)


def _drill(ws: Workspace) -> tuple[float, dict[str, Any]]:
    seconds, out = ws.aegis("drill", "run", "backup_restore_test")
    if "PASSED" not in out:
        raise RuntimeError(f"the drill did not pass:\n{out[-3000:]}")
    report = next(line.rsplit("report: ", 1)[1].strip() for line in out.splitlines() if "report: " in line)
    return seconds, json.loads(Path(report).read_text())


def _steps(report: dict[str, Any]) -> str:
    parts = []
    for step in report.get("steps", []):
        took = step.get("seconds", step.get("duration_seconds"))
        parts.append(f"{step.get('name')}: {took:.2f} s" if isinstance(took, int | float) else str(step.get("name")))
    return "; ".join(parts)


def _timings(report: dict[str, Any]) -> str:
    """The restore test's own split (restore, contents check, scratch server stopped) from the report."""
    for restore in (report.get("figures") or {}).get("restores", []):
        for line in restore.get("details", []):
            if str(line).startswith("timings: "):
                return str(line).removeprefix("timings: ")
    return "no timings in the report"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (medians; default 3)")
    parser.add_argument("--scale", type=int, default=5, help="pgbench scale of the backed-up database (default 5)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: PostgreSQL and the archive_command run as the postgres user")
    if not SERVER_AEGIS.exists():
        sys.exit(f"{SERVER_AEGIS} is missing: run ./scripts/setup")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    path = Path(tempfile.mkdtemp(prefix="aegis-drillbench-", dir="/tmp"))
    path.chmod(0o777)
    ws = Workspace(path)
    pg: PgSingle | None = None
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; load before: {_load()}", flush=True)
        pg, run_id = _set_up(ws, args.scale)
        bare: list[float] = []
        drill: list[float] = []
        reports: list[dict[str, Any]] = []
        print(f"\n{'round':>5} {'bare s':>8} {'drill s':>8} {'ratio':>6}  load", flush=True)
        for round_no in range(1, args.rounds + 1):
            if round_no % 2:
                bare.append(_bare_restore(ws, run_id, round_no))
                seconds, report = _drill(ws)
            else:
                seconds, report = _drill(ws)
                bare.append(_bare_restore(ws, run_id, round_no))
            drill.append(seconds)
            reports.append(report)
            print(f"{round_no:5d} {bare[-1]:8.2f} {drill[-1]:8.2f} {drill[-1] / bare[-1]:6.2f}  {_load()}  "
                  f"(drill: {_timings(report)})", flush=True)
        print(f"load after: {_load()}")
        ratio = statistics.median(drill) / statistics.median(bare)
        print(f"\nmedian of {args.rounds}: bare restore {statistics.median(bare):.2f} s, drill "
              f"{statistics.median(drill):.2f} s, ratio {ratio:.2f}")
        print(f"the last drill's steps: {_steps(reports[-1])}")
        verdict = "met" if ratio <= GOAL_RATIO else "MISSED"
        print(f"goal (issue 10): drill/bare ≤ {GOAL_RATIO:g}: {ratio:.2f} — {verdict}")
        return 0
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"\nfailed: {exc}", file=sys.stderr)
        return 1
    finally:
        if pg is not None:
            pg.destroy()
        for pid_file in path.rglob("postmaster.pid"):   # a server a failed drill or restore left running
            stop_restored(pid_file.parent)
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
