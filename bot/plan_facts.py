"""Config + catalog → the planner's :class:`recovery.planner.Facts` (``bot/wiring.py`` ``facts()``).

The planner is pure; this module reads what it needs: which components, hooks and services are
configured (with the commands the approver will read in the step titles), how the primary is
controlled, and — when a store is given — the catalog's restorable backups as
:class:`recovery.clean_point.BackupCandidate` per component. No secret is read here: hook commands
and data directories are in the (committable) config file, and the candidates carry catalog facts only.

A Milvus run stores one object per collection (``<run>/milvus-<collection>.jsonl.zst.aes``,
recovery/backup/runner.py): its rows become one candidate naming its collections, verified (or
restore-tested) only when every one of its rows is, at the latest of their times.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from bot.config import Config, Hook, PostgresNode, Service
from recovery.backup import catalog
from recovery.clean_point import BackupCandidate
from recovery.health import CREDENTIALS_REFUSED, CheckResult
from recovery.planner import Facts, PostgresControlInfo, ServiceInfo, command_preview, parse_time
from statemachines.json_types import JsonObject
from statemachines.models import BackupRecord
from statemachines.store import Store


def node_label(node: PostgresNode, which: str) -> str:
    """A PostgreSQL node's name in checks, steps and messages: its label, else ``postgres <which>``."""
    return node.label or f"postgres {which}"


def hook_preview(hook: Hook) -> str:
    return command_preview(hook.command, hook.webhook)


def service_info(service: Service) -> ServiceInfo:
    which = "start" if service.start is not None else "restart" if service.restart is not None else None
    hook = service.start or service.restart
    return ServiceInfo(service.name, service.tier, tuple(service.depends_on), which,
                       hook_preview(hook) if hook else "")


def control_info(node: PostgresNode | None) -> PostgresControlInfo | None:
    control = node.control if node else None
    if control is None:
        return None
    stop = hook_preview(control.stop) if control.stop else ""
    start = hook_preview(control.start) if control.start else ""
    return PostgresControlInfo(control.data_dir, control.kind, control.os_user, stop, start)


def _latest(times: Iterable[datetime | None]) -> datetime | None:
    """The latest of ``times`` when every one is known, else None."""
    known = list(times)
    if not known or any(t is None for t in known):
        return None
    return max(t for t in known if t is not None)


def _all(flags: Iterable[bool | None]) -> bool | None:
    """False if any is False, True if all are True, else None (not all checked)."""
    values = list(flags)
    if any(v is False for v in values):
        return False
    return True if values and all(v is True for v in values) else None


def _collection(row: BackupRecord) -> str:
    return catalog.exported_name(row.object_name, "milvus") or row.object_name


def candidate(rows: list[BackupRecord]) -> BackupCandidate:
    """One run's rows of one component as one candidate (module docstring)."""
    first = rows[0]
    verified = [bool(r.verify_result.get("ok")) if r.verified_at else None for r in rows]
    return BackupCandidate(
        run_id=first.run_id, component=first.component, kind=first.kind,
        taken_at=max(r.finished_at or r.started_at for r in rows),
        verified_at=_latest(r.verified_at for r in rows), verify_ok=_all(verified),
        restore_tested_at=_latest(r.restore_tested_at for r in rows),
        restore_test_ok=_all(r.restore_test_ok for r in rows),
        collections=tuple(_collection(r) for r in rows) if first.component == "milvus" else ())


def backup_candidates(store: Store) -> dict[str, tuple[BackupCandidate, ...]]:
    """Per component, every restorable backup in the catalog (good rows only), oldest first."""
    runs: dict[tuple[str, str], list[BackupRecord]] = {}
    for row in catalog.retained_backups(store):
        runs.setdefault((row.component, row.run_id), []).append(row)
    grouped: dict[str, list[BackupCandidate]] = {}
    for (component, _run), rows in runs.items():
        grouped.setdefault(component, []).append(candidate(rows))
    return {component: tuple(sorted(found, key=lambda b: b.taken_at)) for component, found in grouped.items()}


def build_facts(config: Config, scenario: str, results: list[CheckResult], *, store: Store | None = None,
                options: JsonObject | None = None, infection_time: datetime | None = None) -> Facts:
    """``infection_time`` is the default (the detection time); the form's ``options["infection_time"]`` wins."""
    options = dict(options or {})
    pg = config.components.postgres
    neo4j = config.components.neo4j
    return Facts(
        scenario=scenario,
        has_postgres_primary=pg is not None,
        has_postgres_standby=bool(pg and pg.standby),
        hooks=frozenset(config.hooks),
        hook_commands={name: hook_preview(hook) for name, hook in config.hooks.items()},
        services=tuple(service_info(s) for s in config.services),
        failing=frozenset(r.name for r in results if not r.ok),
        inconclusive=frozenset(r.name for r in results if not r.ok and r.facts.get(CREDENTIALS_REFUSED)),
        backups=backup_candidates(store) if store is not None else {},
        postgres_control=control_info(pg.primary if pg else None),
        neo4j_database=neo4j.database if neo4j else None,
        has_milvus=config.components.milvus is not None,
        options=options,
        infection_time=parse_time(options.get("infection_time")) or infection_time,
        # the standby's check, named as wiring.component_specs names it
        standby_check=node_label(pg.standby, "standby") if pg and pg.standby else None,
        component_checks=_component_checks(config),
    )


#: the names of the Neo4j and Milvus checks of an assessment (``bot.wiring.component_specs``)
NEO4J_CHECK, MILVUS_CHECK = "neo4j", "milvus"


def _component_checks(config: Config) -> dict[str, str]:
    """Each configured database's check, named as ``bot.wiring.component_specs`` names it."""
    pg, found = config.components.postgres, {}
    if pg is not None:
        found["postgres"] = node_label(pg.primary, "primary")
    if config.components.neo4j is not None:
        found["neo4j"] = NEO4J_CHECK
    if config.components.milvus is not None:
        found["milvus"] = MILVUS_CHECK
    return found
