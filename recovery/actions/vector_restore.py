"""Restore Milvus collections in place (issue 9; C3, C4), one collection at a time: rename the current
collection aside → recreate it from the chosen backup under its own name → verify → on any failure drop
the restored copy and rename the aside copy back.

What the issue leaves open, decided here:

- **The aside copy** is ``<name>__aegis_aside_<YYYYMMDD_HHMMSS>`` (UTC; the partial PostgreSQL restore
  names a table the same way), made by ``MilvusClient.rename_collection``: no data is copied, so putting
  a large collection aside is instant and rolling back is a rename. It is not dropped by this step: it
  stays until the incident is ``verified`` and the approved clean-up step calls ``discard_milvus_aside``,
  which drops only a collection whose name has that pattern. After the whole step succeeded the aside
  copies are released (unloaded), so that they hold no memory meanwhile.
- **All or nothing per step.** When one collection of the step fails, every collection the step already
  restored is rolled back as well, so the step's outcome is one fact: restored, or as before.
- **Failure.** A rollback that worked fails the step with ``RolledBack`` (with the checks, when a
  verification failed): the engine sends the incident back to ``assessed`` with the reason. A failure
  before the first collection was touched, or a rollback that failed, is a plain ``ActionError``.
- **A collection that no longer exists** (dropped, the disaster itself) is simply restored; there is
  nothing to put aside, and a rollback drops what the step created.
- **Verification** (inside ``execute``, so that a failure can still roll back): the row count equals the
  backup's, the fields (name, type, primary key, type parameters) equal the schema the backup declares, a
  search with a vector read from the restored data finds that row first (ties at the same distance
  allowed), and ``components.milvus.verify`` (``collection`` has at least ``min_rows`` rows).
- **Crash safety** (``restore_journal.py``): the journal records the stamp and, before each rename, which
  collection goes aside under which name. ``is_done`` is True only once it says ``restored``. A re-run
  after a crash finds an aside copy already there: the collection under the original name is then this
  step's own partial restore, so it is dropped and restored again, and the aside copy — the original —
  is never renamed over.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from recovery.actions.base import (
    Action,
    ActionError,
    Evidence,
    Progress,
    RolledBack,
    VerificationFailed,
    evidence,
)
from recovery.actions.restore_journal import RESTORED, RESTORING, ROLLED_BACK, StepJournal
from recovery.backup.catalog import MILVUS_KIND, BackupNotFound, choose, exported_name
from recovery.backup.repository import Repository, VerifiedCopy
from recovery.backup.restore.journal import owner_only_directory
from recovery.backup.restore.postgres import RestoreError
from recovery.objectives import RECOVERED_TO_VECTOR_EXPORT
from recovery.redact import error_line, redact
from statemachines.json_types import JsonObject

if TYPE_CHECKING:   # pymilvus loads only when a Milvus restore runs (an optional extra; ~2 s to import)
    from pymilvus import MilvusClient

ASIDE_KIND = "milvus_collection"
ASIDE_MARK = "__aegis_aside_"
_ASIDE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*__aegis_aside_\d{8}_\d{6}$")
_READ_CHUNK = 1024 * 1024
_MAX_NAME = 255   # Milvus's limit on a collection name


@contextmanager
def _client(uri: str) -> Iterator[MilvusClient]:
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=uri)
    except Exception as exc:   # pymilvus raises MilvusException and plain connection errors alike
        raise ActionError(f"Milvus at {uri} is unreachable: {error_line(exc)}") from None
    try:
        yield client
    finally:
        client.close()


def discard_milvus_aside(uri: str, name: str) -> str:
    """Drop a collection an in-place restore put aside (the clean-up step); refuses any other name."""
    if not _ASIDE_NAME.match(name):
        raise ActionError(f"refusing to drop Milvus collection {name!r}: it is not one Aegis put aside "
                          f"(<collection>{ASIDE_MARK}<time>)")
    with _client(uri) as client:
        if not client.has_collection(name):
            return f"Milvus collection {name} was already dropped"
        client.drop_collection(name)
    return f"dropped the Milvus collection {name} that the restore had put aside"


def _tapped(reader: BinaryIO, first_line: bytearray) -> Iterator[bytes]:
    """The stream in chunks, keeping its first line (the export's header, with the schema) on the way."""
    complete = False
    while chunk := reader.read(_READ_CHUNK):
        if not complete:
            cut = chunk.find(b"\n")
            first_line += chunk if cut < 0 else chunk[:cut]
            complete = cut >= 0
        yield chunk


def _field_view(field: JsonObject, type_name: str) -> str:
    """``name TYPE(param=value,…) primary``: what the schema check compares, field by field."""
    shown = ",".join(f"{k}={v}" for k, v in sorted(dict(field.get("params") or {}).items()))
    primary = " primary" if field.get("is_primary") else ""
    return f"{field['name']} {type_name}{'(' + shown + ')' if shown else ''}{primary}"


class MilvusRestoreInPlace(Action):
    kind = "milvus_restore"
    destructive = True

    def __init__(self, repository: Repository, uri: str, *, backup_id: str, backup_time: str | None,
                 collections: list[str], aside_dir: Path, check_collection: str | None = None,
                 check_min_rows: int = 1, context: dict[str, str] | None = None) -> None:
        self.repository = repository
        self.uri = uri
        self.backup_id = backup_id
        self.backup_time = backup_time
        self.collections = list(collections)
        self.check_collection = check_collection
        self.check_min_rows = check_min_rows
        self.aside_dir = aside_dir
        self.journal = StepJournal(aside_dir, "milvus", "collections", context or {})
        self._copies: dict[str, VerifiedCopy] | None = None

    def describe(self) -> str:
        taken = f" (taken {self.backup_time})" if self.backup_time else ""
        return (f"Restore Milvus collection(s) {', '.join(self.collections)} in place from {self.backup_id}{taken}: "
                f"rename each aside ({ASIDE_MARK}<time>), recreate it from the backup, verify")

    # --- before anything changes --------------------------------------------------------------

    def precheck(self) -> None:
        """Every collection's export is in the catalog and one stored copy of each verifies; Milvus answers."""
        try:
            records = choose(self.repository.store, (MILVUS_KIND,), self.backup_id)
        except BackupNotFound as exc:
            raise ActionError(f"{exc}; nothing was changed") from None
        if not self.collections:   # the plan's "every collection in the backup"
            self.collections = [n for r in records if (n := exported_name(r.object_name, "milvus"))]
        copies: dict[str, VerifiedCopy] = {}
        for name in self.collections:
            if len(name) + len(ASIDE_MARK) + 16 > _MAX_NAME:
                raise ActionError(f"collection name {name!r} is too long to put aside; nothing was changed")
            found = [r for r in records if exported_name(r.object_name, "milvus") == name]
            if not found:
                raise ActionError(f"backup {self.backup_id} holds no export of Milvus collection {name!r}; "
                                  "nothing was changed")
            try:
                copies[name] = self.repository.verified_copy(found[-1])   # all verified before any change
            except RestoreError as exc:
                raise ActionError(redact(str(exc))) from None
        try:
            owner_only_directory(self.aside_dir)
        except OSError as exc:
            raise ActionError(f"cannot keep the restore journal in {self.aside_dir} ({exc.strerror}); "
                              "nothing was changed") from None
        with _client(self.uri) as client:
            client.list_collections()
        self._copies = copies

    # --- the restore --------------------------------------------------------------------------

    def execute(self, progress: Progress) -> JsonObject:
        if self._copies is None:
            self.precheck()
        copies = self._copies
        assert copies is not None
        state = self.journal.read()
        if not self.journal.interrupted(state):   # nothing interrupted: a fresh restore with a new stamp
            state = {}
        stamp = str(state.get("stamp") or f"{datetime.now(UTC):%Y%m%d_%H%M%S}")
        planned: dict[str, JsonObject] = dict(state.get("collections") or {})
        done: list[str] = []
        observations: list[Evidence] = []
        with _client(self.uri) as client:
            leftover = [name for name in planned if name not in self.collections]
            if leftover:   # an interrupted restore of other collections: put them back as they were first
                self._roll_back(client, leftover, planned, progress, "an interrupted restore left them half-done")
                planned = {name: entry for name, entry in planned.items() if name in self.collections}
            try:
                for name in self.collections:
                    planned[name] = self._put_aside(client, name, planned, stamp, progress)
                    self.journal.write(RESTORING, stamp=stamp, collections=planned)
                    done.append(name)
                    observations += self._restore_one(client, name, copies[name], progress)
                failed = [f"{o['check']}: {o['observed']} (expected {o['expected']})" for o in observations
                          if not o["ok"]]
                if failed:
                    raise VerificationFailed("verification failed: " + "; ".join(failed), observations)
            except Exception as exc:
                self._roll_back(client, done, planned, progress, error_line(exc))   # ActionError if that fails too
                self.journal.write(ROLLED_BACK, stamp=stamp, collections={})
                if isinstance(exc, VerificationFailed):
                    raise RolledBack(f"rolled back: {exc}", evidence=exc.evidence) from None
                if not done:   # failed before the first collection was touched: a plain failure (Retry/Abort)
                    raise ActionError(f"the restore of {self.backup_id} failed ({error_line(exc)}); "
                                      "nothing was changed") from None
                raise RolledBack(f"rolled back: the restore of {self.backup_id} failed ({error_line(exc)}); "
                                 f"collection(s) {', '.join(done)} are as they were before") from None
            asides = [str(planned[name]["aside"]) for name in self.collections if planned[name].get("aside")]
            for aside in asides:
                client.release_collection(aside)   # kept on disk for the clean-up step, not in memory
        self.journal.write(RESTORED, stamp=stamp, collections=planned)
        progress(f"restored {', '.join(self.collections)} from {self.backup_id}; kept aside: "
                 f"{', '.join(asides) or 'nothing (no collection existed)'}")
        finished = next(iter(copies.values())).record.finished_at
        return {
            "evidence": observations,
            "aside": [{"kind": ASIDE_KIND, "location": aside, "component": "milvus"} for aside in asides],
            "backup_id": self.backup_id, "backup_time": self.backup_time, "collections": self.collections,
            "recovered_to": finished.isoformat() if finished else None,
            "recovered_to_basis": RECOVERED_TO_VECTOR_EXPORT,
        }

    def _put_aside(self, client: MilvusClient, name: str, planned: dict[str, JsonObject], stamp: str,
                   progress: Progress) -> JsonObject:
        """Rename ``name`` aside (once); returns its journal entry ``{"aside": name | None}``. ``planned``
        holds the entries of this restore so far (an interrupted one's, when continuing it)."""
        aside = f"{name}{ASIDE_MARK}{stamp}"
        earlier = planned.get(name)
        if earlier is not None and earlier.get("aside") and client.has_collection(str(earlier["aside"])):
            # an interrupted attempt already put the original aside: what has the name now is ours
            if client.has_collection(name):
                progress(f"an earlier attempt was interrupted: dropping its partial restore of {name} "
                         f"(the original is kept as {earlier['aside']})")
                client.drop_collection(name)
            return dict(earlier)
        if earlier is not None and earlier.get("created") and client.has_collection(name):
            progress(f"an earlier attempt was interrupted: dropping its partial restore of {name}")
            client.drop_collection(name)
        if not client.has_collection(name):
            progress(f"collection {name} does not exist: nothing to put aside, restoring it")
            return {"aside": None, "created": True}
        self.journal.write(RESTORING, stamp=stamp, collections={**planned, name: {"aside": aside}})
        progress(f"renaming collection {name} to {aside}")
        client.rename_collection(name, aside)
        return {"aside": aside}

    def _restore_one(self, client: MilvusClient, name: str, copy: VerifiedCopy, progress: Progress) -> list[Evidence]:
        from recovery.backup.restore.from_catalog import plaintext
        from recovery.backup.sources.milvus import import_collection

        progress(f"recreating {name} from {copy.record.object_name} ({copy.target.name})")
        first_line = bytearray()
        with plaintext(copy, self.repository.key) as reader:
            stats = import_collection(client, _tapped(reader, first_line), name)
        header = json.loads(bytes(first_line))
        progress(f"{name}: {stats.total_rows} rows restored")
        return self.observe(client, name, stats.total_rows, header.get("schema") or {})

    def _roll_back(self, client: MilvusClient, done: list[str], planned: dict[str, JsonObject], progress: Progress,
                   reason: str) -> None:
        progress(f"the restore failed ({reason}); rolling back {', '.join(done) or 'nothing'}")
        problems = []
        for name in reversed(done):
            aside = planned.get(name, {}).get("aside")
            try:
                if client.has_collection(name) and (aside is None or client.has_collection(str(aside))):
                    client.drop_collection(name)   # this step's restored copy (or its partial one)
                if aside and client.has_collection(str(aside)):
                    client.rename_collection(str(aside), name)
                    client.load_collection(name)
                progress(f"rolled back {name}" + (f" (renamed {aside} back)" if aside else " (dropped)"))
            except Exception as exc:
                problems.append(f"{name}: {error_line(exc)}" + (f" — the original is still {aside}" if aside else ""))
        if problems:
            raise ActionError(f"the restore failed ({reason}) and so did the rollback of "
                              f"{'; '.join(problems)}: rename the aside collection back by hand")

    # --- checks -------------------------------------------------------------------------------

    def observe(self, client: MilvusClient, name: str, rows: int, schema: JsonObject) -> list[Evidence]:
        """Evidence that ``name`` holds what the backup holds (count, schema, a search) and the configured check."""
        where = f"milvus {name}"
        count = _count(client, name)
        found = [evidence(f"{where}: rows", str(count), f"{rows} as in backup {self.backup_id}", count == rows)]
        desc = client.describe_collection(name)
        from pymilvus import DataType

        restored = [_field_view(f, DataType(f["type"]).name) for f in desc["fields"]]
        expected = [_field_view(f, str(f["type"])) for f in schema.get("fields", [])]
        found.append(evidence(f"{where}: schema fields", "; ".join(restored)[:300], "as in the backup: "
                              + "; ".join(expected)[:280], restored == expected))
        found.append(self._search(client, name, desc))
        if self.check_collection == name:
            found.append(evidence(f"milvus check: {name} rows", str(count), f"≥ {self.check_min_rows}",
                                  count >= self.check_min_rows))
        return found

    def _search(self, client: MilvusClient, name: str, desc: JsonObject) -> Evidence:
        from pymilvus import DataType

        check = f"milvus {name}: search with a stored vector"
        primary = next(f["name"] for f in desc["fields"] if f.get("is_primary"))
        vector = next((f["name"] for f in desc["fields"]
                       if DataType(f["type"]) in (DataType.FLOAT_VECTOR, DataType.BINARY_VECTOR)), None)
        if vector is None:
            return evidence(check, "not run: no dense or binary vector field", "that row first", True)
        try:
            sample = client.query(name, filter="", output_fields=[primary, vector], limit=1,
                                  consistency_level="Strong")
            if not sample:
                return evidence(check, "not run: the collection is empty, as in the backup", "that row first", True)
            key, value = sample[0][primary], sample[0][vector]
            query: Any = value[0] if isinstance(value, list) and value and isinstance(value[0], bytes) else value
            if not isinstance(query, bytes):
                query = [float(x) for x in query]
            hits = client.search(name, data=[query], anns_field=vector, limit=5, output_fields=[primary])[0]
        except Exception as exc:
            return evidence(check, f"search failed: {error_line(exc)}", "that row first", False)
        if not hits:
            return evidence(check, f"row {key}: no hits", "that row first", False)
        best = hits[0]["distance"]
        first = [hit["id"] for hit in hits if hit["distance"] == best]
        return evidence(check, f"row {key}: first hit {hits[0]['id']} at distance {best:.6g}", "that row first",
                        key in first)

    def is_done(self) -> bool | None:
        """From the journal: this step recreated and verified the collections → True; otherwise False."""
        return self.journal.done()


def _count(client: MilvusClient, name: str) -> int:
    result = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
    return int(result[0]["count(*)"])
