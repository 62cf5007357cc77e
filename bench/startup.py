"""How fast one-shot ``aegis`` commands start and end (issue 12: "one-shot commands start in a blink").

Each command runs as a fresh process, the way a shell, ``archive_command`` or ``restore_command`` runs
it, ``--rounds`` times (default 7) interleaved with the others, and the wall time from spawn to exit
is taken:

- ``python -c pass``: the floor, the same interpreter starting and ending with nothing to do;
- ``aegis --help`` and ``aegis --version``: the parser only;
- ``aegis config check``: the config loader on a config with a local storage target;
- ``aegis wal fetch NAME DEST``: one archived 16 MiB segment fetched from a local target (decrypted,
  checked against the catalog's sha256, written to DEST), what PostgreSQL's restore_command does once
  per segment during recovery. The segment is archived by ``aegis wal push`` in the bench's setup.
  Three ways: with no archiver running (the lean path: yaml + sqlite3, no ORM or pydantic); with
  ``aegis wal archiver`` running beside the (pretend) data directory, DEST being ``pg_wal/RECOVERYXLOG``
  (the archiver decrypts it); and the stdlib-only client ``python -I -S …/client.py fetch`` to the same
  archiver (the fastest ``restore_command`` line the archiver prints).

``aegis`` is ``python -m bot.cli`` (the console script's entry, ``bot.cli.main:run``, fast exit
included) by default, or the executable given with ``--aegis``. The bench prints the machine's load
before and after, the median, min and max of each command, its ratio to the floor, and the goals:
``aegis --help`` ≤ 0.25 s, ``aegis wal fetch`` ≤ 0.3 s.

    python bench/startup.py                 # about 20 s
    python bench/startup.py --rounds 11
    python bench/startup.py --aegis .tools/server-venv/bin/aegis
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEGMENT = "000000010000000000000042"
SEGMENT_BYTES = 16 * 1024 * 1024
GOALS = {"aegis --help": 0.25, "aegis wal fetch": 0.3, "wal fetch, archiver": 0.3, "client.py fetch": 0.3}
HANDOFF = ROOT / "recovery" / "backup" / "wal" / "client.py"


def _environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AEGIS_", "SLACK_"))}
    env.update({"PYTHONPATH": str(ROOT), "AEGIS_CONFIG": str(work / "aegis.yaml"),
                "AEGIS_DATABASE_URL": f"sqlite:///{work / 'aegis.db'}",
                "AEGIS_BACKUP_KEY": base64.b64encode(os.urandom(32)).decode()})
    return env


def _set_up(work: Path, aegis: list[str], env: dict[str, str]) -> None:
    """A config with one local target, a migrated store and one archived segment."""
    (work / "archive").mkdir()
    (work / "aegis.yaml").write_text(f"locale: en\nstorage:\n  - kind: local\n    path: {work / 'archive'}\n"
                                     "    name: local\n")
    for command in (["migrate"], ["wal", "push", str(_segment(work))]):
        done = subprocess.run([*aegis, *command], env=env, cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"setup: aegis {' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")


def _segment(work: Path) -> Path:
    """A WAL segment as PostgreSQL hands it over: <data dir>/pg_wal/<name>, 16 MiB, not all zeros."""
    pg_wal = work / "data" / "pg_wal"
    pg_wal.mkdir(parents=True)
    path = pg_wal / SEGMENT
    block = os.urandom(64 * 1024)
    with path.open("wb") as out:
        for i in range(SEGMENT_BYTES // len(block)):
            out.write(block if i % 4 == 0 else bytes(len(block)))
    return path


def _timed(argv: list[str], env: dict[str, str], cwd: Path, expect: int = 0) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if done.returncode != expect:
        sys.exit(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.decode(errors='replace').strip()}")
    return seconds


def _start_archiver(work: Path, aegis: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``aegis wal archiver`` beside ``work/data`` (its socket: data/pg_wal/aegis-archiver.sock)."""
    (work / "data" / "pg_wal" / "archive_status").mkdir(exist_ok=True)
    log = open(work / "archiver.log", "wb")   # noqa: SIM115 - lives as long as the process
    archiver = subprocess.Popen([*aegis, "wal", "archiver", "--data-dir", str(work / "data")], env=env, cwd=work,
                                stdout=log, stderr=subprocess.STDOUT)
    sock = work / "data" / "pg_wal" / "aegis-archiver.sock"
    deadline = time.monotonic() + 60
    while not sock.exists():
        if archiver.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"setup: aegis wal archiver did not start: {(work / 'archiver.log').read_text()[-500:]}")
        time.sleep(0.05)
    return archiver


def _python_of(aegis: list[str]) -> str:
    """The interpreter that runs ``aegis`` (the console script's venv python, or this one)."""
    if len(aegis) == 1 and (Path(aegis[0]).parent / "python").exists():
        return str(Path(aegis[0]).parent / "python")
    return sys.executable


def _commands(aegis: list[str], work: Path) -> dict[str, Callable[[], list[str]]]:
    def fetch() -> list[str]:
        dest = work / "restored" / SEGMENT
        dest.unlink(missing_ok=True)   # restore_command writes a file that is not there yet
        return [*aegis, "wal", "fetch", SEGMENT, str(dest)]

    def recoveryxlog() -> Path:
        dest = work / "data" / "pg_wal" / "RECOVERYXLOG"
        dest.unlink(missing_ok=True)
        return dest

    def fetch_archiver() -> list[str]:
        return [*aegis, "wal", "fetch", SEGMENT, str(recoveryxlog())]

    def fetch_handoff() -> list[str]:
        return [_python_of(aegis), "-I", "-S", str(HANDOFF), "fetch", SEGMENT, str(recoveryxlog())]

    return {
        "python -c pass": lambda: [sys.executable, "-c", "pass"],
        "aegis --help": lambda: [*aegis, "--help"],
        "aegis --version": lambda: [*aegis, "--version"],
        "aegis config check": lambda: [*aegis, "config", "check"],
        "aegis wal fetch": fetch,
        "wal fetch, archiver": fetch_archiver,
        "client.py fetch": fetch_handoff,
    }


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="runs of each command (median; default 7)")
    parser.add_argument("--aegis", help="an aegis executable (default: python -m bot.cli)")
    args = parser.parse_args()
    # the commands run in a temporary directory: a relative --aegis is taken from here
    aegis = [str(Path(args.aegis).absolute()) if "/" in args.aegis else args.aegis] if args.aegis \
        else [sys.executable, "-m", "bot.cli"]
    work = Path(tempfile.mkdtemp(prefix="aegis-startup-"))
    archiver: subprocess.Popen[bytes] | None = None
    try:
        env = _environment(work)
        (work / "restored").mkdir()
        _set_up(work, aegis, env)
        archiver = _start_archiver(work, aegis, env)
        commands = _commands(aegis, work)
        for build in commands.values():   # warm the page cache and the bytecode once, untimed
            _timed(build(), env, work)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; aegis = {' '.join(aegis)}")
        print(f"load before: {_load()}")
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):      # interleaved, so a burst of other load hits every command alike
            for name, build in commands.items():
                times[name].append(_timed(build(), env, work))
        print(f"load after:  {_load()}")
        floor = statistics.median(times["python -c pass"])
        print(f"\n{'command':<22} {'median':>8} {'min':>7} {'max':>7} {'× floor':>8}  goal")
        for name, values in times.items():
            median = statistics.median(values)
            goal = GOALS.get(name)
            verdict = "" if goal is None else f"≤ {goal:.2f} s: {'met' if median <= goal else 'MISSED'}"
            print(f"{name:<22} {median:8.3f} {min(values):7.3f} {max(values):7.3f} {median / floor:8.1f}  {verdict}")
        print(f"\n{args.rounds} rounds each, seconds from spawn to exit; 'aegis wal fetch': no archiver "
              "running (the lean path); 'wal fetch, archiver' and 'client.py fetch': served by aegis wal archiver")
        return 0
    finally:
        if archiver is not None and archiver.poll() is None:
            archiver.terminate()
            archiver.wait(60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
