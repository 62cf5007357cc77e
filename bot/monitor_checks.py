"""Turn the config into the monitor's checks and risk rules (recovery/monitor does the work).

Check names come from the config and are what people read in a warning or an incident's
evidence: ``host db1:22``, ``disk /var/backups``, ``postgres primary`` (a node's label),
``postgres standby lag bytes``, ``postgres primary wal archiving``, ``backup postgres``,
``neo4j`` (``RETURN 1`` through the driver), ``milvus`` (``list_collections``; a Milvus
Lite path only for presence), ``service <name>``, ``dns <endpoint>``, ``endpoint <endpoint>``,
``canary <name>``, ``signal ransomware`` (``POST /signals``, when configured). ``monitoring.checks``
overrides interval, threshold and timeout by that name;
an unknown name is a config error that says the closest one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from bot.config import Config, ConfigError, Monitoring, closest
from bot.flows.backup import newest_usable
from bot.plan_facts import node_label
from bot.wiring import neo4j_credentials, service_specs
from recovery.monitor import checks as probes
from recovery.monitor.checks import Check, Probe
from recovery.monitor.graph_vector import Neo4jProbe, milvus_probe
from recovery.monitor.risk import RiskRules, RuleSetting
from recovery.monitor.signals import KINDS, SignalStore, signal_probe
from statemachines.store import Store

BACKUP_SCHEDULE_PROBES = 8        # fires looked at to find the longest gap of a crontab


@dataclass(frozen=True)
class _Spec:
    """A check before its overrides: the probe is built with the final threshold."""

    name: str
    domain: str
    kind: str
    make_probe: Callable[[float | None], Probe]
    threshold: float | None = None
    subject: str = ""
    tier: int | None = None
    timeout_seconds: float = 5.0


def monitor_checks(config: Config, store: Store) -> list[Check]:
    """Every check the config asks for, with ``monitoring.checks`` overrides applied."""
    specs = [*_infrastructure(config), *_database(config, store), *_application(config), *_network(config),
             *_canaries(config), *_signals(config, store)]
    return _apply_overrides(config.monitoring, specs)


def risk_rules(monitoring: Monitoring) -> RiskRules:
    return RiskRules({name: RuleSetting(rule.enabled, rule.level.upper() if rule.level else None, rule.scenario,
                                        tuple(rule.when_failing))
                      for name, rule in monitoring.rules.items()})


def _apply_overrides(monitoring: Monitoring, specs: list[_Spec]) -> list[Check]:
    names = [s.name for s in specs]
    unknown = [n for n in monitoring.checks if n not in names]
    custom = [n for rule in monitoring.rules.values() for n in rule.when_failing if n not in names]
    problems = [f"`monitoring.checks.{n}`: no such check; " + _hint(n, names) for n in unknown]
    problems += [f"`monitoring.rules…when_failing`: no check named {n!r}; " + _hint(n, names) for n in custom]
    if problems:
        raise ConfigError("\n".join(problems), problems)
    built = []
    for spec in specs:
        override = monitoring.checks.get(spec.name)
        threshold = override.threshold if override and override.threshold is not None else spec.threshold
        built.append(Check(
            spec.name, spec.domain, spec.kind, spec.make_probe(threshold), threshold,
            override.timeout_seconds if override and override.timeout_seconds else spec.timeout_seconds,
            override.interval_seconds if override and override.interval_seconds else monitoring.interval_seconds,
            spec.subject, spec.tier))
    return built


def _hint(name: str, names: list[str]) -> str:
    guess = closest(name, names)
    return f"did you mean `{guess}`?" if guess else f"checks are {', '.join(names) or 'none'}"


# --- probes (built with the final threshold: the configured one, else the default) ---------------


def fixed(probe: Probe) -> Callable[[float | None], Probe]:
    """A probe that takes no threshold (reachability, canaries)."""
    def make(_threshold: float | None) -> Probe:
        return probe
    return make


def _disk(path: str, threshold: float | None) -> Probe:
    return probes.disk_free_probe(path, threshold or 0.0)


def _archiving(dsn: str, rpo_seconds: float, threshold: float | None) -> Probe:
    return probes.WalArchivingProbe(dsn, rpo_seconds if threshold is None else threshold)


def _lag(dsn: str, unit: str, default: float, threshold: float | None) -> Probe:
    return probes.replication_lag_probe(dsn, unit, default if threshold is None else threshold)


def _backup_age(component: str, default: float, newest: Callable[[], datetime | None],
                threshold: float | None) -> Probe:
    return probes.backup_age_probe(component, default if threshold is None else threshold, newest)


# --- the four domains ----------------------------------------------------------------------------


def _infrastructure(config: Config) -> list[_Spec]:
    specs = [_Spec(f"host {h}", "infrastructure", "tcp", fixed(probes.tcp_probe(h)), subject=f"host {h}")
             for h in config.monitoring.hosts]
    directories = [t.path for t in config.storage if t.kind == "local"] + config.monitoring.data_directories
    for path in dict.fromkeys(directories):
        specs.append(_Spec(f"disk {path}", "infrastructure", "disk", partial(_disk, path),
                           config.monitoring.disk_free_min_percent, subject=f"disk {path}"))
    return specs


def _database(config: Config, store: Store) -> list[_Spec]:
    specs: list[_Spec] = []
    pg, mon = config.components.postgres, config.monitoring
    if pg is not None:
        primary = node_label(pg.primary, "primary")
        specs.append(_Spec(primary, "database", "postgres",
                           fixed(probes.postgres_probe(pg.primary.full_dsn(), "primary")), subject="primary"))
        rpo = config.objectives.rpo_minutes * 60
        specs.append(_Spec(f"{primary} wal archiving", "database", "wal_archiving",
                           partial(_archiving, pg.primary.full_dsn(), rpo), rpo, subject="primary"))
        if pg.standby is not None:
            standby, node = node_label(pg.standby, "standby"), pg.standby
            specs.append(_Spec(standby, "database", "postgres",
                               fixed(probes.postgres_probe(node.full_dsn(), "standby")), subject="standby"))
            for unit, limit in (("bytes", mon.replication_lag_bytes), ("seconds", mon.replication_lag_seconds)):
                short = "bytes" if unit == "bytes" else "s"
                specs.append(_Spec(f"{standby} lag {unit}", "database", f"replication_lag_{unit}",
                                   partial(_lag, node.full_dsn(), short, limit), limit, subject="standby"))
    specs += _backup_ages(config, store)
    neo4j = config.components.neo4j
    if neo4j is not None:
        probe = Neo4jProbe(neo4j.uri, partial(neo4j_credentials, neo4j), neo4j.database)
        specs.append(_Spec("neo4j", "database", "neo4j", fixed(probe), subject="neo4j"))
    if config.components.milvus is not None:
        milvus = milvus_probe(config.components.milvus.uri)
        specs.append(_Spec("milvus", "database", "milvus", fixed(milvus), subject="milvus"))
    return specs


_BACKUP_SCHEDULES = {"postgresql": ("postgres_full", "postgres_incremental"), "neo4j": ("neo4j",),
                     "milvus": ("milvus",)}
_COMPONENT_NAMES = {"postgresql": "postgres", "neo4j": "neo4j", "milvus": "milvus"}


def _backup_ages(config: Config, store: Store) -> list[_Spec]:
    """One check per backed-up component: only when a storage target exists and a schedule runs."""
    if not config.storage:
        return []
    specs = []
    configured = {"postgresql": config.components.postgres, "neo4j": config.components.neo4j,
                  "milvus": config.components.milvus}
    for run_kind, schedules in _BACKUP_SCHEDULES.items():
        expressions = [getattr(config.backups.schedules, s) for s in schedules]
        crons = [e for e in expressions if e]
        if configured[run_kind] is None or not crons:
            continue
        limit = longest_gap(crons, config.backups.timezone) + config.monitoring.backup_grace_minutes * 60
        component = _COMPONENT_NAMES[run_kind]
        specs.append(_Spec(f"backup {component}", "database", "backup_age",
                           partial(_backup_age, component, limit, _newest_finished(store, run_kind)),
                           limit, subject=f"backup {component}"))
    return specs


def _newest_finished(store: Store, run_kind: str) -> Callable[[], datetime | None]:
    def newest() -> datetime | None:
        record = newest_usable(store, run_kind)   # the catalog's one "newest good backup" query
        return None if record is None else (record.finished_at or record.started_at)
    return newest


def longest_gap(crons: list[str], timezone: str) -> float:
    """Seconds of the longest gap between consecutive fires of these crontabs together."""
    import zoneinfo

    from apscheduler.triggers.cron import CronTrigger

    now = datetime.now(UTC)
    fires: list[datetime] = []
    horizon: datetime | None = None      # beyond the last fire looked at of one crontab, gaps are not real
    for expression in crons:
        trigger = CronTrigger.from_crontab(expression, timezone=zoneinfo.ZoneInfo(timezone))
        fire = trigger.get_next_fire_time(None, now)
        own: list[datetime] = []
        for _ in range(BACKUP_SCHEDULE_PROBES):
            if fire is None:
                break
            own.append(fire)
            fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        fires += own
        if own and (horizon is None or own[-1] < horizon):
            horizon = own[-1]
    fires = sorted(f for f in fires if horizon is None or f <= horizon)
    gaps = [(b - a).total_seconds() for a, b in zip(fires, fires[1:], strict=False)]
    return max(gaps, default=7 * 86400.0)


def _application(config: Config) -> list[_Spec]:
    tiers = {s.name: s.tier for s in config.services}
    specs = []
    for spec in service_specs(config):
        if spec.kind == "http":
            probe = probes.http_probe(spec.target)
        elif spec.kind == "tcp":
            probe = probes.tcp_probe(spec.target)
        else:
            probe = probes.postgres_probe(spec.target, "service")
        specs.append(_Spec(f"service {spec.name}", "application", "service", fixed(probe),
                           subject=f"service {spec.name}",
                           tier=tiers.get(spec.name), timeout_seconds=spec.timeout_seconds))
    return specs


def _network(config: Config) -> list[_Spec]:
    specs = []
    for endpoint in config.monitoring.endpoints:
        subject = f"endpoint {endpoint.name}"
        specs.append(_Spec(f"dns {endpoint.name}", "network", "dns", fixed(probes.resolve_probe(endpoint.host)),
                           subject=subject))
        specs.append(_Spec(f"endpoint {endpoint.name}", "network", "endpoint",
                           fixed(probes.tcp_probe(f"{endpoint.host}:{endpoint.port}")), subject=subject))
    return specs


def _canaries(config: Config) -> list[_Spec]:
    specs = []
    pg = config.components.postgres
    for canary in config.monitoring.canaries:
        if canary.file is not None and canary.sha256 is not None:
            specs.append(_Spec(f"canary {canary.name}", "infrastructure", "canary",
                               fixed(probes.file_canary_probe(canary.file, canary.sha256))))
            continue
        node = (pg.standby if canary.node == "standby" else pg.primary) if pg else None
        if node is None or canary.sql is None or canary.expect is None:
            raise ConfigError(f"`monitoring.canaries`: {canary.name!r} queries the PostgreSQL {canary.node}, "
                              "which is not configured (components.postgres)")
        specs.append(_Spec(f"canary {canary.name}", "database", "canary",
                           fixed(probes.query_canary_probe(node.full_dsn(), canary.sql, canary.expect))))
    return specs


def _signals(config: Config, store: Store) -> list[_Spec]:
    """``signal <kind>``: fails while ``POST /signals`` received such a signal within ``hold_minutes``."""
    section = config.monitoring.signals
    if section.secret_env is None:
        return []
    hold, recent = timedelta(minutes=section.hold_minutes), SignalStore(store).recent
    return [_Spec(f"signal {kind}", "infrastructure", "signal", fixed(signal_probe(kind, hold, recent)),
                  subject=f"signal {kind}") for kind in KINDS]
