"""One run of the demo workspace: its config, and with ``--demo`` its clusters and sample service.

What a ``--demo`` run started is written to ``<data_dir>/aegis-demo.json`` before anything is started,
so a demo killed with SIGKILL leaves a record: the next demo start stops those servers and removes
their run directory before it starts new ones. ``close()`` (SIGINT, SIGTERM, a failed start) does the
same at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import tempfile
from pathlib import Path

from bot.config import Config, config_file
from bot.demo.config import DemoPostgres, data_directory, demo_config
from bot.demo.postgres import DemoCluster, DemoPostgresError, find_pg_bin
from bot.demo.service import SampleService
from recovery.backup.restore.in_place import pid_alive
from statemachines.json_types import JsonObject

log = logging.getLogger("aegis.demo")

STATE_FILE = "aegis-demo.json"
RUN_PREFIX = "aegis-demo-"
INSTALL_HINT = ("--demo: no PostgreSQL server binaries found (/usr/lib/postgresql/*/bin or AEGIS_PG_BIN); "
                "install them (Debian: `sudo apt-get install postgresql`) for a real primary and standby. "
                "Running the plain demo: its database steps are manual.")


class DemoError(Exception):
    """The demo cannot start as asked; one line saying why (printed by the CLI)."""


def _run_root() -> Path:
    # as root the clusters run as `postgres`, which must traverse the run directory's parents
    return Path("/tmp") if os.geteuid() == 0 else Path(tempfile.gettempdir())


def _is_run_dir(path: Path) -> bool:
    """Only a directory the demo itself made is ever removed (the state file could have been edited)."""
    return path.name.startswith(RUN_PREFIX) and path.parent in {Path("/tmp"), Path(tempfile.gettempdir())}


def remove_leftovers(data_dir: Path) -> list[str]:
    """Stop and remove what a killed demo of this data directory left; lines saying what was removed."""
    state_file = data_dir / STATE_FILE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        state = {}
    pid = int(state.get("pid") or 0)
    if pid and pid != os.getpid() and pid_alive(pid):
        raise DemoError(f"another Aegis demo (pid {pid}) is running on {data_dir}; stop it first "
                        f"(or remove {state_file} if that process is not Aegis)")
    done = []
    if state.get("cluster"):
        with contextlib.suppress(DemoPostgresError, KeyError, OSError):
            DemoCluster.from_state(state["cluster"]).stop()
            done.append("stopped the PostgreSQL servers of an earlier demo")
    run_dir = Path(str(state.get("run_dir") or ""))
    if state.get("run_dir") and _is_run_dir(run_dir) and run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        done.append(f"removed {run_dir}")
    state_file.unlink(missing_ok=True)
    return done


class DemoSession:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.run_dir: Path | None = None
        self.cluster: DemoCluster | None = None
        self.service: SampleService | None = None
        self.notices: list[str] = []

    @classmethod
    def start(cls, data_dir: Path, *, with_postgres: bool) -> DemoSession:
        session = cls(data_dir)
        session.notices += remove_leftovers(data_dir)
        if not with_postgres:
            return session
        pg_bin = find_pg_bin()
        if pg_bin is None:
            session.notices.append(INSTALL_HINT)
            return session
        try:
            session._start_postgres(pg_bin)
        except DemoPostgresError as exc:
            session.close()
            raise DemoError(f"--demo: cannot start the demo's PostgreSQL: {exc}") from None
        except BaseException:
            session.close()
            raise
        return session

    # --- starting --------------------------------------------------------------------------------

    def _start_postgres(self, pg_bin: Path) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=_run_root()))
        self.run_dir.chmod(0o755)
        self._save_state()   # first: a kill from here on leaves a record the next start cleans up
        self.cluster = DemoCluster.start(self.run_dir, pg_bin)
        self._save_state()
        # backups (`aegis backup run postgresql`) take pg_basebackup from the same build
        os.environ.setdefault("AEGIS_PG_BIN", str(pg_bin))
        traffic = self.run_dir / "orders-api.target"
        self.service = SampleService({"primary": self.cluster.primary.dsn(), "standby": self.cluster.standby.dsn()},
                                     traffic, stop_primary=lambda: self._stop_primary()).start()
        self._save_state()

    def _stop_primary(self) -> None:
        if self.cluster is not None:
            self.cluster.stop_node(self.cluster.primary)

    def _save_state(self) -> None:
        state: JsonObject = {"pid": os.getpid(), "run_dir": str(self.run_dir)}
        if self.cluster is not None:
            state["cluster"] = self.cluster.to_state()
        if self.service is not None:
            state["service_url"] = self.service.url
        path = self.data_dir / STATE_FILE
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        tmp.replace(path)

    def _hook_script(self, name: str, body: str) -> list[str]:
        assert self.run_dir is not None
        hooks = self.run_dir / "hooks"
        hooks.mkdir(mode=0o700, exist_ok=True)
        script = hooks / name
        script.write_text("#!/bin/sh\n" + body, encoding="utf-8")
        script.chmod(0o700)
        return [str(script)]

    def _fence_command(self, cluster: DemoCluster) -> list[str]:
        as_user = shlex.join(cluster.user.as_command())
        pg_ctl = shlex.quote(str(cluster.pg_bin / "pg_ctl"))
        data = shlex.quote(str(cluster.primary.data_dir))
        body = (f"# the demo's fence_primary hook: the old primary must not take writes, so stop it if it runs\n"
                f"set -u\ncd {shlex.quote(str(cluster.primary.data_dir.parent))}\n"
                f"if {as_user} {pg_ctl} -D {data} status >/dev/null 2>&1; then\n"
                f"  {as_user} {pg_ctl} -D {data} -m immediate -w -t 60 stop >/dev/null || exit 1\n"
                f"  echo 'stopped the demo primary'\n"
                f"else\n  echo 'the demo primary is not running'\nfi\n")
        return self._hook_script("fence-primary", body)

    def _traffic_command(self) -> list[str]:
        assert self.service is not None
        target = shlex.quote(str(self.service.target_file))
        body = ("# the demo's update_traffic hook: orders-api reads from the (promoted) standby from now on\n"
                f"set -eu\nprintf 'standby\\n' > {target}.tmp\nmv {target}.tmp {target}\n"
                "echo 'orders-api now reads from the demo standby'\n")
        return self._hook_script("update-traffic", body)

    # --- what the bot uses -----------------------------------------------------------------------

    def config(self) -> Config:
        if self.cluster is None or self.service is None:
            return demo_config(self.data_dir)
        return demo_config(self.data_dir, DemoPostgres(
            primary_dsn=self.cluster.primary.dsn(), standby_dsn=self.cluster.standby.dsn(),
            health_url=self.service.url + "/healthz", fence_command=self._fence_command(self.cluster),
            traffic_command=self._traffic_command()))

    def banner(self) -> list[str]:
        """Lines for the terminal: what the demo started and how to walk it."""
        if self.cluster is None or self.service is None:
            return ["Demo workspace: the emulator's users hold the roles (ic.kim commands, db.lee approves); "
                    "no PostgreSQL is running, so the plan's database steps are manual"]
        primary, standby = self.cluster.primary, self.cluster.standby
        return [
            f"Demo PostgreSQL: primary on port {primary.port}, streaming standby on port {standby.port} "
            f"(psql \"{standby.dsn()}\")",
            f"Demo service orders-api: {self.service.url}/ (press 'Stop the primary' there, then declare "
            "database_failure in the emulator as ic.kim)",
        ]

    # --- stopping --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the sample service and the clusters, remove the run directory and the state file."""
        if self.service is not None:
            self.service.stop()
            self.service = None
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None
            (self.data_dir / STATE_FILE).unlink(missing_ok=True)


def open_demo(config_arg: str | None, *, slack_configured: bool, with_postgres: bool,
              store_url: str) -> tuple[DemoSession | None, list[str]]:
    """The demo for ``aegis serve`` (``--demo``: ``with_postgres``), or None when a config file or real
    Slack credentials are in use; and lines for the terminal. A real config file always wins."""
    file = config_file(config_arg)
    if slack_configured:
        if with_postgres:
            raise DemoError("--demo runs only on the built-in emulator: unset SLACK_BOT_TOKEN to use it")
        return None, []
    if file is not None:
        return None, ([f"--demo is ignored: the config file {file} is used (move it away to run the demo)"]
                      if with_postgres else [])
    session = DemoSession.start(data_directory(store_url), with_postgres=with_postgres)
    return session, session.notices
