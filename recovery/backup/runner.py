"""A backup run (B4): one id, every database the run's type covers, each through the pipeline.

``run_backup("postgresql" | "neo4j" | "milvus" | "full", …)``:
- the run id is ``backup_YYYYMMDD_HHMMSS`` (UTC); every object it stores is a catalog row;
- each source streams through ``pipeline.backup_stream`` to every target at once;
- an object counts when at least one target holds it (B6); a source that fails afterwards (e.g.
  ``pg_basebackup`` exiting non-zero) marks the row failed and its objects are deleted, so a
  half-taken backup is never listed as usable;
- the local staging copy is deleted only once two remote targets hold the object (B6);
- the incremental slot takes a PostgreSQL 17+ incremental on the previous backup, or a full backup
  whose row says why (``recovery.backup.incremental``).
The caller (CLI, scheduler, Slack) reports failures; this module only records them.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Generic, TypedDict, TypeVar, cast

from recovery.backup.catalog import (
    KIND_INCREMENTAL,
    KIND_MANIFEST,
    MILVUS_KIND,
    NEO4J_KIND,
    base_object_name,
    export_object_name,
    finish_record,
    insert_record,
    manifest_object_name,
    new_run_id,
    update_record,
)
from recovery.backup.repository import Repository
from recovery.backup.storage.base import Target
from recovery.backup.storage.local import LocalTarget
from recovery.backup.stream.crypto import BackupKey
from recovery.backup.stream.pipe import produced
from recovery.backup.stream.pipeline import PipelineResult, backup_stream
from recovery.redact import redact
from statemachines.models import BackupRecord, require_id
from statemachines.store import Store

if TYPE_CHECKING:   # incremental (and psycopg with it) loads only when a PostgreSQL backup runs
    from recovery.backup.incremental import BasePlan

Progress = Callable[[str, int], None]      # (object name, source bytes so far)
T = TypeVar("T")


class Neo4jSource(TypedDict):
    uri: str
    user: str
    password: str | None   # None: connect without authentication
    database: str


class _SourceFacts(TypedDict):
    """What a PostgreSQL source reports after streaming (None for the other sources)."""

    start_lsn: str | None
    stop_lsn: str | None
    timeline: int | None
    source_sha256: str | None


_TargetOutcome = dict[str, object]   # {"ok": bool, "error": str | None[, "removed": why]}, stored as JSON


@dataclass
class Sources:
    """What can be backed up, resolved from config (secrets already read from the environment)."""

    postgres_dsn: str | None = None
    neo4j: Neo4jSource | None = None
    milvus_uri: str | None = None


@dataclass
class RunReport:
    run_id: str
    kind: str
    records: list[BackupRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.status == "ok" for r in self.records)


class _Later(Generic[T]):
    """``fn`` run on a thread of its own once ``start`` is called; ``result`` waits for it (and runs it
    here when it was never started, e.g. a source without the callback)."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: list[T] = []
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="backup-after", daemon=True)
        self.started = False

    def _run(self) -> None:
        try:
            self._value.append(self._fn())
        except BaseException as exc:   # re-raised by result()
            self._error.append(exc)

    def start(self) -> None:
        if not self.started:
            self.started = True
            self._thread.start()

    def result(self) -> T:
        if self.started:
            self._thread.join()
        else:
            self._run()
        if self._error:
            raise self._error[0]
        return self._value[0]


class BackupRunner:
    def __init__(self, store: Store, targets: list[Target], key: BackupKey, sources: Sources,
                 progress: Progress | None = None) -> None:
        self.repository = Repository(store, targets, key)
        self.sources = sources
        self.progress = progress
        self.compress_threads: int | None = None   # zstd workers (None: compress.default_threads())

    @classmethod
    def on(cls, repository: Repository, sources: Sources, progress: Progress | None = None) -> BackupRunner:
        """A runner storing into ``repository`` (the object ``bot/backup_wiring`` builds from the config)."""
        runner = cls(repository.store, repository.targets, repository.key, sources, progress)
        runner.repository = repository
        return runner

    @property
    def store(self) -> Store:
        return self.repository.store

    @property
    def targets(self) -> list[Target]:
        return self.repository.targets

    @property
    def key(self) -> BackupKey:
        return self.repository.key

    # --- one object -----------------------------------------------------------------------

    def store_object(self, run_id: str, kind: str, component: str, object_name: str,
                     source_cm: AbstractContextManager[object], reason: str = "", *,
                     replace_failed: bool = False, source_done: Callable[[], object] | None = None) -> BackupRecord:
        """Stream one object to every target and record it; the row's status says whether it counts.

        ``replace_failed`` lets a retry of the same name (a WAL segment PostgreSQL re-archives) take
        the place of an earlier failed attempt; a good row is never replaced. ``source_done``: called
        once the source's last byte was read, while the uploads finish (``pipeline.backup_stream``).
        """
        record = insert_record(self.store, BackupRecord(run_id=run_id, kind=kind, component=component,
                                                        object_name=object_name, reason=reason,
                                                        key_id=self.key.key_id), replace_failed=replace_failed)
        result: PipelineResult | None = None
        error = ""
        facts = _SourceFacts(start_lsn=None, stop_lsn=None, timeline=None, source_sha256=None)
        progress = self.progress
        try:
            with source_cm as source:
                # a PostgreSQL backup object exposes .stream; a file or an export pipe is the stream itself
                stream = cast("BinaryIO | Iterable[bytes]", getattr(source, "stream", source))
                result = backup_stream(stream, object_name, self.targets, self.key,
                                       progress=(lambda n: progress(object_name, n)) if progress else None,
                                       threads=self.compress_threads, source_done=source_done)
            facts = _SourceFacts(start_lsn=getattr(source, "start_lsn", None),
                                 stop_lsn=getattr(source, "stop_lsn", None), timeline=getattr(source, "timeline", None),
                                 source_sha256=getattr(source, "source_sha256", None))
        except Exception as exc:   # the source failed: whatever was stored is not a backup
            error = redact(f"{type(exc).__name__}: {exc}")[:500]
            if result is not None:
                self._delete_everywhere(object_name)
        return self._finish(record, result, error, facts)

    def _finish(self, record: BackupRecord, result: PipelineResult | None, error: str,
                facts: _SourceFacts) -> BackupRecord:
        targets: dict[str, _TargetOutcome] = {}
        if result is not None:
            targets = {name: {"ok": t.ok, "error": t.error} for name, t in result.targets.items()}
        ok = not error and result is not None and result.ok
        remotes = [t.name for t in self.targets if not isinstance(t, LocalTarget)]
        if ok and result is not None and remotes and not any(result.targets[n].ok for n in remotes):
            # only the local staging copy exists: keep it, but this is not an off-site backup
            ok = False
            error = "every remote target failed; the local staging copy is kept"
        if ok and result is not None:
            self._drop_staging_copy(record.object_name, result, targets)
        values: dict[str, object] = {"targets": targets, "start_lsn": facts["start_lsn"],
                                     "stop_lsn": facts["stop_lsn"], "timeline": facts["timeline"],
                                     "source_sha256": facts["source_sha256"]}
        if not ok:
            failed = "; ".join(f"{n}: {t.get('error')}" for n, t in targets.items() if not t["ok"])
            why = error or "every target failed"
            values["reason"] = (record.reason + " " if record.reason else "") + (f"{why} ({failed})" if failed else why)
        if result is not None:
            values.update(source_size=result.source_size, stored_size=result.stored_size, sha256=result.sha256)
        return finish_record(self.store, require_id(record), ok=ok, **values)

    def _drop_staging_copy(self, name: str, result: PipelineResult, targets: dict[str, _TargetOutcome]) -> None:
        """B6: the local copy goes only once two remote targets hold the object."""
        remote_ok = [t for t in self.targets if not isinstance(t, LocalTarget) and result.targets[t.name].ok]
        if len(remote_ok) < 2:
            return
        for target in self.targets:
            if isinstance(target, LocalTarget) and result.targets[target.name].ok:
                with contextlib.suppress(Exception):
                    target.delete(name)
                    targets[target.name] = {"ok": True, "error": None, "removed": "held by two remote targets"}

    def _delete_everywhere(self, name: str) -> None:
        for target in self.targets:
            with contextlib.suppress(Exception):
                target.delete(name)

    # --- sources ---------------------------------------------------------------------------

    def _postgres(self, run_id: str, incremental: bool) -> list[BackupRecord]:
        """The PostgreSQL base backup of a run: full, or (17+, daily slot) incremental on the previous one.

        ``recovery.backup.incremental`` decides (and says why a daily slot took a full). From a 17+
        server each base backup's ``backup_manifest`` is also stored (kind ``pg_manifest``, copied out
        of the tar as it streams) so the next incremental never downloads its parent.
        """
        import tempfile

        from recovery.backup.incremental import plan_base_backup

        dsn = self.sources.postgres_dsn
        assert dsn
        with tempfile.TemporaryDirectory(prefix="aegis-pg-chain-") as tmp:
            plan = plan_base_backup(self.store, dsn, self.targets, self.key, incremental=incremental,
                                    workdir=Path(tmp))
            records = self._pg_base(run_id, plan, Path(tmp))
            failed = records[0]
            if (plan.kind == KIND_INCREMENTAL and failed.status != "ok"
                    and "BackupSourceError" in failed.reason):
                # pg_basebackup refused the incremental (e.g. WAL summaries gone): the day still gets a backup
                why = failed.reason[:300]
                records += self._pg_base(run_id, plan.as_full(f"the incremental failed ({why}): took a full backup"),
                                         Path(tmp))
        return records

    def _pg_base(self, run_id: str, plan: BasePlan, tmp: Path) -> list[BackupRecord]:
        """Store one base backup per ``plan`` (+ its manifest when it may become a parent)."""
        from recovery.backup.incremental import ManifestCapturingBackup
        from recovery.backup.sources.postgres import base_backup
        from recovery.drills.contents import record_contents, safe_snapshot

        dsn = self.sources.postgres_dsn
        assert dsn
        name = base_object_name(run_id, plan.kind)
        stream = base_backup(dsn, label=run_id, incremental_from_manifest=plan.parent_manifest, pg_bin=plan.pg_bin)
        manifest_path = tmp / f"{plan.kind}.backup_manifest"
        capture = ManifestCapturingBackup(stream, manifest_path) if plan.capture_manifest else None
        # what the cluster held right before and right after: the restore test's yardstick (recovery/drills)
        before, why = safe_snapshot(dsn)
        # "after" is taken once pg_basebackup's stream ended (the backup's end point is then in the past),
        # on a thread of its own while the targets finish their uploads, instead of after them
        after = _Later(lambda: safe_snapshot(dsn)) if before is not None else None
        record = self.store_object(run_id, plan.kind, "postgres", name, capture or stream, plan.reason,
                                   source_done=after.start if after is not None else None)
        if record.status == "ok":
            after_snapshot, why_after = after.result() if after is not None else (None, why)
            record = self._set_row(record, contents=record_contents(before, after_snapshot, why or why_after))
        elif after is not None and after.started:
            after.result()   # let it finish: it must not outlive the run on a connection of its own
        if plan.parent is not None:
            record = self._set_row(record, parent_run_id=plan.parent.run_id)
        if record.status != "ok" or capture is None:
            return [record]
        if not capture.captured:
            note = "backup_manifest not captured from the stream: the next incremental slot takes a full backup"
            return [self._set_row(record, reason=(record.reason + "; " if record.reason else "") + note)]
        with open(manifest_path, "rb") as manifest:
            stored = self.store_object(run_id, KIND_MANIFEST, "postgres", manifest_object_name(name), manifest)
        return [record, stored]

    def _set_row(self, record: BackupRecord, **values: object) -> BackupRecord:
        return update_record(self.store, require_id(record), **values)

    def _neo4j(self, run_id: str) -> list[BackupRecord]:
        from neo4j import GraphDatabase

        from recovery.backup.sources.neo4j import export_graph

        cfg = self.sources.neo4j
        assert cfg
        password = cfg["password"]
        auth = (cfg["user"], password) if password else None
        database = cfg.get("database", "neo4j")
        with GraphDatabase.driver(cfg["uri"], auth=auth) as driver:
            source = produced(lambda out: export_graph(driver, database, out=out))
            name = export_object_name(run_id, "neo4j", database)
            return [self.store_object(run_id, NEO4J_KIND, "neo4j", name, source)]

    def _milvus(self, run_id: str) -> list[BackupRecord]:
        from pymilvus import MilvusClient

        from recovery.backup.sources.milvus import export_collection, list_collections

        client = MilvusClient(uri=self.sources.milvus_uri or "")
        try:
            records = []
            for collection in list_collections(client):
                source = produced(functools.partial(export_collection, client, collection))
                records.append(self.store_object(run_id, MILVUS_KIND, "milvus",
                                                  export_object_name(run_id, "milvus", collection), source))
            return records
        finally:
            client.close()

    def run(self, kind: str, *, incremental: bool = False) -> RunReport:
        """``incremental`` is the daily PostgreSQL slot (B1); a manual run takes a full backup."""
        if kind not in ("full", "postgresql", "neo4j", "milvus"):
            raise ValueError("backup kind must be full, postgresql, neo4j or milvus")
        run_id = new_run_id(self.store)
        report = RunReport(run_id, kind)
        wanted = {
            "postgresql": self.sources.postgres_dsn is not None and kind in ("full", "postgresql"),
            "neo4j": self.sources.neo4j is not None and kind in ("full", "neo4j"),
            "milvus": self.sources.milvus_uri is not None and kind in ("full", "milvus"),
        }
        if kind != "full" and not wanted[kind]:
            report.errors.append(f"no {kind} component is configured (components.{kind})")
        for component, enabled in wanted.items():
            if not enabled:
                continue
            try:
                if component == "postgresql":
                    report.records += self._postgres(run_id, incremental)
                elif component == "neo4j":
                    report.records += self._neo4j(run_id)
                else:
                    report.records += self._milvus(run_id)
            except Exception as exc:  # e.g. the database is unreachable before anything streamed
                report.errors.append(redact(f"{component}: {type(exc).__name__}: {exc}")[:500])
        return report
