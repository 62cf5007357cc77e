"""Classify an incident from its health checks and propose a plan of steps (C1, C2, S1-S3).

The planner knows what is configured (a PostgreSQL standby, which hooks exist, the services and
their tiers) but not how it is configured: steps carry config *names* in their params, and the
bot's action factory turns them into actions at execution time. Where something is not configured
the step becomes a manual instruction that a responder marks done, so every scenario can always be
walked to the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from statemachines.service import StepSpec
from statemachines.vocabulary import APPLICATION_LEAD, DATABASE_LEAD, INFRASTRUCTURE_LEAD, SECURITY_LEAD
from statemachines.vocabulary import HOOK_NAMES as HOOK_NAMES  # re-exported: recovery.planner.HOOK_NAMES as before

DB, INFRA, APP, SEC = DATABASE_LEAD, INFRASTRUCTURE_LEAD, APPLICATION_LEAD, SECURITY_LEAD
# HOOK_NAMES (statemachines/vocabulary.py): the site-specific steps a plan can hand to a configured hook;
# `hooks:` in the config may define exactly these (bot/config.py rejects any other name, with the closest).


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    tier: int
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Facts:
    """What the planner may rely on: configuration presence and the assessment's results."""

    scenario: str
    has_postgres_primary: bool = False
    has_postgres_standby: bool = False
    hooks: frozenset[str] = frozenset()
    services: tuple[ServiceInfo, ...] = ()
    failing: frozenset[str] = frozenset()       # names of checks that failed
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    strategy: str          # failover | restore_from_backup | partial_recovery
    steps: list[StepSpec]
    rationale: str


def recovery_order(services: tuple[ServiceInfo, ...]) -> list[ServiceInfo]:
    """Tier first, then dependencies before dependants (T4); ties keep config order."""
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


def _hook_or_manual(
    facts: Facts, hook: str, title: str, instruction: str, risk: str, roles: list[str],
    approvals: int = 1,
) -> StepSpec:
    if hook in facts.hooks:
        return StepSpec(title=title, action="hook", risk=risk, approver_roles=roles,
                        approvals_required=approvals, params={"hook": hook})
    return StepSpec(title=f"{title} (manual)", action="manual", risk=risk, approver_roles=roles,
                    approvals_required=approvals, params={"instruction": instruction})


def _verify_step(facts: Facts, *, postgres_node: str | None) -> StepSpec:
    params: dict[str, object] = {"services": True}
    if postgres_node:
        params["postgres_writable"] = postgres_node
    return StepSpec(title="Verify recovery: services healthy, database accepts writes", action="verify",
                    risk="low", approver_roles=[], approvals_required=0, params=params)


def _start_services(facts: Facts) -> StepSpec:
    order = ", ".join(s.name for s in recovery_order(facts.services)) or "all application services"
    return _hook_or_manual(facts, "start_services", "Start application services in tier order",
                           f"Start, in this order: {order}", "high", [APP])


def database_failure(facts: Facts) -> Plan:
    if facts.has_postgres_standby:
        steps = [
            StepSpec(title="Confirm the primary is down", action="postgres_confirm_down", risk="low",
                     approver_roles=[], approvals_required=0, params={"node": "primary"}),
            _hook_or_manual(facts, "fence_primary", "Fence the old primary",
                            "Make sure the old primary cannot accept writes (stop it, cut its network)",
                            "high", [DB, INFRA]),
            StepSpec(title="Promote the standby to primary", action="postgres_promote", risk="critical",
                     approver_roles=[DB], params={"node": "standby"}),
            _hook_or_manual(facts, "update_traffic", "Repoint traffic to the new primary",
                            "Point applications / the load balancer at the promoted standby", "high", [INFRA]),
            _verify_step(facts, postgres_node="standby"),
        ]
        return Plan("failover", steps, "a streaming standby is configured: promote it (S2)")
    steps = [
        _hook_or_manual(facts, "fence_primary", "Stop writes to the failed database",
                        "Stop the failed server and keep its data directory for forensics", "high", [DB]),
        StepSpec(title="Restore the latest good backup (manual)", action="manual", risk="critical",
                 approver_roles=[DB], params={"instruction": "Restore the newest verified backup, then WAL"}),
        _start_services(facts),
        _verify_step(facts, postgres_node="primary" if facts.has_postgres_primary else None),
    ]
    return Plan("restore_from_backup", steps, "no standby is configured: restore from backup (S2, C3)")


def datacenter_outage(facts: Facts) -> Plan:
    steps = [
        _hook_or_manual(facts, "activate_standby_environment", "Activate the standby data centre",
                        "Bring up the standby region's environment", "critical", [INFRA]),
    ]
    if facts.has_postgres_standby:
        steps.append(StepSpec(title="Promote the standby database", action="postgres_promote",
                              risk="critical", approver_roles=[DB], params={"node": "standby"}))
    else:
        steps.append(StepSpec(title="Promote the database replicas (manual)", action="manual",
                              risk="critical", approver_roles=[DB],
                              params={"instruction": "Promote the standby region's replicas"}))
    steps += [_hook_or_manual(facts, hook, f"Run {hook}", f"Run {hook}", "high", [INFRA])
              for hook in ("neo4j_standby", "milvus_standby") if hook in facts.hooks]
    steps += [
        _start_services(facts),
        _hook_or_manual(facts, "update_traffic", "Update the load balancer",
                        "Send traffic to the standby data centre", "high", [INFRA]),
        _verify_step(facts, postgres_node="standby" if facts.has_postgres_standby else None),
    ]
    if "restore_traffic" in facts.hooks:
        steps.append(_hook_or_manual(facts, "restore_traffic", "Restore traffic routing", "", "high", [INFRA]))
    return Plan("failover", steps, "whole data-centre outage: fail over to the other region (S1, C2)")


def ransomware(facts: Facts) -> Plan:
    steps = [
        _hook_or_manual(facts, "isolate_systems", "Isolate the infected systems",
                        "Disconnect infected hosts from the network; keep them powered for forensics",
                        "critical", [SEC]),
        StepSpec(title="Identify the last clean backup (manual)", action="manual", risk="high",
                 approver_roles=[SEC], params={"instruction": "Pick the newest backup taken before infection"}),
        # two different approvers, one of them the security lead (P3)
        StepSpec(title="Restore from the clean backup (manual)", action="manual", risk="critical",
                 approver_roles=[SEC, DB], approvals_required=2,
                 params={"instruction": "Restore the chosen backup into clean infrastructure"}),
        _start_services(facts),
        _verify_step(facts, postgres_node="primary" if facts.has_postgres_primary else None),
    ]
    return Plan("restore_from_backup", steps, "ransomware: isolate, then restore from a clean backup (S3)")


PLANNERS = {
    "database_failure": database_failure,
    "datacenter_outage": datacenter_outage,
    "ransomware": ransomware,
}


def propose(facts: Facts) -> Plan:
    return PLANNERS[facts.scenario](facts)
