"""Restore a Neo4j database in place (issue 9; C3, C4): keep a fresh export of the graph as it is →
wipe the database → import the chosen backup → verify → on any failure, wipe and re-import the export.

What the issue leaves open, decided here:

- **Where the fresh export goes.** ``<aside_dir>/neo4j-<database>-<YYYYMMDD_HHMMSS>.jsonl.zst.aes``
  (UTC), written by the same stream pipeline as a backup (compressed and encrypted with the backup key,
  through a ``LocalTarget`` rooted at ``aside_dir``), so no plaintext copy of the graph lands on disk;
  the file is 0600 (the local writer's ``mkstemp``), the directory 0700. ``bot/restore_wiring.py`` picks
  ``aside_dir``: ``<first local storage target>/aegis-aside``, else ``<drills.scratch_dir>/aegis-aside``.
  After a successful restore the export is kept (the step's ``aside`` output) and only the approved
  clean-up step removes it (``discard_neo4j_aside``, which removes nothing but a file of that pattern).
- **Wipe, not drop.** Neo4j Community has one user database and no ``DROP DATABASE``: the restore
  empties it in place (batched ``DETACH DELETE``, then every constraint and every index but the LOOKUP
  ones every database has), which is what ``import_graph`` requires.
- **Verification** (inside ``execute``, so that a failure can still roll back; ``verify`` adds nothing):
  node and relationship counts equal the backup's (its trailer), the constraints and indexes the backup
  created, by name (none missing, none extra), every index ONLINE, and the configured query
  (``components.neo4j.verify``) run in a read transaction under its timeout.
  Each is evidence ``{check, observed, expected, ok}``.
- **Failure.** A rollback that worked fails the step with ``RolledBack`` (with the checks, when a
  verification failed): the engine sends the incident back to ``assessed`` with the reason. A refusal
  before the graph was touched, or a rollback that failed, is a plain ``ActionError`` (Retry / Abort).
- **Writers.** The export is a read-committed read (recovery/backup/sources/neo4j.py): the services
  writing to the graph should be stopped first (the plan restores before it starts services).
- **Crash safety** (``restore_journal.py``): ``is_done`` is True only when the journal says
  ``restored`` (imported and verified); otherwise False, and the engine asks for approval again. A
  re-run after a crash part-way reuses the first attempt's complete export as its rollback copy —
  exporting again would save a half-wiped graph as "the state before".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from recovery.actions.base import (
    Action,
    ActionError,
    Evidence,
    Progress,
    RolledBack,
    VerificationFailed,
    evidence,
)
from recovery.actions.restore_journal import (
    RESTORED,
    RESTORING,
    ROLLED_BACK,
    SAVED,
    SAVING,
    StepJournal,
)
from recovery.actions.verify import IntegrityQuery
from recovery.backup.catalog import NEO4J_KIND, BackupNotFound, choose, exported_name
from recovery.backup.repository import Repository, VerifiedCopy
from recovery.backup.restore.journal import owner_only_directory
from recovery.backup.restore.postgres import RestoreError
from recovery.backup.runner import Neo4jSource
from recovery.backup.storage.local import LocalTarget
from recovery.backup.stream.pipe import produced
from recovery.backup.stream.pipeline import backup_stream, restore_stream
from recovery.objectives import RECOVERED_TO_GRAPH_EXPORT
from recovery.redact import error_line, redact
from statemachines.json_types import JsonObject
from statemachines.models import BackupRecord

if TYPE_CHECKING:   # the driver loads only when a Neo4j restore runs (it is an optional extra)
    from neo4j import Driver

    from recovery.backup.sources.neo4j import ExportStats, ImportStats

EXPORT_KIND = "neo4j_export"
_EXPORT_NAME = re.compile(r"^neo4j-[A-Za-z0-9_.-]+-\d{8}_\d{6}\.jsonl\.zst\.aes$")
ASIDE_DIR_NAME = "aegis-aside"
_USER_INDEXES = ("SHOW INDEXES YIELD name, type, owningConstraint, state "
                 "WHERE type <> 'LOOKUP' AND owningConstraint IS NULL RETURN name, state ORDER BY name")
_WIPE_BATCH = 10_000


def wipe_graph(driver: Driver, database: str) -> None:
    """Empty ``database``: every node and relationship, every constraint, every index but LOOKUP ones."""
    with driver.session(database=database) as session:
        while session.run(f"MATCH (n) WITH n LIMIT {_WIPE_BATCH} DETACH DELETE n RETURN count(*) AS c"
                          ).single(strict=True)["c"]:
            pass
        for record in list(session.run("SHOW CONSTRAINTS YIELD name")):
            session.run(f"DROP CONSTRAINT {_quote(record['name'])} IF EXISTS").consume()
        for record in list(session.run("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP' RETURN name")):
            session.run(f"DROP INDEX {_quote(record['name'])} IF EXISTS").consume()


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def discard_neo4j_aside(location: str) -> str:
    """Remove a fresh export an in-place restore kept (the clean-up step); refuses any other path."""
    path = Path(location)
    if not path.is_absolute() or path.parent.name != ASIDE_DIR_NAME or not _EXPORT_NAME.match(path.name):
        raise ActionError(f"refusing to remove {location}: it is not a Neo4j export Aegis kept aside "
                          f"(…/{ASIDE_DIR_NAME}/neo4j-<database>-<time>.jsonl.zst.aes)")
    if not path.exists():
        return f"{location} was already removed"
    path.unlink()
    return f"removed the Neo4j export {location}"


class Neo4jRestoreInPlace(Action):
    kind = "neo4j_restore"
    destructive = True

    def __init__(self, repository: Repository, source: Neo4jSource, *, backup_id: str, backup_time: str | None,
                 aside_dir: Path, check: IntegrityQuery | None = None,
                 context: dict[str, str] | None = None) -> None:
        self.repository = repository
        self.source = source
        self.database = source["database"]
        self.backup_id = backup_id
        self.backup_time = backup_time
        self.aside_dir = aside_dir
        self.check = check
        self.journal = StepJournal(aside_dir, "neo4j", self.database, context or {})
        self._copy: VerifiedCopy | None = None

    def describe(self) -> str:
        taken = f" (taken {self.backup_time})" if self.backup_time else ""
        return (f"Restore Neo4j database {self.database!r} in place from {self.backup_id}{taken}: export the "
                f"current graph to {self.aside_dir} for rollback, wipe the database, import the backup, verify")

    # --- before anything changes --------------------------------------------------------------

    def _record(self) -> BackupRecord:
        try:
            records = choose(self.repository.store, (NEO4J_KIND,), self.backup_id)
        except BackupNotFound as exc:
            raise ActionError(f"{exc}; nothing was changed") from None
        found = [r for r in records if exported_name(r.object_name, "neo4j") == self.database]
        if not found:
            raise ActionError(f"backup {self.backup_id} holds no export of Neo4j database {self.database!r}; "
                              "nothing was changed")
        return found[-1]

    def precheck(self) -> None:
        """The backup is in the catalog, one stored copy verifies end to end, Neo4j answers, the aside
        directory is writable — all before the graph is touched."""
        record = self._record()
        try:
            self._copy = self.repository.verified_copy(record)
        except RestoreError as exc:   # RestoreRefused: no intact copy on any target
            raise ActionError(redact(str(exc))) from None
        try:
            owner_only_directory(self.aside_dir)
        except OSError as exc:
            raise ActionError(f"cannot use {self.aside_dir} for the rollback export ({exc.strerror}); "
                              "nothing was changed") from None
        with self._driver() as driver:
            driver.verify_connectivity()

    @contextmanager
    def _driver(self) -> Iterator[Driver]:
        from neo4j import GraphDatabase
        from neo4j.exceptions import DriverError, Neo4jError

        password = self.source["password"]
        try:
            auth = (self.source["user"], password) if password else None
            driver = GraphDatabase.driver(self.source["uri"], auth=auth)
        except (DriverError, Neo4jError, ValueError) as exc:
            raise ActionError(f"Neo4j at {self.source['uri']}: {error_line(exc)}") from None
        try:
            yield driver
        except (DriverError, Neo4jError) as exc:
            raise ActionError(f"Neo4j at {self.source['uri']}: {error_line(exc)}") from None
        finally:
            driver.close()

    # --- the restore --------------------------------------------------------------------------

    def execute(self, progress: Progress) -> JsonObject:
        if self._copy is None:
            self.precheck()
        copy = self._copy
        assert copy is not None
        with self._driver() as driver:
            export = self._rollback_copy(driver, progress)
            self.journal.write(RESTORING)
            try:
                progress(f"wiping Neo4j database {self.database!r}")
                wipe_graph(driver, self.database)
                progress(f"importing {copy.record.object_name} from {copy.target.name}")
                from recovery.backup.restore.from_catalog import restore_neo4j

                stats = restore_neo4j(copy, self.repository.key, driver, self.database)
                observations = self.observe(driver, stats)
                failed = [f"{o['check']}: {o['observed']} (expected {o['expected']})" for o in observations
                          if not o["ok"]]
                if failed:
                    raise VerificationFailed("verification failed: " + "; ".join(failed), observations)
            except Exception as exc:
                self._roll_back(driver, export, progress, error_line(exc))   # ActionError if that fails too
                if isinstance(exc, VerificationFailed):
                    raise RolledBack(f"rolled back: {exc}", evidence=exc.evidence) from None
                raise RolledBack(f"rolled back: the restore of {self.backup_id} failed ({error_line(exc)}); "
                                 f"Neo4j database {self.database!r} holds the graph as it was before") from None
        self.journal.write(RESTORED, restored={"nodes": stats.nodes, "relationships": stats.relationships})
        progress(f"restored {self.backup_id}: {stats.nodes} nodes, {stats.relationships} relationships; "
                 f"the graph as it was is kept at {export['path']}")
        finished = copy.record.finished_at or copy.record.started_at
        return {
            "evidence": observations,
            "aside": [{"kind": EXPORT_KIND, "location": export["path"], "component": "neo4j"}],
            "backup_id": copy.record.run_id, "backup_time": self.backup_time, "database": self.database,
            "nodes": stats.nodes, "relationships": stats.relationships,
            "replaced": {"nodes": export["nodes"], "relationships": export["relationships"]},
            "recovered_to": finished.isoformat() if finished else None,
            "recovered_to_basis": RECOVERED_TO_GRAPH_EXPORT,
        }

    def _rollback_copy(self, driver: Driver, progress: Progress) -> JsonObject:
        """The export to roll back from: an interrupted restore's complete one, else a fresh one."""
        state = self.journal.read()
        earlier = state.get("export") if isinstance(state.get("export"), dict) else None
        if earlier and self.journal.interrupted(state) and Path(earlier["path"]).is_file():
            progress(f"an earlier restore of this database was interrupted: keeping its export {earlier['path']} "
                     "(the graph as it was before) as the rollback copy")
            return dict(earlier)
        if earlier and state.get("phase") in (SAVING, ROLLED_BACK):
            # half written (a crash while saving), or superseded (rolled back: the graph was verified equal
            # to it); a finished restore's export is another step's aside item, left to its clean-up
            Path(earlier["path"]).unlink(missing_ok=True)
        return self._export(driver, progress)

    def _export(self, driver: Driver, progress: Progress) -> JsonObject:
        from recovery.backup.sources.neo4j import export_graph

        database = re.sub(r"[^A-Za-z0-9_.-]", "_", self.database)
        name = f"neo4j-{database}-{datetime.now(UTC):%Y%m%d_%H%M%S}.jsonl.zst.aes"
        path = self.aside_dir / name
        self.journal.write(SAVING, export={"path": str(path), "object": name}, restored=None, rolled_back=None)
        progress(f"exporting the current graph to {path} (encrypted) for rollback")
        done: list[ExportStats] = []
        try:
            with produced(lambda out: done.append(export_graph(driver, self.database, out=out))) as reader:
                result = backup_stream(reader, name, [LocalTarget(self.aside_dir, "aside")], self.repository.key)
        except Exception as exc:
            raise ActionError(f"could not export the current graph for rollback ({error_line(exc)}); "
                              "nothing was changed") from None
        if not result.ok or not done:
            problem = "; ".join(t.error or "failed" for t in result.targets.values())
            raise ActionError(f"could not write the rollback export to {path} ({problem}); nothing was changed")
        stats = done[0]
        export: JsonObject = {"path": str(path), "object": name, "sha256": result.sha256,
                              "nodes": stats.nodes, "relationships": stats.relationships,
                              "constraints": stats.constraints, "indexes": stats.indexes,
                              "bytes": result.stored_size}
        self.journal.write(SAVED, export=export)
        progress(f"exported {stats.nodes} nodes and {stats.relationships} relationships "
                 f"({result.stored_size} bytes stored)")
        return export

    def _roll_back(self, driver: Driver, export: JsonObject, progress: Progress, reason: str) -> None:
        from recovery.backup.sources.neo4j import import_graph

        progress(f"the restore failed ({reason}); rolling back from {export['path']}")
        target = LocalTarget(self.aside_dir, "aside")
        try:
            wipe_graph(driver, self.database)
            with produced(lambda out: restore_stream(target, export["object"], self.repository.key, out,
                                                     export["sha256"])) as reader:
                stats = import_graph(driver, self.database, source=reader)
        except Exception as exc:
            raise ActionError(
                f"the restore failed ({reason}) and so did the rollback ({error_line(exc)}): Neo4j database "
                f"{self.database!r} is NOT as it was. The graph as it was is kept, encrypted with the backup key, "
                f"at {export['path']}; keep that file") from None
        self.journal.write(ROLLED_BACK, rolled_back={"nodes": stats.nodes, "relationships": stats.relationships})
        progress(f"rolled back: {stats.nodes} nodes and {stats.relationships} relationships, as before the restore")

    # --- checks -------------------------------------------------------------------------------

    def observe(self, driver: Driver, expected: ImportStats) -> list[Evidence]:
        """Evidence that ``database`` holds what the backup holds (and passes the configured query).

        Constraints and indexes are compared by name (the names the backup's schema lines created), so a
        database with as many but different ones does not pass.
        """
        from recovery.backup.sources.neo4j import schema_name_problems

        where = f"neo4j {self.database}"
        with driver.session(database=self.database) as session:
            nodes = session.run("MATCH (n) RETURN count(n) AS c").single(strict=True)["c"]
            rels = session.run("MATCH ()-[r]->() RETURN count(r) AS c").single(strict=True)["c"]
            constraints = [r["name"] for r in session.run("SHOW CONSTRAINTS YIELD name RETURN name ORDER BY name")]
            indexes = [(r["name"], r["state"]) for r in session.run(_USER_INDEXES)]
        offline = [name for name, state in indexes if state != "ONLINE"]
        wrong_constraints = schema_name_problems("constraints", expected.constraint_names, constraints)
        wrong_indexes = schema_name_problems("indexes", expected.index_names, [name for name, _ in indexes])
        backup = f"as in backup {self.backup_id}"
        found = [
            evidence(f"{where}: nodes", str(nodes), f"{expected.nodes} {backup}", nodes == expected.nodes),
            evidence(f"{where}: relationships", str(rels), f"{expected.relationships} {backup}",
                     rels == expected.relationships),
            evidence(f"{where}: constraints", f"{len(constraints)} ({', '.join(constraints) or 'none'})"[:200],
                     _named(expected.constraint_names, backup),
                     len(constraints) == expected.constraints and not wrong_constraints),
            evidence(f"{where}: indexes", f"{len(indexes)}, {len(indexes) - len(offline)} online"
                     + (f" ({', '.join(name for name, _ in indexes)})"[:150] if indexes else "")
                     + (f" (not online: {', '.join(offline)})"[:150] if offline else ""),
                     _named(expected.index_names, backup) + ", all online",
                     len(indexes) == expected.indexes and not offline and not wrong_indexes),
        ]
        if self.check is not None:
            found.append(self._configured(driver))
        return found

    def _configured(self, driver: Driver) -> Evidence:
        """The configured query, read-only (a READ transaction: Neo4j refuses writes in it) and timed."""
        from neo4j import READ_ACCESS
        from neo4j.exceptions import DriverError, Neo4jError

        check = self.check
        assert check is not None
        name = f"neo4j query: {check.name}"
        try:
            with driver.session(database=self.database, default_access_mode=READ_ACCESS) as session:
                with session.begin_transaction(timeout=check.timeout_seconds) as tx:
                    result = tx.run(check.sql)
                    record = next(iter(result), None)
                    result.consume()
        except (DriverError, Neo4jError) as exc:
            return evidence(name, f"query failed: {error_line(exc)}", check.expected(), False)
        if record is None or len(record) == 0:
            return evidence(name, "no row", check.expected(), False)
        value = record[0]
        return evidence(name, str(value)[:200] if value is not None else "null", check.expected(), check.judge(value))

    def is_done(self) -> bool | None:
        """From the journal: this step restored and verified the graph → True; otherwise False."""
        return self.journal.done()


def _named(names: list[str], backup: str) -> str:
    """What a schema check expects: how many and which, as the backup created them."""
    return (f"{len(names)} ({', '.join(sorted(names))}) {backup}" if names else f"none {backup}")[:200]
