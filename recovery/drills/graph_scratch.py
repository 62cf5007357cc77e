"""A scratch Neo4j server for drills (``drills.scratch.neo4j``): import only into an empty database, and
wipe afterwards only what the drill can prove it put there.

Neo4j Community has one user database and no ``CREATE DATABASE``, so a drill cannot make a scratch
database beside production; an SRE names a separate server for drills instead. That server may hold
someone's data all the same (a mistyped URI, a colleague's experiment), so:

- **Before** the import the database must be empty: no node, no constraint, no index but the LOOKUP ones
  every database has (``contents(...).empty``). Anything else → the restore test is refused with what was
  found, and nothing is deleted.
- **After** the import (whether it succeeded or raised) the drill records what the database then holds —
  counts and the names of constraints and indexes — in its scratch resource (``observed``) and wipes.
- **At the next start after a crash** (``remove``) the database is wiped only when it still holds exactly
  what was recorded, or — when the drill died during its import, before it recorded anything — when it
  bears the import's own signature: the temporary import index exists and every node still carries the
  import label. In any other case it is left untouched and the resource stays listed with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from recovery.actions.graph_restore import wipe_graph
from recovery.backup.sources.neo4j import IMPORT_INDEX, IMPORT_LABEL
from statemachines.json_types import JsonObject

if TYPE_CHECKING:   # the driver loads only when a Neo4j drill runs (it is an optional extra)
    from neo4j import Driver

RESOURCE_KIND = "neo4j_scratch_server"


@dataclass
class GraphContents:
    nodes: int = 0
    relationships: int = 0
    constraints: list[str] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)     # every index but the LOOKUP ones
    import_labelled: int = 0                             # nodes still carrying the import's temporary label

    @property
    def empty(self) -> bool:
        return not (self.nodes or self.relationships or self.constraints or self.indexes)

    def describe(self) -> str:
        parts = [f"{self.nodes} nodes", f"{self.relationships} relationships"]
        if self.constraints:
            parts.append(f"constraints {', '.join(self.constraints[:10])}")
        if self.indexes:
            parts.append(f"indexes {', '.join(self.indexes[:10])}")
        return ", ".join(parts)

    def as_dict(self) -> JsonObject:
        return asdict(self)


def contents(driver: Driver, database: str) -> GraphContents:
    label = "`" + IMPORT_LABEL.replace("`", "``") + "`"
    with driver.session(database=database) as session:
        nodes = int(session.run("MATCH (n) RETURN count(n) AS c").single(strict=True)["c"])
        rels = int(session.run("MATCH ()-[r]->() RETURN count(r) AS c").single(strict=True)["c"])
        labelled = int(session.run(f"MATCH (n:{label}) RETURN count(n) AS c").single(strict=True)["c"])
        constraints = sorted(str(r["name"]) for r in session.run("SHOW CONSTRAINTS YIELD name"))
        indexes = sorted(str(r["name"]) for r in session.run(
            "SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP' RETURN name"))
    return GraphContents(nodes, rels, constraints, indexes, labelled)


def refusal(uri: str, database: str, found: GraphContents) -> str:
    return (f"not tested: the scratch Neo4j server {uri} (database {database!r}) is not empty ({found.describe()}); "
            "a drill imports only into an empty database and never deletes data it did not put there — empty it, "
            "or name another server in drills.scratch.neo4j")


def _same(now: GraphContents, recorded: JsonObject) -> bool:
    return (now.nodes == recorded.get("nodes") and now.relationships == recorded.get("relationships")
            and now.constraints == recorded.get("constraints") and now.indexes == recorded.get("indexes"))


def _interrupted_import(now: GraphContents) -> bool:
    return IMPORT_INDEX in now.indexes and now.import_labelled == now.nodes


def remove(driver: Driver, resource: JsonObject) -> str:
    """Wipe the drill's import from the scratch database when it provably is the drill's; raise otherwise."""
    database = str(resource["database"])
    now = contents(driver, database)
    if now.empty:
        return "already empty"
    recorded = resource.get("observed")
    if isinstance(recorded, dict) and _same(now, recorded):
        why = "it holds exactly what the drill recorded after its import"
    elif recorded is None and _interrupted_import(now):
        why = "it holds only an interrupted import of the drill's (import index present, every node import-labelled)"
    else:
        raise RuntimeError(
            f"left the scratch Neo4j database {database!r} at {resource['uri']} untouched: it holds {now.describe()}, "
            f"not what the drill recorded ({recorded or 'nothing recorded'}); someone else may have written to it — "
            "check it and empty it by hand")
    wipe_graph(driver, database)
    return f"wiped ({why})"
