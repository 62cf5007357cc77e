"""The isolated environment of one drill, and the removal of what a drill left behind.

Everything a drill creates lives under ``<scratch_dir>/drill-<id>/`` (restored PostgreSQL data
directories, their sockets, logs and staged WAL), on ports taken free at that moment and bound to
127.0.0.1, or is a Neo4j database / Milvus collection named ``aegis_drill_<id>…``: never a
production name, path or port — or, with ``drills.scratch.neo4j``, the import into that scratch
server's empty database (``graph_scratch``: wiped only when it provably is the drill's). Each
resource is written to the drill's row *before* it is created (``runs.register``), so when the
process dies (SIGKILL, power loss) the next start finds the row (``runs.interrupted``) and removes
every resource it lists (``sweep``): it stops the scratch servers (``pg_ctl stop -m immediate``),
drops the scratch database and collections, deletes the directory. Removal is idempotent: an
already-removed resource is simply gone.
"""

from __future__ import annotations

import logging
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from recovery.backup.restore.postgres import RESTORING_SUFFIX, RestoredCluster, chown_to, os_user_ids
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Droppers:
    """How to remove the non-file resources (the drivers are the caller's: the domain opens none itself)."""

    neo4j: Callable[[str, str], None] | None = None       # (uri, database) -> drop it
    milvus: Callable[[str, str], None] | None = None      # (uri, collection) -> drop it
    # uri -> a driver to the configured scratch Neo4j server (drills.scratch.neo4j); refuses any other uri
    neo4j_scratch: Callable[[str], Driver] | None = None


def remove_resource(resource: JsonObject, droppers: Droppers) -> None:
    """Remove one registered resource; raises when it could not be removed (it stays listed)."""
    kind = resource.get("kind")
    if kind == "postgres":
        data_dir = Path(resource["data_dir"])
        cluster = RestoredCluster(data_dir, int(resource["port"]), Path(resource["socket_dir"]),
                                  Path(resource["log_file"]), pg_bin_dir(resource.get("pg_bin")),
                                  os_user=resource.get("os_user", "postgres"))
        if data_dir.is_dir() and (data_dir / "postmaster.pid").exists():
            cluster.stop("immediate")
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(data_dir.with_name(data_dir.name + RESTORING_SUFFIX), ignore_errors=True)   # a killed one-pass
        shutil.rmtree(Path(resource["socket_dir"]), ignore_errors=True)
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

    def clean_up(self) -> list[str]:
        run = runs.get(self.store, self.run_id)
        return clean_run(self.store, run, self.droppers) if run is not None else []
