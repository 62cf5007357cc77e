"""``aegis wal archiver``: a long-running process that archives WAL at PostgreSQL's pace.

Without it every segment costs a whole process (interpreter, imports, config, key, catalog, SDK
clients) for ~0.1 s of real work. The archiver holds all of that once and listens on a Unix socket
(mode 0600, refusing peers of another uid); ``archive_command = aegis wal push %p`` (or the stdlib-only
``client.py push %p``) hands it the segment (recovery/backup/wal/handoff.py, client.py) and blocks until
the answer. ``restore_command`` (``aegis wal fetch %f %p`` or ``client.py fetch %f %p``) is served the
same way: the archiver decrypts the segment into ``%p`` with what it already holds. The answer's first
key (``durable`` / ``status``) comes first on the line: client.py reads it by that prefix.

Each segment is pushed with exactly the rules of a one-shot push (``commands.push`` over a
``TargetWalStore``): durable only when the B6 rule holds (a remote target has it; with only a local
target configured, that one) and its catalog row is written; the same content already archived is
success; different content under an archived name is an error and nothing is overwritten.

PostgreSQL runs ``archive_command`` for one segment at a time, so the parallelism (``parallel``
workers, default 4) comes from looking ahead: the segments PostgreSQL has marked ready
(``pg_wal/archive_status/*.ready``) are pushed before it asks for them, and when it asks the answer
is already there. A pushed-ahead segment is still acknowledged only when PostgreSQL hands it over and
gets "durable" for it, so nothing is recycled earlier than without the archiver.

Pushes of one segment are serialised across processes with ``handoff.segment_lock``, so a fallback
push by ``archive_command`` (while the archiver was down) and the archiver's look-ahead never write
the same name at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from recovery.backup.wal.commands import PushResult, WalError, WalStore, check_wal_name, fetch, push
from recovery.backup.wal.handoff import check_socket_path, encode, peer_uid, read_line, segment_lock
from recovery.redact import redact

log = logging.getLogger("aegis.wal.archiver")

# Test hook: while this file exists the archiver holds every push (with the segment's lock taken),
# so a test can kill it mid-push. Never set in production.
HOLD_ENV = "AEGIS_TEST_ARCHIVER_HOLD"
_WARM_UP_NAME = "00000000FFFFFFFF000000FF"   # a valid name no cluster writes (timeline 0)
_LOOK_AHEAD_POLL_SECONDS = 0.2   # archive_status is listed this often (and at once after each push)
_DONE_KEPT_SECONDS = 600.0   # a pushed-ahead result PostgreSQL never asked for is forgotten after this


@dataclass(frozen=True)
class _FileId:
    """What identifies the file a result was computed from (a reused name is a different file)."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> _FileId:
        info = os.stat(path)
        return cls(info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass
class _Job:
    future: Future[PushResult]
    file: _FileId
    ahead: bool                      # started by the look-ahead, not by a hand-over
    finished_at: float | None = None


@dataclass
class ArchiverStats:
    """What this archiver did: its own record of which segments it pushed (and how)."""

    pushed: list[str] = field(default_factory=list)          # uploaded by this process
    already_archived: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    answered: int = 0
    fetched: int = 0                                         # restore_command requests served


class WalArchiver:
    """Pushes handed-over (and ready) segments with ``parallel`` workers; answers over ``socket_path``."""

    def __init__(self, store: WalStore, socket_path: Path, *, parallel: int = 4,
                 wal_dir: Path | None = None, look_ahead: bool = True) -> None:
        check_socket_path(socket_path)
        self.store = store
        self.socket_path = socket_path
        self.parallel = parallel
        self.look_ahead = look_ahead
        self.stats = ArchiverStats()
        self._wal_dir = wal_dir
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="wal-push")
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._listener: socket.socket | None = None

    # --- the socket ------------------------------------------------------------------------------

    def bind(self) -> None:
        """Listen on the socket (0600); a stale socket of a dead archiver is replaced, a live one refused."""
        path = self.socket_path
        if path.is_socket():
            if _answers(path):
                raise WalError(f"another archiver is already listening on {path}")
            path.unlink()
        elif path.exists():
            raise WalError(f"{path} exists and is not a socket; not replacing it")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)   # created 0600: no moment at which another user could connect
        try:
            listener.bind(os.fspath(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        listener.listen(64)
        listener.settimeout(0.5)
        self._listener = listener

    def serve(self, stop: threading.Event) -> ArchiverStats:
        """Accept hand-overs until ``stop`` is set; then finish the pushes in flight and remove the socket."""
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        threading.Thread(target=self.warm_up, name="wal-warm-up", daemon=True).start()
        ahead = threading.Thread(target=self._look_ahead_loop, args=(stop,), name="wal-look-ahead", daemon=True)
        ahead.start()
        try:
            while not stop.is_set():
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=self._serve_one, args=(conn,), name="wal-handoff", daemon=True).start()
        finally:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            self._wake.set()
            self._pool.shutdown(wait=True)
        return self.stats

    def warm_up(self) -> None:
        """Pay the first push's one-time costs now, not in PostgreSQL's wait: the catalog connection and its
        statements, each target's SDK client and HTTP connection (a read-only look-up of a name the
        archive does not hold)."""
        started = time.monotonic()
        try:
            self.store.checksum(_WARM_UP_NAME)
        except Exception as exc:  # noqa: BLE001 - a target down now is the pushes' business, not start-up's
            log.warning("archiver: warm-up: %s", redact(str(exc))[:300])
        log.info("archiver: warmed up in %.2f s", time.monotonic() - started)

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            try:
                if peer_uid(conn) != os.getuid():
                    conn.sendall(encode({"durable": False, "message": "refused: not the archiver's user"}))
                    return
                line = read_line(conn)
                if line is None:
                    return
                request = json.loads(line)
                if request.get("op") == "fetch":
                    status, message = self._fetch(str(request["name"]), str(request["dest"]))
                    conn.sendall(encode({"status": status, "message": message}))
                else:
                    durable, message = self._archive(Path(str(request["path"])), str(request["name"]))
                    conn.sendall(encode({"durable": durable, "message": message}))
                with self._lock:
                    self.stats.answered += 1
            except (OSError, ValueError, KeyError) as exc:
                log.warning("WAL hand-over failed: %s", redact(str(exc))[:300])

    # --- pushing ---------------------------------------------------------------------------------

    def _archive(self, path: Path, name: str) -> tuple[bool, str]:
        """Push (or reuse the pushed-ahead result for) one handed-over segment: (durable, message)."""
        if path.name != name or not path.is_absolute():
            return False, f"refused: {name!r} does not name the file {path}"
        try:
            check_wal_name(name)
            if not stat.S_ISREG(os.stat(path).st_mode):
                return False, f"refused: {path} is not a regular file"
        except (ValueError, OSError) as exc:
            return False, str(exc)
        if self._wal_dir is None:
            self._wal_dir = path.parent   # the look-ahead now knows where PostgreSQL's segments are
        job = self._job_for(path, ahead=False)
        self._wake.set()
        try:
            result = job.future.result()
        except Exception as exc:  # noqa: BLE001 - any failure is "not durable"; PostgreSQL retries
            return False, redact(str(exc))[:500]
        finally:
            with self._lock:
                if self._jobs.get(name) is job:
                    del self._jobs[name]   # answered (or failed): a retry pushes afresh
        state = "already archived" if result.already_archived else "archived"
        return True, f"{name} {state} by the archiver (pid {os.getpid()}, {result.size} bytes)"

    def _fetch(self, name: str, dest: str) -> tuple[str, str]:
        """restore_command through the archiver: ``commands.fetch`` with the store it holds (the key,
        the targets, the catalog), so the copy is authenticated and checked against the catalog's
        sha256 before it is renamed into ``dest``. (status: restored | absent | error, message)."""
        if not os.path.isabs(dest):
            return "error", f"refused: {dest!r} is not an absolute path"
        try:
            found = fetch(check_wal_name(name), Path(dest), self.store)
        except Exception as exc:  # noqa: BLE001 - any failure must stop recovery, never read as "absent"
            log.warning("archiver: fetch of %s failed: %s", name, redact(str(exc))[:300])
            return "error", f"{name}: {redact(str(exc))[:500]}"
        with self._lock:
            self.stats.fetched += 1
        log.info("archiver: fetched %s (%s)", name, "restored" if found else "absent")
        return ("restored", f"{name} restored by the archiver") if found else ("absent", f"{name} is not archived")

    def _job_for(self, path: Path, *, ahead: bool) -> _Job:
        """The push of ``path``: the one in flight or pushed ahead for this very file, else a new one."""
        file = _FileId.of(path)
        with self._lock:
            job = self._jobs.get(path.name)
            if job is not None and job.file == file and not _failed(job):
                return job
            job = _Job(self._pool.submit(self._push, path), file, ahead)
            job.future.add_done_callback(functools.partial(self._finished, job))
            self._jobs[path.name] = job
            return job

    def _finished(self, job: _Job, _future: Future[PushResult]) -> None:
        job.finished_at = time.monotonic()
        self._wake.set()   # a worker is free: look ahead again

    def _push(self, path: Path) -> PushResult:
        with segment_lock(path):
            _hold_for_tests()
            started = time.monotonic()
            try:
                result = push(path, self.store)
            except Exception as exc:
                with self._lock:
                    self.stats.failed.append(path.name)
                log.warning("archiver: %s not archived: %s", path.name, redact(str(exc))[:300])
                raise
        with self._lock:
            (self.stats.already_archived if result.already_archived else self.stats.pushed).append(path.name)
        log.info("archiver: pushed %s (%s, %d bytes, %.3f s)", path.name,
                 "already archived" if result.already_archived else "archived", result.size,
                 time.monotonic() - started)
        return result

    # --- looking ahead ---------------------------------------------------------------------------

    def _look_ahead_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.wait(_LOOK_AHEAD_POLL_SECONDS)
            self._wake.clear()
            if self.look_ahead and self._wal_dir is not None:
                try:
                    self._schedule_ready(self._wal_dir)
                except OSError as exc:
                    log.warning("archiver: cannot list %s: %s", self._wal_dir, exc)
            self._forget_stale()

    def _schedule_ready(self, wal_dir: Path) -> None:
        """Start pushes of the oldest ready segments while a worker is free."""
        with self._lock:
            busy = sum(1 for j in self._jobs.values() if not j.future.done())
        free = self.parallel - busy
        if free <= 0:
            return
        for name in ready_segments(wal_dir):
            if free <= 0:
                return
            with self._lock:
                known = name in self._jobs
            if known:
                continue
            with contextlib.suppress(FileNotFoundError):   # archived and recycled meanwhile
                self._job_for(wal_dir / name, ahead=True)
                free -= 1

    def _forget_stale(self) -> None:
        now = time.monotonic()
        with self._lock:
            for name, job in list(self._jobs.items()):
                if job.finished_at is not None and (_failed(job) or now - job.finished_at > _DONE_KEPT_SECONDS):
                    del self._jobs[name]


def ready_segments(wal_dir: Path) -> list[str]:
    """The files PostgreSQL has marked ready to archive, in its own order (history files first)."""
    names = [entry.name.removesuffix(".ready") for entry in os.scandir(wal_dir / "archive_status")
             if entry.name.endswith(".ready")]
    valid = []
    for name in names:
        with contextlib.suppress(ValueError):
            valid.append(check_wal_name(name))
    return sorted(valid, key=lambda n: (not n.endswith(".history"), n))


def _failed(job: _Job) -> bool:
    return job.future.done() and job.future.exception() is not None


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(os.fspath(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _hold_for_tests(sleep: Callable[[float], None] = time.sleep) -> None:
    hold = os.environ.get(HOLD_ENV)
    while hold and os.path.exists(hold):
        sleep(0.05)
