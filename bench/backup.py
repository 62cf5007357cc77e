"""Backup and restore speed and memory: Aegis versus ``pg_basebackup | zstd`` and pgBackRest, in one run.

One throwaway PostgreSQL 15 cluster (``tests.harness.pgcluster.PgSingle``, run as ``postgres``) is filled by
``pgbench -i --scale N`` (default 70, about 1 GB). Then, on the same cluster and with a warm page cache:

(a) floor      ``pg_basebackup -Ft -X fetch -c fast -D - | zstd -1 -T2 > file``
(b) Aegis      ``python -m bot.cli backup run postgresql --quiet``: zstd + AES-256-GCM to a local dir,
               S3 (moto's server) and Azure Blob (Azurite) at once; the local staging copy is then
               deleted because two remote targets hold the backup (B6)
(bL) Aegis      the same backup with a config holding the local directory only — pgBackRest's targets
               (not a goal: it shows what the emulated S3 and Azure servers, on the same two cores, cost b)
(c) pgBackRest ``pgbackrest backup --type=full`` into a local repository, ``compress-type=zst``,
               ``repo1-cipher-type=aes-256-cbc``, ``process-max`` 2, ``start-fast``; WAL archiving
               through ``pgbackrest archive-push``
(b') Aegis restore of (b) from S3 into an empty data dir on a free port:
               ``python -m bot.cli restore postgres RUN_ID --data-dir D --port P --no-wal`` (one pass: the S3
               copy streams into a staging directory beside D, every chunk authenticated, and is renamed to
               D after the final tag and checksum; ``pg_verifybackup --skip-checksums``; the server starts).
               Where that command does not exist, or with ``--restore-via api``, the older two-pass restore
               through the Python API in a child process (``python bench/backup.py --aegis-restore-child
               SPEC``: verify, then ``restore_base_backup``), which also reports phase times.
(c') ``pgbackrest restore --type=immediate --target-action=promote --archive-mode=off``, then
               ``pg_ctl start`` on a free port

Both restores end at the same point: the restored server accepts connections and is out of
recovery (``pg_is_in_recovery()`` is false). Aegis's peak RSS is ``VmHWM`` of the Aegis Python
process itself, sampled from ``/proc/<pid>/status`` (child processes such as ``pg_basebackup``
are not counted). Throughput (MB/s) is the size of the plaintext base backup tar (the catalog's
``source_size``) divided by each step's wall time, so every column uses the same numerator.

Usage::

    python bench/backup.py                  # scale 70, about 1 GB
    python bench/backup.py --scale 5 --json /tmp/backup-bench.json
    python bench/backup.py --rounds 3              # medians over three rounds
    python bench/backup.py --scale 70,350 --rounds 3 --budget-minutes 12
        # how cost grows: both sizes, one cluster each; at each scale up to --rounds rounds, but no new
        # round once the next would end past --budget-minutes (counted from that scale's first round)

The exit status is 0 whether or not the goals are met; 1 if a step fails; 130 when interrupted.
Every server and temp dir is removed on exit.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PG_BIN = Path(os.environ.get("AEGIS_PG_BIN", "/usr/lib/postgresql/15/bin"))
STANZA = "bench"
MB = 1_000_000
GOAL_BACKUP_FLOOR = 1.3   # b/a
GOAL_BACKUP_PEER = 1.0    # b/c
GOAL_RESTORE_PEER = 1.0   # b'/c'
GOAL_RSS_MB = 150.0       # MiB, of the Aegis process


class BenchError(RuntimeError):
    """A step failed: the run is invalid."""


# ---- measuring a child process -----------------------------------------------------------------------


@dataclass
class Measured:
    """Wall time, CPU (the process and the descendants it waited for) and peak RSS of one child."""

    seconds: float
    cpu_seconds: float
    peak_rss_mib: float | None
    returncode: int
    stdout: str
    stderr: str


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def run_measured(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                 as_postgres: bool = False, sample_rss: bool = False, timeout: float = 7200) -> Measured:
    """Run ``argv`` to completion; stdout/stderr go to temp files so a chatty child never blocks."""
    extra: dict[str, Any] = {"user": "postgres", "group": "postgres", "extra_groups": []} if as_postgres else {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd,
                                start_new_session=True, **extra)
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                hwm = _vm_hwm_kib(proc.pid)
                if hwm is not None:
                    peak = max(peak, hwm)
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        if sample_rss:
            sampler.start()
        try:
            deadline = start + timeout
            while True:
                # wait4 gives the child's own rusage; Popen.wait would throw it away.
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"{Path(argv[0]).name} did not finish in {timeout:.0f} s")
                time.sleep(0.02)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)
            proc.returncode = -9
            raise
        finally:
            stop.set()
            if sample_rss:
                sampler.join()
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            seconds=seconds,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            peak_rss_mib=peak / 1024 if sample_rss and peak else None,
            returncode=proc.returncode,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
        )


def checked(what: str, m: Measured) -> Measured:
    if m.returncode != 0:
        raise BenchError(f"{what} failed (exit {m.returncode}):\n{m.stdout[-3000:]}\n{m.stderr[-3000:]}")
    return m


def as_postgres(argv: list[str], cwd: Path, timeout: float = 3600) -> str:
    proc = subprocess.run(argv, user="postgres", group="postgres", extra_groups=[], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[:3])}… failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def warm_cache(path: Path) -> None:
    """Read every file once so that each backup starts from the same (warm) page cache."""
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError), open(p, "rb") as f:
                while f.read(4 * 1024 * 1024):
                    pass


def wait_writable(dsn: str, timeout: float = 900, interval: float = 0.05) -> None:
    """Until the server accepts connections and is out of recovery: the end point of both restores."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(psycopg.OperationalError):
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()
            if row and row[0]:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"restored server not writable after {timeout:.0f} s")
        time.sleep(interval)


# ---- the Aegis restore, in a process of its own --------------------------------------------------------


def aegis_restore_child(spec_path: str) -> int:
    """``restore_stream`` (from S3) → pipe → ``restore_base_backup``; prints one JSON line of phase times."""
    t0 = time.monotonic()
    from recovery.backup.catalog import records_for
    from recovery.backup.restore import postgres as postgres_restore
    from recovery.backup.storage.base import target_from_config
    from recovery.backup.stream.crypto import load_key
    from recovery.backup.stream.pipe import produced
    from recovery.backup.stream.pipeline import restore_stream
    from statemachines.store import Store

    spec = json.loads(Path(spec_path).read_text())
    record = next(r for r in records_for(Store(), spec["run_id"]) if r.kind == "pg_full")
    target = target_from_config(spec["target"])
    key = load_key()
    marks: dict[str, float] = {"imported": time.monotonic() - t0}

    class FirstByte:
        """The sink; the first write marks the end of the verify-first pass."""

        def __init__(self, out: Any) -> None:
            self.out = out

        def write(self, data: bytes | memoryview) -> int:
            marks.setdefault("verify_pass_done", time.monotonic() - t0)
            return int(self.out.write(data))

    real_verify = postgres_restore._verify_manifest

    def timed_verify(data_dir: Path, bin_dir: Path, skip_checksums: bool = False) -> None:
        marks["extracted"] = time.monotonic() - t0
        real_verify(data_dir, bin_dir, skip_checksums)
        marks["pg_verifybackup_done"] = time.monotonic() - t0

    postgres_restore._verify_manifest = timed_verify  # a timing wrapper only; behaviour is unchanged

    def download(out: Any) -> None:
        restore_stream(target, record.object_name, key, FirstByte(out), record.sha256)
        marks["download_done"] = time.monotonic() - t0

    with produced(download) as tar_stream:
        postgres_restore.restore_base_backup(tar_stream, Path(spec["data_dir"]), postgres_restore.RestoreOptions(
            port=spec["port"], socket_dir=Path(spec["socket_dir"]), log_file=Path(spec["log_file"])))
    marks["ready"] = time.monotonic() - t0
    print(json.dumps({"marks": marks, "source_size": record.source_size}), flush=True)
    return 0


# ---- the bench -----------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    seconds: float
    cpu_seconds: float
    stored_bytes: int | None = None
    peak_rss_mib: float | None = None
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    scale: int
    workdir: Path
    pg_processes: int
    aegis_extra_env: dict[str, str] = field(default_factory=dict)
    remote_options: dict[str, Any] = field(default_factory=dict)
    restore_via: str = "auto"
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    steps: dict[str, list[Step]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def add(self, step: Step) -> None:
        self.steps.setdefault(step.name, []).append(step)
        rss = f", peak RSS {step.peak_rss_mib:.1f} MiB" if step.peak_rss_mib else ""
        self.log(f"{step.name}: {step.seconds:.2f} s (cpu {step.cpu_seconds:.2f} s{rss}), "
                 f"load {step.load_before[0]:.2f}")

    def last(self, name: str) -> Step:
        return self.steps[name][-1]

    # -- set-up --

    def setup(self) -> None:
        from tests.harness.pgcluster import PgSingle, free_port
        from tests.harness.storage_servers import AWS_ENV, start_azurite, start_moto

        self.free_port = free_port
        self.log(f"PostgreSQL 15 cluster + pgbench -i --scale {self.scale}")
        self.pg = PgSingle.create(self.workdir, settings={
            "shared_buffers": "128MB", "max_wal_size": "2GB", "checkpoint_timeout": "30min",
            "archive_command": "/bin/true",   # pgBackRest takes over once its stanza exists
        })
        self.cleanups.append(self.pg.destroy)
        node = self.pg.primary
        subprocess.run([str(PG_BIN / "pgbench"), "-i", "-q", "--scale", str(self.scale), "-h", str(node.socket_dir),
                        "-p", str(node.port), "-U", "postgres", "postgres"], check=True, capture_output=True)
        node.sql("CHECKPOINT")
        self.facts["database_bytes"] = int(node.sql("SELECT sum(pg_database_size(oid)) FROM pg_database")[0][0])
        self.log(f"databases: {self.facts['database_bytes'] / MB:.0f} MB")

        # pgBackRest: config, stanza, then WAL archiving through it.
        self.pgbr_dir = self.pg.base_dir / "pgbackrest"
        for sub in ("repo", "log", "lock", "spool"):
            (self.pgbr_dir / sub).mkdir(parents=True)
        self.pgbr_conf = self.pgbr_dir / "pgbackrest.conf"
        self.pgbr_conf.write_text(
            "[global]\n"
            f"repo1-path={self.pgbr_dir / 'repo'}\n"
            "repo1-cipher-type=aes-256-cbc\n"
            f"repo1-cipher-pass={secrets.token_urlsafe(32)}\n"
            "repo1-retention-full=2\n"
            "compress-type=zst\n"
            f"process-max={self.pg_processes}\n"
            "start-fast=y\n"
            f"log-path={self.pgbr_dir / 'log'}\n"
            f"lock-path={self.pgbr_dir / 'lock'}\n"
            f"spool-path={self.pgbr_dir / 'spool'}\n"
            "log-level-console=warn\n"
            "log-level-file=info\n"
            f"\n[{STANZA}]\n"
            f"pg1-path={node.data_dir}\n"
            f"pg1-port={node.port}\n"
            f"pg1-socket-path={node.socket_dir}\n"
        )
        shutil.chown(self.pgbr_conf, "postgres", "postgres")
        self.pgbr_conf.chmod(0o600)
        for p in [self.pgbr_dir, *self.pgbr_dir.iterdir()]:
            shutil.chown(p, "postgres", "postgres")
        as_postgres(self.pgbr(["stanza-create"]), self.pg.base_dir)
        archive = f"pgbackrest --config={self.pgbr_conf} --stanza={STANZA} archive-push %p"
        node.sql(f"ALTER SYSTEM SET archive_command = '{archive}'")
        node.sql("SELECT pg_reload_conf()")
        as_postgres(self.pgbr(["check"]), self.pg.base_dir)

        self.log("moto S3 + Azurite")
        os.environ.update(AWS_ENV)
        os.environ.pop("AWS_PROFILE", None)
        self.moto = start_moto()
        self.cleanups.append(self.moto.stop)
        azurite_dir = self.workdir / "azurite"
        azurite_dir.mkdir()
        self.azurite = start_azurite(azurite_dir)
        self.cleanups.append(self.azurite.stop)
        self.bucket = self.moto.create_bucket("aegis-bench")
        self.container = self.azurite.create_container("aegis-bench")

        self.aegis_dir = self.workdir / "aegis"
        self.aegis_dir.mkdir()
        import yaml

        self.s3_entry = {"kind": "s3", "bucket": self.bucket, "endpoint_url": self.moto.endpoint_url, "name": "s3",
                         **self.remote_options}
        config = {
            "components": {"postgres": {"primary": {"dsn": node.dsn()}}},
            "storage": [
                {"kind": "local", "path": str(self.aegis_dir / "staging"), "name": "local"},
                self.s3_entry,
                {"kind": "azure", "container": self.container, "name": "azure",
                 "connection_string_env": "AZURE_STORAGE_CONNECTION_STRING",
                 **{("block_size" if k == "part_size" else k): v for k, v in self.remote_options.items()}},
            ],
        }
        (self.aegis_dir / "aegis.yaml").write_text(yaml.safe_dump(config))
        local_only = {**config, "storage": [{"kind": "local", "path": str(self.aegis_dir / "local-only"),
                                             "name": "local"}]}
        (self.aegis_dir / "aegis-local.yaml").write_text(yaml.safe_dump(local_only))
        self.aegis_env = {
            **os.environ,
            "AEGIS_CONFIG": str(self.aegis_dir / "aegis.yaml"),
            "AEGIS_DATABASE_URL": f"sqlite:///{self.aegis_dir}/aegis.db",
            "AEGIS_BACKUP_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "AZURE_STORAGE_CONNECTION_STRING": self.azurite.connection_string,
            "PYTHONPATH": str(REPO),
            **self.aegis_extra_env,
        }
        if self.restore_via == "auto":
            probe = subprocess.run([sys.executable, "-m", "bot.cli", "restore", "postgres", "--help"],
                                   env=self.aegis_env, cwd=self.aegis_dir, capture_output=True, check=False)
            self.restore_via = "cli" if probe.returncode == 0 else "api"
        # (bL) keeps a catalog of its own, so (b') restores from (b)'s
        self.local_env = {**self.aegis_env, "AEGIS_CONFIG": str(self.aegis_dir / "aegis-local.yaml"),
                          "AEGIS_DATABASE_URL": f"sqlite:///{self.aegis_dir}/aegis-local.db"}
        # The first CLI call migrates the catalog; keep that one-off out of (b) and (bL).
        for env in (self.aegis_env, self.local_env):
            checked("aegis backup list", run_measured([sys.executable, "-m", "bot.cli", "backup", "list"],
                                                      env=env, cwd=self.aegis_dir))

    def pgbr(self, args: list[str]) -> list[str]:
        return ["pgbackrest", f"--config={self.pgbr_conf}", f"--stanza={STANZA}", *args]

    # -- backups --

    def floor(self) -> None:
        node = self.pg.primary
        out = self.workdir / "floor.tar.zst"
        cmd = (f"{PG_BIN / 'pg_basebackup'} -h {node.socket_dir} -p {node.port} -U postgres -Ft -X fetch "
               f"--checkpoint=fast -D - | zstd -1 -T2 -q > {out}")
        warm_cache(node.data_dir)
        load = os.getloadavg()
        m = checked("pg_basebackup | zstd", run_measured(["bash", "-o", "pipefail", "-c", cmd]))
        self.add(Step("a", m.seconds, m.cpu_seconds, out.stat().st_size, load_before=load))
        out.unlink()

    def _run_aegis_backup(self, env: dict[str, str], what: str) -> tuple[Measured, tuple[float, float, float]]:
        """``aegis backup run postgresql`` with ``env``, timed; the measurement and the load before it."""
        warm_cache(self.pg.primary.data_dir)
        load = os.getloadavg()
        m = checked(what, run_measured([sys.executable, "-m", "bot.cli", "backup", "run", "postgresql", "--quiet"],
                                       env=env, cwd=self.aegis_dir, sample_rss=True))
        first = m.stdout.split()[0] if m.stdout.split() else ""
        if not first.startswith("backup_") or ": ok" not in m.stdout.splitlines()[0]:
            raise BenchError(f"{what} did not report success:\n{m.stdout}\n{m.stderr[-2000:]}")
        return m, load

    def aegis_backup(self) -> None:
        m, load = self._run_aegis_backup(self.aegis_env, "aegis backup run")
        self.run_id = m.stdout.split()[0]
        from sqlalchemy import create_engine, text

        engine = create_engine(self.aegis_env["AEGIS_DATABASE_URL"])
        with engine.connect() as conn:
            row = conn.execute(text(
                "SELECT source_size, stored_size, started_at, finished_at, targets FROM backup_catalog "
                "WHERE run_id = :r AND kind = 'pg_full'"), {"r": self.run_id}).one()
        engine.dispose()
        self.facts["tar_bytes"] = int(row[0])
        staging_left = sorted(p.name for p in (self.aegis_dir / "staging").rglob("*") if p.is_file())
        targets = json.loads(row[4]) if isinstance(row[4], str) else row[4]
        self.add(Step("b", m.seconds, m.cpu_seconds, int(row[1]), m.peak_rss_mib, load, {
            "run_id": self.run_id, "copies": sum(1 for t in targets.values() if t.get("ok") and not t.get("removed")),
            "targets": targets, "local_staging_files_left": staging_left,
            "catalog_started_at": str(row[2]), "catalog_finished_at": str(row[3]), "stdout": m.stdout.strip()}))

    def aegis_backup_local(self) -> None:
        m, load = self._run_aegis_backup(self.local_env, "aegis backup run (local only)")
        stored = dir_size(self.aegis_dir / "local-only")
        self.add(Step("bL", m.seconds, m.cpu_seconds, stored, m.peak_rss_mib, load, {"stdout": m.stdout.strip()}))
        shutil.rmtree(self.aegis_dir / "local-only")   # one round's copy at a time on the disk

    def pgbackrest_backup(self) -> None:
        warm_cache(self.pg.primary.data_dir)
        load = os.getloadavg()
        m = checked("pgbackrest backup", run_measured(self.pgbr(["--type=full", "backup"]), cwd=self.pg.base_dir,
                                                      as_postgres=True))
        info = json.loads(as_postgres(self.pgbr(["--output=json", "info"]), self.pg.base_dir))
        backup = info[0]["backup"][-1]
        self.add(Step("c", m.seconds, m.cpu_seconds, int(backup["info"]["repository"]["size"]), load_before=load,
                      detail={"label": backup["label"], "archive": backup.get("archive"),
                              "repo_bytes_total": dir_size(self.pgbr_dir / "repo")}))

    # -- restores --

    def _restore_dirs(self, name: str) -> tuple[Path, Path, Path, int]:
        base = self.workdir / f"{name}-{len(self.steps.get('a', []))}"
        base.mkdir(mode=0o755)
        base.chmod(0o755)
        sock = base / "sock"
        sock.mkdir()
        shutil.chown(sock, "postgres", "postgres")
        log = base / "server.log"
        return base / "data", sock, log, self.free_port()

    def _stop_cluster(self, data_dir: Path) -> None:
        if (data_dir / "postmaster.pid").exists():
            subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"],
                           user="postgres", group="postgres", extra_groups=[], cwd=data_dir.parent,
                           capture_output=True, check=False)
        shutil.rmtree(data_dir.parent, ignore_errors=True)

    def aegis_restore(self) -> None:
        data, sock, log, port = self._restore_dirs("restore-aegis")
        self.cleanups.append(lambda: self._stop_cluster(data))
        load = os.getloadavg()
        if self.restore_via == "cli":
            # The object is read from S3: config order is local, s3, azure and the local copy was removed (B6).
            # --no-wal: only the WAL inside the base backup, like pgBackRest's --type=immediate below.
            argv = [sys.executable, "-m", "bot.cli", "restore", "postgres", self.run_id, "--data-dir", str(data),
                    "--port", str(port), "--socket-dir", str(sock), "--no-wal", "--quiet"]
            detail: dict[str, Any] = {}
        else:
            spec = self.workdir / "restore-spec.json"
            spec.write_text(json.dumps({"run_id": self.run_id, "target": self.s3_entry, "data_dir": str(data),
                                        "socket_dir": str(sock), "log_file": str(log), "port": port}))
            argv = [sys.executable, str(Path(__file__).resolve()), "--aegis-restore-child", str(spec)]
        m = checked("aegis restore", run_measured(argv, env=self.aegis_env, cwd=self.aegis_dir, sample_rss=True))
        if self.restore_via == "cli":
            detail = {"stdout": m.stdout.strip(), "stderr": m.stderr.strip()[-500:]}
        else:
            detail = {"marks": json.loads(m.stdout.strip().splitlines()[-1])["marks"]}
        detail.update({"rows": self._count_rows(f"host={sock} port={port} user=postgres dbname=postgres"),
                       "from": "s3", "via": self.restore_via, "run_id": self.run_id})
        self.add(Step("b'", m.seconds, m.cpu_seconds, None, m.peak_rss_mib, load, detail))
        self._stop_cluster(data)

    def pgbackrest_restore(self) -> None:
        data, sock, log, port = self._restore_dirs("restore-pgbackrest")
        self.cleanups.append(lambda: self._stop_cluster(data))
        data.mkdir(mode=0o700)
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(log.parent, "postgres", "postgres")
        load = os.getloadavg()
        start = time.monotonic()
        restore = checked("pgbackrest restore", run_measured(
            self.pgbr([f"--pg1-path={data}", "--type=immediate", "--target-action=promote", "--archive-mode=off",
                       "restore"]), cwd=self.pg.base_dir, as_postgres=True))
        restored = time.monotonic() - start
        settings = (f"\n# bench: a scratch copy\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{sock}'\narchive_mode = off\nlogging_collector = off\n")
        with open(data / "postgresql.auto.conf", "a", encoding="utf-8") as f:
            f.write(settings)
        ctl = checked("pg_ctl start", run_measured(
            [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "600", "start"],
            cwd=data.parent, as_postgres=True))
        dsn = f"host={sock} port={port} user=postgres dbname=postgres"
        wait_writable(dsn)
        seconds = time.monotonic() - start
        rows = self._count_rows(dsn)
        self.add(Step("c'", seconds, restore.cpu_seconds + ctl.cpu_seconds, None, load_before=load,
                      detail={"pgbackrest_restore_s": round(restored, 3), "rows": rows}))
        self._stop_cluster(data)

    def _count_rows(self, dsn: str) -> int:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
        rows = int(row[0]) if row else -1
        if rows != self.scale * 100_000:
            raise BenchError(f"restored copy has {rows} pgbench_accounts rows, expected {self.scale * 100_000}")
        return rows

    def cleanup(self) -> None:
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        self.cleanups.clear()


# ---- report --------------------------------------------------------------------------------------------


def summary(b: Bench) -> dict[str, dict[str, Any]]:
    """Per step over the rounds: median wall and CPU seconds, min/max wall, max RSS, last stored size."""
    out: dict[str, dict[str, Any]] = {}
    for name, runs in b.steps.items():
        rss = [r.peak_rss_mib for r in runs if r.peak_rss_mib is not None]
        out[name] = {
            "seconds": statistics.median(r.seconds for r in runs),
            "seconds_min": min(r.seconds for r in runs),
            "seconds_max": max(r.seconds for r in runs),
            "cpu_seconds": statistics.median(r.cpu_seconds for r in runs),
            "peak_rss_mib": max(rss) if rss else None,
            "stored_bytes": runs[-1].stored_bytes,
            "load_1m": statistics.median(r.load_before[0] for r in runs),
        }
    return out


def verdicts(s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    r: dict[str, Any] = {
        "backup_b_over_a": s["b"]["seconds"] / s["a"]["seconds"],
        "backup_b_over_c": s["b"]["seconds"] / s["c"]["seconds"],
        "restore_b_over_c": s["b'"]["seconds"] / s["c'"]["seconds"],
        "rss_backup_mib": s["b"]["peak_rss_mib"],
        "rss_restore_mib": s["b'"]["peak_rss_mib"],
    }
    r["goals"] = {
        f"backup b/a <= {GOAL_BACKUP_FLOOR}": r["backup_b_over_a"] <= GOAL_BACKUP_FLOOR,
        f"backup b/c <= {GOAL_BACKUP_PEER}": r["backup_b_over_c"] <= GOAL_BACKUP_PEER,
        f"restore b'/c' <= {GOAL_RESTORE_PEER}": r["restore_b_over_c"] <= GOAL_RESTORE_PEER,
        f"backup peak RSS <= {GOAL_RSS_MB:.0f} MiB": (r["rss_backup_mib"] or 1e9) <= GOAL_RSS_MB,
        f"restore peak RSS <= {GOAL_RSS_MB:.0f} MiB": (r["rss_restore_mib"] or 1e9) <= GOAL_RSS_MB,
    }
    return r


LABELS = {
    "a": "a  floor: pg_basebackup | zstd -1 -T2",
    "b": "b  Aegis backup (local+S3+Azure, AES-GCM)",
    "bL": "bL Aegis backup, local target only",
    "c": "c  pgBackRest backup (zst, aes-256-cbc)",
    "b'": "b' Aegis restore from S3 → writable",
    "c'": "c' pgBackRest restore → writable",
}


def render(b: Bench, s: dict[str, dict[str, Any]], v: dict[str, Any], rounds: int) -> str:
    tar = b.facts["tar_bytes"]
    extra = ""
    if b.aegis_extra_env or b.remote_options:
        extra = f"; Aegis variant: env {b.aegis_extra_env or '-'}, remote targets {b.remote_options or '-'}"
    lines = [
        f"pgbench scale {b.scale}: databases {b.facts['database_bytes'] / MB:.0f} MB, base backup tar "
        f"{tar / MB:.0f} MB (MB/s = tar MB / wall s)",
        f"machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"pgBackRest process-max {b.pg_processes}; {rounds} round(s), median shown{extra}",
        "",
        f"{'step':<42} {'wall s':>7} {'(min-max)':>13} {'MB/s':>6} {'cpu s':>6} {'stored MB':>9} {'peak RSS':>10} "
        f"{'load':>5}",
        "-" * 105,
    ]
    for key, label in LABELS.items():
        r = s[key]
        span = f"({r['seconds_min']:.2f}-{r['seconds_max']:.2f})" if rounds > 1 else ""
        stored = f"{r['stored_bytes'] / MB:9.1f}" if r["stored_bytes"] is not None else f"{'-':>9}"
        rss = f"{r['peak_rss_mib']:6.1f} MiB" if r["peak_rss_mib"] is not None else "-"
        lines.append(f"{label:<42} {r['seconds']:7.2f} {span:>13} {tar / MB / r['seconds']:6.0f} "
                     f"{r['cpu_seconds']:6.2f} {stored} {rss:>10} {r['load_1m']:5.2f}")
    lines += [
        "",
        f"backup  b/a   = {v['backup_b_over_a']:.2f}  (goal <= {GOAL_BACKUP_FLOOR})",
        f"backup  b/c   = {v['backup_b_over_c']:.2f}  (goal <= {GOAL_BACKUP_PEER}); with pgBackRest's targets "
        f"bL/c = {s['bL']['seconds'] / s['c']['seconds']:.2f}, bL/a = {s['bL']['seconds'] / s['a']['seconds']:.2f} "
        "(not goals)",
        f"restore b'/c' = {v['restore_b_over_c']:.2f}  (goal <= {GOAL_RESTORE_PEER})",
        f"Aegis peak RSS (VmHWM of the Aegis process, max over rounds): backup {v['rss_backup_mib']:.1f} MiB, "
        f"restore {v['rss_restore_mib']:.1f} MiB (goal <= {GOAL_RSS_MB:.0f} MiB)",
        "stored: b = one copy (S3 and Azure hold one each; the local staging copy was removed, B6); "
        "c = pgBackRest's backup set, without its WAL archive",
        "cpu s: the measured process and the children it waited for (pg_basebackup, zstd, pg_verifybackup); "
        "not the PostgreSQL server, moto or Azurite",
    ]
    last_b = b.last("b")
    lines.append(f"Aegis backup: catalog row {last_b.detail['catalog_started_at']} → "
                 f"{last_b.detail['catalog_finished_at']} (the rest of the wall time is start-up)")
    restore = b.last("b'").detail
    if restore["via"] == "cli":
        lines.append("Aegis restore: `aegis restore postgres RUN_ID --no-wal` (one pass: streamed and authenticated "
                     "into a staging dir, moved into place after the final tag and checksum)")
    else:
        lines.append("Aegis restore via the Python API; phases (s since the child's first line): "
                     + ", ".join(f"{k} {t:.2f}" for k, t in restore["marks"].items()))
    files_s = b.last("c'").detail["pgbackrest_restore_s"]
    lines.append(f"pgBackRest restore: files {files_s:.2f} s, "
                 "then pg_ctl start + recovery")
    lines.append("")
    for goal, ok in v["goals"].items():
        lines.append(f"  {'MET ' if ok else 'MISS'}  {goal}")
    start, end = b.facts["load_start"], b.facts["load_end"]
    lines.append(f"load average (1/5/15 min) at start {start[0]:.2f} {start[1]:.2f} {start[2]:.2f}, at end "
                 f"{end[0]:.2f} {end[1]:.2f} {end[2]:.2f} on {os.cpu_count()} cores: other jobs share this "
                 "machine, so figures are noisy")
    return "\n".join(lines)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=_scales, default=[70],
                        help="pgbench scale(s), comma-separated (70 ≈ 1 GB, 350 ≈ 5.5 GB; 5 for a quick run)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat a, b, c, b', c' this often; medians shown")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="per scale: start no round that would end after this (the first always runs)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--pgbackrest-processes", type=int, default=2, help="pgBackRest process-max (default 2)")
    parser.add_argument("--aegis-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the Aegis processes (diagnostics, e.g. MALLOC_ARENA_MAX=2)")
    parser.add_argument("--remote-option", action="append", default=[], metavar="KEY=INT",
                        help="S3/Azure target option (part_size, concurrency) for a variant run")
    parser.add_argument("--restore-via", choices=["auto", "cli", "api"], default="auto",
                        help="b': `aegis restore postgres` (cli; auto when it exists) or the Python API in a child "
                             "process (api: also prints phase times)")
    parser.add_argument("--aegis-restore-child", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.aegis_restore_child:
        return aegis_restore_child(args.aegis_restore_child)
    if os.geteuid() != 0:
        print("run as root: PostgreSQL and pgBackRest run as the postgres user", file=sys.stderr)
        return 1
    for tool in ("zstd", "pgbackrest"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install {tool}", file=sys.stderr)
            return 1
    remote = {k: int(v) for k, v in _pairs(args.remote_option, "--remote-option").items()}

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    results: list[dict[str, Any]] = []
    reports: list[str] = []
    for scale in args.scale:
        code, result, report = _run_scale(scale, args, remote)
        if code != 0:
            return code
        results.append(result)
        reports.append(report)
        print(report, flush=True)
        print(flush=True)
    if len(results) > 1:
        print(growth(results))
    if args.json:
        args.json.write_text(json.dumps(results[0] if len(results) == 1 else {"scales": results}, indent=2,
                                        default=str))
    return 0


def _scales(text: str) -> list[int]:
    try:
        scales = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale takes integers separated by commas, got {text!r}") from None
    if not scales or min(scales) < 1:
        raise argparse.ArgumentTypeError("--scale needs at least one positive integer")
    return scales


def _run_scale(scale: int, args: argparse.Namespace, remote: dict[str, int]) -> tuple[int, dict[str, Any], str]:
    """One cluster at ``scale``: set up, rounds (within the budget), summary; everything removed after."""
    workdir = Path(tempfile.mkdtemp(prefix="aegis-bench-"))
    workdir.chmod(0o755)
    bench = Bench(scale, workdir, args.pgbackrest_processes, _pairs(args.aegis_env, "--aegis-env"), remote,
                  args.restore_via)
    bench.cleanups.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
    try:
        bench.facts["load_start"] = os.getloadavg()
        bench.setup()
        began = time.monotonic()
        rounds = 0
        while rounds < args.rounds:
            elapsed = time.monotonic() - began
            if rounds and args.budget_minutes is not None and elapsed / rounds + elapsed > args.budget_minutes * 60:
                bench.log(f"scale {scale}: {rounds} round(s) in {elapsed:.0f} s; another would pass the "
                          f"{args.budget_minutes:g}-minute budget")
                break
            rounds += 1
            if args.rounds > 1:
                bench.log(f"scale {scale}: round {rounds}/{args.rounds}")
            bench.floor()
            bench.aegis_backup()
            bench.aegis_backup_local()
            bench.pgbackrest_backup()
            bench.aegis_restore()
            bench.pgbackrest_restore()
        bench.facts["load_end"] = os.getloadavg()
        bench.facts["rounds"] = rounds
        s = summary(bench)
        v = verdicts(s)
        result = {
            "scale": scale, "rounds": rounds, "facts": bench.facts, "summary": s, "ratios": v,
            "runs": {k: [asdict(r) for r in runs] for k, runs in bench.steps.items()},
            "aegis_env": bench.aegis_extra_env, "remote_options": remote, "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return 0, result, render(bench, s, v, rounds)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130, {}, ""
    except (BenchError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None)
        print(f"bench failed: {exc}" + (f"\n{detail!r}" if detail else ""), file=sys.stderr)
        return 1, {}, ""
    finally:
        bench.cleanup()


def growth(results: list[dict[str, Any]]) -> str:
    """How time and memory grow from the smallest scale to each larger one: linear time means the time
    ratio equals the tar-size ratio; flat memory means the peak RSS stays the same."""
    base = results[0]
    lines = [f"how cost grows (against scale {base['scale']}; tar size ratio beside each step's time ratio):"]
    for r in results[1:]:
        size = r["facts"]["tar_bytes"] / base["facts"]["tar_bytes"]
        steps = ", ".join(f"{key} {r['summary'][key]['seconds'] / base['summary'][key]['seconds']:.2f}x"
                          for key in LABELS)
        rss = (f"Aegis peak RSS backup {base['ratios']['rss_backup_mib']:.1f} -> {r['ratios']['rss_backup_mib']:.1f} "
               f"MiB, restore {base['ratios']['rss_restore_mib']:.1f} -> {r['ratios']['rss_restore_mib']:.1f} MiB")
        mbps = {key: r["facts"]["tar_bytes"] / MB / r["summary"][key]["seconds"] for key in ("b", "c")}
        lines.append(f"  scale {r['scale']} ({r['rounds']} round(s)): tar {size:.2f}x; time {steps}; {rss}; "
                     f"streaming {mbps['b']:.0f} MB/s (Aegis) vs {mbps['c']:.0f} MB/s (pgBackRest)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
