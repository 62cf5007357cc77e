"""WAL archiving speed: ``aegis wal push %p`` with and without ``aegis wal archiver``, against pgBackRest.

One throwaway PostgreSQL 15 primary (``tests.harness.pgcluster.PgSingle``, run as ``postgres``), its
``archive_command`` switched (``ALTER SYSTEM`` + reload, the backlog drained in between) among:

  fast        ``python -I -S …/client.py push %p`` (the stdlib-only client) with ``aegis wal archiver`` running
  fast-local  the same, the archiver archiving to the local directory only: pgBackRest's targets
  archiver    ``aegis wal push %p`` with ``aegis wal archiver`` running beside the server
  one-shot    ``aegis wal push %p`` with no archiver (each segment pushed by its own process)
  pgbackrest  ``pgbackrest archive-push %p``, synchronous (``archive-async=n``), a local repository with
              ``compress-type=zst`` and ``repo1-cipher-type=aes-256-cbc``
  pgbackrest-s3  the same with a second repository in S3 (the same moto server, bucket of its own):
              pgBackRest pushes each segment to both, as Aegis's ``fast`` does to its two targets

Aegis archives to a local staging directory and S3 (moto's server on 127.0.0.1) at once: zstd +
AES-256-GCM, one catalog row per segment (SQLite). pgBackRest speaks to S3 over TLS only, so both tools
reach moto through one HTTPS front (``bench/tls_proxy.py``: nginx, a throwaway certificate that Aegis
trusts through ``AWS_CA_BUNDLE`` and pgBackRest does not check): the same
TLS, hop and server for both. The goals compare ``fast`` with ``pgbackrest-s3`` (the same targets);
``fast-local`` (the local directory only) compares with ``pgbackrest``.

Every ``archive_command`` runs inside a small shell wrapper that appends the command's start and
end time to a log, so the per-segment wall is what PostgreSQL waits for. Per mode and round:

  latency     segments written one at a time (``INSERT`` of random rows, then ``pg_switch_wal()``),
              each archived before the next: the median wall of one 16 MiB segment on its own, and
              ("its push") how long the archiver's own push of it took (from its log)
  load        ``CHECKPOINT``, then ``pgbench -T N -c 2`` while archiving (the full-page images after
              the checkpoint make WAL quickly): tps, the median wall per segment under load,
              segments archived during the run per second, and the backlog left at its end
              (``archive_status/*.ready`` files)

Medians over ``--rounds`` (≥ 3) rounds; the machine's load average is printed at start and end.

Usage::

    python bench/wal.py                   # 3 rounds, 60 s pgbench runs
    python bench/wal.py --quick           # 3 rounds, 10 s pgbench runs, 4 latency segments
    python bench/wal.py --json /tmp/wal-bench.json

Exit status 0 whether or not the goals are met; 1 if a step fails; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PG_BIN = Path(os.environ.get("AEGIS_PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVER_AEGIS = REPO / ".tools" / "server-venv" / "bin" / "aegis"
STANZA = "walbench"
MODES = ("fast", "fast-local", "archiver", "one-shot", "pgbackrest", "pgbackrest-s3")
PGBACKREST_MODES = ("pgbackrest", "pgbackrest-s3")
WITH_ARCHIVER = ("fast", "fast-local", "archiver")
HANDOFF = REPO / "recovery" / "backup" / "wal" / "client.py"
GOAL_WALL = 1.5      # fast / pgbackrest-s3 (the same targets), per-segment wall
GOAL_TPS = 0.95      # fast / pgbackrest-s3, pgbench tps while archiving
GOAL_BACKLOG = 1     # segments left after the pgbench run

_WRAPPER = """#!/bin/sh
# timed.sh LOG CMD… %p: run the archive command, append "<name> <start ns> <end ns> <exit>" to LOG
log=$1; shift
eval last=\\${$#}
s=$(date +%s%N)
"$@"
rc=$?
echo "$(basename "$last") $s $(date +%s%N) $rc" >> "$log"
exit $rc
"""


class BenchError(RuntimeError):
    """A step failed: the run is invalid."""


def as_postgres(argv: list[str], cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, user="postgres", group="postgres", extra_groups=[], cwd=cwd, text=True,
                          capture_output=True, check=True, **kw)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Bench:
    def __init__(self, workdir: Path, pgbench_seconds: int, latency_segments: int) -> None:
        self.workdir = workdir
        self.pgbench_seconds = pgbench_seconds
        self.latency_segments = latency_segments
        self.cleanups: list[Callable[[], None]] = []
        self.results: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
        self.archiver: subprocess.Popen[bytes] | None = None
        self.archiver_env: dict[str, str] | None = None

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # -- set-up --

    def setup(self) -> None:
        from bench.tls_proxy import TlsProxy
        from tests.harness.pgcluster import PgSingle, free_port
        from tests.harness.storage_servers import AWS_ENV, start_moto

        os.environ.update(AWS_ENV)   # before the server starts: archive_command inherits its environment
        os.environ.pop("AWS_PROFILE", None)
        self.moto = start_moto()
        self.cleanups.append(self.moto.stop)
        bucket = self.moto.create_bucket("aegis-wal-bench")
        pgbr_bucket = self.moto.create_bucket("pgbackrest-wal-bench")
        # both tools reach moto through one HTTPS front (pgBackRest speaks TLS only)
        self.tls = TlsProxy(self.workdir / "tls", int(self.moto.endpoint_url.rsplit(":", 1)[1]), free_port())
        self.cleanups.append(self.tls.stop)
        self.log("PostgreSQL 15 primary + pgbench -i --scale 10")
        self.pg = PgSingle.create(self.workdir, settings={
            "shared_buffers": "128MB", "max_wal_size": "4GB", "checkpoint_timeout": "30min",
            "archive_command": "/bin/true"})
        self.cleanups.append(self.pg.destroy)
        node = self.pg.primary
        self.node = node
        subprocess.run([str(PG_BIN / "pgbench"), "-i", "-q", "--scale", "10", *self._conn()], check=True,
                       capture_output=True)
        node.sql("CREATE TABLE filler (id int, v text)")

        self.aegis_dir = self.workdir / "aegis"
        (self.aegis_dir / "staging").mkdir(parents=True)
        (self.aegis_dir / "staging-local").mkdir()
        key = self.aegis_dir / "backup.key"
        key.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
        import yaml

        (self.aegis_dir / "aegis.yaml").write_text(yaml.safe_dump({
            "storage": [{"kind": "local", "path": str(self.aegis_dir / "staging"), "name": "local"},
                        {"kind": "s3", "bucket": bucket, "endpoint_url": self.tls.endpoint_url, "name": "s3"}],
            "encryption": {"key_file": str(key)}}))
        (self.aegis_dir / "aegis-local.yaml").write_text(yaml.safe_dump({
            "storage": [{"kind": "local", "path": str(self.aegis_dir / "staging-local"), "name": "local"}],
            "encryption": {"key_file": str(key)}}))
        for p in [self.aegis_dir, *self.aegis_dir.iterdir()]:
            shutil.chown(p, "postgres", "postgres")
        key.chmod(0o600)
        self.aegis_env = {"AEGIS_CONFIG": str(self.aegis_dir / "aegis.yaml"),
                          "AEGIS_DATABASE_URL": f"sqlite:///{self.aegis_dir}/aegis.db",
                          "AWS_CA_BUNDLE": str(self.tls.cert)}
        as_postgres([str(SERVER_AEGIS), "migrate"], self.aegis_dir, env={**os.environ, **self.aegis_env})

        self.pgbr_dir = self.workdir / "pgbackrest"
        for sub in ("repo", "repo-s3-local", "log", "lock", "spool"):
            (self.pgbr_dir / sub).mkdir(parents=True)
        common = (f"compress-type=zst\narchive-async=n\n"
                  f"log-path={self.pgbr_dir / 'log'}\nlock-path={self.pgbr_dir / 'lock'}\n"
                  f"spool-path={self.pgbr_dir / 'spool'}\nlog-level-console=warn\nlog-level-file=off\n")
        stanza = f"\n[{STANZA}]\npg1-path={node.data_dir}\npg1-port={node.port}\npg1-socket-path={node.socket_dir}\n"
        # pgbackrest: a local repository only; pgbackrest-s3: a local one and S3, as Aegis's fast mode
        self.pgbr_conf = self.pgbr_dir / "pgbackrest.conf"
        self.pgbr_conf.write_text(
            "[global]\n" + _pgbr_local_repo(1, self.pgbr_dir / "repo") + common + stanza)
        self.pgbr_s3_conf = self.pgbr_dir / "pgbackrest-s3.conf"
        self.pgbr_s3_conf.write_text(
            "[global]\n" + _pgbr_local_repo(1, self.pgbr_dir / "repo-s3-local")
            + _pgbr_s3_repo(2, pgbr_bucket, self.tls.port, AWS_ENV) + common + stanza)
        for p in [self.pgbr_dir, *self.pgbr_dir.iterdir()]:
            shutil.chown(p, "postgres", "postgres")
        for conf in (self.pgbr_conf, self.pgbr_s3_conf):
            conf.chmod(0o600)
            as_postgres(["pgbackrest", f"--config={conf}", f"--stanza={STANZA}", "stanza-create"], self.workdir)

        self.wrapper = self.workdir / "timed.sh"
        self.wrapper.write_text(_WRAPPER)
        self.wrapper.chmod(0o755)
        self.timing_dir = self.workdir / "timing"
        self.timing_dir.mkdir()
        shutil.chown(self.timing_dir, "postgres", "postgres")

    def _conn(self) -> list[str]:
        return ["-h", str(self.node.socket_dir), "-p", str(self.node.port), "-U", "postgres", "postgres"]

    # -- modes --

    def _command(self, mode: str) -> str:
        if mode in PGBACKREST_MODES:
            conf = self.pgbr_conf if mode == "pgbackrest" else self.pgbr_s3_conf
            return f"pgbackrest --config={conf} --stanza={STANZA} archive-push"
        env = " ".join(f"{k}={v}" for k, v in self._env(mode).items())
        if mode in ("fast", "fast-local"):
            return f"env {env} {SERVER_AEGIS.parent / 'python'} -I -S {HANDOFF} push"
        return f"env {env} {SERVER_AEGIS} wal push"

    def use(self, mode: str, phase: str) -> Path:
        """Archive through ``mode`` from now on; the timing log of this phase."""
        self.drain()
        if mode in WITH_ARCHIVER and self.archiver_env != self._env(mode):
            self._stop_archiver()
        if mode in WITH_ARCHIVER and self.archiver is None:
            self._start_archiver(self._env(mode))
        if mode not in WITH_ARCHIVER:
            self._stop_archiver()
        timing = self.timing_dir / f"{mode}-{phase}-{time.monotonic_ns()}.log"
        command = f"{self.wrapper} {timing} {self._command(mode)} %p"
        self.node.sql(f"ALTER SYSTEM SET archive_command = '{command}'")
        self.node.sql("SELECT pg_reload_conf()")
        time.sleep(0.3)   # the archiver process rereads its configuration
        return timing

    def _env(self, mode: str) -> dict[str, str]:
        if mode == "fast-local":
            return {**self.aegis_env, "AEGIS_CONFIG": str(self.aegis_dir / "aegis-local.yaml")}
        return self.aegis_env

    def _start_archiver(self, env: dict[str, str]) -> None:
        log_path = self.workdir / "archiver.log"
        warm = log_path.read_text(errors="replace").count("archiver: warmed up") if log_path.exists() else 0
        log = open(log_path, "ab")   # noqa: SIM115 - lives as long as the process
        self.archiver = subprocess.Popen(
            [str(SERVER_AEGIS), "wal", "archiver", "--data-dir", str(self.node.data_dir)],
            env={**os.environ, **env}, cwd=self.aegis_dir, user="postgres", group="postgres",
            extra_groups=[], stdout=log, stderr=subprocess.STDOUT)
        sock = self.node.data_dir / "pg_wal" / "aegis-archiver.sock"
        wait_until(lambda: sock.exists() or self.archiver is None or self.archiver.poll() is not None,
                   "the archiver's socket", 60)
        if not sock.exists():
            raise BenchError("aegis wal archiver did not start: see " + str(self.workdir / "archiver.log"))
        # a long-running archiver is warm when PostgreSQL asks (catalog, SDK client, connection): wait for it
        wait_until(lambda: log_path.read_text(errors="replace").count("archiver: warmed up") > warm
                   or self.archiver is None or self.archiver.poll() is not None, "the archiver to warm up", 60)
        self.archiver_env = env
        if self._stop_archiver not in self.cleanups:
            self.cleanups.append(self._stop_archiver)

    def _stop_archiver(self) -> None:
        if self.archiver is not None and self.archiver.poll() is None:
            self.archiver.terminate()
            self.archiver.wait(60)
        self.archiver = None
        self.archiver_env = None

    def ready(self) -> int:
        return sum(1 for p in (self.node.data_dir / "pg_wal" / "archive_status").iterdir()
                   if p.name.endswith(".ready"))

    def drain(self) -> None:
        wait_until(lambda: self.ready() == 0, "the archive backlog to drain", 600)

    # -- measurements --

    def latency(self, mode: str) -> None:
        timing = self.use(mode, "latency")
        for _ in range(self.latency_segments):
            self.node.sql("INSERT INTO filler SELECT g, md5(random()::text) || md5(random()::text) "
                          "FROM generate_series(1, 20000) g")
            name = str(self.node.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
            wait_until(lambda n=name: bool(self.node.sql(
                "SELECT coalesce(last_archived_wal, '') >= %s FROM pg_stat_archiver", n)[0][0]), f"{name} archived")
        walls = [(end - start) / 1e9 for _name, start, end, rc in _timings(timing) if rc == 0]
        failed = [r for r in _timings(timing) if r[3] != 0]
        if failed:
            raise BenchError(f"{mode}: archive_command failed: {failed[:3]}")
        self._add(mode, "wall_s", statistics.median(walls))
        pushes = self._archiver_push_seconds({n for n, *_ in _timings(timing)})
        if pushes:   # of that wall, the archiver's own push (zstd, AES-GCM, fsync, upload, catalog row)
            self._add(mode, "push_s", statistics.median(pushes))

    def _archiver_push_seconds(self, names: set[str]) -> list[float]:
        log = self.workdir / "archiver.log"
        if not log.exists():
            return []
        found = re.findall(r"archiver: pushed (\S+) \(archived, \d+ bytes, ([0-9.]+) s\)",
                           log.read_text(errors="replace"))
        return [float(seconds) for name, seconds in found if name in names]

    def load(self, mode: str) -> None:
        timing = self.use(mode, "load")
        self.node.sql("CHECKPOINT")   # every page pgbench touches first writes a full-page image: WAL at a pace
        before = int(self.node.sql("SELECT archived_count FROM pg_stat_archiver")[0][0])
        lsn0 = self.node.sql("SELECT pg_current_wal_lsn()")[0][0]
        run = subprocess.run([str(PG_BIN / "pgbench"), "-T", str(self.pgbench_seconds), "-c", "2", "-j", "2",
                              "-n", *self._conn()], check=True, capture_output=True, text=True)
        backlog = self.ready()
        after = int(self.node.sql("SELECT archived_count FROM pg_stat_archiver")[0][0])
        generated = float(self.node.sql("SELECT (pg_current_wal_lsn() - %s::pg_lsn) / 16777216.0", lsn0)[0][0])
        found = re.search(r"tps = ([0-9.]+)", run.stdout)
        if not found:
            raise BenchError(f"no tps in pgbench's output: {run.stdout[-500:]}")
        self._add(mode, "tps", float(found.group(1)))
        self._add(mode, "segments_per_s", (after - before) / self.pgbench_seconds)
        self._add(mode, "backlog", float(backlog))
        self._add(mode, "generated_segments", generated)
        walls = [(end - start) / 1e9 for _n, start, end, rc in _timings(timing) if rc == 0]
        if walls:
            self._add(mode, "wall_load_s", statistics.median(walls))
        if any(r[3] != 0 for r in _timings(timing)):
            self._add(mode, "failed_pushes", float(sum(1 for r in _timings(timing) if r[3] != 0)))

    def _add(self, mode: str, key: str, value: float) -> None:
        self.results[mode].setdefault(key, []).append(value)

    def cleanup(self) -> None:
        for step in reversed(self.cleanups):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - clean up the rest anyway
                print(f"cleanup: {exc}", file=sys.stderr)


def _pgbr_cipher(n: int) -> str:
    return f"repo{n}-cipher-type=aes-256-cbc\nrepo{n}-cipher-pass={secrets.token_urlsafe(32)}\n"


def _pgbr_local_repo(n: int, path: Path) -> str:
    return f"repo{n}-path={path}\n" + _pgbr_cipher(n)


def _pgbr_s3_repo(n: int, bucket: str, port: int, aws: dict[str, str]) -> str:
    """A pgBackRest S3 repository in moto, through the HTTPS front (its throwaway certificate not checked)."""
    return (f"repo{n}-type=s3\nrepo{n}-path=/repo\nrepo{n}-s3-bucket={bucket}\nrepo{n}-s3-endpoint=127.0.0.1\n"
            f"repo{n}-storage-port={port}\nrepo{n}-storage-verify-tls=n\nrepo{n}-s3-region=us-east-1\n"
            f"repo{n}-s3-uri-style=path\nrepo{n}-s3-key={aws['AWS_ACCESS_KEY_ID']}\n"
            f"repo{n}-s3-key-secret={aws['AWS_SECRET_ACCESS_KEY']}\n"
            + _pgbr_cipher(n))


def _timings(path: Path) -> list[tuple[str, int, int, int]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        name, start, end, rc = line.split()
        rows.append((name, int(start), int(end), int(rc)))
    return rows


def medians(b: Bench) -> dict[str, dict[str, float]]:
    return {mode: {k: statistics.median(v) for k, v in values.items()} for mode, values in b.results.items()}


def render(m: dict[str, dict[str, float]], facts: dict[str, Any], rounds: int, seconds: int) -> str:
    f, fl, a, o, p, ps = (m[mode] for mode in MODES)
    lines = [f"WAL archiving, medians of {rounds} rounds; pgbench -T {seconds} -c 2; {os.cpu_count()} cores; "
             f"load average {facts['load_start'][0]:.2f} at start, {facts['load_end'][0]:.2f} at end",
             f"{'':14} {'wall/segment':>13} {'its push':>9} {'under load':>11} {'segments/s':>11} {'tps':>9} "
             f"{'backlog':>8} {'WAL made':>9}"]
    for name in MODES:
        r = m[name]
        push = f"{r['push_s']:8.3f}s" if "push_s" in r else f"{'':9}"
        lines.append(f"{name:14} {r['wall_s']:12.3f}s {push} {r.get('wall_load_s', float('nan')):10.3f}s "
                     f"{r['segments_per_s']:11.2f} {r['tps']:9.0f} "
                     f"{r['backlog']:8.0f} {r['generated_segments']:9.1f}")
    wall, tps = f["wall_s"] / ps["wall_s"], f["tps"] / ps["tps"]
    lines += [f"fast/pgbackrest-s3 (both local + S3) wall {wall:.2f}x "
              f"(goal <= {GOAL_WALL}x: {'met' if wall <= GOAL_WALL else 'missed'})",
              f"fast/pgbackrest-s3 tps {tps:.2f}x (goal >= {GOAL_TPS}x: {'met' if tps >= GOAL_TPS else 'missed'})",
              f"fast backlog {f['backlog']:.0f} after {seconds} s (goal <= {GOAL_BACKLOG}"
              f"{', the goal is for a 60 s run' if seconds != 60 else ''}: "
              f"{'met' if f['backlog'] <= GOAL_BACKLOG else 'missed'})",
              f"fast-local/pgbackrest (both local only) wall {fl['wall_s'] / p['wall_s']:.2f}x, tps "
              f"{fl['tps'] / p['tps']:.2f}x",
              f"fast/pgbackrest (Aegis local + S3, pgBackRest local only) wall {f['wall_s'] / p['wall_s']:.2f}x, "
              f"tps {f['tps'] / p['tps']:.2f}x",
              f"archiver (aegis wal push %p)/pgbackrest-s3 wall {a['wall_s'] / ps['wall_s']:.2f}x, tps "
              f"{a['tps'] / ps['tps']:.2f}x; one-shot/pgbackrest-s3 wall {o['wall_s'] / ps['wall_s']:.2f}x"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode (medians shown; at least 3)")
    parser.add_argument("--seconds", type=int, default=60, help="pgbench run length while archiving")
    parser.add_argument("--segments", type=int, default=6, help="segments timed one at a time per round")
    parser.add_argument("--quick", action="store_true", help="10 s pgbench runs, 4 latency segments")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.segments = 10, 4
    if os.geteuid() != 0:
        print("run as root: PostgreSQL, the archiver and pgBackRest run as the postgres user", file=sys.stderr)
        return 1
    for tool, package in (("pgbackrest", "pgbackrest"), ("nginx", "nginx-light"), ("openssl", "openssl")):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is missing: apt-get install {package}", file=sys.stderr)
            return 1
    if not SERVER_AEGIS.exists():
        print("run ./scripts/install-server-side first (Aegis for the postgres user)", file=sys.stderr)
        return 1

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="aegis-walbench-"))
    workdir.chmod(0o755)
    bench = Bench(workdir, args.seconds, args.segments)
    bench.cleanups.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
    facts: dict[str, Any] = {"load_start": os.getloadavg()}
    try:
        bench.setup()
        for round_no in range(1, max(args.rounds, 1) + 1):
            for mode in MODES[round_no - 1:] + MODES[:round_no - 1]:   # each mode first once: no order bias
                bench.log(f"round {round_no}/{args.rounds}: {mode}")
                bench.latency(mode)
                bench.load(mode)
        bench.drain()
        facts["load_end"] = os.getloadavg()
        m = medians(bench)
        print(render(m, facts, args.rounds, args.seconds))
        if args.json:
            args.json.write_text(json.dumps({"medians": m, "runs": bench.results, "facts": facts,
                                             "seconds": args.seconds, "rounds": args.rounds,
                                             "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                            indent=2))
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (BenchError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None)
        print(f"bench failed: {exc}" + (f"\n{detail}" if detail else ""), file=sys.stderr)
        return 1
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
