"""Configuration: one YAML file (``AEGIS_CONFIG``, default ``./aegis.yaml``) plus the environment.

Built-in defaults follow the plan (objectives O1-O4, service tiers T1-T4, schedules) so that Aegis
runs with no file at all. Secrets never live in the file: only the *names* of environment
variables that hold them (``password_env``, ``headers_env``), so the file can be committed.
Validation errors name the offending key and say what is expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ROLES = (
    "incident_commander",
    "infrastructure_lead",
    "database_lead",
    "application_lead",
    "security_lead",
    "communication_manager",
)
SCENARIOS = ("datacenter_outage", "database_failure", "ransomware")
SEVERITIES = ("critical", "high", "medium", "low")


class ConfigError(Exception):
    """The configuration is invalid; the message says which key and what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Objectives(_Strict):
    rto_minutes: float = 240
    rpo_minutes: float = 15
    mttr_minutes: float = 120
    availability_percent: float = 99.9


class SlackSettings(_Strict):
    stakeholder_channel: str = "C0STAKE"
    ops_channel: str = "C0OPS"
    incident_channel_prefix: str = "inc"
    reminder_minutes: float = Field(default=30, gt=0)
    # Who the roster sends to the incident channel, per scenario (R1/R2). Missing = every role.
    scenario_roles: dict[str, list[str]] = Field(default_factory=lambda: {
        "datacenter_outage": list(ROLES),
        "database_failure": ["incident_commander", "database_lead", "infrastructure_lead",
                             "application_lead", "communication_manager"],
        "ransomware": list(ROLES),
    })


class HealthCheck(_Strict):
    tcp: str | None = None            # "host:port"
    http: str | None = None           # URL
    postgres_dsn_env: str | None = None
    timeout_seconds: float = 3.0

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheck:
        if sum(x is not None for x in (self.tcp, self.http, self.postgres_dsn_env)) != 1:
            raise ValueError("give exactly one of tcp, http, postgres_dsn_env")
        return self


class Service(_Strict):
    name: str
    tier: int = Field(default=3, ge=1, le=3)
    depends_on: list[str] = Field(default_factory=list)
    health: HealthCheck | None = None


class PostgresNode(_Strict):
    dsn: str                          # libpq DSN without a password (use password_env)
    password_env: str | None = None
    label: str | None = None

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, value: str) -> str:
        if "password" in value.lower():
            raise ValueError("do not put a password in the DSN; name an environment variable in password_env")
        return value

    def full_dsn(self) -> str:
        """The DSN with the password taken from the environment at the moment of use."""
        if self.password_env and os.environ.get(self.password_env):
            return f"{self.dsn} password={os.environ[self.password_env]}"
        return self.dsn


class PostgresComponent(_Strict):
    primary: PostgresNode
    standby: PostgresNode | None = None


class Components(_Strict):
    postgres: PostgresComponent | None = None
    neo4j: dict[str, Any] | None = None   # used by the backup issue
    milvus: dict[str, Any] | None = None


class Hook(_Strict):
    command: list[str] | None = None
    webhook: str | None = None
    timeout_seconds: float = 60
    headers_env: dict[str, str] = Field(default_factory=dict)
    done_check: list[str] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Hook:
        if (self.command is None) == (self.webhook is None):
            raise ValueError("give exactly one of command or webhook")
        return self


class Engine(_Strict):
    # A running step's ledger row is renewed every lease/3 seconds; a row whose lease ran out
    # belongs to a process that died, and is resumed by the ledger rule.
    lease_seconds: float = Field(default=30, gt=1)
    approval_expiry_minutes: float = Field(default=60, gt=0)


class BackupSchedules(_Strict):
    """Crontab expressions (minute hour day month day-of-week) in ``backups.timezone``; null disables one."""

    postgres_full: str | None = "0 2 * * sun"            # B1 weekly full
    postgres_incremental: str | None = "0 2 * * mon-sat"  # B1 daily (a full backup on PostgreSQL < 17)
    wal_switch_minutes: float | None = Field(default=15, gt=0)  # B1: second line behind archive_timeout
    neo4j: str | None = "0 3 * * *"                       # B2
    milvus: str | None = "0 4 * * *"                      # B3
    prune: str | None = "30 5 * * *"                      # retention, after the nightly runs

    @field_validator("postgres_full", "postgres_incremental", "neo4j", "milvus", "prune")
    @classmethod
    def _crontab(cls, value: str | None) -> str | None:
        if value is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(value)
            except ValueError as exc:
                raise ValueError(f"not a crontab expression ({exc}); e.g. \"0 2 * * sun\"") from None
        return value


class BackupRetention(_Strict):
    """How long each kind is kept (B1-B3). The newest good backup of a kind is never deleted."""

    postgres_full_days: float = Field(default=28, gt=0)
    postgres_incremental_days: float = Field(default=7, gt=0)
    postgres_wal_days: float = Field(default=3, gt=0)   # and never a segment a retained base backup needs
    postgres_logical_days: float = Field(default=7, gt=0)
    neo4j_days: float = Field(default=7, gt=0)
    milvus_days: float = Field(default=7, gt=0)


class Backups(_Strict):
    timezone: str = "UTC"
    schedules: BackupSchedules = Field(default_factory=BackupSchedules)
    retention: BackupRetention = Field(default_factory=BackupRetention)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as UTC or Asia/Seoul") from None
        return value


class Config(_Strict):
    locale: Literal["en", "ko"] = "en"
    objectives: Objectives = Field(default_factory=Objectives)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    roster: dict[str, list[str]] = Field(default_factory=dict)
    services: list[Service] = Field(default_factory=list)
    components: Components = Field(default_factory=Components)
    hooks: dict[str, Hook] = Field(default_factory=dict)
    engine: Engine = Field(default_factory=Engine)
    storage: list[dict[str, Any]] = Field(default_factory=list)
    encryption: dict[str, Any] = Field(default_factory=dict)
    backups: Backups = Field(default_factory=Backups)

    @field_validator("roster")
    @classmethod
    def _known_roles(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(value) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role(s) {unknown}; roles are {list(ROLES)}")
        return value

    @model_validator(mode="after")
    def _dependencies_exist(self) -> Config:
        names = {s.name for s in self.services}
        for service in self.services:
            missing = sorted(set(service.depends_on) - names)
            if missing:
                raise ValueError(f"service {service.name!r} depends on unknown service(s) {missing}")
        return self


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the config; no file (and no AEGIS_CONFIG) means built-in defaults."""
    explicit = path or os.environ.get("AEGIS_CONFIG")
    file = Path(explicit or "aegis.yaml")
    if not file.exists():
        if explicit:
            raise ConfigError(f"config file {file} does not exist (set AEGIS_CONFIG to an existing file)")
        data: dict[str, Any] = {}
    else:
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of keys")
    if os.environ.get("AEGIS_LOCALE"):
        data["locale"] = os.environ["AEGIS_LOCALE"]
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = [f"- {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(f"{file}: invalid configuration\n" + "\n".join(lines)) from None
