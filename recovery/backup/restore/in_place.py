"""Restore a production PostgreSQL server in place from the catalog, with rollback (issue 9, C3/C4).

The order is fixed, and every phase is written to a journal beside the data directory
(``<data_dir>.aegis-restore.json``, ``recovery/backup/restore/journal.py``: replaced atomically)
before the next one starts:

1. **precheck** — nothing is stopped yet: the chosen backup is a good row of the catalog and the
   disk beside the data directory has room for it. A full base backup is then read **once**
   (issue 12): decrypted straight into a staging directory beside the data directory
   (``<data_dir>.aegis-staging-<incident>``, the server user's, 0700), every chunk's tag checked
   before its plaintext is written, the final tag and the stored sha256 (pinned to the catalog's)
   after the last chunk (``from_catalog.stream_into``); a failing copy is removed and the next
   target's tried. Then pg_verifybackup checks it against its ``backup_manifest`` and parses the
   backup's WAL, with ``--skip-checksums``: every byte was already authenticated, re-reading it
   would only repeat that. An incremental chain (PostgreSQL 17) keeps the two reads: every object
   verified here, extracted and combined after the stop (``pg_combinebackup`` needs the parts; one
   pass did not fit it yet). Every archived WAL file the restore needs up to the target is
   decrypted into ``<data_dir>.aegis-wal-stage`` (on a thread, while the backup streams) and the
   sequence has no gap. The journal says
   ``staged``. Any failure here removes both staging directories and leaves the server exactly as
   it was. No byte of an unverified backup reaches a usable data directory: nothing starts on the
   staging directory, and it is moved into place only after its final tag and checksum passed.
2. **stop** — ``pg_ctl -D data_dir stop -m fast`` as the server's OS user, or the configured stop
   hook; then no postmaster may own the data directory any more (its ``postmaster.pid``).
3. **aside** — the data directory is renamed (same filesystem: one ``rename``, nothing copied,
   nothing deleted) to ``<data_dir>.aegis-aside-<incident>-<UTC stamp>``.
4. **restore** — the staging directory is renamed to ``data_dir`` (a chain: extracted and combined
   into a new ``data_dir`` now), so the downtime holds no backup reading; the
   production configuration files of the saved directory (``postgresql.conf``,
   ``postgresql.auto.conf``, ``pg_hba.conf``, ``pg_ident.conf``, where it has them) replace the
   backup's, so the server comes back on its own port, sockets, access rules and archive settings
   (none of the scratch isolation of ``start_restored`` applies); the recovery settings
   (``restore_command`` reading the staged WAL, ``recovery_target_time`` for PITR, promote at the
   end) go between markers into ``postgresql.auto.conf`` with ``recovery.signal``.
5. **start** — ``pg_ctl start`` (log: ``<data_dir>.aegis-restore.log``) or the start hook; wait
   until the server has finished recovery and is writable. The recovery settings are then removed
   and the configuration reloaded, so a later restart is not a recovery; the staged WAL is removed.
6. **verify** — with evidence: the caller's checks (role, a committed write, the configured
   integrity queries), the timeline (a new one after an archive recovery), and the catalog's
   record of the backup's contents (exactly, when no WAL was replayed; after replay only the
   databases must all be there — later changes legitimately add, drop and change rows).
7. **rollback**, on any failure after the stop: stop whatever runs on the data directory, rename the
   restored directory to ``<data_dir>.aegis-failed-<incident>-<stamp>`` (kept for diagnosis, recorded
   in the journal's ``failed`` and named by the error, ``RolledBackError.kept``), rename the saved
   directory back, start it (only if it was running before: a primary that was already
   down stays down) and confirm it answers. The error says ``rolled back: <reason>``.

The saved directory is never deleted here; ``discard_aside`` removes it (or a kept failed restore)
later, only if its name is ours *and* this journal recorded it (an approved clean-up step after the
incident closes).

After a crash, the journal decides (``is_done``): ``verified`` for this incident and backup → done;
anything else → not done (``prechecked``/``staged``: nothing was stopped; the next precheck, and any
rollback, removes the leftover staging directories, ours by name). A later attempt of the same step
first completes the rollback of an interrupted attempt (its saved directory back in place and
started as it was), then starts over from the precheck: a half-restored directory is never
continued, because which files it holds cannot be known; a restored server that had not been
verified yet is rolled back as well.

The data directory must be reachable from this host (the hooks replace ``pg_ctl``, e.g. with
``systemctl``, not the file operations). "Latest" means the end of the archive: WAL the server had
not archived when it stopped is not in it (the RPO of archiving, ``archive_timeout``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from recovery.backup.catalog import POSTGRES_BASE_KINDS, chain_for, choose
from recovery.backup.incremental import fill_from_chain
from recovery.backup.repository import VerifiedCopy, holders
from recovery.backup.restore.from_catalog import stage_for_restore, stream_into
from recovery.backup.restore.journal import Journal
from recovery.backup.restore.postgres import (
    PG_OS_USER,
    RestoreError,
    check_reachable,
    check_staged,
    chown_to,
    clear_in_place,
    configure_in_place,
    last_line,
    os_user_ids,
    run_as,
    run_command,
)
from recovery.backup.runner import BackupRunner
from recovery.backup.sources.postgres import pg_bin_dir
from recovery.backup.storage.base import StorageError, Target
from recovery.backup.wal.archive import TargetWalStore
from recovery.drills.contents import compare, recorded_formats, snapshot, table_names
from recovery.objectives import recovered_point
from recovery.redact import redact
from statemachines.json_types import JsonObject
from statemachines.models import BackupRecord
from statemachines.store import Store

Progress = Callable[[str], None]
Evidence = JsonObject
ServerHook = Callable[[Progress], object]   # runs the configured stop/start hook; raises on failure

ASIDE_MARK = ".aegis-aside-"
FAILED_MARK = ".aegis-failed-"
JOURNAL_SUFFIX = ".aegis-restore.json"
STAGE_SUFFIX = ".aegis-wal-stage"
STAGING_MARK = ".aegis-staging-"   # the verified restore, streamed before the stop, renamed into place
LOG_SUFFIX = ".aegis-restore.log"
LOCK_SUFFIX = ".aegis-staging.lock"   # one writer of the staging directories at a time (flock)
# what discard_aside may remove: the saved directory, or a failed restore kept for diagnosis
ASIDE_NAME = re.compile(
    r"^(?P<base>.+)\.aegis-(?P<what>aside|failed)-(?P<incident>[A-Za-z0-9_-]+)-(?P<stamp>\d{8}T\d{6}Z)$")
# production configuration carried over from the saved directory into the restored one
PRODUCTION_FILES = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")

PRECHECKED, STAGED, STOPPING, STOPPED, ASIDE, RESTORED, STARTED, VERIFIED = (
    "prechecked", "staged", "stopping", "stopped", "aside", "restored", "started", "verified")
ROLLING_BACK, ROLLED_BACK = "rolling_back", "rolled_back"
WITHDRAWN = "withdrawn"   # a staging prepared ahead was removed: its step will not run (re-plan, reject, close)
# phases after which the saved directory may not be in place: a later attempt rolls back first
INTERRUPTED = (STOPPING, STOPPED, ASIDE, RESTORED, STARTED, ROLLING_BACK)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# how often the stop and the start are polled: the downtime is counted in these (a connection attempt
# or a stat of postmaster.pid each, cheap next to the WAL replay they wait for)
POLL_SECONDS = 0.05
# Staging ahead of the approval fills the filesystem of a server that is still running and writing:
# it must leave this much free beside it (else the approved step stages, as the server stops anyway).
AHEAD_RESERVE_FRACTION = 0.05
AHEAD_RESERVE_MIN = 1024 ** 3


def ahead_reserve(total: int) -> int:
    """Bytes that staging ahead of an approval leaves free on a filesystem of ``total`` bytes."""
    return max(int(total * AHEAD_RESERVE_FRACTION), min(AHEAD_RESERVE_MIN, total // 10))


class InPlaceError(RestoreError):
    """The in-place restore did not happen (refused in precheck, or rolled back); safe to show."""


class RolledBackError(InPlaceError):
    """The restore failed after the stop and was rolled back: the server holds its original data again.
    ``kept`` is the failed restore's directory (``<data_dir>.aegis-failed-…``) when one was kept."""

    def __init__(self, message: str, kept: str | None = None) -> None:
        super().__init__(message)
        self.kept = kept


def size_text(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def pid_alive(pid: int) -> bool:
    """A process with this pid exists (one of another user's counts: signalling it is merely refused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def journal_path(data_dir: Path) -> Path:
    return data_dir.with_name(data_dir.name + JOURNAL_SUFFIX)


# --- the journal ----------------------------------------------------------------------------------

# --- the server -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Server:
    """The production server: where its data is, how to reach it, how to stop and start it."""

    data_dir: Path
    dsn: str
    label: str
    os_user: str = PG_OS_USER
    pg_bin: str | Path | None = None
    stop_hook: ServerHook | None = None    # both hooks or neither (config validates it)
    start_hook: ServerHook | None = None
    stop_timeout: float = 120
    start_timeout: float = 900             # includes the WAL replay

    @property
    def log_file(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + LOG_SUFFIX)

    def _pg_ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return run_command([str(pg_bin_dir(self.pg_bin) / "pg_ctl"), "-D", str(self.data_dir), *args],
                           cwd=Path("/"), timeout=timeout, **run_as(self.os_user))

    def postmaster_alive(self) -> bool:
        """A live process owns the data directory (its ``postmaster.pid`` names a running pid)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        return pid_alive(pid)

    def answers(self) -> bool:
        with contextlib.suppress(psycopg.Error):
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
                return True
        return False

    def stop(self, progress: Progress, *, mode: str = "fast") -> None:
        if self.stop_hook is not None:
            progress(f"stopping {self.label} (stop hook)")
            self.stop_hook(progress)
        elif self.postmaster_alive():
            progress(f"stopping {self.label} (pg_ctl -D {self.data_dir} stop -m {mode})")
            proc = self._pg_ctl("-m", mode, "-w", "-t", str(int(self.stop_timeout)), "stop",
                                timeout=self.stop_timeout + 30)
            if proc.returncode != 0 and self.postmaster_alive():
                raise InPlaceError(f"pg_ctl stop failed: {last_line(proc.stderr)}")
        deadline = time.monotonic() + self.stop_timeout
        while self.postmaster_alive():
            if time.monotonic() > deadline:
                raise InPlaceError(f"{self.label} still runs on {self.data_dir} {self.stop_timeout:g}s after the stop")
            time.sleep(POLL_SECONDS)

    def start(self, progress: Progress) -> None:
        if self.start_hook is not None:
            progress(f"starting {self.label} (start hook)")
            self.start_hook(progress)
            return
        progress(f"starting {self.label} (pg_ctl -D {self.data_dir} start)")
        owner = os_user_ids(self.os_user)
        self.log_file.touch()
        chown_to(self.log_file, owner)
        self.log_file.chmod(0o600)   # the server log can quote data
        proc = self._pg_ctl("-l", str(self.log_file), "-w", "-t", str(int(self.start_timeout)), "start",
                            timeout=self.start_timeout + 30)
        if proc.returncode != 0:
            raise InPlaceError(f"{self.label} did not start: {last_line(proc.stderr)}; {self.log_tail()}")

    def log_tail(self, chars: int = 600) -> str:
        try:
            text = self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"
        return "server log: " + redact(" | ".join(line for line in text.splitlines()[-4:] if line.strip()))

    def wait(self, sql: str, what: str, deadline: float) -> None:
        """Poll ``sql`` (true when ready) until the deadline; a dead postmaster fails at once."""
        seen_running = False
        while True:
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    row = conn.execute(sql).fetchone()
                if row and row[0]:
                    return
            except psycopg.Error:
                pass   # refused while it starts or replays
            alive = self.postmaster_alive()
            seen_running = seen_running or alive
            if seen_running and not alive:
                raise InPlaceError(f"{self.label} stopped while {what}; {self.log_tail()}")
            if time.monotonic() > deadline:
                raise InPlaceError(f"{self.label} was not {what} in time; {self.log_tail()}")
            time.sleep(POLL_SECONDS)


# --- the restore ----------------------------------------------------------------------------------

@dataclass
class Prepared:
    """What the precheck established: the backup, its verified copies and the staged WAL."""

    record: BackupRecord
    run_id: str
    copies: list[VerifiedCopy]
    restore_command: str | None
    wal_files: int
    source_size: int
    backup_timeline: int
    contents: JsonObject = field(default_factory=dict)
    backup_end: datetime | None = None
    staging: Path | None = None   # the verified restore beside the data directory (None: a chain, after the stop)


class InPlaceRestore:
    """One in-place restore of ``server`` from backup ``backup_id`` to ``target_time`` (None: latest)."""

    def __init__(self, store: Store, runner: BackupRunner, server: Server, *, backup_id: str,
                 target_time: datetime | None, incident: str,
                 checks: Callable[[], list[Evidence]] | None = None, step: str | None = None) -> None:
        if target_time is not None and target_time.tzinfo is None:
            raise ValueError("target_time must be timezone-aware")
        self.store, self.runner, self.server = store, runner, server
        self.backup_id, self.target_time = backup_id, target_time
        self.incident = _UNSAFE.sub("_", incident) or "manual"
        self.checks = checks
        self.step = step   # the plan step this restore is for: a staging prepared ahead is reused only by it
        self.data_dir = server.data_dir
        self.journal = Journal(journal_path(self.data_dir))
        self.stage = self.data_dir.with_name(self.data_dir.name + STAGE_SUFFIX)
        self.staging = self.data_dir.with_name(f"{self.data_dir.name}{STAGING_MARK}{self.incident}")
        self._lock_fd: int | None = None

    # -- one writer of the staging directories ---------------------------------------------------

    def _lock(self, *, wait: bool) -> bool:
        """Take the staging lock (``<data_dir>.aegis-staging.lock``, flock, this host); False when another
        holds it and ``wait`` is false. Held from the precheck to the end of ``run``, or through a
        ``prepare_ahead``/``withdraw_ahead``: never two writers to one staging directory."""
        if self._lock_fd is not None:
            return True
        path = self.data_dir.with_name(self.data_dir.name + LOCK_SUFFIX)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        return True

    def release(self) -> None:
        """Let the next writer of the staging directories in (idempotent)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)   # closing the descriptor drops the flock

    def _staged_for(self) -> JsonObject:
        """What a staging is valid for: this incident, this plan step, this backup, this target."""
        return {"incident": self.incident, "step": self.step, "backup_id": self.backup_id,
                "target_time": self.target_time.isoformat() if self.target_time else None}

    def _ahead_matches(self, entry: JsonObject) -> bool:
        """The journal records a complete staging prepared ahead for exactly this restore, still on disk."""
        return (self.step is not None and entry.get("phase") == STAGED and entry.get("prepared_ahead") is True
                and entry.get("prepared_for") == self._staged_for() and self.staging.is_dir())

    # -- ahead of the approval (Action.prepare) ---------------------------------------------------

    def prepare_ahead(self, progress: Progress) -> JsonObject | None:
        """The precheck's non-destructive work while the step still waits for its approval: backup streamed,
        authenticated and checked with pg_verifybackup into the staging directory, WAL staged. Touches only
        the staging directories and the journal beside the data directory, never the server. Returns what
        was staged, or None when nothing was done: another writer holds the staging (an execution, another
        preparation), it is already staged for this step, or an interrupted attempt awaits its rollback
        (which only an approved attempt may do). ``InPlaceError`` when the precheck fails (the staging is
        removed; the approved step's own precheck will fail the same way, before anything is stopped)."""
        if self.step is None or not self._lock(wait=False):
            return None
        try:
            entry = self.journal.read()
            if entry.get("phase") in INTERRUPTED or self._ahead_matches(entry):
                return None
            prepared = self._precheck_locked(progress, ahead=True)
            if prepared.staging is None:   # a chain is extracted after the stop: nothing to keep staged
                self.remove_staging()
                return None
            return {"backup_id": prepared.run_id, "staging": str(self.staging), "wal_files": prepared.wal_files,
                    "restored_bytes": prepared.source_size}
        finally:
            self.release()

    def withdraw_ahead(self) -> bool:
        """Remove a staging prepared ahead for this step, which will not run now (re-planned, rejected,
        aborted, the incident closed); True when one was removed. Waits for a preparation still running.
        Only a staging the journal records as prepared ahead for this step, nothing after the stop."""
        if self.step is None:
            return False
        self._lock(wait=True)
        try:
            entry = self.journal.read()
            if entry.get("phase") not in (PRECHECKED, STAGED) or entry.get("prepared_ahead") is not True \
                    or entry.get("prepared_for") != self._staged_for():
                return False
            self.remove_staging()
            self.journal.write(WITHDRAWN)
            return True
        finally:
            self.release()

    # -- precheck ----------------------------------------------------------------------------

    def precheck(self, progress: Progress) -> Prepared:
        """Everything that can be checked before the server is stopped (``InPlaceError`` if not).

        Takes the staging lock, waiting for a preparation ahead still running, and keeps it until ``run``
        ends (or ``release``). A staging the journal records as prepared ahead and complete for this
        restore is reused after cheap re-checks (``_reuse``) instead of being streamed again."""
        self._lock(wait=True)
        try:
            self.recover_interrupted(progress)
            return self._precheck_locked(progress, ahead=False)
        except BaseException:
            self.release()
            raise

    def _precheck_locked(self, progress: Progress, *, ahead: bool) -> Prepared:
        data_dir = self.data_dir
        if not data_dir.is_absolute():
            raise InPlaceError(f"data directory {data_dir} is not an absolute path")
        if data_dir.is_symlink() or (data_dir.exists() and not data_dir.is_dir()):
            raise InPlaceError(f"{data_dir} is not a directory (a symlink or a file): restore it by hand")
        if not data_dir.parent.is_dir():
            raise InPlaceError(f"{data_dir.parent} does not exist")
        try:
            rows = choose(self.store, POSTGRES_BASE_KINDS, self.backup_id)
            record = rows[0]
            chain = chain_for(self.store, record)
        except (LookupError, RuntimeError) as exc:   # BackupNotFound, ChainError
            raise InPlaceError(f"backup {self.backup_id} cannot be restored: {exc}") from None
        needed = record.source_size or sum(r.source_size or 0 for r in chain)
        one_pass = len(chain) == 1 and bool(record.sha256)
        if not ahead and one_pass and self._ahead_matches(self.journal.read()):
            return self._reuse(record, needed, progress)   # its room was taken (and checked) ahead
        usage = shutil.disk_usage(data_dir.parent)
        free = usage.free
        if needed and free < needed:
            raise InPlaceError(f"{data_dir.parent} has {size_text(free)} free; restoring {record.run_id} needs "
                               f"{size_text(needed)} beside the current data directory (which is kept)")
        if ahead and free - needed < ahead_reserve(usage.total):
            raise InPlaceError(f"not staged ahead: {record.run_id} ({size_text(needed)}) would leave less than "
                               f"{size_text(ahead_reserve(usage.total))} free on {data_dir.parent} beside the running "
                               "server; the approved step stages it instead")
        self.remove_staging()   # ours (by name): leftovers of an earlier attempt
        # a new attempt: the phases start over; every directory ever put aside stays recorded
        self.journal.restart(PRECHECKED, keep=("asides", "failed", "discarded"), incident=self.incident,
                             backup_id=record.run_id, data_dir=str(data_dir),
                             target_time=self.target_time.isoformat() if self.target_time else None,
                             staging=str(self.staging) if one_pass else None,
                             prepared_ahead=ahead and one_pass, prepared_for=self._staged_for())
        try:
            # The WAL is staged on a thread beside the backup's stream: neither needs the other, and the
            # stream leaves part of a core idle while it waits on the disk. The pool's exit waits for
            # the WAL either way, so a failure of one never leaves the other still writing.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aegis-wal-stage") as pool:
                progress(f"staging the archived WAL {record.run_id} needs"
                         + (f" up to {self.target_time.isoformat()}" if self.target_time
                            else " (to the end of the archive)") + ", beside the backup")
                staging_wal = pool.submit(stage_for_restore, self.store, TargetWalStore(self.runner), record,
                                          self.stage, target_time=self.target_time, os_user=self.server.os_user)
                copies = self._stage_backup(record, chain, one_pass, progress)
                restore_command, wal_files = staging_wal.result()
        except (RestoreError, LookupError) as exc:   # RestoreRefused, a failed check, WalGapError, BackupNotFound
            self.remove_staging()
            raise InPlaceError(f"{redact(str(exc))}; {self.server.label} was not stopped") from None
        except BaseException:
            self.remove_staging()
            raise
        prepared = Prepared(record, record.run_id, copies, restore_command, wal_files,
                            needed, record.timeline or 1, dict(record.contents or {}), record.finished_at,
                            staging=self.staging if one_pass else None)
        self.journal.write(STAGED, wal_files=wal_files, restore_command=restore_command,
                           backup_timeline=prepared.backup_timeline)
        progress(f"precheck passed: {record.run_id} verified on {copies[-1].target.name}"
                 + (f" and staged in {self.staging}" if one_pass else "")
                 + f", {wal_files} archived WAL file(s) staged and complete")
        return prepared

    def _reuse(self, record: BackupRecord, needed: int, progress: Progress) -> Prepared:
        """The staging prepared ahead for this step, re-checked cheaply for what can have changed since: the
        catalog row is still good (the caller chose it), a target still holds the backup object (a backup
        deleted from every target fails the step here, before anything is stopped), and the WAL archived
        since is staged too and the sequence checked again (for "latest", the end of the archive moved).
        Nothing is streamed again; the journal notes ``reused_ahead`` without a new phase."""
        present = [t.name for t in holders(record, self.runner.targets) if _holds(t, record)]
        try:
            if not present:
                raise InPlaceError(f"backup {record.run_id} has no intact copy on any storage target any more "
                                   f"(it was staged ahead, then removed from every target)")
            progress(f"reusing {record.run_id}, streamed, authenticated and verified into {self.staging} while the "
                     f"step waited for its approval (still stored on {', '.join(present)}); staging the WAL "
                     "archived since")
            before = len(list(self.stage.iterdir())) if self.stage.is_dir() else 0
            restore_command, wal_files = stage_for_restore(
                self.store, TargetWalStore(self.runner), record, self.stage, target_time=self.target_time,
                os_user=self.server.os_user, keep_staged=True)
        except (RestoreError, LookupError) as exc:
            self.remove_staging()
            self.journal.write(WITHDRAWN, reason=redact(str(exc))[:300])
            raise InPlaceError(f"{redact(str(exc))}; {self.server.label} was not stopped") from None
        except BaseException:
            self.remove_staging()
            raise
        self.journal.note(reused_ahead=True, wal_files=wal_files, restore_command=restore_command)
        progress(f"precheck passed: {record.run_id} staged ahead in {self.staging}, {wal_files} archived WAL "
                 f"file(s) staged and complete ({max(wal_files - before, 0)} archived since the staging)")
        return Prepared(record, record.run_id, [], restore_command, wal_files, needed, record.timeline or 1,
                        dict(record.contents or {}), record.finished_at, staging=self.staging)

    def _stage_backup(self, record: BackupRecord, chain: list[BackupRecord], one_pass: bool,
                      progress: Progress) -> list[VerifiedCopy]:
        """A full backup: streamed once into the staging directory, every chunk's tag, the final tag and
        the stored sha256 checked on the way (``stream_into``), then pg_verifybackup without its checksum
        pass — all before the stop. A chain (PostgreSQL 17 incrementals): every object verified now, the
        extraction and ``pg_combinebackup`` after the stop (two reads, as before)."""
        if not one_pass:
            progress(f"verifying the stored copy of {record.run_id} ({len(chain)} object(s)) before stopping anything")
            return [self.runner.repository.verified_copy(r) for r in chain]
        owner = os_user_ids(self.server.os_user)
        check_reachable(self.staging, owner)
        progress(f"streaming {record.run_id} into {self.staging}, every chunk authenticated, before stopping anything")
        copy = stream_into(self.store, record, self.runner.targets, self.runner.repository.key, self.staging, owner)
        check_staged(self.staging, self.server.pg_bin)
        return [copy]

    def remove_staging(self) -> None:
        """Remove what a precheck stages beside the data directory (the WAL and the streamed backup): only
        names of ours (``<data_dir>.aegis-wal-stage``, ``<data_dir>.aegis-staging-<incident>``), never one a
        server runs on."""
        shutil.rmtree(self.stage, ignore_errors=True)
        mine = self.data_dir.name + STAGING_MARK
        for path in self.data_dir.parent.iterdir() if self.data_dir.parent.is_dir() else []:
            if path.name.startswith(mine) and path.is_dir() and not path.is_symlink() \
                    and not Server(path, "", "").postmaster_alive():
                shutil.rmtree(path, ignore_errors=True)

    # -- run ---------------------------------------------------------------------------------

    def run(self, prepared: Prepared, progress: Progress) -> JsonObject:
        """Stop → aside → restore → start → verify; on any failure the rollback, then ``InPlaceError``."""
        was_running = self.server.answers() or self.server.postmaster_alive()
        self.journal.write(STOPPING, was_running=was_running, had_data_dir=self.data_dir.exists())
        try:
            return self._replace(prepared, progress)
        except Exception as exc:
            reason = redact(str(exc)) or type(exc).__name__
            try:
                kept = self.rollback(reason, progress)
            except Exception as again:
                entry = self.journal.read()
                raise InPlaceError(
                    f"restore failed ({reason}) and the rollback failed too: {redact(str(again))}; the saved "
                    f"data directory is {entry.get('aside') or '(none)'}, put it back by hand") from None
            raise RolledBackError(f"rolled back: {reason}", kept=str(kept) if kept else None) from None
        finally:
            self.remove_staging()
            self.release()

    def _replace(self, prepared: Prepared, progress: Progress) -> JsonObject:
        server, data_dir = self.server, self.data_dir
        server.stop(progress)
        aside: Path | None = None
        if data_dir.exists():
            aside = data_dir.with_name(f"{data_dir.name}{ASIDE_MARK}{self.incident}-{_stamp()}")
            entry = self.journal.read()   # the name first: a crash right after the rename still finds it
            self.journal.write(STOPPED, aside=str(aside), asides=[*entry.get("asides", []), str(aside)])
            os.rename(data_dir, aside)   # same parent: one rename, nothing copied or deleted
            self.journal.write(ASIDE)
            progress(f"moved the data directory aside: {aside}")
        else:
            self.journal.write(STOPPED, aside=None)
            self.journal.write(ASIDE)
            progress(f"{data_dir} did not exist: nothing to put aside")
        if prepared.staging is not None:   # verified before the stop: one rename, nothing read again
            progress(f"restoring {prepared.run_id} ({size_text(prepared.source_size)}) into {data_dir}: the copy "
                     f"verified and staged before the stop is moved into place")
            os.rename(prepared.staging, data_dir)
        else:
            progress(f"restoring {prepared.run_id} ({size_text(prepared.source_size)}) into {data_dir} …")
            fill_from_chain(self.store, prepared.record, self.runner.targets, self.runner.repository.key,
                            data_dir, os_user=server.os_user, pg_bin=server.pg_bin, copies=prepared.copies)
        if aside is not None:
            self._production_files(aside)
        configure_in_place(data_dir, restore_command=prepared.restore_command, target_time=self.target_time,
                           os_user=server.os_user, pg_bin=server.pg_bin, checked=prepared.staging is not None)
        self.journal.write(RESTORED)
        if prepared.restore_command:
            progress(f"replaying WAL ({prepared.wal_files} archived file(s), "
                     + (f"to {self.target_time.isoformat()}" if self.target_time else "to the end of the archive")
                     + ") …")
        deadline = time.monotonic() + server.start_timeout
        server.start(progress)
        server.wait("SELECT NOT pg_is_in_recovery()", "finished recovery and writable", deadline)
        facts = self._facts(prepared)
        clear_in_place(data_dir, server.os_user)
        self._reload()
        self.journal.write(STARTED, timeline=facts["timeline"], recovered_to=facts["recovered_to"])
        progress(f"{server.label} is writable on timeline {facts['timeline']}; recovered to "
                 f"{facts['recovered_to'] or 'unknown'} ({facts['recovered_to_basis']})")
        observations = self._evidence(prepared, facts)
        for item in observations:
            progress(f"{item['check']}: {'ok' if item['ok'] else 'FAILED'} — {item['observed']}")
        failed = [f"{item['check']}: {item['observed']}" for item in observations if not item["ok"]]
        if failed:
            raise InPlaceError("verification failed: " + "; ".join(failed))
        kept = [*([str(aside)] if aside else []), *self.failed_restores()]
        output: JsonObject = {
            "evidence": observations,
            "aside": [aside_item(location) for location in kept],
            "recovered_to": facts["recovered_to"],
            "recovered_to_basis": facts["recovered_to_basis"],
            "backup_id": prepared.run_id,
            "target_time": self.target_time.isoformat() if self.target_time else None,
            "timeline": facts["timeline"],
            "wal_files": prepared.wal_files,
            "data_dir": str(data_dir),
            "restored_bytes": prepared.source_size,
        }
        self.journal.write(VERIFIED, output=output)
        return output

    def _production_files(self, aside: Path) -> None:
        """The saved directory's configuration replaces the backup's (its own port, sockets, archiving)."""
        owner = os_user_ids(self.server.os_user)
        for name in PRODUCTION_FILES:
            source = aside / name
            if source.is_file() and not source.is_symlink():
                target = self.data_dir / name
                target.unlink(missing_ok=True)
                shutil.copy2(source, target)
                chown_to(target, owner)
                target.chmod(0o600)

    def _reload(self) -> None:
        with contextlib.suppress(psycopg.Error):
            with psycopg.connect(self.server.dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute("SELECT pg_reload_conf()")

    def _facts(self, prepared: Prepared) -> JsonObject:
        """Timeline and the time of the last recovered transaction (static after promotion until a restart)."""
        with psycopg.connect(self.server.dsn, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn()), pg_last_xact_replay_timestamp()"
                               ).fetchone()
        assert row is not None
        recovered, basis = recovered_point(row[1], self.target_time, prepared.backup_end)
        return {"timeline": int(str(row[0])[:8], 16), "recovered_to": recovered, "recovered_to_basis": basis}

    def _evidence(self, prepared: Prepared, facts: JsonObject) -> list[Evidence]:
        observations = list(self.checks()) if self.checks is not None else []
        timeline = int(facts["timeline"])
        archive = prepared.restore_command is not None
        observations.append(_evidence(
            f"{self.server.label} timeline", f"timeline {timeline}",
            f"a new timeline after {prepared.backup_timeline} (archive recovery)" if archive
            else f"timeline {prepared.backup_timeline} or later",
            timeline > prepared.backup_timeline if archive else timeline >= prepared.backup_timeline))
        observations.extend(self._contents_evidence(prepared))
        return observations

    def _contents_evidence(self, prepared: Prepared) -> list[Evidence]:
        contents = prepared.contents
        check = f"contents recorded with {prepared.run_id}"
        if contents.get("kind") != "postgres_tables":
            return []   # nothing recorded for this backup (older than the snapshots): nothing to compare
        try:
            if not prepared.wal_files:   # the backup alone: exactly what the catalog recorded
                result = compare(contents, snapshot(self.server.dsn, formats=recorded_formats(contents)))
                observed = result.basis if result.ok else "; ".join(result.problems)[:500]
                return [_evidence(check, observed, "row counts and checksums as recorded", bool(result.ok))]
            restored = table_names(self.server.dsn)   # after replay only presence counts: no row is read
        except psycopg.Error as exc:
            return [_evidence(check, f"could not read the restored tables: {redact(str(exc))[:200]}",
                              "the backup's tables", False)]
        recorded: dict[str, dict[str, JsonObject]] = contents.get("after") or {}
        missing_db = sorted(set(recorded) - set(restored))
        tables = [(db, t) for db, names in recorded.items() for t in names]
        present = [(db, t) for db, t in tables if t in restored.get(db, set())]
        observed = (f"{len(recorded) - len(missing_db)} of {len(recorded)} database(s) and {len(present)} of "
                    f"{len(tables)} table(s) the backup recorded are present (WAL replayed after it may change them)")
        if missing_db:
            observed += f"; missing: {', '.join(missing_db)}"
        return [_evidence(check, observed, "every database the backup recorded", not missing_db)]

    # -- rollback and crash recovery ---------------------------------------------------------

    def failed_restores(self) -> list[str]:
        """The failed restores of this incident kept for diagnosis (``.aegis-failed-<incident>-…``) that
        still exist: a later successful restore names them in its ``aside`` too, so that the clean-up
        plan (which reads succeeded steps) proposes removing them."""
        mine = f"{self.data_dir.name}{FAILED_MARK}{self.incident}-"
        return [str(p) for p in self.journal.read().get("failed", [])
                if Path(p).name.startswith(mine) and Path(p).is_dir()]

    def rollback(self, reason: str, progress: Progress) -> Path | None:
        """Put the saved directory back and start it as it was (see the module docstring); returns the
        failed restore's directory when one was kept for diagnosis."""
        entry = self.journal.write(ROLLING_BACK, reason=reason[:500])
        server, data_dir = self.server, self.data_dir
        progress(f"rolling back: {reason[:300]}")
        aside = Path(str(entry["aside"])) if entry.get("aside") else None
        failed: Path | None = None
        # data_dir holds (part of) a restore when the saved directory is aside, or there was none before
        restored_here = data_dir.exists() and (aside.exists() if aside is not None
                                               else entry.get("had_data_dir") is False and _reached(entry, ASIDE))
        if restored_here:
            if server.postmaster_alive():
                self._stop_restored(progress)
            failed = data_dir.with_name(f"{data_dir.name}{FAILED_MARK}{self.incident}-{_stamp()}")
            os.rename(data_dir, failed)
            self.journal.write(ROLLING_BACK, failed=[*entry.get("failed", []), str(failed)])
            progress(f"kept the failed restore for diagnosis: {failed}")
        if aside is not None and aside.exists() and not data_dir.exists():
            os.rename(aside, data_dir)
            progress(f"put the saved data directory back: {data_dir}")
        self.remove_staging()
        if entry.get("was_running"):
            if not server.postmaster_alive():
                server.start(progress)
            server.wait("SELECT true", "answering after the rollback", time.monotonic() + server.start_timeout)
            progress(f"{server.label} answers again on its original data")
        else:
            progress(f"{server.label} was not running before the restore: left stopped")
        self.journal.write(ROLLED_BACK)
        return failed

    def _stop_restored(self, progress: Progress) -> None:
        """Stop what runs on the restored directory: the stop hook, and pg_ctl immediate if it still runs."""
        with contextlib.suppress(Exception):
            self.server.stop(progress, mode="immediate")
        if self.server.postmaster_alive():
            Server(self.data_dir, self.server.dsn, self.server.label, self.server.os_user, self.server.pg_bin,
                   stop_timeout=self.server.stop_timeout).stop(progress, mode="immediate")

    def recover_interrupted(self, progress: Progress) -> None:
        """An earlier attempt died between the stop and the end: finish its rollback first."""
        entry = self.journal.read()
        phase = entry.get("phase")
        if phase in INTERRUPTED:
            progress(f"an earlier attempt of this restore was interrupted at '{phase}': rolling it back first")
            self.rollback(f"an earlier attempt was interrupted at '{phase}'", progress)

    def is_done(self) -> bool:
        """After a crash: True only when this incident's restore of this backup reached ``verified``."""
        entry = self.journal.read()
        return (entry.get("phase") == VERIFIED and entry.get("incident") == self.incident
                and entry.get("backup_id") == self.backup_id and self.data_dir.is_dir())

    def recorded_output(self) -> JsonObject | None:
        """The output of this incident's verified restore, if the journal holds one (nothing runs twice)."""
        entry = self.journal.read()
        output = entry.get("output")
        return output if self.is_done() and isinstance(output, dict) else None


def aside_item(location: str) -> JsonObject:
    """A step output's ``aside`` entry for a directory this restore left beside the data directory."""
    return {"kind": "postgres_data_dir", "location": location, "component": "postgres"}


def _holds(target: Target, record: BackupRecord) -> bool:
    """The target still has the object, at its stored size (a cheap look, not a read: the staged copy was
    authenticated when it was streamed)."""
    try:
        return target.exists(record.object_name) and (
            not record.stored_size or target.size(record.object_name) in (None, record.stored_size))
    except StorageError:
        return False


def _reached(entry: JsonObject, phase: str) -> bool:
    return any(isinstance(h, dict) and h.get("phase") == phase for h in entry.get("history", []))


def _evidence(check: str, observed: str, expected: str, ok: bool) -> Evidence:
    return {"check": check, "observed": observed, "expected": expected, "ok": bool(ok)}


# --- discarding what a restore put aside ----------------------------------------------------------

def discard_aside(location: str) -> str:
    """Remove a data directory an in-place restore put aside; anything else is refused (``InPlaceError``).

    Only a directory whose name is ``<data_dir>.aegis-aside-<incident>-<stamp>`` (the saved data) or
    ``<data_dir>.aegis-failed-<incident>-<stamp>`` (a failed restore kept for diagnosis) *and* that the
    journal beside it (``<data_dir>.aegis-restore.json``) recorded under that role (``asides`` /
    ``failed``) is removed; never a symlink, never one a postmaster runs on. Idempotent: one already
    removed is reported as such.
    """
    path = Path(location)
    found = ASIDE_NAME.match(path.name)
    if not path.is_absolute() or found is None:
        raise InPlaceError(f"refusing to remove {location}: not a data directory Aegis put aside "
                           "(<data_dir>.aegis-aside-<incident>-<stamp> or .aegis-failed-<incident>-<stamp>)")
    journal = Journal(journal_path(path.with_name(found["base"])))
    entry = journal.read()
    recorded = entry.get("asides" if found["what"] == "aside" else "failed", [])
    if str(path) not in recorded:
        raise InPlaceError(f"refusing to remove {location}: the restore journal {journal.path} does not record it")
    if str(path) in entry.get("discarded", []) and not path.exists():
        return f"{location} was already removed"
    if path.is_symlink() or not path.is_dir():
        raise InPlaceError(f"refusing to remove {location}: not a directory")
    if Server(path, "", "").postmaster_alive():
        raise InPlaceError(f"refusing to remove {location}: a PostgreSQL server is running on it")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    shutil.rmtree(path)
    journal.write(str(entry.get("phase", "")), discarded=[*entry.get("discarded", []), str(path)])
    what = "put aside by" if found["what"] == "aside" else "the failed attempt of"
    return f"removed {location} ({size_text(size)}), {what} the restore for {found['incident']}"
