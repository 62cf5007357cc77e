"""The isolated environment of one drill, and the removal of what a drill left behind.

Everything a drill creates lives under ``<scratch_dir>/drill-<id>/`` (restored PostgreSQL data
directories, their sockets, logs and staged WAL), on ports taken free at that moment and bound to
127.0.0.1, or is a Neo4j database / Milvus collection named ``aegis_drill_<id>…``: never a
production name, path or port — or, with ``drills.scratch.neo4j``, the import into that scratch
server's empty database (``graph_scratch``: wiped only when it provably is the drill's). Each
resource is written to the drill's row *before* it is created (``runs.register``), so when the
process dies (SIGKILL, power loss) the next start finds the row (``runs.interrupted``) and removes
every resource it lists (``sweep``): it stops the scratch servers, drops the scratch database and
collections, deletes the directory. Removal is idempotent: an already-removed resource is simply gone.

A scratch server is stopped the way ``pg_ctl stop -m immediate`` stops it — SIGQUIT to the postmaster,
no shutdown checkpoint (the copy is thrown away) — but sent here and waited for at 5 ms
(``stop_immediately``): ``pg_ctl`` polls every 100 ms and was most of a restore test's removal time
(0.13 of 0.15 s at pgbench scale 15). The signal goes only to the process ``postmaster.pid`` names when
that process is alive and works in this data directory (``/proc/<pid>/cwd``: the postmaster changes into
it), so a stale pid file whose number now belongs to another process is never signalled (``pg_ctl``
would signal it); when that cannot be told (no ``/proc``, another user's process), ``pg_ctl`` stops it
as before. A restore test's copy is stopped at once and its files are deleted on a thread while the
drill goes on (``remove_postgres_soon``); it is marked removed only once that thread is joined and the
files are seen gone (``finish_removals``, at the drill's clean-up), so a crash meanwhile leaves it
listed for the sweep.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from recovery.backup.restore.postgres import (
    RESTORING_SUFFIX,
    RestoredCluster,
    RestoreError,
    chown_to,
    os_user_ids,
)
from recovery.backup.sources.postgres import pg_bin_dir
from recovery.drills import runs
from recovery.redact import redact
from statemachines.json_types import JsonObject
from statemachines.models import DrillRun, require_id
from statemachines.store import Store

if TYPE_CHECKING:
    from neo4j import Driver

log = logging.getLogger("aegis.drills")
PREFIX = "aegis_drill_"
STOP_POLL_SECONDS = 0.005
STOP_TIMEOUT_SECONDS = 60.0   # as pg_ctl -t 60: the postmaster waits for its children (SIGKILL after 5 s)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


UNKNOWN = -1   # _postmaster: whether the pid file names this data dir's postmaster cannot be told


def _postmaster(data_dir: Path) -> int:
    """The pid ``data_dir/postmaster.pid`` names when that process is alive and works in ``data_dir``;
    0 when there is none (no file, the process gone, or its number now another process's); ``UNKNOWN``
    when it cannot be told (no ``/proc``, another user's process)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return 0
    return _working_in(pid, data_dir) if pid > 0 else 0


def _working_in(pid: int, data_dir: Path) -> int:
    """``pid`` when that process is alive and works in ``data_dir``; 0 when not (gone, a zombie, another
    directory); ``UNKNOWN`` when it cannot be told (no ``/proc``, another user's process)."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except FileNotFoundError:   # no such process (a zombie too), unless there is no /proc at all
        return 0 if os.path.isdir("/proc/self") else UNKNOWN
    except OSError:             # not ours to look at
        return UNKNOWN
    return pid if cwd == os.path.realpath(data_dir) else 0


def stop_immediately(cluster: RestoredCluster) -> None:
    """Stop a scratch server at once (SIGQUIT, as ``pg_ctl -m immediate``) and wait until its postmaster
    has exited (it waits for its children first); ``pg_ctl`` when the postmaster cannot be verified."""
    data_dir = cluster.data_dir
    pid = _postmaster(data_dir)
    if pid == UNKNOWN:
        cluster.stop("immediate")
        return
    if pid == 0:
        return   # not running (a stale pid file is deleted with the directory)
    try:
        os.kill(pid, signal.SIGQUIT)
    except ProcessLookupError:
        return   # it exited meanwhile
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    # not until postmaster.pid is gone: the postmaster removes it as it exits and runs on a little after that
    while _working_in(pid, data_dir) == pid:
        if time.monotonic() > deadline:
            raise RestoreError(f"the scratch server in {data_dir} did not stop within {STOP_TIMEOUT_SECONDS:.0f} s")
        time.sleep(STOP_POLL_SECONDS)


@dataclass
class Droppers:
    """How to remove the non-file resources (the drivers are the caller's: the domain opens none itself)."""

    neo4j: Callable[[str, str], None] | None = None       # (uri, database) -> drop it
    milvus: Callable[[str, str], None] | None = None      # (uri, collection) -> drop it
    # uri -> a driver to the configured scratch Neo4j server (drills.scratch.neo4j); refuses any other uri
    neo4j_scratch: Callable[[str], Driver] | None = None


def stop_postgres(resource: JsonObject) -> None:
    """Stop a registered scratch server if it runs (its files stay)."""
    data_dir = Path(resource["data_dir"])
    if data_dir.is_dir():
        stop_immediately(RestoredCluster(data_dir, int(resource["port"]), Path(resource["socket_dir"]),
                                         Path(resource["log_file"]), pg_bin_dir(resource.get("pg_bin")),
                                         os_user=resource.get("os_user", "postgres")))


def _postgres_paths(resource: JsonObject) -> list[Path]:
    data_dir = Path(resource["data_dir"])   # the staging dir too: a killed one-pass restore's
    return [data_dir, data_dir.with_name(data_dir.name + RESTORING_SUFFIX), Path(resource["socket_dir"])]


def delete_postgres_files(resource: JsonObject) -> None:
    """Delete a stopped scratch server's directories; raises when one is still there."""
    paths = _postgres_paths(resource)
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    left = [str(p) for p in paths if p.exists()]
    if left:
        raise OSError(f"could not delete {', '.join(left)}")


def remove_resource(resource: JsonObject, droppers: Droppers) -> None:
    """Remove one registered resource; raises when it could not be removed (it stays listed)."""
    kind = resource.get("kind")
    if kind == "postgres":
        stop_postgres(resource)
        delete_postgres_files(resource)
    elif kind == "dir":
        shutil.rmtree(Path(resource["path"]), ignore_errors=True)
    elif kind == "neo4j_database":
        if not str(resource["name"]).startswith(PREFIX):
            raise ValueError(f"refusing to drop {resource['name']!r}: not a drill database")
        if droppers.neo4j is None:
            raise RuntimeError("no Neo4j connection to drop the scratch database with")
        droppers.neo4j(str(resource["uri"]), str(resource["name"]))
    elif kind == "neo4j_scratch_server":
        from recovery.drills import graph_scratch

        if droppers.neo4j_scratch is None:
            raise RuntimeError("no scratch Neo4j server is configured (drills.scratch.neo4j) to wipe in")
        with droppers.neo4j_scratch(str(resource["uri"])) as driver:
            graph_scratch.remove(driver, resource)
    elif kind == "milvus_collection":
        if not str(resource["name"]).startswith(PREFIX):
            raise ValueError(f"refusing to drop {resource['name']!r}: not a drill collection")
        if droppers.milvus is None:
            raise RuntimeError("no Milvus connection to drop the scratch collection with")
        droppers.milvus(str(resource["uri"]), str(resource["name"]))
    else:
        raise ValueError(f"unknown scratch resource kind {kind!r}")


def clean_run(store: Store, run: DrillRun, droppers: Droppers) -> list[str]:
    """Remove every resource of ``run`` not yet removed, newest first (servers before their directory)."""
    problems: list[str] = []
    for index in reversed(range(len(run.scratch))):
        resource = run.scratch[index]
        if resource.get("state") == "removed":
            continue
        try:
            remove_resource(resource, droppers)
        except Exception as exc:   # keep going: one stuck resource must not leave the others behind
            problems.append(redact(f"{resource.get('kind')}: {type(exc).__name__}: {exc}")[:300])
            continue
        runs.set_resource_state(store, require_id(run), index, "removed")
    if not problems:
        runs.mark_cleaned(store, require_id(run))
    return problems


def sweep(store: Store, droppers: Droppers) -> list[str]:
    """At start and before each drill: clean up after drills whose process died, and failed cleanups.

    Returns one line per drill cleaned (for the log / the CLI).
    """
    done: list[str] = []
    for run in runs.interrupted(store):
        if not runs.claim_interrupted(store, run):
            continue   # another process is cleaning it
        fresh = runs.get(store, require_id(run)) or run
        problems = clean_run(store, fresh, droppers)
        removed = len(run.scratch) - len(problems)
        line = f"drill {run.id} ({run.name}) was interrupted; removed {removed} scratch resource(s)"
        done.append(line + (f"; could not remove: {'; '.join(problems)}" if problems else ""))
        log.warning("%s", done[-1])
    for run in runs.uncleaned(store):
        problems = clean_run(store, run, droppers)
        if not problems:
            done.append(f"drill {run.id} ({run.name}): leftover scratch resources removed")
    return done


@dataclass
class Scratch:
    """The scratch environment of one running drill: each resource registered before it exists."""

    store: Store
    run_id: int
    root: Path
    droppers: Droppers
    os_user: str = "postgres"
    pg_bin: str | None = None
    _count: int = field(default=0, init=False)
    _deleting: dict[int, Future[None]] = field(default_factory=dict, init=False)
    _deleter: ThreadPoolExecutor | None = field(default=None, init=False)

    @classmethod
    def prepare(cls, store: Store, run_id: int, scratch_dir: Path, droppers: Droppers,
                os_user: str = "postgres", pg_bin: str | None = None) -> Scratch:
        root = Path(scratch_dir).absolute() / f"drill-{run_id}"
        runs.register(store, run_id, {"kind": "dir", "path": str(root)})
        scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch_dir.chmod(scratch_dir.stat().st_mode | 0o011)   # the server user must traverse it
        root.mkdir(mode=0o711)
        root.chmod(0o711)
        return cls(store, run_id, root, droppers, os_user, pg_bin)

    def _next(self, what: str) -> str:
        self._count += 1
        return f"{what}-{self._count}"

    def postgres(self) -> tuple[Path, int, Path, int]:
        """A new data dir, free port and socket dir for a restored cluster; returns them and the index."""
        name = self._next("pg")
        data_dir, socket_dir = self.root / name, self.root / f"{name}.sock"
        port = free_port()
        index = runs.register(self.store, self.run_id, {
            "kind": "postgres", "data_dir": str(data_dir), "socket_dir": str(socket_dir), "port": port,
            "log_file": str(self.root / f"{name}.log"), "pg_bin": self.pg_bin, "os_user": self.os_user})
        return data_dir, port, socket_dir, index

    def neo4j_database(self, uri: str) -> tuple[str, int]:
        name = f"{PREFIX}{self.run_id}_{self._count + 1}"
        self._count += 1
        return name, runs.register(self.store, self.run_id, {"kind": "neo4j_database", "uri": uri, "name": name})

    def neo4j_server(self, uri: str, database: str) -> int:
        """Register the scratch Neo4j server's database as about to receive this drill's import."""
        return runs.register(self.store, self.run_id, {"kind": "neo4j_scratch_server", "uri": uri,
                                                       "database": database})

    def note(self, index: int, **values: object) -> None:
        """Record what a resource was seen to hold (e.g. a scratch graph after the import)."""
        runs.update_resource(self.store, self.run_id, index, **values)

    def milvus_collection(self, uri: str, source: str) -> tuple[str, int]:
        self._count += 1
        name = f"{PREFIX}{self.run_id}_{self._count}_{source}"[:255]
        return name, runs.register(self.store, self.run_id, {"kind": "milvus_collection", "uri": uri, "name": name})

    def own_dir(self, name: str) -> Path:
        """A directory under the drill root owned by the server user (e.g. a scratch Milvus Lite file's)."""
        path = self.root / self._next(name)
        path.mkdir(mode=0o700)
        chown_to(path, os_user_ids(self.os_user))
        return path

    def mark(self, index: int, state: str) -> None:
        runs.set_resource_state(self.store, self.run_id, index, state)

    def remove(self, index: int) -> None:
        """Remove one resource now (a restore-test copy once it was validated)."""
        run = runs.get(self.store, self.run_id)
        if run is None:
            return
        remove_resource(run.scratch[index], self.droppers)
        self.mark(index, "removed")

    def remove_postgres_soon(self, index: int) -> None:
        """Stop a restore-test copy's server now and delete its files on a thread, while the drill goes on
        (the catalog mark, the next restore, the report). It is marked removed only by
        ``finish_removals`` once its files are gone, so a crash meanwhile leaves it listed for the sweep."""
        run = runs.get(self.store, self.run_id)
        if run is None:
            return
        resource = run.scratch[index]
        stop_postgres(resource)
        if self._deleter is None:
            self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"aegis-drill-{self.run_id}-rm")
        self._deleting[index] = self._deleter.submit(delete_postgres_files, resource)

    def finish_removals(self) -> list[str]:
        """Wait for the deletions ``remove_postgres_soon`` started; mark each finished one removed. One that
        failed stays listed (``clean_run`` retries it and reports it); returns what failed."""
        problems: list[str] = []
        for index, deletion in sorted(self._deleting.items()):
            try:
                deletion.result()
            except Exception as exc:
                problems.append(redact(f"postgres: {type(exc).__name__}: {exc}")[:300])
                continue
            self.mark(index, "removed")
        self._deleting.clear()
        if self._deleter is not None:
            self._deleter.shutdown()
            self._deleter = None
        return problems

    def clean_up(self) -> list[str]:
        run = runs.get(self.store, self.run_id)
        return clean_run(self.store, run, self.droppers) if run is not None else []
