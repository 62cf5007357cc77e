"""Restore a ``pg_basebackup`` tar stream into a fresh data directory and start it.

Used for restore tests (drills), verification copies and point-in-time recovery. The tar is read
as a stream (``untar``: one header and one reused buffer at a time), so a backup coming out of
decryption is never held in memory or staged whole on disk before extraction. An existing data
directory is never touched: in-place restore of a production server with rollback (C4) is a
separate step built on top of this.

The restored copy is isolated from production: it listens on 127.0.0.1 and its own socket
directory and port, ``archive_mode = off`` (it must never push into the production archive —
after a PITR promotion it is on a new timeline whose history would otherwise mix in), and
``synchronous_standby_names = ''`` (commits must not wait for production standbys).

It is not open to every local user either (a restored copy holds production data): Aegis always
writes its own ``pg_hba.conf`` — no ``trust``, no TCP entry, only ``peer`` over the socket for the
OS users in its ``pg_ident.conf`` map (the server's user and the user who ran the restore) — and
the socket directory is ``0700``, owned by the server's OS user. Paths land in configuration
files quoted for them (``_conf_value``, ``_socket_dirs_value``) and the DSN is built by libpq's
rules (``make_conninfo``), so a data directory with a space or a quote in its name works.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal, TypedDict, Unpack, get_args

import psycopg
from psycopg.conninfo import make_conninfo

from recovery.backup.restore import untar
from recovery.backup.sources.postgres import pg_bin_dir
from recovery.redact import redact

PG_OS_USER = "postgres"
RESTORING_SUFFIX = ".aegis-restoring"   # <data_dir>.aegis-restoring: a one-pass restore before its move
TargetAction = Literal["promote", "pause"]
TARGET_ACTIONS: tuple[TargetAction, ...] = get_args(TargetAction)
# Files whose presence marks a pg_basebackup data directory; anything else is not restorable.
_REQUIRED = ("PG_VERSION", "global/pg_control", "backup_label")
# Left behind by the source server or its role; a restored copy must decide these itself.
_STALE = ("postmaster.pid", "postmaster.opts", "standby.signal", "recovery.signal")
_HBA = """\
# Written by Aegis for a restored copy of production data: no trust, no TCP. Only peer
# authentication over the private (0700) socket directory, for the OS users mapped in pg_ident.conf.
local   all   all   peer map=aegis
"""
IDENT_MAP = "aegis"
# pg_ctl runs the server through a shell with paths in double quotes; these would break out of them.
_UNSAFE_FOR_PG_CTL = re.compile(r'["`$\\\n]')
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path, minus the terminating NUL


class RestoreError(RuntimeError):
    """A base backup could not be restored or the restored server did not come up (redacted)."""


@dataclass
class RestoredCluster:
    """A running PostgreSQL started from a restored base backup."""

    data_dir: Path
    port: int
    socket_dir: Path
    log_file: Path
    pg_bin: Path
    db_user: str = "postgres"
    os_user: str = PG_OS_USER

    @property
    def dsn(self) -> str:
        """libpq DSN over the private socket (values quoted by libpq's rules: paths may hold spaces/quotes)."""
        return make_conninfo("", host=str(self.socket_dir), port=str(self.port), user=self.db_user,
                             dbname="postgres")

    @property
    def access(self) -> str:
        """How a person connects: peer authentication as the server's OS user over the 0700 socket dir."""
        return f"as the OS user {self.os_user} (peer authentication over the private socket directory)"

    def _pg_ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.pg_bin / "pg_ctl"), "-D", str(self.data_dir), *args],
            capture_output=True, text=True, timeout=timeout, check=False, cwd=self.data_dir,
            **run_as(self.os_user),
        )

    def is_running(self) -> bool:
        return self.data_dir.is_dir() and self._pg_ctl("status").returncode == 0

    def stop(self, mode: str = "fast") -> None:
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}")
        if not self.is_running():
            return
        proc = self._pg_ctl("-m", mode, "-w", "-t", "60", "stop")
        if proc.returncode != 0:
            raise RestoreError(f"pg_ctl stop failed: {redact(proc.stderr.strip())}")

    def destroy(self) -> None:
        """Stop the server (immediately: it is a throwaway copy) and delete its data and log."""
        if self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return redact(self.log_file.read_text(errors="replace")[-chars:])
        except OSError:
            return ""


def os_user_ids(os_user: str) -> tuple[int, int] | None:
    """uid/gid to hand files to when running as root; None when we already are that user."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(os_user)
    return entry.pw_uid, entry.pw_gid


class _AsUser(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]


class _RunOptions(_AsUser, total=False):
    cwd: Path
    timeout: float


def run_as(os_user: str) -> _AsUser:
    """subprocess kwargs that drop from root to ``os_user`` (postgres refuses to run as root)."""
    owner = os_user_ids(os_user)
    if owner is None:
        return {}
    return {"user": owner[0], "group": owner[1], "extra_groups": []}


def chown_to(path: Path | int, owner: tuple[int, int] | None) -> None:
    if owner is None:
        return
    if isinstance(path, int):
        os.fchown(path, *owner)
    else:
        os.chown(path, *owner, follow_symlinks=False)


def check_reachable(path: Path, owner: tuple[int, int] | None) -> None:
    """Fail early (not in a cryptic pg_ctl error) when the server user cannot traverse to ``path``."""
    if owner is None:
        return
    uid, gid = owner
    for parent in path.resolve().parents:
        if not parent.exists():
            continue  # created later, by us, for the server user
        st = parent.stat()
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            raise RestoreError(f"the postgres user cannot reach {path}: {parent} is not traversable for it")


def check_pg_ctl_path(path: Path, what: str) -> None:
    if _UNSAFE_FOR_PG_CTL.search(str(path)):
        raise RestoreError(f"the {what} path {str(path)!r} contains a character pg_ctl cannot pass on "
                           "(\", `, $, \\ or a newline); choose another path")


def _private_socket_dir(socket_dir: Path, owner: tuple[int, int] | None) -> None:
    """Create (or take over an empty) socket directory: 0700, owned by the server's OS user.

    A shared directory (``/tmp``, ``/run/postgresql``) would let every local user reach the socket,
    so a directory that already holds anything is refused rather than chmod-ed under others' feet.
    """
    if len(str(socket_dir)) + len("/.s.PGSQL.65535") > _SUN_PATH_MAX:
        raise RestoreError(f"socket directory {socket_dir} is too long for a unix socket path "
                           f"(at most {_SUN_PATH_MAX - 15} characters); give a shorter --socket-dir")
    if socket_dir.is_symlink() or (socket_dir.exists() and not socket_dir.is_dir()):
        raise RestoreError(f"socket directory {socket_dir} is not a directory")
    if socket_dir.exists() and any(socket_dir.iterdir()):
        raise RestoreError(f"socket directory {socket_dir} is not empty (shared with something else?); "
                           "give a new directory, the restored server keeps it private (0700)")
    socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    chown_to(socket_dir, owner)
    socket_dir.chmod(0o700)


def _ident_users(os_user: str) -> list[str]:
    """OS users allowed in by peer: the server's user and whoever runs the restore (to check on it)."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    server_user = os_user if os.geteuid() == 0 else me  # not root: the server runs as we do
    return sorted({server_user, me})


def _check_no_trust(pg_hba: str) -> None:
    for line in pg_hba.splitlines():
        fields = line.split("#", 1)[0].split()
        if "trust" in (field.lower() for field in fields[3:]):
            raise RestoreError(f"refusing a pg_hba.conf with trust for a restored copy: {line.strip()!r}")


def _write_access_files(data_dir: Path, pg_hba: str | None, db_user: str, os_user: str,
                        owner: tuple[int, int] | None) -> None:
    """Aegis's own pg_hba.conf and pg_ident.conf, always: the backup's may say trust or admit the network."""
    hba = pg_hba if pg_hba is not None else _HBA
    _check_no_trust(hba)
    _write_owned(data_dir / "pg_hba.conf", hba, owner)
    ident = "".join(f"{IDENT_MAP}  {user}  {db_user}\n" for user in _ident_users(os_user))
    _write_owned(data_dir / "pg_ident.conf", f"# Written by Aegis: OS user -> database role (peer)\n{ident}", owner)


def prepare_data_dir(data_dir: Path, owner: tuple[int, int] | None) -> None:
    """Create ``data_dir`` or accept it if empty; anything else is refused, never overwritten."""
    if data_dir.is_symlink() or (data_dir.exists() and not data_dir.is_dir()):
        raise RestoreError(f"refusing to restore into {data_dir}: not a directory")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise RestoreError(f"refusing to restore into {data_dir}: it is not empty (an existing data directory?)")
    data_dir.mkdir(parents=True, exist_ok=True)
    chown_to(data_dir, owner)
    data_dir.chmod(0o700)  # PostgreSQL refuses a data directory readable by others


def extract_tar(tar_stream: BinaryIO, data_dir: Path, owner: tuple[int, int] | None) -> int:
    """Stream-extract regular files and directories only (``untar``); anything else is refused. Returns bytes."""
    try:
        return untar.extract(tar_stream, data_dir, owner)
    except untar.TarRefused as exc:
        raise RestoreError(str(exc)) from None


def _conf_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    # The config file parser unescapes backslashes (GUC_scanstr) and reads '' as one quote.
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def _socket_dirs_value(path: Path) -> str:
    """``unix_socket_directories`` is a comma/space separated list: one directory, double-quoted."""
    return '"' + str(path).replace('"', '""') + '"'


def shell_command(argv: list[str], *placeholders: str) -> str:
    """A shell command line for archive/restore_command: each word shlex-quoted, ``%`` doubled (PostgreSQL
    expands ``%f``/``%p`` in the string), then ``placeholders`` (e.g. ``%f``, ``%p``) appended as they are."""
    words = [shlex.quote(word).replace("%", "%%") for word in argv]
    return " ".join([*words, *placeholders])


def _write_owned(path: Path, text: str, owner: tuple[int, int] | None, append: bool = False) -> None:
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        f.write(text)
    chown_to(path, owner)
    path.chmod(0o600)


def run_command(argv: list[str], **kwargs: Unpack[_RunOptions]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return redact(lines[-1]) if lines else "(no output)"


def _check_major(data_dir: Path, bin_dir: Path) -> None:
    """The binaries must match the backup's major version; say so plainly instead of a startup FATAL."""
    backup_major = (data_dir / "PG_VERSION").read_text(encoding="ascii").strip()
    proc = run_command([str(bin_dir / "postgres"), "--version"])
    found = re.search(r"\)\s+(\d+)", proc.stdout)
    if found and found.group(1) != backup_major:
        raise RestoreError(f"backup is PostgreSQL {backup_major} but {bin_dir} has PostgreSQL {found.group(1)}")


def _verify_manifest(data_dir: Path, bin_dir: Path, skip_checksums: bool = False) -> None:
    """pg_verifybackup: every file's checksum and the WAL range against ``backup_manifest``.
    ``skip_checksums`` (``--skip-checksums``) keeps the file list, sizes and the WAL parse but not the
    re-reading of every byte: for a restore whose stream was authenticated end to end (every chunk's
    tag and the stored sha256), where the checksums would only repeat that."""
    if not (data_dir / "backup_manifest").exists():
        return
    skip = ["--skip-checksums"] if skip_checksums else []
    proc = run_command([str(bin_dir / "pg_verifybackup"), "--quiet", *skip, str(data_dir)], timeout=3600)
    if proc.returncode != 0:
        raise RestoreError(f"restored files fail verification against backup_manifest: {last_line(proc.stderr)}")


def _wait_ready(cluster: RestoredCluster, target_action: TargetAction, deadline: float) -> None:
    """Block until recovery is over (promote) or paused at the target (pause)."""
    query = (
        "SELECT NOT pg_is_in_recovery()"
        if target_action == "promote"
        else "SELECT pg_is_in_recovery() AND pg_get_wal_replay_pause_state() = 'paused'"
    )
    while True:
        try:
            with psycopg.connect(cluster.dsn, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute(query).fetchone()
            if row and row[0]:
                return
        except psycopg.OperationalError:
            # Connections fail while the server is still replaying; a dead postmaster is the real error.
            if not cluster.is_running():
                raise RestoreError(f"restored server stopped during recovery:\n{cluster.log_tail()}") from None
        if time.monotonic() > deadline:
            raise RestoreError(f"restored server did not finish recovery in time:\n{cluster.log_tail()}")
        time.sleep(0.2)


@dataclass(frozen=True)
class RestoreOptions:
    """How a restored PostgreSQL copy is configured, started and waited for (one set, for every restore).

    Without ``restore_command`` the server replays only the WAL inside the backup (crash recovery to
    the end of the backup). With it, ``recovery.signal`` makes it an archive recovery that fetches
    further WAL (e.g. ``aegis wal fetch %f %p``) up to ``target_time`` (timezone-aware) or the end
    of the archive, then ``target_action`` ("promote": wait until writable; "pause": wait until
    replay is paused at the target for inspection).

    ``extra_settings`` override the production configuration carried in the backup (e.g. a smaller
    ``shared_buffers`` for a copy on a busy host; do not lower ``max_connections`` and friends below
    the primary's — hot standby recovery refuses that). ``pg_hba`` replaces the written
    ``pg_hba.conf``. ``pg_bin`` holds binaries of the backup's major version (default:
    ``AEGIS_PG_BIN``, else the Debian 15 path). Inconsistent options are refused when the object is
    made (``ValueError``), so before anything is downloaded or written.
    """

    port: int
    socket_dir: Path
    restore_command: str | None = None
    target_time: datetime | None = None
    target_action: TargetAction = "promote"
    pg_bin: str | Path | None = None
    log_file: Path | None = None   # default: <data_dir>.log beside the data directory
    extra_settings: Mapping[str, str | int | bool] | None = None
    pg_hba: str | None = None
    verify_manifest: bool = True
    db_user: str = "postgres"
    os_user: str = PG_OS_USER
    start_timeout: int = 120
    recovery_timeout: float = 900

    def __post_init__(self) -> None:
        if self.target_action not in TARGET_ACTIONS:
            raise ValueError(f"target_action must be one of {TARGET_ACTIONS}")
        if self.target_time is not None:
            if self.target_time.tzinfo is None:
                raise ValueError("target_time must be timezone-aware (a naive time is ambiguous for PITR)")
            if not self.restore_command:
                raise ValueError("point-in-time recovery needs a restore_command to fetch archived WAL")


def _check_restored(data_dir: Path, bin_dir: Path, verify_manifest: bool, skip_checksums: bool = False) -> None:
    """A restored data directory is a complete base backup of the binaries' major version; the source
    server's leftovers (pid file, signal files) are removed."""
    check_pg_ctl_path(data_dir, "data directory")
    missing = [name for name in _REQUIRED if not (data_dir / name).is_file()]
    if missing:
        raise RestoreError(f"stream is not a pg_basebackup tar: missing {', '.join(missing)}")
    _check_major(data_dir, bin_dir)
    if verify_manifest:
        _verify_manifest(data_dir, bin_dir, skip_checksums)
    for name in _STALE:
        (data_dir / name).unlink(missing_ok=True)


def recovery_settings(restore_command: str | None, target_time: datetime | None,
                      target_action: TargetAction = "promote") -> dict[str, str | int | bool]:
    """The recovery part of the settings: ``restore_command`` and, for PITR, the target and its action."""
    settings: dict[str, str | int | bool] = {}
    if restore_command:
        settings["restore_command"] = restore_command
    if target_time is not None:
        # recovery_target_time is a timestamptz literal; UTC with an explicit offset is unambiguous.
        settings["recovery_target_time"] = target_time.astimezone(UTC).isoformat(sep=" ")
        settings["recovery_target_action"] = target_action
    return settings


# Marks the recovery settings an in-place restore adds to postgresql.auto.conf (removed once recovery ends).
IN_PLACE_BEGIN = "# --- Aegis in-place restore: recovery settings (removed when recovery ends) ---"
IN_PLACE_END = "# --- end of Aegis in-place restore ---"


def check_staged(data_dir: Path, pg_bin: str | Path | None = None) -> None:
    """The checks of a restored directory (``RestoreError``), run on an in-place restore's staging
    directory while the server still runs; pg_verifybackup without its checksum pass, as the stream
    that filled it was authenticated end to end (``from_catalog.stream_into``)."""
    _check_restored(Path(data_dir), pg_bin_dir(pg_bin), True, skip_checksums=True)


def configure_in_place(data_dir: Path, *, restore_command: str | None, target_time: datetime | None,
                       os_user: str = PG_OS_USER, pg_bin: str | Path | None = None, checked: bool = False) -> None:
    """Make a restored data directory an archive recovery of *production* (the in-place restore, C4).

    Unlike ``start_restored`` nothing of the scratch isolation is applied (port, listen addresses,
    socket directory, pg_hba, ``archive_mode`` stay as the production files say): only the recovery
    settings, between markers in ``postgresql.auto.conf`` so that ``clear_in_place`` removes them once
    recovery is over, and ``recovery.signal``. The server is not started here; it promotes by itself
    at the target (or the end of the archive).
    """
    if target_time is not None and (target_time.tzinfo is None or not restore_command):
        raise ValueError("point-in-time recovery needs a timezone-aware target_time and a restore_command")
    owner = os_user_ids(os_user)
    if not checked:   # else check_staged ran before the server was stopped
        _check_restored(Path(data_dir), pg_bin_dir(pg_bin), True)
    settings = recovery_settings(restore_command, target_time)
    if not settings:
        return   # no archived WAL to replay: crash recovery to the backup's end point, then writable
    lines = "".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())
    _write_owned(Path(data_dir) / "postgresql.auto.conf", f"\n{IN_PLACE_BEGIN}\n{lines}{IN_PLACE_END}\n", owner,
                 append=True)
    if restore_command:
        _write_owned(Path(data_dir) / "recovery.signal", "", owner)


def clear_in_place(data_dir: Path, os_user: str) -> bool:
    """Remove the block ``configure_in_place`` wrote (a later restart must not be a recovery); True if found."""
    path = Path(data_dir) / "postgresql.auto.conf"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    begin, end = text.find(IN_PLACE_BEGIN), text.find(IN_PLACE_END)
    if begin < 0 or end < begin:
        return False
    kept = text[:begin].rstrip("\n") + "\n" + text[end + len(IN_PLACE_END):].lstrip("\n")
    _write_owned(path, kept, os_user_ids(os_user))
    return True


def restore_base_backup(tar_stream: BinaryIO, data_dir: Path, options: RestoreOptions) -> RestoredCluster:
    """Extract a base backup tar stream into a new ``data_dir``, configure it, start it, wait for it.

    When the backup has no ``postgresql.conf`` / ``pg_hba.conf`` (Debian keeps them in /etc) minimal
    ones are written. On failure the server is stopped and the files are left for diagnosis.
    """
    data_dir = Path(data_dir)
    owner = os_user_ids(options.os_user)

    check_pg_ctl_path(data_dir, "data directory")
    check_reachable(data_dir, owner)
    check_reachable(Path(options.socket_dir), owner)
    prepare_data_dir(data_dir, owner)
    extract_tar(tar_stream, data_dir, owner)
    return start_restored(data_dir, options)


def start_restored(data_dir: Path, options: RestoreOptions) -> RestoredCluster:
    """Configure and start a data directory that already holds a restored backup (owned by ``os_user``).

    The second half of ``restore_base_backup``, shared with ``incremental.restore_chain`` (which fills
    ``data_dir`` with ``pg_combinebackup`` instead of one tar). Same options and failure behaviour.
    """
    bin_dir = pg_bin_dir(options.pg_bin)
    data_dir = Path(data_dir)
    socket_dir = Path(options.socket_dir)
    os_user, db_user, target_time = options.os_user, options.db_user, options.target_time
    restore_command = options.restore_command
    owner = os_user_ids(os_user)
    check_reachable(socket_dir, owner)
    _check_restored(data_dir, bin_dir, options.verify_manifest)
    if not (data_dir / "postgresql.conf").exists():
        _write_owned(data_dir / "postgresql.conf", "# written by Aegis restore; see postgresql.auto.conf\n", owner)
    _write_access_files(data_dir, options.pg_hba, db_user, os_user, owner)

    settings: dict[str, str | int | bool] = {
        "port": options.port,
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": _socket_dirs_value(socket_dir),
        "unix_socket_permissions": "0700",
        # A production postgresql.conf (e.g. Debian's) may point these into /etc: use the files above.
        "hba_file": str(data_dir / "pg_hba.conf"),
        "ident_file": str(data_dir / "pg_ident.conf"),
        "archive_mode": False,
        "synchronous_standby_names": "",
        "logging_collector": False,  # keep server output in our log file, for error reports
        "hot_standby": True,  # accept connections during replay: progress checks, and pause needs it
    }
    settings.update(recovery_settings(restore_command, target_time, options.target_action))
    settings.update(options.extra_settings or {})
    lines = "".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())
    # postgresql.auto.conf is read last, so these win over the production postgresql.conf.
    _write_owned(data_dir / "postgresql.auto.conf", f"\n# --- Aegis restore ---\n{lines}", owner, append=True)
    if restore_command:
        _write_owned(data_dir / "recovery.signal", "", owner)

    _private_socket_dir(socket_dir, owner)
    log_path = Path(options.log_file) if options.log_file is not None else data_dir.with_name(data_dir.name + ".log")
    check_pg_ctl_path(log_path, "log file")
    log_path.touch()
    chown_to(log_path, owner)
    log_path.chmod(0o600)  # the server log can quote data (failed statements)

    cluster = RestoredCluster(data_dir, options.port, socket_dir, log_path, bin_dir, db_user=db_user, os_user=os_user)
    deadline = time.monotonic() + options.recovery_timeout
    start_timeout = options.start_timeout
    try:
        proc = run_command(
            [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_path), "-w", "-t", str(start_timeout),
             "start"],
            cwd=data_dir, timeout=start_timeout + 30, **run_as(os_user),
        )
        if proc.returncode != 0:
            raise RestoreError(f"restored server did not start: {last_line(proc.stderr)}\n{cluster.log_tail()}")
        # Without a target, archive recovery promotes by itself at the end of the archive.
        _wait_ready(cluster, options.target_action if target_time is not None else "promote", deadline)
    except BaseException:
        try:
            cluster.stop("immediate")
        except (RestoreError, subprocess.SubprocessError, OSError):
            pass  # the original error is the one worth reporting
        raise
    return cluster
