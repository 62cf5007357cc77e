"""Recovery speed and data loss (issue 9, "Speed"): promotion, in-place restore beside pgBackRest, RPO under load.

Three parts, each in one run (``--parts`` picks some), every Aegis side through a running ``aegis serve``
(``tests/harness/aegis_process.py``, SQLite store) with the built-in Slack emulator, the approvals
clicked as signed HTTP by the incident commander:

promotion   A fresh PostgreSQL 15 primary + streaming standby per round, the primary stopped
            (``immediate``). ``/aegis incident database_failure``, the commander takes command, the
            plan (failover: confirm down, fence hook, promote, traffic hook, verify; both hooks
            ``/bin/true``) waits for approval. Timed: from the first Approve click to ``verified``;
            every step awaiting approval is approved at once, one click after the other, so the figure
            is Aegis's own time, not a responder's. The floor, on a second fresh pair: ``pg_ctl
            promote -w`` on the standby until it accepts writes. Goal: approval → verified < 30 s.
in-place    One primary, ``pgbench -i --scale N``, archiving every segment to both Aegis (``aegis wal
            push``, ``.tools/server-venv``) and pgBackRest (``archive-push``, a local repository,
            ``compress-type=zst``, ``aes-256-cbc``) through one wrapper script; one base backup by
            each (Aegis: a local target, encrypted); a little more WAL after them, archived; then the
            wrapper is frozen (it answers 0 without archiving, so the restored servers' new timelines
            never reach either archive and every round restores exactly the same data) and the
            primary is stopped (``immediate``): the dead primary. Per round, alternating:
            Aegis — an incident with no standby and ``components.postgres.primary.control`` (pg_ctl
            as ``postgres``); the plan's in-place ``postgres_restore`` (and whatever else the planner
            put in it) approved; timed from the first click to ``verified`` (check the backup and WAL,
            move the data directory aside, restore, replay the archive to its end, start, verify);
            Two Aegis figures: (a) every approval clicked as soon as the plan is posted (the staging
            Aegis begins ahead of the approval, ``bot/prepare_ahead.py``, is taken over by the
            execution), (b) clicked once the journal says the plan's ahead-staging is ready (a
            responder reading the plan first); the phase times of each round come from the journal;
            pgBackRest — ``mv`` the data directory aside, ``pgbackrest restore`` (to the end of the
            archive) into it, ``pg_ctl start``, until ``pg_is_in_recovery()`` is false.
            Between rounds the running server is stopped and the aside directory removed (by the
            bench). Goal: Aegis ≤ 1.0× pgBackRest.
rpo         Committed transactions lost when the primary dies under load. ``pgbench -c C -j 2`` runs a
            custom script (``\\set seq :seq + 1`` then ``INSERT INTO rpo (client, seq)``) with
            ``--log``: each log line is one transaction pgbench saw commit, (client, transaction
            number) = the row's (client, seq). After ``--load-seconds`` every process of the primary
            is SIGSTOPped, then SIGKILLed (nothing commits in between), and the data is recovered
            three ways, each on fresh servers per round:
              archive  ``archive_command = aegis wal push %p`` with ``aegis wal archiver`` beside the
                       server (killed with it: the same host) and ``archive_timeout``
                       (``--archive-timeout``); ``aegis restore postgres RUN_ID`` (a base backup taken
                       before the load) to the end of the archive;
              stream   the same archive without ``archive_timeout``, plus ``aegis wal stream
                       --synchronous`` (application_name ``aegis_stream`` in ``synchronous_standby_
                       names``); after the crash the streamer is stopped and its open segment
                       (``<name>.partial``) is pushed under its segment name (``aegis wal push``, the
                       operator's step), then the same restore;
              standby  a streaming standby in ``synchronous_standby_names``; ``pg_ctl promote``.
            Lost = logged transactions whose row is absent after recovery; "in flight" = rows present
            that pgbench never saw commit (committed on the server, the answer lost in the crash).
            Goal: zero lost with stream and standby.

Medians of ``--rounds`` (≥ 3) rounds; the machine's load average is printed at the start, per
round and at the end; ratios are taken within this run.

    python bench/recovery.py                  # 3 rounds, scale 10, 20 s of load: about 10 minutes
    python bench/recovery.py --quick          # 3 rounds, scale 2, 10 s of load, archive_timeout 3 s
    python bench/recovery.py --parts rpo --rounds 5 --json /tmp/recovery.json

Needs root (the servers and pgBackRest run as ``postgres``), ``pgbackrest`` (apt) and
``.tools/server-venv`` (``scripts/install-server-side``). Exit status 0 whether or not the goals are
met, 1 when a step fails, 130 on interrupt. Every server and temp dir is removed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from recovery.backup.catalog import KIND_FULL, STATUS_OK  # noqa: E402
from slack_emulator.server import EmulatorServer  # noqa: E402
from tests.harness.aegis_process import BOT_TOKEN, SIGNING_SECRET, AegisProcess, wait_for  # noqa: E402
from tests.harness.cli_workspace import SERVER_AEGIS, catalog, local, restored_dsn, stop_restored, write_config  # noqa: E402
from tests.harness.pgcluster import PG_BIN, PgNode, PgPair, PgSingle, free_port  # noqa: E402
from tests.harness.team import ROSTER  # noqa: E402
from tests.harness.walk import Walk  # noqa: E402

PARTS = ("promotion", "in-place", "rpo")
RPO_MODES = ("archive", "stream", "standby")
GOAL_PROMOTION_S = 30.0
GOAL_IN_PLACE_RATIO = 1.0
STANZA = "recoverybench"
STREAM_APP = "aegis_stream"
PGBENCH_SCRIPT = "\\set seq :seq + 1\nINSERT INTO rpo (client, seq) VALUES (:client_id, :seq);\n"

# archive_command of the in-place part: both archives, until the freeze file exists
_ARCHIVE_BOTH = """#!/bin/sh
# %p to `aegis wal push` and `pgbackrest archive-push`; once FREEZE exists, archive nothing
[ -f "{freeze}" ] && exit 0
env {aegis_env} {aegis} wal push "$1" || exit 1
exec pgbackrest --config={conf} --stanza={stanza} archive-push "$1"
"""


class BenchError(RuntimeError):
    """A step failed: the run is invalid."""


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def as_postgres(argv: list[str], cwd: Path, *, env: dict[str, str] | None = None,
                timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, user="postgres", group="postgres", extra_groups=[], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:4])}… failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                         f"{done.stderr[-2000:]}")
    return done


def wait_writable(dsn: str, timeout: float = 600) -> None:
    """Until the server accepts connections and is out of recovery: where every recovery here ends."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(psycopg.OperationalError):
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()
            if row and row[0]:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"server not writable after {timeout:.0f} s")
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found by /proc's ppid), depth first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def crash(node: PgNode, *beside: subprocess.Popen[bytes]) -> None:
    """A host crash of ``node``: every process of the server (its archive_command too) and the processes
    running ``beside`` it on that host (the WAL archiver) stopped, then killed."""
    postmaster = int((node.data_dir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster, *descendants(postmaster), *(p.pid for p in beside)]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    wait_for(lambda: not Path(f"/proc/{postmaster}").exists(), timeout=30, what="the postmaster to die")
    for process in beside:
        process.wait(30)


def pg_ctl(node_dir: Path, *args: str) -> None:
    as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(node_dir), *args], node_dir.parent)


# --- Aegis as a process, Slack as the emulator ----------------------------------------------------------


@contextlib.contextmanager
def serving(workdir: Path, config: dict[str, Any], database_url: str) -> Iterator[Walk]:
    """A fresh emulator and ``aegis serve`` on ``database_url``; the walk of one incident through them."""
    emulator = EmulatorServer(port=0, bot_url="", signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN).start()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        bot = AegisProcess(workdir, config, database_url, emulator.api_url, name="bot")
        emulator.bot_url = bot.url
        bot.start()
        try:
            yield Walk(bot, emulator)
        finally:
            bot.stop()
    finally:
        emulator.stop()


def approve_to_verified(walk: Walk, timeout: float) -> tuple[float, list[Any]]:
    """Approve every step awaiting approval (the commander, click after click); seconds to ``verified``
    and the plan's steps as they ended (read by id: after ``verified`` an aftercare plan may be current)."""
    from statemachines import service as svc

    plan = walk.steps()
    waiting = [s for s in plan if s.status == "awaiting_approval"]
    if not waiting:
        raise BenchError("the plan has no step awaiting approval")
    started = time.monotonic()
    for step in waiting:
        walk.click("U0IC", "aegis_approve", str(step.id))
    deadline = started + timeout
    while (state := walk.incident().state) != "verified":
        with walk.store.session() as session:
            now = [svc.get_step(session, s.id) for s in plan]
        stuck = [s for s in now if s.status in ("failed", "awaiting_verification", "rejected")]
        if stuck or state not in ("recovering", "assessed"):
            raise BenchError(f"the plan did not run through: state {state}, "
                             + "; ".join(f"{s.position} {s.action} {s.status}: {s.detail}" for s in stuck)
                             + f"\n{walk.bot.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise BenchError(f"not verified within {timeout:.0f} s\n{walk.bot.log()[-3000:]}")
        time.sleep(0.05)
    seconds = time.monotonic() - started
    with walk.store.session() as session:
        return seconds, [svc.get_step(session, s.id) for s in plan]


def plan_text(steps: list[Any]) -> str:
    return ", ".join(s.action + (f"({s.params['hook']})" if s.params.get("hook") else "") for s in steps)


# --- part 1: promotion ------------------------------------------------------------------------------------


def promotion_round(work: Path, number: int) -> dict[str, Any]:
    pair = PgPair.create(work)
    try:
        pair.primary.sql("CREATE TABLE orders (id int primary key, note text)")
        pair.primary.sql("INSERT INTO orders SELECT g, 'before failure' FROM generate_series(1, 100) g")
        pair.wait_replicated()
        pair.primary.stop("immediate")
        config = {"locale": "en", "roster": ROSTER,
                  "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 30},
                  "components": {"postgres": {"primary": {"dsn": pair.primary.dsn()},
                                              "standby": {"dsn": pair.standby.dsn()}}},
                  "hooks": {"fence_primary": {"command": ["/bin/true"]},
                            "update_traffic": {"command": ["/bin/true"]}}}
        bot_dir = work / f"promotion-{number}"
        with serving(bot_dir, config, f"sqlite:///{bot_dir}/aegis.db") as walk:
            walk.declare()
            walk.assemble_and_assess()
            seconds, steps = approve_to_verified(walk, 300)
        if pair.standby.sql("SELECT pg_is_in_recovery()")[0][0]:
            raise BenchError("verified, but the standby is still in recovery")
        rows = int(pair.standby.sql("SELECT count(*) FROM orders")[0][0])
    finally:
        pair.destroy()
    floor_pair = PgPair.create(work)
    try:
        floor_pair.primary.stop("immediate")
        started = time.monotonic()
        pg_ctl(floor_pair.standby.data_dir, "promote", "-w", "-t", "300")
        wait_writable(floor_pair.standby.dsn())
        floor = time.monotonic() - started
    finally:
        floor_pair.destroy()
    return {"aegis_s": seconds, "floor_s": floor, "rows": rows, "plan": plan_text(steps)}


# --- part 2: in-place restore beside pgBackRest ---------------------------------------------------------


class InPlace:
    """The dead primary, both archives and backups, and one round of each restore."""

    def __init__(self, work: Path, scale: int) -> None:
        self.work = work / "in-place"
        self.work.mkdir()
        self.work.chmod(0o777)
        self.scale = scale
        self.db_url = f"sqlite:///{self.work}/aegis.db"
        self.env = {**os.environ, "AEGIS_CONFIG": str(self.work / "aegis.yaml"), "AEGIS_DATABASE_URL": self.db_url}
        self.env.pop("AEGIS_BACKUP_KEY", None)
        self.freeze = self.work / "archive.frozen"
        self.pg: PgSingle | None = None
        self.rounds = 0

    # -- set-up --

    def setup(self) -> None:
        write_config(self.work, [local(self.work)])
        self._cli("migrate")
        (self.work / "aegis.db").chmod(0o666)
        self.pg = PgSingle.create(self.work, settings={
            "shared_buffers": "128MB", "max_wal_size": "2GB", "checkpoint_timeout": "30min",
            "archive_command": "/bin/true"})
        node = self.pg.primary
        write_config(self.work, [local(self.work)], dsn=node.dsn())
        self._pgbackrest_config(node)
        wrapper = self.work / "archive-to-aegis-and-pgbackrest.sh"   # `pgbackrest check` wants its name in it
        aegis_env = f"AEGIS_CONFIG={self.work}/aegis.yaml AEGIS_DATABASE_URL={self.db_url}"
        wrapper.write_text(_ARCHIVE_BOTH.format(freeze=self.freeze, aegis_env=aegis_env, aegis=SERVER_AEGIS,
                                                conf=self.pgbr_conf, stanza=STANZA))
        wrapper.chmod(0o755)
        node.sql(f"ALTER SYSTEM SET archive_command = '{wrapper} %p'")
        node.sql("SELECT pg_reload_conf()")
        as_postgres(self._pgbr("check"), self.work)
        log(f"in-place: pgbench -i --scale {self.scale}")
        subprocess.run([str(PG_BIN / "pgbench"), "-i", "-q", "--scale", str(self.scale), "-h", str(node.socket_dir),
                        "-p", str(node.port), "-U", "postgres", "postgres"], check=True, capture_output=True)
        node.sql("CHECKPOINT")
        self.database_bytes = int(node.sql("SELECT pg_database_size('postgres')")[0][0])
        log("in-place: aegis backup run postgresql; pgbackrest backup --type=full")
        self._cli("backup", "run", "postgresql", "--quiet")
        as_postgres(self._pgbr("--type=full", "backup"), self.work)
        # WAL after both backups, so each restore replays some archive to reach the end
        node.sql("CREATE TABLE after_backup AS SELECT g AS id FROM generate_series(1, 10000) g")
        self.expected_after = 10000
        last = str(node.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        wait_for(lambda: bool(node.sql("SELECT coalesce(last_archived_wal, '') >= %s FROM pg_stat_archiver",
                                       last)[0][0]), timeout=120, what=f"{last} archived to both")
        self.freeze.touch()
        node.stop("immediate")
        self.expected_accounts = self.scale * 100_000
        runs = [r["run_id"] for r in catalog(self.work, f"kind = '{KIND_FULL}' AND status = '{STATUS_OK}'")]
        if len(runs) != 1:
            raise BenchError(f"expected one Aegis base backup, the catalog has {runs}")
        self.run_id = runs[0]

    def _cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=self.work, env=self.env, text=True,
                              capture_output=True, timeout=1800)
        if done.returncode != 0:
            raise BenchError(f"aegis {' '.join(args)}: exit {done.returncode}\n{done.stdout[-2000:]}\n"
                             f"{done.stderr[-2000:]}")
        return done.stdout

    def _pgbackrest_config(self, node: PgNode) -> None:
        pgbr = self.work / "pgbackrest"
        for sub in ("repo", "log", "lock", "spool"):
            (pgbr / sub).mkdir(parents=True)
        self.pgbr_conf = pgbr / "pgbackrest.conf"
        self.pgbr_conf.write_text(
            "[global]\n"
            f"repo1-path={pgbr / 'repo'}\nrepo1-cipher-type=aes-256-cbc\n"
            f"repo1-cipher-pass={secrets.token_urlsafe(32)}\ncompress-type=zst\nprocess-max=2\nstart-fast=y\n"
            f"archive-async=n\nlog-path={pgbr / 'log'}\nlock-path={pgbr / 'lock'}\nspool-path={pgbr / 'spool'}\n"
            "log-level-console=warn\nlog-level-file=off\n"
            f"\n[{STANZA}]\npg1-path={node.data_dir}\npg1-port={node.port}\npg1-socket-path={node.socket_dir}\n")
        for p in [pgbr, *pgbr.iterdir()]:
            shutil.chown(p, "postgres", "postgres")
        self.pgbr_conf.chmod(0o600)
        as_postgres(self._pgbr("stanza-create"), self.work)

    def _pgbr(self, *args: str) -> list[str]:
        return ["pgbackrest", f"--config={self.pgbr_conf}", f"--stanza={STANZA}", *args]

    @property
    def node(self) -> PgNode:
        assert self.pg is not None
        return self.pg.primary

    # -- the rounds --

    def _check_restored(self) -> None:
        accounts = int(self.node.sql("SELECT count(*) FROM pgbench_accounts")[0][0])
        after = int(self.node.sql("SELECT count(*) FROM after_backup")[0][0])
        if (accounts, after) != (self.expected_accounts, self.expected_after):
            raise BenchError(f"restored {accounts} accounts and {after} later rows, expected "
                             f"{self.expected_accounts} and {self.expected_after}")

    def _kill_server(self) -> None:
        """The restored server stops again: the next round starts from a dead primary."""
        self.node.stop("immediate")

    def aegis(self, ahead: bool = False) -> dict[str, Any]:
        """One Aegis round; ``ahead``: the approval is clicked only once the plan's ahead-staging is ready
        (a responder reading the plan first), else at once (the staging, begun at the plan, is taken over)."""
        self.rounds += 1
        config = {"locale": "en", "roster": ROSTER,
                  "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 30},
                  **yaml.safe_load((self.work / "aegis.yaml").read_text())}
        config["components"]["postgres"]["primary"]["control"] = {
            "data_dir": str(self.node.data_dir), "os_user": "postgres", "pg_bin": str(PG_BIN)}
        config["hooks"] = {"start_services": {"command": ["/bin/true"]}}   # else the plan has a manual step
        with serving(self.work / f"bot-{self.rounds}", config, self.db_url) as walk:
            walk.declare()
            walk.assemble_and_assess()
            steps = walk.steps()
            if not any(s.action == "postgres_restore" for s in steps):
                raise BenchError(f"the plan has no in-place postgres_restore step: {plan_text(steps)}")
            if ahead:
                [restore] = [s for s in steps if s.action == "postgres_restore"]
                journal = self.node.data_dir.with_name(self.node.data_dir.name + ".aegis-restore.json")

                def staged() -> bool:
                    entry = json.loads(journal.read_text()) if journal.exists() else {}
                    return entry.get("phase") == "staged" and (entry.get("prepared_for") or {}).get("step") == str(
                        restore.id)
                wait_for(staged, timeout=1800, interval=0.05, what="the ahead-staging")
            seconds, steps = approve_to_verified(walk, 1800)
            outputs = [e.output for s in steps if s.action == "postgres_restore" for e in walk.ledger(s.id)
                       if e.status == "succeeded"]
        self._check_restored()
        aside = [item["location"] for output in outputs for item in output.get("aside", []) if isinstance(item, dict)]
        phases = journal_phases(self.node.data_dir, seconds)
        self._kill_server()
        for location in aside:   # the bench's own clean-up; Aegis removes them only by an approved step
            shutil.rmtree(location, ignore_errors=True)
        return {"seconds": seconds, "aside": len(aside), "plan": plan_text(steps), "phases": phases, "ahead": ahead}

    def pgbackrest(self) -> dict[str, Any]:
        self.rounds += 1
        data = self.node.data_dir
        aside = data.with_name(f"{data.name}.bench-aside-{self.rounds}")
        started = time.monotonic()
        data.rename(aside)
        data.mkdir(mode=0o700)
        shutil.chown(data, "postgres", "postgres")
        as_postgres(self._pgbr("restore"), self.work)
        restored = time.monotonic() - started
        pg_ctl(data, "-l", str(self.node.log_file), "-w", "-t", "600", "start")
        wait_writable(self.node.dsn())
        seconds = time.monotonic() - started
        self._check_restored()
        self._kill_server()
        shutil.rmtree(aside, ignore_errors=True)
        return {"seconds": seconds, "restore_s": restored}

    def destroy(self) -> None:
        if self.pg is not None:
            self.pg.destroy()


def journal_phases(data_dir: Path, total: float) -> dict[str, float]:
    """Where the time of one in-place restore went, from its journal's phase times (``in_place.py``):
    precheck (prechecked → staged), stop → restored, start → writable (restored → started, the WAL replay),
    verify (started → verified); "engine" is the rest of approval → verified (steps around it)."""
    entry = json.loads(data_dir.with_name(data_dir.name + ".aegis-restore.json").read_text())
    at: dict[str, float] = {}
    for moment in entry.get("history", []):
        at.setdefault(moment["phase"], datetime.fromisoformat(moment["at"]).timestamp())
    span = {"precheck": ("prechecked", "staged"), "stop→restored": ("stopping", "restored"),
            "start→writable": ("restored", "started"), "verify": ("started", "verified")}
    got = {name: at[b] - at[a] for name, (a, b) in span.items() if a in at and b in at}
    reused = bool(entry.get("reused_ahead"))
    if reused and "precheck" in got:
        got["precheck (ahead, partly before the click)"] = got.pop("precheck")
    if "stopping" in at and "verified" in at:
        # the engine's steps around the restore (and, when reused, the cheap re-checks before the stop)
        got["engine"] = total - (at["verified"] - (at["stopping"] if reused else at["prechecked"]))
    got["ahead"] = 1.0 if reused else 0.0
    return got


def _phases_text(phases: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f} s" for k, v in phases.items() if k != "ahead") + (
        " (staged ahead, reused)" if phases.get("ahead") else "")


# --- part 3: RPO under load -------------------------------------------------------------------------------


@dataclass
class Loss:
    committed: int      # transactions pgbench logged as committed
    lost: int           # logged, absent after recovery
    in_flight: int      # present after recovery, never logged (committed, the answer lost in the crash)
    tps: float


def read_pgbench_logs(prefix: Path) -> set[tuple[int, int]]:
    """(client, transaction number) of every transaction pgbench's --log recorded as done."""
    done: set[tuple[int, int]] = set()
    for path in prefix.parent.glob(prefix.name + ".*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[2].isdigit():
                done.add((int(fields[0]), int(fields[1])))
    return done


def tps_of(prefix: Path) -> float:
    stamps = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[2].isdigit():
                stamps.append(int(fields[4]) + int(fields[5]) / 1e6)
    return len(stamps) / (max(stamps) - min(stamps)) if len(stamps) > 1 else 0.0


class LoadRun:
    """pgbench inserting (client, seq) rows into ``rpo`` with a per-transaction log, until the server dies."""

    def __init__(self, node: PgNode, workdir: Path, clients: int) -> None:
        script = workdir / "rpo.sql"
        script.write_text(PGBENCH_SCRIPT)
        self.prefix = workdir / "pgbench-log"
        self.out = open(workdir / "pgbench.out", "wb")   # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [str(PG_BIN / "pgbench"), "-n", "-f", str(script), "-D", "seq=0", "-c", str(clients), "-j", "2",
             "-T", "3600", "--log", f"--log-prefix={self.prefix}", "-h", str(node.socket_dir), "-p", str(node.port),
             "-U", "postgres", "postgres"], cwd=workdir, stdout=self.out, stderr=subprocess.STDOUT)

    def finish(self) -> set[tuple[int, int]]:
        """After the crash: pgbench's clients abort, it exits and flushes its logs."""
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise BenchError("pgbench did not exit after the crash") from None
        finally:
            self.out.close()
        return read_pgbench_logs(self.prefix)


def _rpo_table(node: PgNode) -> None:
    node.sql("CREATE TABLE rpo (client int, seq int, at timestamptz DEFAULT clock_timestamp(), "
             "PRIMARY KEY (client, seq))")


def _rows(dsn: str) -> set[tuple[int, int]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return {(int(c), int(s)) for c, s in conn.execute("SELECT client, seq FROM rpo").fetchall()}


def _loss(logged: set[tuple[int, int]], present: set[tuple[int, int]], prefix: Path) -> Loss:
    if not logged:
        raise BenchError("pgbench logged no committed transaction")
    return Loss(len(logged), len(logged - present), len(present - logged), tps_of(prefix))


class ArchiveWorkspace:
    """A primary archiving through ``aegis wal push`` to a local target, one base backup, the CLI."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        path.mkdir()
        path.chmod(0o777)
        self.db_url = f"sqlite:///{path}/aegis.db"
        self.env = {**os.environ, "AEGIS_CONFIG": str(path / "aegis.yaml"), "AEGIS_DATABASE_URL": self.db_url}
        self.env.pop("AEGIS_BACKUP_KEY", None)
        write_config(path, [local(path)])
        self.cli("migrate")
        (path / "aegis.db").chmod(0o666)
        push = f"AEGIS_CONFIG={path}/aegis.yaml AEGIS_DATABASE_URL={self.db_url} {SERVER_AEGIS} wal push %p"
        self.pg = PgSingle.create(path, settings={"archive_command": push, "wal_keep_size": "1GB", **settings})
        write_config(path, [local(path)], dsn=self.pg.primary.dsn())
        self.processes: list[subprocess.Popen[bytes]] = []

    def start_archiver(self) -> subprocess.Popen[bytes]:
        """``aegis wal archiver`` beside the server, as its OS user: ``wal push`` only hands segments to it."""
        node = self.pg.primary
        archiver = subprocess.Popen([str(SERVER_AEGIS), "wal", "archiver", "--data-dir", str(node.data_dir)],
                                    cwd=self.path, env=self.env, user="postgres", group="postgres", extra_groups=[],
                                    stdout=open(self.path / "archiver.log", "wb"),  # noqa: SIM115
                                    stderr=subprocess.STDOUT)
        self.processes.append(archiver)
        socket = node.data_dir / "pg_wal" / "aegis-archiver.sock"
        wait_for(lambda: socket.exists() or archiver.poll() is not None, timeout=60, what="the archiver's socket")
        if not socket.exists():
            raise BenchError(f"aegis wal archiver did not start: {(self.path / 'archiver.log').read_text()[-2000:]}")
        return archiver

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=self.path, env=self.env, text=True,
                              capture_output=True, timeout=1800)
        if done.returncode != 0:
            raise BenchError(f"aegis {' '.join(args)}: exit {done.returncode}\n{done.stdout[-2000:]}\n"
                             f"{done.stderr[-2000:]}")
        return done.stdout

    def backup(self) -> str:
        self.cli("backup", "run", "postgresql", "--quiet")
        runs = [r["run_id"] for r in catalog(self.path, f"kind = '{KIND_FULL}' AND status = '{STATUS_OK}'")]
        return str(runs[-1])

    def restore_latest(self, run_id: str) -> tuple[set[tuple[int, int]], float]:
        """``aegis restore postgres RUN_ID`` to the end of the archive into a new dir: the rows, seconds."""
        target = self.path / "restored"
        target.mkdir()
        shutil.chown(target, "postgres", "postgres")
        started = time.monotonic()
        out = self.cli("restore", "postgres", run_id, "--data-dir", str(target / "data"), "--port",
                       str(free_port()), "--quiet")
        seconds = time.monotonic() - started
        try:
            return _rows(restored_dsn(out)), seconds
        finally:
            stop_restored(target / "data")

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        stop_restored(self.path / "restored" / "data")
        self.pg.destroy()


def rpo_archive(work: Path, clients: int, load_seconds: float, archive_timeout: int) -> Loss:
    ws = ArchiveWorkspace(work, {"archive_timeout": archive_timeout})
    try:
        _rpo_table(ws.pg.primary)
        archiver = ws.start_archiver()
        run_id = ws.backup()
        load = LoadRun(ws.pg.primary, work, clients)
        time.sleep(load_seconds)   # the load runs for this long; nothing is asserted meanwhile
        crash(ws.pg.primary, archiver)
        logged = load.finish()
        present, _ = ws.restore_latest(run_id)
        return _loss(logged, present, load.prefix)
    finally:
        ws.destroy()


def rpo_stream(work: Path, clients: int, load_seconds: float) -> Loss:
    ws = ArchiveWorkspace(work, {"archive_timeout": 0, "max_slot_wal_keep_size": "1GB"})
    streamer: subprocess.Popen[bytes] | None = None
    try:
        node = ws.pg.primary
        _rpo_table(node)
        stream_config = yaml.safe_load((work / "aegis.yaml").read_text())
        stream_config["components"]["postgres"]["primary"]["dsn"] = (
            f"{node.tcp_dsn()} application_name={STREAM_APP}")
        (work / "stream.yaml").write_text(yaml.safe_dump(stream_config))
        spool = work / "spool"
        spool.mkdir()
        shutil.chown(spool, "postgres", "postgres")
        env = {**ws.env, "AEGIS_CONFIG": str(work / "stream.yaml")}
        streamer = subprocess.Popen([str(SERVER_AEGIS), "wal", "stream", "--dir", str(spool), "--synchronous",
                                     "--interval", "0.5"], cwd=work, env=env, user="postgres", group="postgres",
                                    extra_groups=[], stdout=open(work / "stream.log", "wb"),  # noqa: SIM115
                                    stderr=subprocess.STDOUT)
        node.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{STREAM_APP}'")   # commits wait for it from now on
        node.sql("SELECT pg_reload_conf()")
        wait_for(lambda: node.sql("SELECT 1 FROM pg_stat_replication WHERE application_name = %s "
                                  "AND sync_state = 'sync'", STREAM_APP), timeout=60,
                 what="the streamer to be the synchronous standby")
        archiver = ws.start_archiver()
        run_id = ws.backup()
        load = LoadRun(node, work, clients)
        time.sleep(load_seconds)
        crash(node, archiver)
        logged = load.finish()
        streamer.terminate()
        streamer.wait(60)
        # the open segment exists only in the spool: push it under its segment name for the restore
        for partial in spool.glob("*.partial"):
            whole = work / "partial" / partial.name.removesuffix(".partial")
            whole.parent.mkdir(exist_ok=True)
            shutil.copyfile(partial, whole)
            for p in (whole.parent, whole):
                shutil.chown(p, "postgres", "postgres")
            as_postgres([str(SERVER_AEGIS), "wal", "push", str(whole)], work, env=ws.env)
        present, _ = ws.restore_latest(run_id)
        return _loss(logged, present, load.prefix)
    finally:
        if streamer is not None and streamer.poll() is None:
            streamer.kill()
            streamer.wait(10)
        ws.destroy()


def rpo_standby(work: Path, clients: int, load_seconds: float) -> Loss:
    work.mkdir()
    work.chmod(0o777)
    pair = PgPair.create(work)
    try:
        _rpo_table(pair.primary)
        pair.primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
        pair.primary.sql("SELECT pg_reload_conf()")
        wait_for(lambda: pair.primary.sql("SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'"),
                 timeout=60, what="the standby to be synchronous")
        load = LoadRun(pair.primary, work, clients)
        time.sleep(load_seconds)
        crash(pair.primary)
        logged = load.finish()
        pg_ctl(pair.standby.data_dir, "promote", "-w", "-t", "300")
        wait_writable(pair.standby.dsn())
        return _loss(logged, _rows(pair.standby.dsn()), load.prefix)
    finally:
        pair.destroy()


# --- the run ------------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines: list[str] = []
    if "promotion" in results:
        rows = results["promotion"]
        aegis, floor = _median([r["aegis_s"] for r in rows]), _median([r["floor_s"] for r in rows])
        lines += ["", f"promotion, median of {len(rows)} rounds (plan: {rows[-1]['plan']}):",
                  f"  aegis approval → verified {aegis:6.2f} s   floor (pg_ctl promote → writable) {floor:6.2f} s"
                  f"   ratio {aegis / floor:.1f}×",
                  f"  goal approval → verified < {GOAL_PROMOTION_S:g} s: {aegis:.2f} s — "
                  f"{_verdict(aegis < GOAL_PROMOTION_S)}"]
    if "in-place" in results:
        r = results["in-place"]
        aegis, ahead, pgbr = _median(r["aegis_s"]), _median(r["aegis_ahead_s"]), _median(r["pgbackrest_s"])
        lines += ["", f"in-place restore of pgbench scale {args.scale} ({r['database_mib']:.0f} MiB), median of "
                      f"{len(r['aegis_s'])} rounds each (plan: {r['plan']}):",
                  f"  pgbackrest restore + pg_ctl start → writable {pgbr:6.2f} s "
                  f"(restore alone {_median(r['pgbackrest_restore_s']):.2f} s)",
                  f"  (a) aegis approval clicked at once → verified {aegis:6.2f} s   ratio {aegis / pgbr:.2f} "
                  f"(goal ≤ {GOAL_IN_PLACE_RATIO:g}: {_verdict(aegis / pgbr <= GOAL_IN_PLACE_RATIO)})",
                  f"  (b) aegis approval clicked after the ahead-staging → verified {ahead:6.2f} s   ratio "
                  f"{ahead / pgbr:.2f} (goal ≤ {GOAL_IN_PLACE_RATIO:g}: "
                  f"{_verdict(ahead / pgbr <= GOAL_IN_PLACE_RATIO)})"]
    elif "in-place-error" in results:
        lines += ["", f"in-place restore: NOT MEASURED — {results['in-place-error']}"]
    if "rpo" in results:
        r = results["rpo"]
        lines += ["", f"RPO under load: pgbench -c {args.clients}, {args.load_seconds:g} s of load, then every "
                      f"process of the primary SIGKILLed; archive_timeout {args.archive_timeout} s; "
                      f"{len(r['archive'])} rounds (median; max)",
                  f"  {'recovered from':<34} {'committed':>9} {'lost':>9} {'lost max':>9} {'in flight':>9} "
                  f"{'tps':>7} {'tps ratio':>9}"]
        base_tps = _median([x.tps for x in r["archive"]])
        names = {"archive": "(a) archived WAL + archive_timeout", "stream": "(b) aegis wal stream --synchronous",
                 "standby": "(c) synchronous standby, promoted"}
        for mode in RPO_MODES:
            runs: list[Loss] = r[mode]
            tps = _median([x.tps for x in runs])
            lines.append(f"  {names[mode]:<34} {_median([x.committed for x in runs]):9.0f} "
                         f"{_median([x.lost for x in runs]):9.0f} {max(x.lost for x in runs):9d} "
                         f"{_median([x.in_flight for x in runs]):9.0f} {tps:7.0f} {tps / base_tps:9.2f}")
        for mode in ("stream", "standby"):
            worst = max(x.lost for x in r[mode])
            lines.append(f"  goal zero lost with {mode}: worst round {worst} — {_verdict(worst == 0)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement (medians; at least 3)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale of the in-place restore (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients of the RPO load (default 4)")
    parser.add_argument("--load-seconds", type=float, default=20, help="load before the crash (default 20)")
    parser.add_argument("--archive-timeout", type=int, default=10, help="archive_timeout of (a), seconds")
    parser.add_argument("--quick", action="store_true", help="scale 2, 10 s of load, archive_timeout 3 s")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale, args.load_seconds, args.archive_timeout = 2, 10, 3
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}: use {', '.join(PARTS)}")
    if os.geteuid() != 0:
        print("run as root: PostgreSQL, the WAL commands and pgBackRest run as the postgres user", file=sys.stderr)
        return 1
    if "in-place" in parts and shutil.which("pgbackrest") is None:
        print("pgbackrest is missing: apt-get install pgbackrest", file=sys.stderr)
        return 1
    if not SERVER_AEGIS.exists():
        print("run ./scripts/install-server-side first (Aegis for the postgres user)", file=sys.stderr)
        return 1

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="aegis-recoverybench-", dir="/tmp"))
    work.chmod(0o777)
    results: dict[str, Any] = {}
    cleanups: list[Callable[[], None]] = [lambda: shutil.rmtree(work, ignore_errors=True)]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; load before: {_load()}", flush=True)
    try:
        rounds = max(args.rounds, 1)
        if "promotion" in parts:
            results["promotion"] = []
            for n in range(1, rounds + 1):
                row = promotion_round(work, n)
                results["promotion"].append(row)
                print(f"promotion {n}: aegis {row['aegis_s']:.2f} s, floor {row['floor_s']:.2f} s; load {_load()}",
                      flush=True)
        if "in-place" in parts:
            bench = InPlace(work, args.scale)
            cleanups.append(bench.destroy)
            bench.setup()
            r: dict[str, Any] = {"aegis_s": [], "aegis_ahead_s": [], "pgbackrest_s": [], "pgbackrest_restore_s": [],
                                 "plan": "",
                                 "database_mib": bench.database_bytes / 2**20, "aside": [], "phases": []}
            try:
                for n in range(1, rounds + 1):
                    at_once, after_staging = bench.aegis, lambda: bench.aegis(ahead=True)
                    order = ((at_once, after_staging, bench.pgbackrest) if n % 2
                             else (bench.pgbackrest, after_staging, at_once))
                    for measure in order:
                        got = measure()
                        if "aside" in got:
                            r["aegis_ahead_s" if got["ahead"] else "aegis_s"].append(got["seconds"])
                            r["plan"], r["aside"] = got["plan"], [*r["aside"], got["aside"]]
                            r["phases"].append(got["phases"])
                        else:
                            r["pgbackrest_s"].append(got["seconds"])
                            r["pgbackrest_restore_s"].append(got["restore_s"])
                    print(f"in-place {n}: aegis clicked at once {r['aegis_s'][-1]:.2f} s, after the ahead-staging "
                          f"{r['aegis_ahead_s'][-1]:.2f} s, pgbackrest {r['pgbackrest_s'][-1]:.2f} s; load {_load()}",
                          flush=True)
                    for phases in r["phases"][-2:]:
                        print(f"  aegis phases: {_phases_text(phases)}", flush=True)
                results["in-place"] = r
            except BenchError as exc:
                results["in-place-error"] = str(exc).splitlines()[0]
                print(f"in-place: {exc}", file=sys.stderr)
        if "rpo" in parts:
            rpo: dict[str, list[Loss]] = {m: [] for m in RPO_MODES}
            for n in range(1, rounds + 1):
                for mode in RPO_MODES:
                    where = work / f"rpo-{mode}-{n}"
                    if mode == "archive":
                        loss = rpo_archive(where, args.clients, args.load_seconds, args.archive_timeout)
                    elif mode == "stream":
                        loss = rpo_stream(where, args.clients, args.load_seconds)
                    else:
                        loss = rpo_standby(where, args.clients, args.load_seconds)
                    rpo[mode].append(loss)
                    print(f"rpo {n} {mode}: {loss.committed} committed, {loss.lost} lost, {loss.in_flight} in "
                          f"flight, {loss.tps:.0f} tps; load {_load()}", flush=True)
            results["rpo"] = rpo
        print(f"load after: {_load()}")
        print(report(results, args))
        if args.json:
            args.json.write_text(json.dumps(results, default=lambda o: o.__dict__, indent=2))
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (BenchError, AssertionError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for step in reversed(cleanups):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - clean up the rest anyway
                print(f"cleanup: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
