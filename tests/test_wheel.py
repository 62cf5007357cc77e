"""The package as a user installs it: ``python -m build`` makes a wheel, a clean venv installs it with
constraints.txt (runtime dependencies only, no extras), and the installed ``aegis`` — run from a
directory outside the checkout, so nothing can come from the source tree — prints its version,
checks a config, finds its migrations, and serves the embedded default (bot and built-in emulator).

Every data file of the packages (templates, migrations, emulator assets, the Slack manifest) must
be in the wheel: a file added to a package without a matching ``package-data`` glob fails here.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.harness.aegis_process import wait_for
from tests.harness.pgcluster import free_port

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
MIGRATION_VERSIONS = Path("statemachines", "migrations", "versions")
SKIPPED_PARTS = {"__pycache__"}


def package_roots() -> list[str]:
    """The top-level packages the wheel ships (``packages.find`` includes, ``bot*`` → ``bot``)."""
    includes = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.rstrip("*").rstrip(".") for pattern in includes})


def source_files(tree: Path) -> set[str]:
    """Every file under the package roots of ``tree``, as a path inside the wheel (``bot/cli/main.py``)."""
    found = set()
    for root in package_roots():
        for path in (tree / root).rglob("*"):
            relative = path.relative_to(tree)
            if path.is_file() and not SKIPPED_PARTS & set(relative.parts) and path.suffix != ".pyc":
                found.add(relative.as_posix())
    return found


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)


def clean_env(home: Path) -> dict[str, str]:
    """No AEGIS_*/SLACK_* settings and no PYTHONPATH: the installed package alone, on its defaults."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("AEGIS_", "SLACK_", "PYTHON", "VIRTUAL_ENV"))}
    return {**keep, "HOME": str(home), "PYTHONUNBUFFERED": "1"}


def build_wheel(out: Path) -> tuple[Path, Path]:
    """``python -m build --wheel`` on a copy of the package sources (concurrent builds in the shared
    tree would race over build/ and *.egg-info); the wheel and the copy it was built from."""
    src = out / "src"
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src)
    for root in package_roots():
        shutil.copytree(REPO / root, src / root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out / "dist"), str(src)],
                cwd=out, env=dict(os.environ))
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [wheel] = (out / "dist").glob("aegis_dr-*.whl")
    return wheel, src


@dataclass
class Installed:
    wheel: Path
    sources: Path    # the tree the wheel was built from
    aegis: Path      # the console script in the clean venv
    home: Path       # a directory outside the checkout: the cwd of every command
    env: dict[str, str]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    wheel, sources = build_wheel(base)
    venv = base / "venv"
    # no pip of its own (ensurepip costs seconds): this interpreter's pip installs into it (--python)
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base, env=dict(os.environ))
    assert made.returncode == 0, made.stderr
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    pip = run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
               "--disable-pip-version-check", str(wheel), "-c", str(REPO / "constraints.txt")],
              cwd=base, env=dict(os.environ), timeout=600)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    home = base / "home"
    home.mkdir()
    yield Installed(wheel, sources, venv / "bin" / "aegis", home, clean_env(home))


def test_wheel_holds_every_package_file(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    missing = sorted(source_files(installed.sources) - names)
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data]): {missing}"
    # the data files the running bot reads, named so a glob that matches nothing cannot pass unseen
    for needed in ("statemachines/migrations/env.py", "statemachines/migrations/script.py.mako",
                   "bot/slack_manifest.yaml", "slack_emulator/templates/page.html",
                   "messages/templates/en/", "messages/templates/ko/"):
        assert any(name.startswith(needed) for name in names), needed
    versions = (installed.sources / MIGRATION_VERSIONS).glob("*.py")
    assert {f"{MIGRATION_VERSIONS.as_posix()}/{p.name}" for p in versions} <= names


def test_installed_aegis_prints_its_version(installed: Installed) -> None:
    result = run([str(installed.aegis), "--version"], installed.home, installed.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"aegis {VERSION}"


def test_installed_aegis_checks_the_default_config(installed: Installed) -> None:
    result = run([str(installed.aegis), "config", "check"], installed.home, installed.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config OK: locale en"), result.stdout


def test_a_component_without_its_extra_is_refused_in_one_line(installed: Installed) -> None:
    """The runtime install has no Neo4j driver and no boto3: a config that needs them names the extra."""
    config = installed.home / "neo4j.yaml"
    config.write_text("components:\n  neo4j:\n    uri: bolt://127.0.0.1:7687\n"
                      "storage:\n  - kind: s3\n    bucket: backups\n")
    for command in (["config", "check"], ["serve", "--port", str(free_port()), "--emulator-port", str(free_port())]):
        result = run([str(installed.aegis), "--config", str(config), *command], installed.home, installed.env,
                     timeout=60)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 2 and "Traceback" not in result.stderr, lines
        assert "`components.neo4j` needs the 'neo4j' extra" in lines[0] and "aegis-dr[neo4j]" in lines[0], lines
        assert "`storage[0]` needs the 's3' extra" in lines[1] and "aegis-dr[s3]" in lines[1], lines


def test_installed_aegis_migrate_finds_its_migrations(installed: Installed) -> None:
    database = installed.home / "migrated.db"
    env = {**installed.env, "AEGIS_DATABASE_URL": f"sqlite:///{database}"}
    result = run([str(installed.aegis), "migrate"], installed.home, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "schema is up to date"
    # 0004_scheduled_claim.py → 0004
    newest = max(p.stem for p in (installed.sources / MIGRATION_VERSIONS).glob("*.py")).split("_")[0]
    with sqlite3.connect(database) as conn:
        [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert revision == newest
    assert {"timeline_event", "backup_catalog", "outbox"} <= tables, tables


def test_installed_aegis_serves_the_embedded_default(installed: Installed) -> None:
    port, emulator_port = free_port(), free_port()
    log = installed.home / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(installed.aegis), "serve", "--port", str(port), "--emulator-port",
                                 str(emulator_port)], cwd=installed.home, env=installed.env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _ok(f"http://127.0.0.1:{port}/healthz") or proc.poll() is not None, timeout=60,
                 what="the installed bot's /healthz")
        assert proc.poll() is None, log.read_text()
        page = requests.get(f"http://127.0.0.1:{emulator_port}/", timeout=10)
        assert page.status_code == 200 and "text/html" in page.headers["Content-Type"], page.status_code
        assert "<html" in page.text.lower() and "aegis" in page.text.lower()
        wait_for(lambda: f"open http://127.0.0.1:{emulator_port}/ in a browser" in log.read_text(), timeout=10,
                 what="the emulator URL on stdout")
        assert (installed.home / "aegis.db").exists()   # the embedded default's store, in the cwd
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0, log.read_text()


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False
