"""Choose a recovery strategy from the scenario, the health snapshot and the config, and build its plan
(C1, C2-C4, S1-S3). Pure: no I/O; ``bot/plan_facts.py`` gathers the :class:`Facts`.

The planner knows what is configured (a PostgreSQL standby and how the primary is controlled, which
hooks exist, the services with their tiers and start hooks, the catalog's backups) but never a
secret: steps carry config *names* and concrete values (backup id, times, data directory) in their
params, and the bot's action factory turns them into actions at execution time. Where something is
not configured the step becomes a manual instruction that a responder marks done, so every scenario
can always be walked to the end.

Strategies and why (where the issue is silent):

- **failover** (S1; S2 with a standby): activate the standby environment (S1) → confirm the primary
  is down → *fence* it (always: a manual step that must be marked done when no ``fence_primary`` hook
  exists — a promoted standby never runs beside a writable old primary) → promote → the Neo4j /
  Milvus standby hooks where configured → services → repoint traffic → verify → restore traffic
  routing (hook, where configured). A database failover only starts the services that have their
  own ``start``/``restart`` hook (the application keeps running; it is repointed); a data-centre
  failover starts all of them.
- **restore_from_backup** (S2 without a standby, C3/C4): stop writes (the fence hook if configured; a
  manual step when the database is restored by hand, since an in-place restore stops it itself) →
  restore the configured databases that have a backup (PostgreSQL in place when its ``control`` is
  configured, else a manual step naming the backup) → services → verify. Only those whose health
  check failed (``restore_scope``): a PostgreSQL failure does not wipe a healthy graph; when no
  database check failed (corruption no probe sees) every one is restored, and the plan says which.
  The backup is the newest whose last verification or restore test did not fail; to the latest
  point (WAL). No "confirm the primary is down" step (that is a failover precondition: a promoted
  standby must never run beside a live primary): the in-place restore stops the server itself, and
  a database failure whose primary still runs but holds corrupted data must be restorable.
- **ransomware** (S3, a restore_from_backup to a clean point): isolate → restore each component from
  its clean point (``recovery/clean_point.py``), PostgreSQL to one second before the infection →
  services → verify. Every destructive step needs two approvers, one of them the security lead.
- **partial_recovery**: one PostgreSQL database or table, one Neo4j database or one Milvus collection,
  from the responders' form (``options["partial"]``); never chosen without it.

``options["strategy"]`` (the responders' select) wins when it is possible — a filled partial-recovery
form without a strategy asks for partial_recovery; otherwise the plan is the scenario's default and the
rationale says why the choice could not be followed.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from recovery.clean_point import BackupCandidate, CleanPoint, as_json, choose, describe
from statemachines.json_types import JsonObject
from statemachines.service import StepSpec
from statemachines.vocabulary import APPLICATION_LEAD, DATABASE_LEAD, INFRASTRUCTURE_LEAD, SECURITY_LEAD
from statemachines.vocabulary import DESTRUCTIVE_ACTIONS as DESTRUCTIVE_ACTIONS  # the two-person rule's actions
from statemachines.vocabulary import HOOK_NAMES as HOOK_NAMES  # re-exported: recovery.planner.HOOK_NAMES as before

DB, INFRA, APP, SEC = DATABASE_LEAD, INFRASTRUCTURE_LEAD, APPLICATION_LEAD, SECURITY_LEAD
# HOOK_NAMES (statemachines/vocabulary.py): the site-specific steps a plan can hand to a configured hook;
# `hooks:` in the config may define exactly these (bot/config.py rejects any other name, with the closest).

FAILOVER, RESTORE, PARTIAL = "failover", "restore_from_backup", "partial_recovery"
STRATEGIES = (FAILOVER, RESTORE, PARTIAL)
# the ransomware PITR target: this long before the infection time the responders gave
CLEAN_MARGIN = timedelta(seconds=1)


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    tier: int
    depends_on: tuple[str, ...] = ()
    start: str | None = None        # "start" | "restart": the service's own hook a service_start step runs
    command: str = ""               # that hook's command, as the approver reads it


@dataclass(frozen=True)
class PostgresControlInfo:
    """How Aegis stops/starts the primary for an in-place restore (config ``components.postgres.primary.control``)."""

    data_dir: str
    kind: str = "pg_ctl"            # pg_ctl | hooks
    os_user: str = "postgres"
    stop: str = ""                  # the stop/start hooks' commands (kind hooks)
    start: str = ""

    def preview(self) -> str:
        if self.kind == "hooks":
            return f"stop `{self.stop}`, start `{self.start}`"
        return f"pg_ctl as {self.os_user}"


@dataclass(frozen=True)
class Facts:
    """What the planner may rely on: configuration presence, the catalog's backups and the assessment."""

    scenario: str
    has_postgres_primary: bool = False
    has_postgres_standby: bool = False
    hooks: frozenset[str] = frozenset()
    services: tuple[ServiceInfo, ...] = ()
    failing: frozenset[str] = frozenset()       # names of checks that failed
    inconclusive: frozenset[str] = frozenset()  # of those, the ones whose server refused Aegis's credentials
    notes: list[str] = field(default_factory=list)
    hook_commands: Mapping[str, str] = field(default_factory=dict)   # hook name -> its command / webhook
    # per component (postgres | neo4j | milvus) the candidate backups from the catalog, any order
    backups: Mapping[str, tuple[BackupCandidate, ...]] = field(default_factory=dict)
    postgres_control: PostgresControlInfo | None = None
    neo4j_database: str | None = None          # set when Neo4j is configured
    has_milvus: bool = False
    options: JsonObject = field(default_factory=dict)   # incident.recovery_options
    infection_time: datetime | None = None     # ransomware: the responders' time of infection
    standby_check: str | None = None           # the name of the standby's health check (failing: no failover)
    # per configured database component (postgres | neo4j | milvus) the name of its health check
    component_checks: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    strategy: str          # failover | restore_from_backup | partial_recovery (aftercare: reprotect | cleanup)
    steps: list[StepSpec]
    rationale: str         # English, for the timeline and the logs (no requirement ids)
    # why, as data the messages render in each locale: the default's code (REASONS) and its params, the
    # responders' choice ("choice": {"strategy", "outcome": chosen|refused, "why_not", "why_not_ctx"}) and,
    # for ransomware, the clean point ("clean_point": {"infection_at", "pitr_target", "missing", "components"})
    reason: str = ""
    reason_ctx: JsonObject = field(default_factory=dict)


# the default's reason codes (messages/templates/*/plan_reason.j2 words each)
REASONS = ("datacenter_failover", "ransomware_restore", "standby_down_restore", "standby_failover",
           "no_standby_restore")


# --- small pieces ---------------------------------------------------------------------------------


def recovery_order(services: tuple[ServiceInfo, ...]) -> list[ServiceInfo]:
    """Tier first, then dependencies before dependants (T4); ties keep config order.

    The config refuses a dependency cycle (bot/config.py), so ``path`` only guards against one here."""
    by_name = {s.name: s for s in services}
    placed: list[ServiceInfo] = []
    seen: set[str] = set()

    def visit(service: ServiceInfo, path: tuple[str, ...] = ()) -> None:
        if service.name in seen or service.name in path:
            return
        for dep in service.depends_on:
            if dep in by_name:
                visit(by_name[dep], (*path, service.name))
        seen.add(service.name)
        placed.append(service)

    for service in sorted(services, key=lambda s: s.tier):
        visit(service)
    return placed


def at(moment: datetime) -> str:
    """A time as the approver reads it: ``2026-12-01 02:00:00 UTC``."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def command_preview(command: list[str] | None, webhook: str | None) -> str:
    """What a hook runs, for a title: the argv joined, or the webhook's URL without its query."""
    if command:
        return shlex.join(command)
    return f"POST {(webhook or '').split('?', 1)[0]}"


def _hook_or_manual(
    facts: Facts, hook: str, title: str, instruction: str, risk: str, roles: list[str],
    approvals: int = 1,
) -> StepSpec:
    if hook in facts.hooks:
        command = facts.hook_commands.get(hook)
        return StepSpec(title=f"{title}: {command}" if command else title, action="hook", risk=risk,
                        approver_roles=roles, approvals_required=approvals, params={"hook": hook})
    return StepSpec(title=f"{title} (manual)", action="manual", risk=risk, approver_roles=roles,
                    approvals_required=approvals, params={"instruction": instruction})


def _manual(title: str, instruction: str, risk: str, roles: list[str]) -> StepSpec:
    return StepSpec(title=f"{title} (manual)", action="manual", risk=risk, approver_roles=roles,
                    params={"instruction": instruction})


def _verify_step(facts: Facts, *, postgres_node: str | None) -> StepSpec:
    params: JsonObject = {"services": True}
    if postgres_node:
        params["postgres_writable"] = postgres_node
    return StepSpec(title="Verify recovery: services healthy, database accepts writes", action="verify",
                    risk="low", approver_roles=[], approvals_required=0, params=params)


def _confirm_down() -> StepSpec:
    return StepSpec(title="Confirm the primary is down", action="postgres_confirm_down", risk="low",
                    approver_roles=[], approvals_required=0, params={"node": "primary"})


def _fence(facts: Facts) -> StepSpec:
    return _hook_or_manual(facts, "fence_primary", "Fence the old primary",
                           "Make sure the old primary cannot accept writes (stop it, cut its network); "
                           "mark this done only when it is fenced", "high", [DB, INFRA])


def _services(facts: Facts, *, all_services: bool) -> list[StepSpec]:
    """One service_start step per service with its own start/restart hook, in recovery order; the others
    (``all_services``) in one start_services step where the first of them comes in that order."""
    steps: list[StepSpec] = []
    rest = [s for s in recovery_order(facts.services) if s.start is None]
    for service in recovery_order(facts.services):
        if service.start is not None:
            command = f": {service.command}" if service.command else ""
            steps.append(StepSpec(
                title=f"Start {service.name} (tier {service.tier}, {service.start}){command}, then check its health",
                action="service_start", risk="high", approver_roles=[APP],
                params={"service": service.name, "hook": service.start}))
        elif all_services and service is rest[0]:
            steps.append(_start_services(facts, rest))
    if all_services and not facts.services:
        steps.append(_start_services(facts, []))
    return steps


def _start_services(facts: Facts, services: list[ServiceInfo]) -> StepSpec:
    order = ", ".join(s.name for s in services)
    title = f"Start {order}, in this order" if order else "Start application services in tier order"
    return _hook_or_manual(facts, "start_services", title, f"Start, in this order: {order or 'all of them'}",
                           "high", [APP])


def _newest_usable(backups: tuple[BackupCandidate, ...], *, before: datetime | None = None,
                   collection: str | None = None) -> BackupCandidate | None:
    """The newest backup not known to be bad (taken before ``before``; holding ``collection``)."""
    usable = [b for b in backups if not b.known_bad and (before is None or b.taken_at <= before)
              and (collection is None or collection in b.collections)]
    return max(usable, key=lambda b: b.taken_at, default=None)


def _backup_params(backup: BackupCandidate) -> JsonObject:
    return {"backup_id": backup.run_id, "backup_time": iso(backup.taken_at)}


# --- restore steps, one per component --------------------------------------------------------------


def _postgres_restore(facts: Facts, backup: BackupCandidate | None, target: datetime | None, why_none: str,
                      roles: list[str]) -> StepSpec:
    point = f"to {at(target)}" if target else "to the latest point (all archived WAL)"
    if backup is None:
        return _manual("Restore PostgreSQL from backup", f"{why_none}; restore a good base backup and WAL "
                       f"{point} by hand", "critical", roles)
    control = facts.postgres_control
    source = f"{backup.run_id} (taken {at(backup.taken_at)})"
    if control is None:
        return _manual(f"Restore PostgreSQL from {source} {point}",
                       f"Restore {backup.run_id} and WAL {point} (`aegis restore postgres`); Aegis cannot do it in "
                       "place: components.postgres.primary.control is not configured", "critical", roles)
    return StepSpec(
        title=(f"Restore PostgreSQL in place from {source} {point} into {control.data_dir} "
               f"({control.preview()}; the current data directory is moved aside, not deleted)"),
        action="postgres_restore", risk="critical", approver_roles=roles,
        params={"node": "primary", **_backup_params(backup), "target_time": iso(target),
                "data_dir": control.data_dir, "control": control.kind})


def _neo4j_restore(facts: Facts, backup: BackupCandidate | None, why_none: str, roles: list[str],
                   database: str | None = None) -> StepSpec:
    name = database or facts.neo4j_database or "neo4j"
    if backup is None:
        return _manual(f"Restore Neo4j database {name}", f"{why_none}; restore the graph by hand", "critical", roles)
    return StepSpec(
        title=(f"Restore Neo4j database {name} in place from {backup.run_id} (taken {at(backup.taken_at)}; "
               "a fresh export of the current graph is taken first)"),
        action="neo4j_restore", risk="critical", approver_roles=roles,
        params={**_backup_params(backup), "database": name})


def _milvus_restore(backup: BackupCandidate | None, why_none: str, roles: list[str],
                    collections: tuple[str, ...] | None = None) -> StepSpec:
    if backup is None:
        return _manual("Restore the Milvus collections", f"{why_none}; restore them by hand", "critical", roles)
    names = list(collections if collections is not None else backup.collections)
    shown = ", ".join(names) if names else "every collection in the backup"
    return StepSpec(
        title=(f"Restore Milvus {shown} in place from {backup.run_id} (taken {at(backup.taken_at)}; "
               "each current collection is renamed aside first)"),
        action="milvus_restore", risk="critical", approver_roles=roles,
        params={**_backup_params(backup), "collections": names})


def _no_backup(component: str) -> str:
    return f"no good {component} backup is in the catalog"


# --- strategies ---------------------------------------------------------------------------------------


def failover(facts: Facts, rationale: str) -> Plan:
    datacenter = facts.scenario == "datacenter_outage"
    steps: list[StepSpec] = []
    if datacenter:
        steps.append(_hook_or_manual(facts, "activate_standby_environment", "Activate the standby data centre",
                                     "Bring up the standby region's environment", "critical", [INFRA]))
    if facts.has_postgres_primary:
        steps.append(_confirm_down())
    steps.append(_fence(facts))      # always before any promotion
    if facts.has_postgres_standby:
        steps.append(StepSpec(title="Promote the standby to primary", action="postgres_promote", risk="critical",
                              approver_roles=[DB], params={"node": "standby"}))
    else:
        steps.append(_manual("Promote the database replicas", "Promote the standby region's replicas",
                             "critical", [DB]))
    for hook, title in (("neo4j_standby", "Bring up the Neo4j standby"),
                        ("milvus_standby", "Bring up the Milvus standby")):
        if hook in facts.hooks:
            steps.append(_hook_or_manual(facts, hook, title, "", "high", [DB, INFRA]))
    steps += _services(facts, all_services=datacenter)
    steps.append(_hook_or_manual(facts, "update_traffic", "Repoint traffic (DNS / load balancer) to the new primary",
                                 "Point applications / the load balancer at the promoted standby", "high", [INFRA]))
    steps.append(_verify_step(facts, postgres_node="standby" if facts.has_postgres_standby else None))
    if "restore_traffic" in facts.hooks:
        steps.append(_hook_or_manual(facts, "restore_traffic", "Restore traffic routing", "", "high", [INFRA]))
    return Plan(FAILOVER, steps, rationale)


def restore_from_backup(facts: Facts, rationale: str) -> Plan:
    # no confirm-down here (a failover precondition only): the in-place restore stops the server itself,
    # and a running but corrupted primary must be restorable
    steps: list[StepSpec] = []
    scope = restore_scope(facts)
    restores = _latest_restores(facts, scope["restored"])
    if not restores:   # nothing configured: today's manual step
        restores = [_manual("Restore the latest good backup", "Restore the newest verified backup, then WAL",
                            "critical", [DB])]
    # an in-place restore stops the server itself; a restore by hand needs the server stopped first
    by_hand = not any(step.action == "postgres_restore" for step in restores)
    fenced = "postgres" in scope["restored"] or not scope["restored"]
    if fenced and ("fence_primary" in facts.hooks or by_hand):
        steps.append(_hook_or_manual(facts, "fence_primary", "Stop writes to the failed database",
                                     "Stop the failed server and keep its data directory for forensics",
                                     "high", [DB]))
    steps += restores
    steps += _services(facts, all_services=True)
    steps.append(_verify_step(facts, postgres_node="primary" if facts.has_postgres_primary else None))
    said = rationale
    if scope["spared"]:
        said += (f"; restoring {', '.join(scope['restored'])} (its check failed); "
                 f"{', '.join(scope['spared'])} passed its check and is left as it is")
    return Plan(RESTORE, steps, said, reason_ctx={"scope": scope})


def _restorable(facts: Facts) -> list[str]:
    """The database components a restore plan can restore: PostgreSQL when configured (by hand
    without a backup), Neo4j and Milvus when configured and the catalog holds a backup."""
    found = []
    if facts.has_postgres_primary:
        found.append("postgres")
    if facts.neo4j_database is not None and facts.backups.get("neo4j"):
        found.append("neo4j")
    if facts.has_milvus and facts.backups.get("milvus"):
        found.append("milvus")
    return found


def restore_scope(facts: Facts) -> JsonObject:
    """Which components a (non-ransomware) restore plan restores: those whose health check failed —
    a PostgreSQL failure does not wipe a healthy graph — or, when none failed (corruption that no
    probe sees), every one it can. A check refused Aegis's credentials says nothing about the data:
    it is not a failure here (``inconclusive``). ``{"restored", "spared", "inconclusive", "basis":
    "failed_checks" | "no_check_failed"}``."""
    restorable = _restorable(facts)
    checks = {c: facts.component_checks.get(c) for c in restorable}
    failed = [c for c in restorable if checks[c] in facts.failing and checks[c] not in facts.inconclusive]
    restored = failed or restorable
    return {"restored": restored, "spared": [c for c in restorable if c not in restored],
            "inconclusive": [c for c in restorable if checks[c] in facts.inconclusive],
            "basis": "failed_checks" if failed else "no_check_failed"}


def _latest_restores(facts: Facts, components: list[str]) -> list[StepSpec]:
    steps: list[StepSpec] = []
    if "postgres" in components:
        backup = _newest_usable(facts.backups.get("postgres", ()))
        steps.append(_postgres_restore(facts, backup, None, _no_backup("PostgreSQL"), [DB]))
    if "neo4j" in components:
        steps.append(_neo4j_restore(facts, _newest_usable(facts.backups["neo4j"]), _no_backup("Neo4j"), [DB]))
    if "milvus" in components:
        steps.append(_milvus_restore(_newest_usable(facts.backups["milvus"]), _no_backup("Milvus"), [DB]))
    return steps


def ransomware(facts: Facts, rationale: str) -> Plan:
    infection = facts.infection_time
    steps = [_hook_or_manual(facts, "isolate_systems", "Isolate the infected systems",
                             "Disconnect infected hosts from the network; keep them powered for forensics",
                             "critical", [SEC, INFRA])]
    roles = [SEC, DB]
    reasons: list[str] = []
    clean: JsonObject = {"infection_at": iso(infection), "pitr_target": None, "missing": None, "components": []}
    if infection is None:
        reason = "the time of infection is not given yet (the ransomware form)"
        steps.append(_manual("Restore from the clean backup", f"{reason}: pick the newest backup verified before "
                             "the infection and restore it into clean infrastructure", "critical", roles))
        reasons.append(f"no clean point chosen: {reason}")
        clean["missing"] = "no_infection_time"
    else:
        target = infection - CLEAN_MARGIN
        points = {c: choose(c, facts.backups.get(c, ()), infection) for c in _components(facts)}
        reasons = [describe(p, infection) for p in points.values()]
        steps += [_clean_restore(facts, p, target, infection, roles) for p in points.values()]
        clean["components"] = [as_json(p) for p in points.values()]
        if not points:
            steps.append(_manual("Restore from the clean backup", "Restore the newest backup verified before "
                                 f"{at(infection)} into clean infrastructure", "critical", roles))
            reasons.append("no database is configured: the restore is manual")
            clean["missing"] = "no_database"
        else:
            pitr = f"; PostgreSQL to {at(target)}, 1 s before it" if "postgres" in points else ""
            clean["pitr_target"] = iso(target) if "postgres" in points else None
            reasons.insert(0, f"infection at {at(infection)}{pitr}")
    steps += _services(facts, all_services=True)
    steps.append(_verify_step(facts, postgres_node="primary" if facts.has_postgres_primary else None))
    steps = [_two_person(s) for s in steps]
    return Plan(RESTORE, steps, f"{rationale}. Clean point: " + "; ".join(reasons), reason_ctx={"clean_point": clean})


def _components(facts: Facts) -> list[str]:
    present = {"postgres": facts.has_postgres_primary, "neo4j": facts.neo4j_database is not None,
               "milvus": facts.has_milvus}
    return [c for c, configured in present.items() if configured]


def _clean_restore(facts: Facts, point: CleanPoint, target: datetime, infection: datetime,
                   roles: list[str]) -> StepSpec:
    why_none = f"no {point.component} backup was verified before the infection at {at(infection)}"
    if point.component == "postgres":
        return _postgres_restore(facts, point.chosen, target, why_none, roles)
    if point.component == "neo4j":
        return _neo4j_restore(facts, point.chosen, why_none, roles)
    return _milvus_restore(point.chosen, why_none, roles)


def _two_person(step: StepSpec) -> StepSpec:
    """A destructive ransomware step: two different approvers, one of them the security lead (P3)."""
    if step.risk not in ("high", "critical") and step.action not in DESTRUCTIVE_ACTIONS:
        return step
    roles = [SEC, *(r for r in step.approver_roles if r != SEC)]
    return replace(step, approvals_required=2, approver_roles=roles)


def partial_recovery(facts: Facts, rationale: str) -> Plan:
    partial = _partial(facts)
    assert partial is not None  # propose() checks it first
    component = str(partial["component"])
    target = parse_time(partial.get("target_time"))
    backups = facts.backups.get(component, ())
    step: StepSpec
    if component == "postgres":
        step = _partial_postgres(partial, _newest_usable(backups, before=target), target)
    elif component == "neo4j":
        database = str(partial.get("database") or facts.neo4j_database or "neo4j")
        step = _neo4j_restore(facts, _newest_usable(backups, before=target), _no_backup("Neo4j"), [DB], database)
    else:
        collection = str(partial.get("collection"))
        backup = _newest_usable(backups, before=target, collection=collection)
        step = _milvus_restore(backup, f"no good Milvus backup holds the collection {collection}", [DB], (collection,))
    verify = _verify_step(facts, postgres_node="primary" if facts.has_postgres_primary else None)
    return Plan(PARTIAL, [step, verify], rationale)


def _partial_postgres(partial: JsonObject, backup: BackupCandidate | None, target: datetime | None) -> StepSpec:
    database, table = str(partial.get("database")), partial.get("table")
    what = f"table {table} of database {database}" if table else f"database {database}"
    point = f"as of {at(target)}" if target else "as of the latest point"
    if backup is None:
        return _manual(f"Restore {what} {point}", f"{_no_backup('PostgreSQL')} taken before that point; "
                       "restore the object by hand", "high", [DB])
    # a whole database is swapped by renames, which need it free: its open sessions are cut (partial.py)
    cut = "" if table else f"; open connections to {database} are terminated for the swap"
    return StepSpec(
        title=(f"Restore {what} {point} from {backup.run_id} (taken {at(backup.taken_at)}) via a scratch copy; "
               f"the current one is renamed aside first{cut}"),
        action="postgres_partial_restore", risk="high", approver_roles=[DB],
        params={**_backup_params(backup), "target_time": iso(target), "database": database,
                "table": str(table) if table else None})


def parse_time(value: object) -> datetime | None:
    """An ISO-8601 time from the responders' options (UTC when it names no zone); None if absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _partial(facts: Facts) -> JsonObject | None:
    partial = facts.options.get("partial")
    return partial if isinstance(partial, dict) and partial.get("component") else None


# --- choosing ------------------------------------------------------------------------------------------


def _default(facts: Facts) -> tuple[str, str, JsonObject]:
    """The scenario's strategy from the facts, and why (a REASONS code and its params)."""
    if facts.scenario == "datacenter_outage":
        return FAILOVER, "datacenter_failover", {}
    if facts.scenario == "ransomware":
        return RESTORE, "ransomware_restore", {}
    if _standby_down(facts):
        return RESTORE, "standby_down_restore", {"check": facts.standby_check}
    if facts.has_postgres_standby:
        return FAILOVER, "standby_failover", {}
    return RESTORE, "no_standby_restore", {}


_REASON_TEXT = {
    "datacenter_failover": "whole data-centre outage: fail over to the other region",
    "ransomware_restore": "ransomware: isolate, then restore every component from a clean point",
    "standby_down_restore": "the standby is unreachable ({check} failed): restore from backup",
    "standby_failover": "a streaming standby is configured: promote it",
    "no_standby_restore": "no standby is configured: restore from backup in place",
}


def _standby_down(facts: Facts) -> bool:
    return facts.has_postgres_standby and facts.standby_check is not None and facts.standby_check in facts.failing


_WHY_NOT_TEXT = {
    "not_a_strategy": "{strategy!r} is not a strategy (one of {choices})",
    "ransomware_no_failover": "a standby replicates the attack, so ransomware is restored from a clean point",
    "no_standby": "no PostgreSQL standby is configured (components.postgres.standby)",
    "standby_down": "the standby is unreachable ({check} failed)",
    "partial_form_empty": "fill the partial-recovery form first (the component and the object to restore)",
    "component_not_configured": "{component} is not configured (components.{component})",
    "partial_no_database": "the partial-recovery form names no PostgreSQL database",
    "partial_no_collection": "the partial-recovery form names no Milvus collection",
}


WHY_NOT_CODES = tuple(_WHY_NOT_TEXT)   # why a chosen strategy was refused (plan_reason.j2 words each)


def why_impossible(facts: Facts, strategy: str) -> tuple[str, JsonObject] | None:
    """Why ``strategy`` cannot be planned for these facts, as a code and its params; None when it can."""
    if strategy not in STRATEGIES:
        return "not_a_strategy", {"strategy": strategy}
    if strategy == FAILOVER and facts.scenario == "ransomware":
        return "ransomware_no_failover", {}
    if strategy == FAILOVER and facts.scenario == "database_failure" and not facts.has_postgres_standby:
        return "no_standby", {}
    if strategy == FAILOVER and facts.scenario == "database_failure" and _standby_down(facts):
        return "standby_down", {"check": facts.standby_check}
    if strategy == PARTIAL:
        partial = _partial(facts)
        if partial is None:
            return "partial_form_empty", {}
        component = str(partial["component"])
        configured = {"postgres": facts.has_postgres_primary, "neo4j": facts.neo4j_database is not None,
                      "milvus": facts.has_milvus}
        if not configured.get(component):
            return "component_not_configured", {"component": component}
        if component == "postgres" and not partial.get("database"):
            return "partial_no_database", {}
        if component == "milvus" and not partial.get("collection"):
            return "partial_no_collection", {}
    return None


def impossible(facts: Facts, strategy: str) -> str | None:
    """Why ``strategy`` cannot be planned for these facts (English), or None when it can."""
    why = why_impossible(facts, strategy)
    if why is None:
        return None
    code, ctx = why
    return _WHY_NOT_TEXT[code].format(**ctx, choices=", ".join(STRATEGIES))


def _build(facts: Facts, strategy: str, rationale: str) -> Plan:
    if strategy == PARTIAL:
        return partial_recovery(facts, rationale)
    if strategy == FAILOVER:
        return failover(facts, rationale)
    if facts.scenario == "ransomware":
        return ransomware(facts, rationale)
    return restore_from_backup(facts, rationale)


def propose(facts: Facts) -> Plan:
    """The plan for ``facts``: the responders' strategy when possible, else the scenario's default."""
    strategy, reason, ctx = _default(facts)
    rationale = _REASON_TEXT[reason].format(**ctx)
    wanted = facts.options.get("strategy") or (PARTIAL if _partial(facts) else None)   # a filled form asks for it
    if isinstance(wanted, str) and wanted and wanted != strategy:
        why_not = why_impossible(facts, wanted)
        if why_not is None:
            strategy, rationale = wanted, f"{wanted} chosen by the responders (default: {rationale})"
            ctx = {**ctx, "choice": {"strategy": wanted, "outcome": "chosen"}}
        else:
            rationale = f"{wanted} is not possible: {impossible(facts, wanted)}; planned instead: {rationale}"
            ctx = {**ctx, "choice": {"strategy": wanted, "outcome": "refused", "why_not": why_not[0],
                                     "why_not_ctx": why_not[1]}}
    plan = _build(facts, strategy, rationale)
    return replace(plan, reason=reason, reason_ctx={**ctx, **plan.reason_ctx})


# --- aftercare (runs after `verified`; statemachines: incident.aftercare) -----------------------------


def reprotect_plan(facts: Facts) -> Plan:
    """After a failover: rebuild the old primary as a standby of the promoted one (pg_rewind, else a fresh
    base backup: recovery/actions/reprotect.py decides on the node). The action runs on the old primary's
    data directory through its ``control`` config either way, so without it the step is manual."""
    control = facts.postgres_control
    if control is None:
        step = _manual("Rebuild the old primary as a standby of the new primary (the promoted standby)",
                       "Rebuild the old primary as a standby of the new primary (the promoted standby): pg_rewind "
                       "or a new base backup; configure components.postgres.primary.control to let Aegis do it",
                       "high", [DB])
        return Plan("reprotect", [step], "the system runs without a standby since the failover: re-protect it "
                    "by hand (the old primary has no control configured)")
    step = StepSpec(
        title=(f"Rebuild the old primary ({control.data_dir}, {control.preview()}) as a standby of the new "
               "primary with pg_rewind (a fresh base backup if it cannot be rewound), then check it streams"),
        action="postgres_reprotect", risk="high", approver_roles=[DB],
        params={"old_primary": "primary", "new_primary": "standby", "method": "pg_rewind"})
    return Plan("reprotect", [step], "the system runs without a standby since the failover: re-protect it (pg_rewind)")


_ASIDE_WORDS = {"postgres_data_dir": "data directory", "postgres_table": "table", "postgres_database": "database",
                "neo4j_export": "pre-restore export", "milvus_collection": "collection"}


def cleanup_plan(items: list[JsonObject]) -> Plan:
    """One approved discard_aside step per component for what the restores put aside (never anything else)."""
    by_component: dict[str, list[JsonObject]] = {}
    for item in items:
        by_component.setdefault(str(item.get("component", "")), []).append(item)
    steps = []
    for component, aside in by_component.items():
        shown = ", ".join(f"{i.get('location')} ({_ASIDE_WORDS.get(str(i.get('kind')), i.get('kind'))})"
                          for i in aside)
        steps.append(StepSpec(title=f"Remove what the restore put aside for {component}: {shown}",
                              action="discard_aside", risk="high",
                              approver_roles=[DB] if component == "postgres" else [DB, INFRA],
                              params={"items": aside}))
    return Plan("cleanup", steps, "the incident is closed: remove the copies the restores put aside")
