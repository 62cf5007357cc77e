"""Turn configuration into the things recovery/ works with: health specs, planner facts, actions.

This is the one place that reads secrets (passwords from the environment) on their way to an
action; plan steps in the database only name config entries (``{"node": "standby"}``).
"""

from __future__ import annotations

import os
from datetime import datetime

from bot.config import Config, PostgresNode
from bot.plan_facts import build_facts
from recovery.actions.base import Action, ActionError
from recovery.actions.hook import HookAction
from recovery.actions.manual import ManualStep
from recovery.actions.postgres import PostgresConfirmDown, PostgresPromote
from recovery.actions.verify import IntegrityQuery, PostgresVerification, VerifyRecovery
from recovery.health import CheckResult, HealthSpec
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


def _label(node: PostgresNode, which: str) -> str:
    return node.label or f"postgres {which}"


def component_specs(config: Config) -> list[HealthSpec]:
    specs: list[HealthSpec] = []
    pg = config.components.postgres
    if pg:
        specs.append(HealthSpec(_label(pg.primary, "primary"), "postgres", pg.primary.full_dsn()))
        if pg.standby:
            specs.append(HealthSpec(_label(pg.standby, "standby"), "postgres", pg.standby.full_dsn()))
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


def build_action(config: Config, step: PlanStep, context: dict[str, str]) -> Action:
    """The action that carries out ``step``, built from the *current* config."""
    params = step.params or {}
    if step.action == "postgres_confirm_down":
        node = _node(config, params.get("node", "primary"))
        return PostgresConfirmDown(node.full_dsn(), _label(node, "primary"))
    if step.action == "postgres_promote":
        node = _node(config, params.get("node", "standby"))
        return PostgresPromote(node.full_dsn(), _label(node, "standby"))
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
            database = PostgresVerification(node.full_dsn(), _label(node, which), integrity_queries(config))
        return VerifyRecovery(service_specs(config) if params.get("services") else [], database)
    raise ActionError(f"unknown action {step.action!r}")


def integrity_queries(config: Config) -> tuple[IntegrityQuery, ...]:
    """The configured integrity queries a verification runs on the recovered PostgreSQL node."""
    postgres = config.components.postgres
    if postgres is None:
        return ()
    return tuple(IntegrityQuery(c.name, c.sql, c.expect, c.min, c.timeout_seconds) for c in postgres.integrity_checks)
