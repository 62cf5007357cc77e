"""Re-protect after a failover: rebuild the old primary as a streaming standby of the new one.

What was decided where the issue is silent:

- **Where it runs.** ``pg_rewind`` and ``pg_basebackup`` write the old primary's data directory, so
  Aegis runs on the old primary's host (its ``control`` config: ``data_dir``, ``os_user``,
  ``pg_bin``); the server is stopped/started with ``pg_ctl`` as ``os_user``, or through the node's
  ``stop``/``start`` hooks when the config gives them.
- **Rewind or base backup.** ``pg_rewind`` needs ``wal_log_hints = on`` or data checksums on the old
  cluster; both are read from ``pg_controldata`` first. When neither is on — or ``pg_rewind`` fails
  — a fresh ``pg_basebackup -R`` is taken instead, into ``<data_dir>.aegis-reprotect-incoming-<stamp>``
  beside the old directory, which stays untouched until the copy is complete. Then the old directory
  is **moved aside** (renamed next to itself, never deleted; the output lists it under ``aside`` so that
  only an approved clean-up step removes it) and the copy renamed into its place.
- **A crash part-way** (the step is approved again and re-runs; ``step_key`` names it): a re-run lists
  again what an earlier attempt of the same step moved aside (the marker records the step), marks and
  lists an incomplete copy a killed ``pg_basebackup`` left (removed by the clean-up, not on the spot:
  an orphaned ``pg_basebackup`` may still be writing it), and when the crash fell between the two
  renames (no data directory) it first moves the complete copy into place. So nothing an attempt put
  aside is forgotten and a re-run never refuses a data directory it left half made.
- **A pg_rewind that never finished** (its process killed with Aegis's, or failed part-way) leaves a
  directory that may be unusable — pg_rewind's own documentation says to take a fresh backup then —
  and may already hold the new primary's configuration files. So before pg_rewind starts, the node's
  own files are saved in ``<data_dir>.aegis-reprotect-rewind.json`` (removed once the directory is
  good again); a re-run that finds it never rewinds again: it takes a fresh base backup (the damaged
  directory moved aside, as always) with the saved files. A pg_rewind of an earlier attempt that is
  still running on the directory (orphaned when Aegis was killed) makes the step refuse until it ended.
- **The node keeps its own configuration.** Both tools copy the new primary's ``postgresql.conf``,
  ``pg_hba.conf``, ``pg_ident.conf`` and ``postgresql.auto.conf`` (its port, its paths); the old
  node's own files are put back, then ``standby.signal`` and ``primary_conninfo`` are written.
- **No password in a file but one.** ``primary_conninfo`` holds the new primary's DSN without its
  password; when the DSN has one it goes into a 0600 passfile in the data directory (owned by
  ``os_user``), named by ``passfile=``. The tools get it the same way (``PGPASSFILE``), never in argv.
- **Proof.** The step succeeds only when the new primary's ``pg_stat_replication`` shows the rebuilt
  node (by its ``application_name``) ``streaming``; the evidence and the output carry the
  replication lag (bytes, and seconds when the server measured it).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from recovery.actions.base import Action, ActionError, Evidence, Progress, evidence
from recovery.actions.discard_aside import aside_mark, mark_aside
from recovery.actions.postgres import connect_action, is_in_recovery
from recovery.backup.restore.journal import Journal
from recovery.backup.restore.postgres import chown_to, last_line, os_user_ids, run_as
from recovery.backup.sources.postgres import pg_bin_dir, split_password
from statemachines.json_types import JsonObject

METHODS = ("pg_rewind", "base_backup")
CONFIG_FILES = ("postgresql.conf", "pg_hba.conf", "pg_ident.conf", "postgresql.auto.conf")
PASSFILE = "aegis-primary.pgpass"
START_LOG = "aegis-pg_ctl.log"
ASIDE_INFIX = ".aegis-reprotect-aside-"   # <data_dir>.aegis-reprotect-aside-<stamp>: the old directory, kept
INCOMING_INFIX = ".aegis-reprotect-incoming-"   # <data_dir>.aegis-reprotect-incoming-<stamp>: a copy being taken
# <data_dir>.aegis-reprotect-rewind.json: a pg_rewind under way and the node's own configuration files.
# Beside the directory, not in it: pg_rewind removes what the source does not have.
REWIND_JOURNAL = ".aegis-reprotect-rewind.json"
REWINDING = "rewinding"
_TOOL_TIMEOUT = 3600.0


@dataclass(frozen=True)
class NodeControl:
    """How Aegis reaches the node it rebuilds: its data directory, the OS user, the binaries, and
    optional ``stop``/``start`` actions (hooks) used instead of ``pg_ctl``."""

    data_dir: Path
    os_user: str = "postgres"
    pg_bin: Path | None = None
    stop: Action | None = None
    start: Action | None = None


@dataclass(frozen=True)
class Standby:
    """The replication facts of one standby as the primary sees them."""

    state: str
    lag_bytes: int | None
    lag_seconds: float | None


def application_name(label: str) -> str:
    """The ``application_name`` the rebuilt node streams under (how it is found in pg_stat_replication)."""
    return "aegis_" + re.sub(r"[^A-Za-z0-9_]", "_", label)[:50]


def pgpass_line(user: str, password: str) -> str:
    r"""One ``.pgpass`` line for ``user`` on any host/port/database (``:`` and ``\`` escaped)."""
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:{esc(user)}:{esc(password)}\n"


def rewind_running_on(data_dir: Path) -> int | None:
    """The pid of a pg_rewind whose target is ``data_dir`` (an earlier attempt's, orphaned by a crash), if any."""
    target = str(data_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if argv and Path(argv[0]).name == "pg_rewind" and target in argv:
            return int(entry.name)
    return None


def _conf_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class PostgresReprotect(Action):
    """Rebuild ``old`` (stopped first) as a streaming standby of the primary at ``new_primary_dsn``."""

    kind = "postgres_reprotect"
    destructive = True

    def __init__(self, old: NodeControl, old_label: str, new_primary_dsn: str, new_label: str, *,
                 method: str = "pg_rewind", stream_timeout: float = 120.0, poll: float = 0.2,
                 step_key: str = "") -> None:
        if method not in METHODS:
            raise ActionError(f"unknown re-protect method {method!r}: use {' or '.join(METHODS)}")
        self.old = old
        self.old_label = old_label
        self.new_dsn = new_primary_dsn
        self.new_label = new_label
        self.method = method
        self.stream_timeout = float(stream_timeout)
        self.poll = poll
        self.bin = pg_bin_dir(old.pg_bin)
        self.app = application_name(old_label)
        self.owner = os_user_ids(old.os_user)
        self.observed: list[Evidence] = []
        self.step_key = step_key   # "<incident>#<step>": what this step moved aside, found again after a crash

    def describe(self) -> str:
        return (f"Rebuild {self.old_label} ({self.old.data_dir}) as a streaming standby of {self.new_label} "
                f"({'pg_rewind, else a fresh base backup' if self.method == 'pg_rewind' else 'fresh base backup'})")

    # --- checks ---------------------------------------------------------------------------------

    def precheck(self) -> None:
        with connect_action(self.new_dsn, self.new_label) as conn:
            if is_in_recovery(conn):
                raise ActionError(f"{self.new_label} is still a standby: promote it before re-protecting")
        if not (self.old.data_dir / "PG_VERSION").is_file() and self._complete_copy() is None:
            raise ActionError(f"{self.old.data_dir} is not a PostgreSQL data directory "
                              f"(no PG_VERSION): check components.postgres.*.control.data_dir")
        for tool in ("pg_ctl", "pg_rewind", "pg_basebackup", "pg_controldata"):
            if not (self.bin / tool).is_file():
                raise ActionError(f"{tool} not found in {self.bin}: set control.pg_bin or AEGIS_PG_BIN")

    def rewind_possible(self) -> tuple[bool, str]:
        """Whether the old cluster can be rewound: wal_log_hints or data checksums (pg_controldata)."""
        proc = self._tool(["pg_controldata", "-D", str(self.old.data_dir)])
        if proc.returncode != 0:
            return False, f"pg_controldata failed: {last_line(proc.stderr)}"
        fields = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
        hints = fields.get("wal_log_hints setting", "").strip() == "on"
        checksums = fields.get("Data page checksum version", "0").strip() not in ("", "0")
        if hints or checksums:
            return True, "wal_log_hints on" if hints else "data checksums on"
        return False, "neither wal_log_hints nor data checksums is on, so pg_rewind cannot be used"

    # --- the work -------------------------------------------------------------------------------

    def execute(self, progress: Progress) -> JsonObject:
        orphan = rewind_running_on(self.old.data_dir)
        if orphan is not None:
            raise ActionError(f"pg_rewind (pid {orphan}) of an earlier attempt is still running on "
                              f"{self.old.data_dir}: wait until it has ended (or stop it), then Retry; "
                              "nothing was changed")
        self._finish_interrupted_swap(progress)
        earlier = self._left_by_earlier_attempts(progress)
        own_config = self._interrupted_rewind()
        self._stop_old(progress)
        method, why, aside = self.method, "", None
        if own_config is not None:
            method, why = "base_backup", ("an earlier attempt's pg_rewind did not finish, and a directory pg_rewind "
                                          "left half done may be unusable: took a fresh base backup")
            progress(f"{self.old_label}: {why}")
        elif method == "pg_rewind":
            possible, why = self.rewind_possible()
            if possible:
                failure = self._rewind(progress)
                if failure:
                    method, why = "base_backup", f"pg_rewind failed ({failure}): took a fresh base backup"
            else:
                method = "base_backup"
            progress(f"{self.old_label}: {why}")
        if method == "base_backup":
            aside = self._base_backup(progress, own_config)
        self._rewind_journal().path.unlink(missing_ok=True)   # the directory is a whole one again
        self._make_standby()
        self._start_old(progress)
        standby = self._wait_streaming(progress)
        output: JsonObject = {
            "method": method, "method_reason": why, "standby": self.old_label, "primary": self.new_label,
            "application_name": self.app, "state": standby.state,
            "lag_bytes": standby.lag_bytes, "lag_seconds": standby.lag_seconds,
            "aside": [{"kind": "postgres_data_dir", "location": str(path), "component": "postgres"}
                      for path in [*earlier, *([aside] if aside else [])]],
            "evidence": self.observed,
        }
        return output

    def _tool(self, argv: list[str], *, password_file: Path | None = None,
              timeout: float = _TOOL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL binary as the node's OS user with a minimal environment."""
        env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"}
        if password_file is not None:
            env["PGPASSFILE"] = str(password_file)
        cwd = self.old.data_dir.parent if self.old.data_dir.parent.is_dir() else Path("/")
        try:
            return subprocess.run([str(self.bin / argv[0]), *argv[1:]], capture_output=True, text=True,
                                  check=False, env=env, timeout=timeout, cwd=cwd, **run_as(self.old.os_user))
        except subprocess.TimeoutExpired:
            raise ActionError(f"{argv[0]} did not finish within {timeout:g}s") from None

    def _running(self) -> bool:
        return self._tool(["pg_ctl", "-D", str(self.old.data_dir), "status"], timeout=30).returncode == 0

    def _stop_old(self, progress: Progress) -> None:
        if self.old.stop is not None:
            progress(f"{self.old_label}: stopping it ({self.old.stop.describe()})")
            self.old.stop.execute(progress)
            return
        if not self._running():
            progress(f"{self.old_label} is not running")
            return
        progress(f"{self.old_label} is running: stopping it (pg_ctl stop -m fast)")
        proc = self._tool(["pg_ctl", "-D", str(self.old.data_dir), "-m", "fast", "-w", "-t", "120", "stop"])
        if proc.returncode != 0:
            raise ActionError(f"could not stop {self.old_label}: {last_line(proc.stderr or proc.stdout)}")

    def _start_old(self, progress: Progress) -> None:
        if self.old.start is not None:
            progress(f"{self.old_label}: starting it as a standby ({self.old.start.describe()})")
            self.old.start.execute(progress)
            return
        progress(f"{self.old_label}: starting it as a standby of {self.new_label}")
        log_file = self.old.data_dir / START_LOG
        proc = self._tool(["pg_ctl", "-D", str(self.old.data_dir), "-l", str(log_file), "-w", "-t", "120", "start"])
        if proc.returncode != 0:
            raise ActionError(f"{self.old_label} did not start as a standby: {last_line(proc.stderr or proc.stdout)} "
                              f"(see {log_file})")

    def _with_passfile(self, run: Callable[[str, Path | None], subprocess.CompletedProcess[str]],
                       ) -> subprocess.CompletedProcess[str]:
        """Call ``run(conninfo without password, passfile or None)``; the passfile lives only meanwhile."""
        conninfo, password = split_password(self.new_dsn)
        if password is None:
            return run(conninfo, None)
        with tempfile.TemporaryDirectory(prefix="aegis-reprotect-") as tmp:
            folder = Path(tmp)
            chown_to(folder, self.owner)
            passfile = folder / "pgpass"
            self._write_owned(passfile, pgpass_line(self._user(), password))
            return run(conninfo, passfile)

    def _user(self) -> str:
        return str(conninfo_to_dict(self.new_dsn).get("user") or self.old.os_user)

    def _saved_config(self, data_dir: Path) -> dict[str, bytes]:
        return {name: (data_dir / name).read_bytes() for name in CONFIG_FILES if (data_dir / name).is_file()}

    def _put_config_back(self, saved: dict[str, bytes], *, into: Path | None = None) -> None:
        for name, content in saved.items():
            path = (into or self.old.data_dir) / name
            path.write_bytes(content)
            chown_to(path, self.owner)
            path.chmod(0o600)

    def _rewind(self, progress: Progress) -> str:
        """pg_rewind the old directory onto the new primary's timeline; "" on success, else the reason."""
        progress(f"{self.old_label}: pg_rewind from {self.new_label}")
        try:
            # a just-promoted primary's control file names its new timeline only after a checkpoint
            with connect_action(self.new_dsn, self.new_label) as conn:
                conn.execute("CHECKPOINT")
        except ActionError as exc:
            progress(f"{self.new_label}: CHECKPOINT before pg_rewind failed ({exc}); rewinding anyway")
        saved = self._saved_config(self.old.data_dir)
        self._write_rewind_journal(saved)
        proc = self._with_passfile(lambda conninfo, passfile: self._tool(
            ["pg_rewind", "--target-pgdata", str(self.old.data_dir), "--source-server", conninfo],
            password_file=passfile))
        self._put_config_back(saved)
        if proc.returncode != 0:
            return last_line(proc.stderr or proc.stdout)   # the journal stays: the base backup follows
        self.observed.append(evidence("pg_rewind", last_line(proc.stdout + proc.stderr), "done", True))
        return ""

    def _rewind_journal(self) -> Journal:
        return Journal(self.old.data_dir.with_name(self.old.data_dir.name + REWIND_JOURNAL))

    def _write_rewind_journal(self, config: dict[str, bytes]) -> None:
        """Before pg_rewind: record that it starts, with the node's own configuration files (0600)."""
        self._rewind_journal().restart(REWINDING, step=self.step_key, config={
            name: base64.b64encode(content).decode() for name, content in config.items()})

    def _interrupted_rewind(self) -> dict[str, bytes] | None:
        """The node's own configuration files a pg_rewind that never finished saved; None when none did.
        An unreadable journal still means an interrupted pg_rewind (with nothing saved)."""
        journal = self._rewind_journal()
        if not journal.path.exists():
            return None
        saved = journal.read().get("config")
        if not isinstance(saved, dict):
            return {}
        try:
            return {name: base64.b64decode(str(content), validate=True) for name, content in saved.items()
                    if name in CONFIG_FILES}
        except ValueError:   # a damaged journal: the base backup keeps whatever configuration it finds
            return {}

    def _base_backup(self, progress: Progress, own_config: dict[str, bytes] | None = None) -> Path:
        """pg_basebackup -R a fresh copy beside the old directory, then move the old one aside (never
        deleted) and the copy into its place; the aside path. ``own_config``: the node's configuration
        files an interrupted pg_rewind saved (the old directory's may be the new primary's by now)."""
        data_dir = self.old.data_dir
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")   # microseconds: a re-run never meets its own names
        incoming = data_dir.with_name(f"{data_dir.name}{INCOMING_INFIX}{stamp}")
        incoming.mkdir(mode=0o700)
        chown_to(incoming, self.owner)
        progress(f"{self.old_label}: fresh base backup from {self.new_label} into {incoming} (pg_basebackup -R); "
                 f"{data_dir} stays as it is until the copy is complete")
        proc = self._with_passfile(lambda conninfo, passfile: self._tool(
            ["pg_basebackup", "-d", conninfo, "-D", str(incoming), "-X", "stream", "-R", "--checkpoint=fast"],
            password_file=passfile))
        if proc.returncode != 0:
            shutil.rmtree(incoming, ignore_errors=True)   # our own incomplete copy, nobody's data
            raise ActionError(f"pg_basebackup from {self.new_label} failed: {last_line(proc.stderr)}; "
                              f"{data_dir} is untouched")
        self._put_config_back(own_config or self._saved_config(data_dir), into=incoming)
        aside = data_dir.with_name(f"{data_dir.name}{ASIDE_INFIX}{stamp}")
        progress(f"{self.old_label}: moving {data_dir} aside to {aside} and the fresh copy into its place")
        # marked before the rename: a crash between the two cannot leave an aside directory unmarked
        mark_aside(data_dir, original=data_dir, reason=f"re-protect of {self.old_label}: replaced by a base backup",
                   step=self.step_key)
        data_dir.rename(aside)
        incoming.rename(data_dir)
        self.observed.append(evidence("base backup", f"fresh copy of {self.new_label}; old directory kept at "
                                      f"{aside}", "a fresh copy, the old one kept", True))
        return aside

    # --- after a crash part-way -------------------------------------------------------------------

    def _siblings(self, infix: str) -> list[Path]:
        data_dir = self.old.data_dir
        parent = data_dir.parent
        return sorted(p for p in parent.glob(f"{data_dir.name}{infix}*") if p.is_dir()) if parent.is_dir() else []

    def _complete_copy(self) -> Path | None:
        """A finished base backup an interrupted attempt left beside a missing data directory, if any."""
        if self.old.data_dir.exists():
            return None
        done = [p for p in self._siblings(INCOMING_INFIX)
                if all((p / name).is_file() for name in ("PG_VERSION", "backup_manifest", "standby.signal"))]
        return done[-1] if done else None

    def _finish_interrupted_swap(self, progress: Progress) -> None:
        """A crash between moving the old directory aside and the copy into its place: finish the move."""
        copy = self._complete_copy()
        if copy is not None:
            progress(f"{self.old_label}: an interrupted re-protect left the data directory missing and a complete "
                     f"copy at {copy}: moving it into place")
            copy.rename(self.old.data_dir)

    def _left_by_earlier_attempts(self, progress: Progress) -> list[Path]:
        """What an interrupted attempt of this step put aside, and incomplete copies a killed pg_basebackup
        left (marked now, so that the clean-up may remove them): listed in this attempt's output."""
        found = [p for p in self._siblings(ASIDE_INFIX)
                 if self.step_key and (aside_mark(p) or {}).get("step") == self.step_key]
        for stale in self._siblings(INCOMING_INFIX):
            if aside_mark(stale) is None:
                mark_aside(stale, original=self.old.data_dir, step=self.step_key,
                           reason=f"re-protect of {self.old_label}: an interrupted attempt's incomplete base backup")
            found.append(stale)
        if found:
            progress(f"{self.old_label}: an interrupted attempt of this step left {', '.join(map(str, found))}; "
                     "kept for the clean-up")
        return found

    def _make_standby(self) -> None:
        """standby.signal and primary_conninfo (no password: a passfile when the DSN has one)."""
        data_dir = self.old.data_dir
        conninfo, password = split_password(self.new_dsn)
        extra: dict[str, str] = {"application_name": self.app}
        passfile = data_dir / PASSFILE
        if password is not None:
            self._write_owned(passfile, pgpass_line(self._user(), password))
            extra["passfile"] = str(passfile)
        else:
            passfile.unlink(missing_ok=True)
        auto = data_dir / "postgresql.auto.conf"
        kept = [line for line in (auto.read_text(encoding="utf-8").splitlines() if auto.is_file() else [])
                if not line.strip().startswith(("primary_conninfo", "primary_slot_name"))]
        kept.append(f"primary_conninfo = {_conf_string(make_conninfo(conninfo, **extra))}")
        self._write_owned(auto, "\n".join(kept) + "\n")
        (data_dir / "recovery.signal").unlink(missing_ok=True)
        self._write_owned(data_dir / "standby.signal", "")

    def _write_owned(self, path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o600)
        chown_to(path, self.owner)

    # --- the proof ------------------------------------------------------------------------------

    def standby_facts(self) -> Standby | None:
        """The rebuilt node's row in the new primary's pg_stat_replication (None: not connected)."""
        with connect_action(self.new_dsn, self.new_label) as conn:
            row = conn.execute(
                "SELECT state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,"
                " extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication"
                " WHERE application_name = %s ORDER BY backend_start DESC LIMIT 1", (self.app,)).fetchone()
        if row is None:
            return None
        lag_bytes = None if row[1] is None else int(row[1])
        # replay_lag is NULL once a standby has caught up and nothing was written since
        lag_seconds = float(row[2]) if row[2] is not None else (0.0 if lag_bytes == 0 else None)
        return Standby(str(row[0]), lag_bytes, lag_seconds)

    def _wait_streaming(self, progress: Progress) -> Standby:
        deadline = time.monotonic() + self.stream_timeout
        seen: Standby | None = None
        while True:
            seen = self.standby_facts()
            if seen is not None and seen.state == "streaming" and seen.lag_bytes is not None:
                break
            if time.monotonic() > deadline:
                state = seen.state if seen else "not connected"
                self.observed.append(evidence(f"{self.old_label} streams from {self.new_label}", state,
                                              "streaming", False))
                raise ActionError(f"{self.old_label} started but does not stream from {self.new_label} after "
                                  f"{self.stream_timeout:g}s ({state}); see {self.old.data_dir / START_LOG}")
            time.sleep(self.poll)
        lag = f"{seen.lag_bytes} bytes" + (f", {seen.lag_seconds:.3f} s" if seen.lag_seconds is not None else "")
        progress(f"{self.old_label} streams from {self.new_label}: replication lag {lag}")
        self.observed.append(evidence(f"{self.old_label} streams from {self.new_label} (pg_stat_replication)",
                                      f"{seen.state} as {self.app}", "streaming", True))
        self.observed.append(evidence("replication lag", lag, "reported", True))
        return seen

    def is_done(self) -> bool | None:
        """After a crash: done when the new primary sees the rebuilt node streaming."""
        try:
            seen = self.standby_facts()
        except ActionError:
            return None
        return seen is not None and seen.state == "streaming"

