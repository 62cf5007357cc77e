"""Turn configuration into the things recovery/ works with: health specs, planner facts, actions.

This is the one place that reads secrets (passwords from the environment) on their way to an
action; plan steps in the database only name config entries (``{"node": "standby"}``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bot.config import Config, Hook, Neo4jComponent, PostgresNode
from bot.plan_facts import MILVUS_CHECK, NEO4J_CHECK, build_facts, node_label
from recovery.actions.base import Action, ActionError, Progress
from recovery.actions.discard_aside import DiscardAside, Discarder, discard_postgres_data_dir
from recovery.actions.hook import HookAction
from recovery.actions.manual import ManualStep
from recovery.actions.postgres import PostgresConfirmDown, PostgresPromote
from recovery.actions.reprotect import ASIDE_INFIX as REPROTECT_ASIDE
from recovery.actions.reprotect import INCOMING_INFIX as REPROTECT_INCOMING
from recovery.actions.reprotect import NodeControl, PostgresReprotect
from recovery.actions.service_start import ServiceStart
from recovery.actions.verify import IntegrityQuery, PostgresVerification, VerifyRecovery
from recovery.health import Ask, CheckResult, HealthSpec
from recovery.monitor.checks import Observation
from recovery.monitor.graph_vector import MilvusProbe, Neo4jProbe, milvus_probe
from recovery.planner import Facts
from statemachines.json_types import JsonObject
from statemachines.models import PlanStep
from statemachines.store import Store


def _node(config: Config, which: str) -> PostgresNode:
    pg = config.components.postgres
    nodes = {"primary": pg.primary, "standby": pg.standby} if pg else {}
    node = nodes.get(which)   # by name, not getattr: only a node field may answer
    if node is None:
        raise ActionError(f"no PostgreSQL {which} is configured (components.postgres.{which})")
    return node


def neo4j_credentials(neo4j: Neo4jComponent) -> tuple[str, str] | None:
    """Read when a probe builds its driver, as ``bot.backup_wiring.sources_from`` reads them."""
    password = os.environ.get(neo4j.password_env) if neo4j.password_env else None
    return (neo4j.user, password) if password else None


def _asked_once(make: Callable[[], Callable[[float], Observation]]) -> Ask:
    """An assessment's question to a server: a fresh probe, asked once, its client closed after."""
    def ask(timeout: float) -> tuple[bool, str, JsonObject]:
        probe = make()
        try:
            seen = probe(timeout)
        finally:
            if isinstance(probe, Neo4jProbe | MilvusProbe):
                probe.close()
        return seen.ok, seen.reason, seen.facts
    return ask


def component_specs(config: Config) -> list[HealthSpec]:
    """The assessment's checks of the databases: PostgreSQL primary and standby, Neo4j (``RETURN 1``),
    Milvus (``list_collections``; Milvus Lite: present and readable)."""
    specs: list[HealthSpec] = []
    pg = config.components.postgres
    if pg:
        specs.append(HealthSpec(node_label(pg.primary, "primary"), "postgres", pg.primary.full_dsn()))
        if pg.standby:
            specs.append(HealthSpec(node_label(pg.standby, "standby"), "postgres", pg.standby.full_dsn()))
    neo4j = config.components.neo4j
    if neo4j is not None:
        specs.append(HealthSpec(NEO4J_CHECK, "neo4j", neo4j.uri, ask=_asked_once(
            lambda: Neo4jProbe(neo4j.uri, lambda: neo4j_credentials(neo4j), neo4j.database))))
    milvus = config.components.milvus
    if milvus is not None:
        uri = milvus.uri
        specs.append(HealthSpec(MILVUS_CHECK, "milvus", uri, ask=_asked_once(lambda: milvus_probe(uri))))
    return specs


def service_specs(config: Config) -> list[HealthSpec]:
    specs: list[HealthSpec] = []
    for service in config.services:
        check = service.health
        if check is None:
            continue
        if check.tcp:
            specs.append(HealthSpec(service.name, "tcp", check.tcp, check.timeout_seconds))
        elif check.http:
            specs.append(HealthSpec(service.name, "http", check.http, check.timeout_seconds))
        elif check.postgres_dsn_env:
            dsn = os.environ.get(check.postgres_dsn_env, "")
            specs.append(HealthSpec(service.name, "postgres", dsn, check.timeout_seconds))
    return specs


def facts(config: Config, scenario: str, results: list[CheckResult], *, store: Store | None = None,
          options: JsonObject | None = None, infection_time: datetime | None = None) -> Facts:
    """The planner's facts (bot/plan_facts.py): with ``store``, the catalog's backups; ``options`` =
    incident.recovery_options; ``infection_time`` the default time of infection (its form's value wins)."""
    return build_facts(config, scenario, results, store=store, options=options, infection_time=infection_time)


def build_action(config: Config, step: PlanStep, context: dict[str, str], *, store: Store | None = None) -> Action:
    """The action that carries out ``step``, built from the *current* config (``store``: the catalog, for
    the restores)."""
    params = step.params or {}
    if step.action == "postgres_restore":
        return postgres_restore(config, params, context, store)
    if step.action == "postgres_partial_restore":
        return postgres_partial_restore(config, params, context, store)
    if step.action in ("neo4j_restore", "milvus_restore"):   # in place, with rollback (bot/restore_wiring.py)
        from bot.restore_wiring import milvus_restore, neo4j_restore

        restore = neo4j_restore if step.action == "neo4j_restore" else milvus_restore
        return restore(config, params, context, store)
    if step.action == "postgres_confirm_down":
        node = _node(config, params.get("node", "primary"))
        return PostgresConfirmDown(node.full_dsn(), node_label(node, "primary"))
    if step.action == "postgres_promote":
        node = _node(config, params.get("node", "standby"))
        return PostgresPromote(node.full_dsn(), node_label(node, "standby"))
    if step.action == "hook":
        name = str(params.get("hook"))
        hook = config.hooks.get(name)
        if hook is None:
            raise ActionError(f"hook {name!r} is not configured (hooks.{name})")
        return HookAction(name, command=hook.command, webhook=hook.webhook,
                          timeout_seconds=hook.timeout_seconds, headers_env=hook.headers_env,
                          done_check=hook.done_check, context=context,
                          env=hook.env, pass_env=hook.pass_env)
    if step.action == "manual":
        return ManualStep(str(params.get("instruction", step.title)))
    if step.action == "verify":
        database = None
        if params.get("postgres_writable"):
            which = str(params["postgres_writable"])
            node = _node(config, which)
            database = PostgresVerification(node.full_dsn(), node_label(node, which), integrity_queries(config))
        return VerifyRecovery(service_specs(config) if params.get("services") else [], database)
    if step.action in AFTERCARE_ACTIONS:   # failover aftercare and service start (issue 9)
        return AFTERCARE_ACTIONS[step.action](config, params, context)
    raise ActionError(f"unknown action {step.action!r}")


def integrity_queries(config: Config) -> tuple[IntegrityQuery, ...]:
    """The configured integrity queries a verification runs on the recovered PostgreSQL node."""
    postgres = config.components.postgres
    if postgres is None:
        return ()
    return tuple(IntegrityQuery(c.name, c.sql, c.expect, c.min, c.timeout_seconds) for c in postgres.integrity_checks)


# --- in-place PostgreSQL restore (recovery/actions/postgres_restore.py) ----------------------------------

def _server_hook(name: str, hook: Hook, context: dict[str, str]) -> Callable[[Progress], object]:
    action = HookAction(name, command=hook.command, webhook=hook.webhook, timeout_seconds=hook.timeout_seconds,
                        headers_env=hook.headers_env, context=context, env=hook.env, pass_env=hook.pass_env)
    return action.execute


def postgres_restore(config: Config, params: JsonObject, context: dict[str, str], store: Store | None) -> Action:
    """``postgres_restore`` from its params (node, backup_id, target_time) and the node's ``control``."""
    from bot.backup_wiring import FRIENDLY_ERRORS, runner_from
    from recovery.actions.postgres_restore import PostgresRestoreInPlace, parse_time, restore_checks
    from recovery.backup.restore.in_place import InPlaceRestore, Server

    which = str(params.get("node") or "primary")
    node = _node(config, which)
    control = node.control
    if control is None:
        raise ActionError(f"components.postgres.{which}.control is not configured: Aegis does not know the data "
                          "directory or how to stop and start the server")
    if params.get("data_dir") and str(params["data_dir"]) != control.data_dir:
        raise ActionError(f"the plan restores into {params['data_dir']} but the config now says {control.data_dir}: "
                          "re-plan")
    backup_id = str(params.get("backup_id") or "")
    if not backup_id:
        raise ActionError("the step names no backup_id")
    if store is None:
        raise ActionError("an in-place restore needs the backup catalog, and none was given")
    try:
        runner = runner_from(config, store)
    except FRIENDLY_ERRORS as exc:
        raise ActionError(str(exc)) from None
    label, dsn = node_label(node, which), node.full_dsn()
    server = Server(
        Path(control.data_dir), dsn, label, os_user=control.os_user, pg_bin=control.pg_bin,
        stop_hook=_server_hook("postgres_stop", control.stop, context) if control.stop else None,
        start_hook=_server_hook("postgres_start", control.start, context) if control.start else None)
    checks = restore_checks(dsn, label, PostgresVerification(dsn, label, integrity_queries(config)).observe)
    restore = InPlaceRestore(store, runner, server, backup_id=backup_id,
                             target_time=parse_time(params.get("target_time"), "target_time"),
                             incident=context.get("incident", "manual"), checks=checks,
                             step=context.get("step") if control.prepare_ahead else None)
    backup_time = params.get("backup_time")
    return PostgresRestoreInPlace(restore, control=control.kind, backup_time=str(backup_time) if backup_time else None)


# --- partial PostgreSQL restore (recovery/actions/partial_restore.py) ------------------------------

def postgres_partial_restore(config: Config, params: JsonObject, context: dict[str, str],
                             store: Store | None) -> Action:
    """``postgres_partial_restore`` from its params; the scratch copy goes under ``drills.scratch_dir``."""
    from bot.backup_wiring import FRIENDLY_ERRORS, runner_from
    from recovery.actions.partial_restore import PostgresPartialRestore
    from recovery.actions.postgres_restore import parse_time
    from recovery.backup.restore.partial import ScratchSettings

    node = _node(config, "primary")
    backup_id, database = str(params.get("backup_id") or ""), str(params.get("database") or "")
    if not backup_id or not database:
        raise ActionError("the step names no backup_id or no database")
    if store is None:
        raise ActionError("a partial restore needs the backup catalog, and none was given")
    try:
        runner = runner_from(config, store)
    except FRIENDLY_ERRORS as exc:
        raise ActionError(str(exc)) from None
    control = node.control
    scratch = ScratchSettings(Path(config.drills.scratch_dir), os_user=control.os_user if control else "postgres",
                              pg_bin=(control.pg_bin if control else None) or config.drills.pg_bin)
    table, backup_time = params.get("table"), params.get("backup_time")
    return PostgresPartialRestore(
        store=store, runner=runner, dsn=node.full_dsn(), label=node_label(node, "primary"), backup_id=backup_id,
        target_time=parse_time(params.get("target_time"), "target_time"), database=database,
        table=str(table) if table else None, scratch=scratch, context=context,
        backup_time=str(backup_time) if backup_time else None)


# --- re-protect, service start, clean-up (issue 9): built from config -----------------------------

def _control(config: Config, which: str) -> NodeControl:
    node = _node(config, which)
    control = node.control
    if control is None:
        raise ActionError(f"components.postgres.{which}.control is not configured: re-protect needs its "
                          "data_dir (and os_user) to rebuild it")
    context = {"node": which}
    return NodeControl(Path(control.data_dir), control.os_user, Path(control.pg_bin) if control.pg_bin else None,
                       _hook(f"{which}.stop", control.stop, context) if control.stop else None,
                       _hook(f"{which}.start", control.start, context) if control.start else None)


def _hook(name: str, hook: Hook, context: dict[str, str]) -> HookAction:
    return HookAction(name, command=hook.command, webhook=hook.webhook, timeout_seconds=hook.timeout_seconds,
                      headers_env=hook.headers_env, done_check=hook.done_check, context=context, env=hook.env,
                      pass_env=hook.pass_env)


def _reprotect(config: Config, params: JsonObject, context: dict[str, str]) -> Action:
    old, new = str(params.get("old_primary", "primary")), str(params.get("new_primary", "standby"))
    new_node = _node(config, new)
    return PostgresReprotect(_control(config, old), node_label(_node(config, old), old), new_node.full_dsn(),
                             node_label(new_node, new), method=str(params.get("method", "pg_rewind")),
                             step_key=f"{context.get('incident', '')}#{context.get('step', '')}")


def _service_start(config: Config, params: JsonObject, context: dict[str, str]) -> Action:
    name, which = str(params.get("service")), str(params.get("hook", "start"))
    service = next((s for s in config.services if s.name == name), None)
    if service is None:
        raise ActionError(f"service {name!r} is not configured (services[].name)")
    hook = service.start if which == "start" else service.restart if which == "restart" else None
    if hook is None:
        raise ActionError(f"service {name} has no {which} hook (services[{name}].{which})")
    health = next((spec for spec in service_specs(config) if spec.name == name), None)
    return ServiceStart(name, _hook(f"service.{name}.{which}", hook, context), health)


def _live_data_dirs(config: Config) -> tuple[str, ...]:
    pg = config.components.postgres
    nodes = [pg.primary, pg.standby] if pg else []
    return tuple(n.control.data_dir for n in nodes if n is not None and n.control is not None)


def _discard_data_dir(config: Config) -> Discarder:
    """A data directory a re-protect moved aside or left incomplete (its own names and marker), else an
    in-place restore's."""
    from recovery.actions.postgres_restore import discard_postgres_aside

    def discard(location: str) -> str:
        if REPROTECT_ASIDE in Path(location).name or REPROTECT_INCOMING in Path(location).name:
            return discard_postgres_data_dir(location, live_data_dirs=_live_data_dirs(config))
        return discard_postgres_aside(location)
    return discard


def _discard_aside(config: Config, params: JsonObject, context: dict[str, str]) -> Action:
    from recovery.actions.graph_restore import discard_neo4j_aside
    from recovery.actions.partial_restore import discard_postgres_object_aside
    from recovery.actions.vector_restore import discard_milvus_aside

    items = [i for i in params.get("items") or [] if isinstance(i, dict)]
    discarders: dict[str, Discarder] = {"postgres_data_dir": _discard_data_dir(config),
                                        "neo4j_export": discard_neo4j_aside}
    pg, milvus = config.components.postgres, config.components.milvus
    if pg is not None:
        dsn = pg.primary.full_dsn()
        discarders["postgres_table"] = discarders["postgres_database"] = (
            lambda location: discard_postgres_object_aside(dsn, location))
    if milvus is not None:
        uri = milvus.uri
        discarders["milvus_collection"] = lambda location: discard_milvus_aside(uri, location)
    return DiscardAside(items, discarders)


AFTERCARE_ACTIONS: dict[str, Callable[[Config, JsonObject, dict[str, str]], Action]] = {
    "postgres_reprotect": _reprotect, "service_start": _service_start, "discard_aside": _discard_aside,
}
