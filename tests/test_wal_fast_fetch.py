"""The fast paths of ``restore_command`` (issue 12): ``aegis wal fetch %f %p`` served by a running
``aegis wal archiver``, the stdlib-only ``python -I -S …/client.py fetch %f %p``, and the lean path
(no archiver: yaml + sqlite3, no ORM or pydantic).

Each path must return the archived bytes, refuse a tampered copy with 255 (recovery stops; it never
reads as "absent"), and answer 1 ("absent") for a segment the archive does not have. Real processes,
a real local target and SQLite catalog; the segments are archived by ``aegis wal push``.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from recovery.backup.wal import client, commands, handoff
from tests.harness.aegis_process import wait_for

ROOT = Path(__file__).resolve().parents[1]
HANDOFF = ROOT / "recovery" / "backup" / "wal" / "client.py"
SEGMENT = "000000010000000000000042"
OTHER = "000000010000000000000043"
MISSING = "0000000100000000000000FF"


def environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "AEGIS_"))}
    env.update({"PYTHONPATH": str(ROOT), "AEGIS_CONFIG": str(work / "aegis.yaml"),
                "AEGIS_DATABASE_URL": f"sqlite:///{work}/aegis.db"})
    return env


def run(work: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=work / "data", env=environment(work), capture_output=True, text=True,
                          timeout=120)


def aegis(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(work, sys.executable, "-m", "bot.cli", *args)


def fast_client(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(work, sys.executable, "-I", "-S", str(HANDOFF), *args)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local target, a key file, a migrated SQLite catalog and two archived segments."""
    work = tmp_path_factory.mktemp("fastfetch")
    key = work / "backup.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    key.chmod(0o600)
    (work / "aegis.yaml").write_text(yaml.safe_dump({
        "storage": [{"kind": "local", "path": str(work / "archive"), "name": "local"}],
        "encryption": {"key_file": str(key)}}))
    pg_wal = work / "data" / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    assert aegis(work, "migrate").returncode == 0
    for name in (SEGMENT, OTHER):
        (pg_wal / name).write_bytes(os.urandom(256 * 1024) + bytes(3 * 256 * 1024))
        pushed = aegis(work, "wal", "push", f"pg_wal/{name}")
        assert pushed.returncode == 0, pushed.stderr
    return work


@pytest.fixture
def archiver(work: Path) -> Iterator[subprocess.Popen[str]]:
    log = open(work / "archiver.log", "w")   # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "bot.cli", "wal", "archiver", "--data-dir", str(work / "data")],
                               cwd=work, env=environment(work), stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: "listening on" in (work / "archiver.log").read_text() or process.poll() is not None,
                 timeout=60, what="the archiver to listen")
        assert process.poll() is None, (work / "archiver.log").read_text()
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def stored(work: Path, name: str) -> Path:
    return work / "archive" / "wal" / f"{name}.zst.aes"


def check_paths(work: Path, fetch: list[str]) -> None:
    """Right bytes, absent, and two kinds of tampering, through the command ``fetch`` + [%f, %p]."""
    pg_wal = work / "data" / "pg_wal"
    dest = pg_wal / "RECOVERYXLOG"
    dest.unlink(missing_ok=True)
    runner = fast_client if fetch[0] == "handoff" else aegis
    args = fetch[1:]

    good = runner(work, *args, SEGMENT, "pg_wal/RECOVERYXLOG")
    assert good.returncode == 0, good.stderr
    assert dest.read_bytes() == (pg_wal / SEGMENT).read_bytes()
    dest.unlink()

    absent = runner(work, *args, MISSING, "pg_wal/RECOVERYXLOG")
    assert absent.returncode == commands.FETCH_ABSENT_EXIT, absent.stderr
    assert not dest.exists()

    original = stored(work, SEGMENT).read_bytes()
    try:
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01          # one bit of ciphertext: its AES-GCM tag fails
        stored(work, SEGMENT).write_bytes(bytes(flipped))
        damaged = runner(work, *args, SEGMENT, "pg_wal/RECOVERYXLOG")
        assert damaged.returncode == commands.FETCH_ERROR_EXIT, damaged.stderr
        assert not dest.exists() and not list(pg_wal.glob(".RECOVERYXLOG.*"))   # nothing half-written

        # another segment's genuine ciphertext under this name: authentic chunks, the wrong segment
        stored(work, SEGMENT).write_bytes(stored(work, OTHER).read_bytes())
        swapped = runner(work, *args, SEGMENT, "pg_wal/RECOVERYXLOG")
        assert swapped.returncode == commands.FETCH_ERROR_EXIT, swapped.stderr
        assert not dest.exists()
    finally:
        stored(work, SEGMENT).write_bytes(original)


def test_exit_codes_agree_with_the_commands_module() -> None:
    assert client.FETCH_RESTORED == handoff.FETCH_RESTORED == 0
    assert client.FETCH_ABSENT == handoff.FETCH_ABSENT == commands.FETCH_ABSENT_EXIT
    assert client.FETCH_ERROR == handoff.FETCH_ERROR == commands.FETCH_ERROR_EXIT
    assert client.PUSH_FAILED == handoff.PUSH_FAILED == commands.PUSH_FAILED_EXIT


def test_the_lean_path_without_an_archiver(work: Path) -> None:
    assert not (work / "data" / "pg_wal" / handoff.DEFAULT_SOCKET_NAME).exists()
    check_paths(work, ["aegis", "wal", "fetch"])


def test_the_stdlib_client_without_an_archiver_runs_the_full_command(work: Path) -> None:
    check_paths(work, ["handoff", "fetch"])


def test_fetch_served_by_the_archiver(work: Path, archiver: subprocess.Popen[str]) -> None:
    for fetch in (["aegis", "wal", "fetch"], ["handoff", "fetch"]):
        check_paths(work, fetch)
    log = (work / "archiver.log").read_text()
    # the archiver did the fetching (restored twice; the damaged copies refused there, not by a fallback)
    assert log.count(f"archiver: fetched {SEGMENT} (restored)") == 2, log
    assert log.count(f"archiver: fetch of {SEGMENT} failed") == 4, log
    assert f"fetched {MISSING} (absent)" in log


def test_the_stdlib_client_imports_only_the_standard_library(work: Path, archiver: subprocess.Popen[str]) -> None:
    """``python -I -S client.py`` loads nothing outside the standard library on either command."""
    dest = work / "data" / "pg_wal" / "RECOVERYXLOG"
    dest.unlink(missing_ok=True)
    for args in (["fetch", SEGMENT, "pg_wal/RECOVERYXLOG"], ["push", f"pg_wal/{SEGMENT}"]):
        # the script run as PostgreSQL runs it, then every module it left in sys.modules
        probe = (f"import runpy, sys; sys.argv = {[str(HANDOFF), *args]!r}\n"
                 f"try:\n    runpy.run_path({str(HANDOFF)!r}, run_name='__main__')\n"
                 "except SystemExit as exc:\n    print('exit', exc.code, file=sys.stderr)\n"
                 "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
        done = run(work, sys.executable, "-I", "-S", "-c", probe)
        assert done.returncode == 0 and "exit 0" in done.stderr, done.stderr
        loaded = set(done.stdout.split())
        assert "socket" in loaded   # the measurement saw the client's own imports
        assert loaded <= set(sys.stdlib_module_names) | {"__main__"}, sorted(loaded - set(sys.stdlib_module_names))
        assert "by the archiver" in done.stderr or args[0] == "fetch", done.stderr
    assert dest.read_bytes() == (work / "data" / "pg_wal" / SEGMENT).read_bytes()


def test_the_archiver_and_config_check_print_the_fastest_lines(work: Path, archiver: subprocess.Popen[str]) -> None:
    env = f"AEGIS_CONFIG={work}/aegis.yaml AEGIS_DATABASE_URL=sqlite:///{work}/aegis.db"
    push = f"{env} {sys.executable} -I -S {HANDOFF} push %p"
    fetch = f"{env} {sys.executable} -I -S {HANDOFF} fetch %f %p"
    log = (work / "archiver.log").read_text()
    assert f"fastest archive_command = '{push}'" in log and f"fastest restore_command = '{fetch}'" in log, log
    checked = aegis(work, "config", "check")
    assert checked.returncode == 0, checked.stderr
    assert f"archive_command = '{push}'" in checked.stdout and f"restore_command = '{fetch}'" in checked.stdout
    assert "KEY" not in checked.stdout and "backup.key" not in checked.stdout   # no key in pg_settings
    # the printed line works as PostgreSQL runs it (a shell in the data directory, %p relative)
    line = push.replace("%p", f"pg_wal/{SEGMENT}")
    done = subprocess.run(line, shell=True, cwd=work / "data", capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("AEGIS_")})
    assert done.returncode == 0 and "already archived by the archiver" in done.stderr, done.stderr
