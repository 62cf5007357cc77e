"""Configuration: one YAML file (``AEGIS_CONFIG``, default ``./aegis.yaml``) plus the environment.

Built-in defaults follow the plan (objectives O1-O4, service tiers 1-3, schedules) so that Aegis
runs with no file at all. Secrets never live in the file: only the *names* of environment
variables that hold them (``password_env``, ``headers_env``, ``key_env``, ``pass_env``…), so the file
can be committed.

Every section is a typed model that forbids unknown keys, and every name the file refers to (roles,
scenarios, hooks, services) is checked. :func:`load_config` reports each problem on one line that
names the file, the key's path and, for a typo, the closest valid key or name::

    aegis.yaml: `storage[0].bukket`: unknown key; did you mean `bucket`?
    aegis.yaml: `storage[1].kind`: 's4' is not one of local, s3, azure; did you mean `s3`?
"""

from __future__ import annotations

import difflib
import os
import re
import types
import zoneinfo
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from bot.extras import missing_extras
from statemachines.json_types import JsonObject
from statemachines.vocabulary import DESTRUCTIVE_ACTIONS, HOOK_NAMES, ROLES, SCENARIOS

TIERS = (1, 2, 3)                      # 1 recovers first (the plan's tier 1 services)
DEFAULT_KEY_ENV = "AEGIS_BACKUP_KEY"
# Set by Aegis for every hook (recovery/actions/hook.py): a hook's `env` may not shadow any AEGIS_*
# name, and `pass_env` may not bring in one of the context variables themselves.
HOOK_CONTEXT_PREFIX = "AEGIS_"
HOOK_CONTEXT_NAMES = frozenset({"AEGIS_HOOK", "AEGIS_INCIDENT", "AEGIS_STEP", "AEGIS_SCENARIO"})
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class ConfigError(Exception):
    """The configuration is invalid; each line of the message names the file, the key and what to do."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


# --- names and suggestions ----------------------------------------------------------------------


def closest(word: str, choices: tuple[str, ...] | list[str]) -> str | None:
    """The valid name ``word`` most likely meant: a close spelling, else one it abbreviates (dba)."""
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if match:
        return match[0]
    # "dba", "infra", "sec": the letters appear in order in exactly the name meant
    lowered = word.lower()
    abbreviates = [c for c in choices if lowered and _is_subsequence(lowered, c.lower())]
    if abbreviates:
        return max(abbreviates, key=lambda c: difflib.SequenceMatcher(None, lowered, c).ratio())
    return None


def _is_subsequence(short: str, long: str) -> bool:
    letters = iter(long)
    return all(ch in letters for ch in short)


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str], what: str) -> str:
    guess = closest(word, choices)
    return f"did you mean `{guess}`?" if guess else f"{what} are {', '.join(choices)}"


def _known(choices: tuple[str, ...], what: str, plural: str) -> AfterValidator:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"unknown {what} `{value}`; {_did_you_mean(value, choices, plural)}")
        return value

    return AfterValidator(check)


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError(f"`{value}` is not an environment variable name (A-Z, 0-9 and _, not starting with a digit)")
    return value


RoleName = Annotated[str, _known(ROLES, "role", "roles")]
ScenarioName = Annotated[str, _known(SCENARIOS, "scenario", "scenarios")]
HookName = Annotated[str, _known(HOOK_NAMES, "hook", "hooks")]
EnvName = Annotated[str, AfterValidator(_env_name)]


def _known_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}; use an IANA name such as UTC or Asia/Seoul") from None
    return value


TimeZone = Annotated[str, AfterValidator(_known_zone)]


def _no_url_password(value: str, instead: str) -> str:
    try:
        password = urlsplit(value).password
    except ValueError:
        raise ValueError("not a valid URL") from None
    if password is not None:
        raise ValueError(f"do not put a password in the URL; {instead}")
    return value


# --- sections ------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Objectives(_Strict):
    rto_minutes: float = Field(default=240, gt=0)
    rpo_minutes: float = Field(default=15, gt=0)
    mttr_minutes: float = Field(default=120, gt=0)
    availability_percent: float = Field(default=99.9, gt=0, le=100)


def _default_scenario_roles() -> dict[str, list[str]]:
    return {
        "datacenter_outage": list(ROLES),
        "database_failure": ["incident_commander", "database_lead", "infrastructure_lead",
                             "application_lead", "communication_manager"],
        "ransomware": list(ROLES),
    }


class SlackSettings(_Strict):
    stakeholder_channel: str = "C0STAKE"
    ops_channel: str = "C0OPS"
    incident_channel_prefix: str = "inc"
    reminder_minutes: float = Field(default=30, gt=0)
    # Who the roster sends to the incident channel, per scenario (R1/R2). Missing = every role.
    scenario_roles: dict[ScenarioName, list[RoleName]] = Field(default_factory=_default_scenario_roles)


class HealthCheck(_Strict):
    tcp: str | None = None            # "host:port"
    http: str | None = None           # URL
    postgres_dsn_env: EnvName | None = None
    timeout_seconds: float = Field(default=3.0, gt=0)

    @field_validator("http")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        return None if value is None else _no_url_password(value, "health checks take no credentials")

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheck:
        if sum(x is not None for x in (self.tcp, self.http, self.postgres_dsn_env)) != 1:
            raise ValueError("give exactly one of tcp, http, postgres_dsn_env")
        return self


class Service(_Strict):
    name: str = Field(min_length=1)
    tier: int = 3
    depends_on: list[str] = Field(default_factory=list)
    health: HealthCheck | None = None
    # where a drill instance of the service answers (http(s)://… or tcp://host:port): the
    # full_system_recovery_test probes it after restoring into scratch (recovery/drills)
    drill_url: str | None = None
    # how Aegis starts (or restarts) this service after a recovery: the plan's service_start step runs
    # the hook, then probes `health` (recovery order: tier, then depends_on). Neither: the start_services step.
    start: Hook | None = None
    restart: Hook | None = None

    @field_validator("drill_url")
    @classmethod
    def _drill_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if urlsplit(value).scheme not in ("http", "https", "tcp"):
            raise ValueError("a drill_url is an http://, https:// or tcp://host:port URL")
        return _no_url_password(value, "health checks take no credentials")

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, value: int) -> int:
        if value not in TIERS:
            raise ValueError(f"tier {value} does not exist; tiers are 1, 2 and 3 (tier 1 recovers first)")
        return value


def _dsn_password_refused(dsn: str) -> str:
    """A DSN in the file must not carry a password, in either libpq form (key=value or URL)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # psycopg's message may quote the DSN, password included: say it without
        raise ValueError("not a valid libpq DSN: use key=value pairs (host=… port=… user=…) or a "
                         "postgresql:// URL") from None
    if parts.get("password") is not None:
        raise ValueError("do not put a password in the DSN; name an environment variable in password_env")
    return dsn


class PostgresNode(_Strict):
    dsn: str                          # libpq DSN without a password (use password_env)
    password_env: EnvName | None = None
    label: str | None = None
    control: PostgresControl | None = None   # how an in-place restore stops/starts this server

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, value: str) -> str:
        return _dsn_password_refused(value)

    def full_dsn(self) -> str:
        """The DSN with the password taken from the environment at the moment of use (libpq-quoted)."""
        password = os.environ.get(self.password_env) if self.password_env else None
        if not password:
            return self.dsn
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.dsn, password=password)


class IntegrityCheck(_Strict):
    """A read-only query run by the verification step on the recovered node; its first value is the
    evidence (e.g. ``SELECT count(*) FROM orders`` with ``min: 1000``). Without ``expect`` or ``min``
    the value must be non-empty and not false."""

    name: str = Field(min_length=1, max_length=80)
    sql: str = Field(min_length=1)
    expect: str | None = None        # the first value, as text, must equal this
    min: float | None = None         # or be a number at least this (a row count, a max(id), …)
    timeout_seconds: float = Field(default=30, gt=0, le=600)

    @model_validator(mode="after")
    def _one_expectation(self) -> IntegrityCheck:
        if self.expect is not None and self.min is not None:
            raise ValueError("give at most one of expect or min")
        return self


class PostgresComponent(_Strict):
    primary: PostgresNode
    standby: PostgresNode | None = None
    integrity_checks: list[IntegrityCheck] = Field(default_factory=list)


class Neo4jVerify(_Strict):
    """A read-only Cypher query run after an in-place Neo4j restore (in a read transaction, under a
    timeout); its first value is the evidence, judged like an ``IntegrityCheck``: ``expect`` (text
    equal), ``min`` (a number at least), or neither (not empty and not false)."""

    cypher: str = Field(min_length=1)
    expect: str | None = None
    min: float | None = None
    timeout_seconds: float = Field(default=30, gt=0, le=600)

    @model_validator(mode="after")
    def _one_expectation(self) -> Neo4jVerify:
        if self.expect is not None and self.min is not None:
            raise ValueError("give at most one of expect or min")
        return self


class MilvusVerify(_Strict):
    """After an in-place Milvus restore of ``collection``: it must hold at least ``min_rows`` rows."""

    collection: str = Field(min_length=1)
    min_rows: int = Field(default=1, ge=0)


NEO4J_SCHEMES = ("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc")


class Neo4jComponent(_Strict):
    """What ``aegis backup``/``restore neo4j`` connect to (recovery/backup/sources/neo4j.py)."""

    uri: str                          # bolt://host:7687 or neo4j://…
    user: str = "neo4j"
    password_env: EnvName | None = None
    database: str = "neo4j"
    verify: Neo4jVerify | None = None   # checked after an in-place restore (recovery/actions/graph_restore.py)

    @field_validator("uri")
    @classmethod
    def _bolt_uri(cls, value: str) -> str:
        return _neo4j_uri(value)


def _neo4j_uri(value: str) -> str:
    scheme = value.partition("://")[0] if "://" in value else ""
    if scheme not in NEO4J_SCHEMES:
        raise ValueError(f"a Neo4j URI starts with {', '.join(s + '://' for s in NEO4J_SCHEMES)}")
    return _no_url_password(value, "name an environment variable in password_env")


def _server_address(uri: str, default_port: int) -> tuple[str, int]:
    """host and port a URI reaches (``localhost`` and 127.0.0.1 told apart only by name)."""
    parts = urlsplit(uri)
    return (parts.hostname or "").lower(), parts.port or default_port


class MilvusComponent(_Strict):
    """A Milvus server URL (http://host:19530) or a Milvus Lite file; every collection is backed up."""

    uri: str = Field(min_length=1)
    verify: MilvusVerify | None = None  # checked after an in-place restore (recovery/actions/vector_restore.py)

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        return _no_url_password(value, "Milvus credentials cannot be given in the file")


class Components(_Strict):
    postgres: PostgresComponent | None = None
    neo4j: Neo4jComponent | None = None
    milvus: MilvusComponent | None = None


class Hook(_Strict):
    command: list[str] | None = Field(default=None, min_length=1)
    webhook: str | None = None
    timeout_seconds: float = Field(default=60, gt=0)
    headers_env: dict[str, EnvName] = Field(default_factory=dict)   # header -> variable holding its value
    done_check: list[str] | None = Field(default=None, min_length=1)
    # Literal, non-secret values set in the hook's environment ...
    env: dict[EnvName, str] = Field(default_factory=dict)
    # ... and variables passed through from Aegis's environment (secret: their values are masked).
    pass_env: list[EnvName] = Field(default_factory=list)

    @field_validator("webhook")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("a webhook is an http:// or https:// URL")
        return _no_url_password(value, "send credentials as a header named in headers_env")

    @field_validator("env")
    @classmethod
    def _no_context_shadowing(cls, value: dict[str, str]) -> dict[str, str]:
        shadowing = sorted(name for name in value if name.startswith(HOOK_CONTEXT_PREFIX))
        if shadowing:
            raise ValueError(f"{', '.join(shadowing)}: {HOOK_CONTEXT_PREFIX}* variables are set by Aegis "
                             "(the hook's context) and cannot be overridden")
        return value

    @field_validator("pass_env")
    @classmethod
    def _no_context_pass(cls, value: list[str]) -> list[str]:
        shadowing = sorted(name for name in value if name in HOOK_CONTEXT_NAMES)
        if shadowing:
            raise ValueError(f"{', '.join(shadowing)}: set by Aegis as the hook's context, not passed through")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Hook:
        if (self.command is None) == (self.webhook is None):
            raise ValueError("give exactly one of command or webhook")
        both = sorted(set(self.env) & set(self.pass_env))
        if both:
            raise ValueError(f"{', '.join(both)} is both in env (a literal) and in pass_env (passed through)")
        return self


Service.model_rebuild()   # its start/restart are Hooks, defined after it


class PostgresControl(_Strict):
    """How an in-place restore (recovery/actions/postgres_restore.py) stops and starts a PostgreSQL
    server: ``pg_ctl -D data_dir`` run as ``os_user`` on this host, or, for a remote host, the
    ``stop``/``start`` hooks (both or neither). ``data_dir`` is always needed: it is restored into."""

    data_dir: str = Field(min_length=1)
    os_user: str = Field(default="postgres", min_length=1)
    pg_bin: str | None = None         # default: AEGIS_PG_BIN, else the Debian path
    stop: Hook | None = None
    start: Hook | None = None
    # while the restore step waits for its approval, stream and verify the backup into the staging
    # directory beside data_dir (bot/prepare_ahead.py): approval → restored is then only the downtime
    prepare_ahead: bool = True

    @field_validator("data_dir", "pg_bin")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(value):
            raise ValueError(f"{value!r} is not an absolute path; give the full path "
                             "(e.g. /var/lib/postgresql/15/main)")
        return value

    @model_validator(mode="after")
    def _both_hooks_or_neither(self) -> PostgresControl:
        if (self.stop is None) != (self.start is None):
            raise ValueError("give both stop and start hooks (remote control) or neither (pg_ctl as os_user)")
        return self

    @property
    def kind(self) -> Literal["pg_ctl", "hooks"]:
        return "hooks" if self.stop is not None else "pg_ctl"


class Engine(_Strict):
    # A running step's ledger row is renewed every lease/3 seconds; a row whose lease ran out
    # belongs to a process that died, and is resumed by the ledger rule.
    lease_seconds: float = Field(default=30, gt=1)
    approval_expiry_minutes: float = Field(default=60, gt=0)


# --- backups: storage targets, the key, schedules and retention ----------------------------------
# Only keys recovery/backup/storage/base.py really takes; unset ones keep its defaults (8 MiB parts, 4
# uploads at a time, 3 retries, the AZURE_STORAGE_CONNECTION_STRING variable).

MiB = 1024 * 1024


class _StorageTarget(_Strict):
    # default: the kind, plus the list position after the first (local, s31, …); it names the copies
    # in the catalog, so two targets may not share one
    name: str | None = Field(default=None, min_length=1)


class LocalStorage(_StorageTarget):
    kind: Literal["local"]
    path: str = Field(min_length=1)


class _RemoteStorage(_StorageTarget):
    prefix: str = ""
    concurrency: int | None = Field(default=None, ge=1, le=64)
    retries: int | None = Field(default=None, ge=0, le=20)


class S3Storage(_RemoteStorage):
    """Credentials come from the standard AWS environment and config chain, never from this file."""

    kind: Literal["s3"]
    bucket: str = Field(min_length=1)
    region: str | None = None
    endpoint_url: str | None = None
    part_size: int | None = Field(default=None, ge=5 * MiB, le=5 * 1024 * MiB)  # S3's multipart limits

    @field_validator("endpoint_url")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        return None if value is None else _no_url_password(value, "S3 credentials come from the AWS environment")


class AzureStorage(_RemoteStorage):
    kind: Literal["azure"]
    container: str = Field(min_length=1)
    connection_string_env: EnvName | None = None
    block_size: int | None = Field(default=None, ge=1, le=4000 * MiB)   # Azure's block limit
    api_version: str | None = None


StorageTarget = Annotated[LocalStorage | S3Storage | AzureStorage, Field(discriminator="kind")]
STORAGE_KINDS = ("local", "s3", "azure")


class Encryption(_Strict):
    """Where the backup key is: exactly one of an environment variable or a file (never the key itself)."""

    key_env: EnvName | None = None
    key_file: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Encryption:
        if (self.key_env is None) == (self.key_file is None):
            raise ValueError("give exactly one of key_env (a variable holding the key) or key_file")
        return self


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


class WalArchiver(_Strict):
    """``aegis wal archiver`` (recovery/backup/wal/archiver.py) and the fast path of ``aegis wal push``.

    ``socket`` default: ``pg_wal/aegis-archiver.sock`` in the data directory. The fast path reads this
    key from the YAML itself (bot/cli/wal.py: it must not import pydantic per segment).
    """

    socket: str | None = Field(default=None, min_length=1, max_length=107)
    parallel: int = Field(default=4, ge=1, le=32)          # pushes at once (the look-ahead's width)
    answer_timeout_seconds: float = Field(default=600, gt=0)


class Backups(_Strict):
    timezone: TimeZone = "UTC"          # default: the top-level `timezone`
    schedules: BackupSchedules = Field(default_factory=BackupSchedules)
    retention: BackupRetention = Field(default_factory=BackupRetention)
    archiver: WalArchiver = Field(default_factory=WalArchiver)
    # zstd worker threads per backup stream (they release the GIL); null: the machine's cores - 1, at least 1
    compress_threads: int | None = Field(default=None, ge=0, le=64)


# --- monitoring (M1-M3): checks, thresholds, risk rules --------------------------------------------
# Check names are made from the config (``postgres primary``, ``service auth``, ``endpoint api``…;
# see bot/monitor_checks.py) and `monitoring.checks` overrides are checked against them at start.

MONITOR_RULES = ("database_failure", "datacenter_outage", "ransomware", "wal_archiving_stalled",
                 "backup_stale", "check_failed")     # recovery/monitor/risk.py BUILTIN_RULES
AUTO_RECOVERY_ACTIONS = ("postgres_confirm_down", "postgres_promote", "hook", "verify")
# steps configuration never pre-approves, whatever auto_recovery says: a manual step (a person's word) and
# every action that changes data or systems (two-person steps in a ransomware plan) that automatic
# recovery does not run — the restores, re-protect, service starts, the clean-up
NEVER_PRE_APPROVED = ("manual", *sorted(DESTRUCTIVE_ACTIONS.difference(AUTO_RECOVERY_ACTIONS)))


class CheckOverride(_Strict):
    interval_seconds: float | None = Field(default=None, gt=0)
    threshold: float | None = None
    timeout_seconds: float | None = Field(default=None, gt=0, le=300)


class Endpoint(_Strict):
    """A network endpoint: its name must resolve and a TCP connection to it must open."""

    name: str = Field(min_length=1)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)


class Canary(_Strict):
    """A ransomware tripwire: a file whose sha256 must not change, or a query whose value must not."""

    name: str = Field(min_length=1)
    file: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    sql: str | None = None
    expect: str | None = None
    node: Literal["primary", "standby"] = "primary"

    @model_validator(mode="after")
    def _one_kind(self) -> Canary:
        if (self.file is None) == (self.sql is None):
            raise ValueError("give exactly one of file (with sha256) or sql (with expect)")
        if self.file is not None and self.sha256 is None:
            raise ValueError("a file canary needs the sha256 it must keep")
        if self.sql is not None and self.expect is None:
            raise ValueError("a query canary needs the value it must keep in expect")
        return self


class Signals(_Strict):
    """``POST /signals`` (bot/signals.py): HMAC-signed reports of an endpoint-security tool.

    No default secret: without ``secret_env`` the route answers 404, with the variable unset 503.
    A ``ransomware`` signal fails the ``signal ransomware`` check for ``hold_minutes``.
    """

    secret_env: EnvName | None = None
    hold_minutes: float = Field(default=60, gt=0, le=7 * 24 * 60)


class RiskRule(_Strict):
    """A built-in rule's override, or (any other name) a custom rule over named checks."""

    enabled: bool = True
    level: Literal["critical", "high"] | None = None
    scenario: ScenarioName | None = None
    when_failing: list[str] = Field(default_factory=list)


class Monitoring(_Strict):
    enabled: bool = True
    interval_seconds: float = Field(default=30, gt=0)           # M1
    consecutive: int = Field(default=2, ge=1, le=100)           # samples a condition must hold (and clear)
    retry_after_seconds: float = Field(default=60, gt=0)        # M3
    warning_repeat_minutes: float = Field(default=30, gt=0)     # a HIGH warning, at most this often
    hosts: list[str] = Field(default_factory=list)              # host:port, TCP reachability
    data_directories: list[str] = Field(default_factory=list)   # besides local storage targets' paths
    disk_free_min_percent: float = Field(default=10, ge=0, le=100)
    replication_lag_bytes: float = Field(default=16 * MiB, ge=0)
    replication_lag_seconds: float = Field(default=300, ge=0)
    backup_grace_minutes: float = Field(default=60, ge=0)
    checks: dict[str, CheckOverride] = Field(default_factory=dict)
    endpoints: list[Endpoint] = Field(default_factory=list)
    canaries: list[Canary] = Field(default_factory=list)
    rules: dict[str, RiskRule] = Field(default_factory=dict)
    # automatic recovery (M2): bot/flows/incident.py Flows.auto_recover; names as in the plan's steps
    # (postgres_promote, hook.fence_primary…: statemachines.usecases.action_name)
    auto_recovery: dict[ScenarioName, bool] = Field(default_factory=dict)
    pre_approved_actions: list[str] = Field(default_factory=list)
    signals: Signals = Field(default_factory=Signals)

    @field_validator("hosts")
    @classmethod
    def _host_ports(cls, value: list[str]) -> list[str]:
        for host in value:
            name, sep, port = host.rpartition(":")
            if not sep or not name or not port.isdigit():
                raise ValueError(f"{host!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _rules_make_sense(self) -> Monitoring:
        for name, rule in self.rules.items():
            if name not in MONITOR_RULES and not rule.when_failing:
                guess = closest(name, MONITOR_RULES)
                hint = f"did you mean `{guess}`?" if guess else f"built-in rules are {', '.join(MONITOR_RULES)}"
                raise ValueError(f"rules.{name}: not a built-in rule and names no checks in when_failing; {hint}")
            # the first three built-in rules are CRITICAL with their own scenario; others need one named
            if rule.level == "critical" and rule.scenario is None and name not in MONITOR_RULES[:3]:
                raise ValueError(f"rules.{name}: a critical rule needs a scenario (one of {', '.join(SCENARIOS)})")
        for action in self.pre_approved_actions:
            base = action.split(".", 1)[0]
            if base in NEVER_PRE_APPROVED:
                raise ValueError(f"pre_approved_actions: `{action}` is a two-person step in a ransomware plan (the "
                                 "security lead and a second approver) and a person's decision in any plan; "
                                 "config never pre-approves it")
            if base == "hook" and action.split(".", 1)[-1] not in HOOK_NAMES:
                raise ValueError(f"pre_approved_actions: `{action}`: name the hook, one of "
                                 + ", ".join(f"hook.{h}" for h in HOOK_NAMES))
            if base not in AUTO_RECOVERY_ACTIONS:
                raise ValueError(f"pre_approved_actions: unknown action `{action}`; "
                                 f"{_did_you_mean(base, AUTO_RECOVERY_ACTIONS, 'actions')}")
        names = [c.name for c in self.canaries]
        if len(names) != len(set(names)):
            raise ValueError("canaries: each canary needs its own name")
        return self


# --- drills (D1, D2): schedules, scratch environment, the restore-test rotation ---------------------


def _crontab_or_none(value: str | None) -> str | None:
    if value is not None:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"not a crontab expression ({exc}); e.g. \"0 2 15 * *\"") from None
    return value


class DrillSchedules(_Strict):
    """Crontab lines in ``backups.timezone`` (D1's defaults); null disables one."""

    database_failover_test: str | None = "0 2 1 * *"          # monthly, the 1st 02:00 (2 h)
    full_system_recovery_test: str | None = "0 4 1 1,4,7,10 *"  # quarterly, after the failover test (4 h)
    backup_restore_test: str | None = "0 2 15 * *"            # monthly, the 15th 02:00 (1 h)
    # daily restore-test rotation: keeps every retained backup restore-tested within retest_days
    restore_rotation: str | None = "0 6 * * *"

    @field_validator("database_failover_test", "full_system_recovery_test", "backup_restore_test",
                     "restore_rotation")
    @classmethod
    def _crontab(cls, value: str | None) -> str | None:
        return _crontab_or_none(value)


class Neo4jScratch(_Strict):
    """A Neo4j server the drills may restore into (``drills.scratch.neo4j``), for Neo4j Community, which
    cannot create a scratch database beside production. The drill imports into ``database`` only when
    it is empty and wipes afterwards only what it imported (recovery/drills/graph_scratch.py)."""

    uri: str
    user: str = "neo4j"
    password_env: EnvName | None = None
    database: str = Field(default="neo4j", min_length=1)

    @field_validator("uri")
    @classmethod
    def _bolt_uri(cls, value: str) -> str:
        return _neo4j_uri(value)


class DrillScratch(_Strict):
    """Scratch servers of the drills' own (never production); without one, a drill creates its scratch
    copies beside production (a new Neo4j database, ``aegis_drill_*`` collections)."""

    neo4j: Neo4jScratch | None = None


class Drills(_Strict):
    scratch_dir: str = Field(default="/var/tmp/aegis-drills", min_length=1)  # the postgres user must traverse it
    report_dir: str | None = None             # default: <scratch_dir>/reports
    restore_budget_minutes: float = Field(default=60, gt=0)   # per backup_restore_test run (D1: 1 h)
    retest_days: float = Field(default=7, gt=0)              # every retained backup tested at least this often
    pg_bin: str | None = None                 # binaries of the backups' major version (default: AEGIS_PG_BIN)
    schedules: DrillSchedules = Field(default_factory=DrillSchedules)
    scratch: DrillScratch = Field(default_factory=DrillScratch)


# --- reports and metrics: who may read /reports/ and /metrics (bot/reports/, bot/metrics.py) ----------


class Reports(_Strict):
    """``/reports/`` is never open: a signed, expiring link (``/aegis report`` in Slack) or basic auth.

    The links are HMAC-signed with the secret in ``secret_env`` (never the Slack signing secret;
    replicas must share it). ``/metrics`` is open to loopback clients only, unless ``metrics_token_env``
    names a variable holding a bearer token: then it needs that token, from anywhere.
    """

    secret_env: EnvName = "AEGIS_REPORTS_SECRET"
    link_minutes: float = Field(default=24 * 60, gt=0, le=31 * 24 * 60)   # how long a link works
    base_url: str | None = None            # how people reach `aegis serve` (default: its own host:port)
    basic_auth_user: str | None = Field(default=None, min_length=1)
    basic_auth_password_env: EnvName | None = None
    metrics_token_env: EnvName | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("base_url is the http:// or https:// address people reach `aegis serve` at")
        return _no_url_password(value, "the reports' address takes no credentials").rstrip("/")

    @model_validator(mode="after")
    def _basic_pair(self) -> Reports:
        if (self.basic_auth_user is None) != (self.basic_auth_password_env is None):
            raise ValueError("give both basic_auth_user and basic_auth_password_env, or neither")
        return self


# --- the file ------------------------------------------------------------------------------------


def dependency_cycle(depends_on: dict[str, list[str]]) -> list[str] | None:
    """One dependency cycle as a path that ends where it starts (``[auth, search, auth]``), or None.

    Depth-first in config order, so the same file always names the same cycle; unknown names are
    skipped (they are reported on their own)."""
    done: set[str] = set()

    def walk(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name):], name]
        if name in done or name not in depends_on:
            return None
        for dep in depends_on[name]:
            found = walk(dep, [*path, name])
            if found:
                return found
        done.add(name)
        return None

    for name in depends_on:
        found = walk(name, [])
        if found:
            return found
    return None


class Config(_Strict):
    locale: Literal["en", "ko"] = "en"
    timezone: TimeZone = "UTC"          # every time Aegis shows (IANA name), named beside the time
    objectives: Objectives = Field(default_factory=Objectives)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    roster: dict[RoleName, list[str]] = Field(default_factory=dict)
    services: list[Service] = Field(default_factory=list)
    components: Components = Field(default_factory=Components)
    hooks: dict[HookName, Hook] = Field(default_factory=dict)
    engine: Engine = Field(default_factory=Engine)
    storage: list[StorageTarget] = Field(default_factory=list)
    encryption: Encryption = Field(default_factory=lambda: Encryption(key_env=DEFAULT_KEY_ENV))
    backups: Backups = Field(default_factory=Backups)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    drills: Drills = Field(default_factory=Drills)
    reports: Reports = Field(default_factory=Reports)

    @model_validator(mode="after")
    def _dependencies_exist(self) -> Config:
        names = [s.name for s in self.services]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"service name(s) {duplicates} are used more than once")
        for service in self.services:
            missing = [d for d in service.depends_on if d not in names]
            if missing:
                hints = "; ".join(f"`{m}`: {_did_you_mean(m, names, 'services')}" for m in missing)
                raise ValueError(f"service {service.name!r} depends on unknown service(s) {missing} ({hints})")
        cycle = dependency_cycle({s.name: s.depends_on for s in self.services})
        if cycle:
            raise ValueError(f"services depend on each other in a cycle: {' → '.join(cycle)}; "
                             "remove one of these depends_on entries (a cycle has no start order)")
        return self

    @model_validator(mode="after")
    def _storage_names(self) -> Config:
        seen: set[str] = set()
        for index, target in enumerate(self.storage):
            target.name = target.name or f"{target.kind}{'' if index == 0 else index}"
            if target.name in seen:
                raise ValueError(f"storage[{index}]: the name {target.name!r} is used by an earlier target; "
                                 "give each target its own `name`")
            seen.add(target.name)
        return self

    @model_validator(mode="after")
    def _scratch_is_not_production(self) -> Config:
        scratch, production = self.drills.scratch.neo4j, self.components.neo4j
        if scratch and production and _server_address(scratch.uri, 7687) == _server_address(production.uri, 7687):
            raise ValueError("drills.scratch.neo4j names the production Neo4j server (components.neo4j); a drill "
                             "never restores into production: name a separate scratch server")
        return self

    @model_validator(mode="after")
    def _backup_zone(self) -> Config:
        if "timezone" not in self.backups.model_fields_set:
            self.backups.timezone = self.timezone
        return self

    def response_team(self, scenario: str) -> list[str]:
        """The users the roster invites to an incident of ``scenario`` (R1): those listed for its roles."""
        roles = self.slack.scenario_roles.get(scenario) or list(ROLES)
        return list(dict.fromkeys(user for role in roles for user in self.roster.get(role, [])))


# --- reading the file and saying what is wrong ---------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error, not "the last one wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, object]:
        seen: set[Hashable] = set()
        for key_node, _value in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _one_line(text: str) -> str:
    """Control characters (a newline in a key) cannot split or forge a line of the report."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _read(file: Path) -> JsonObject:
    try:
        raw = file.read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"{file}: is a directory; give the path of the YAML file") from None
    except PermissionError:
        raise ConfigError(f"{file}: cannot be read (permission denied); let the user running Aegis read it") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {_one_line(_yaml_problem(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{file}: not valid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of keys (locale:, slack:, …), "
                          f"not a {type(data).__name__}")
    return data


def config_file(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The file :func:`load_config` reads: the one given (or in AEGIS_CONFIG), else ``./aegis.yaml`` when
    it exists; None when there is no file at all (built-in defaults, or the embedded default's demo)."""
    explicit = path or os.environ.get("AEGIS_CONFIG")
    file = Path(explicit or "aegis.yaml")
    return file if explicit or file.exists() or file.is_symlink() else None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the config; no file (and no AEGIS_CONFIG) means built-in defaults."""
    explicit = path or os.environ.get("AEGIS_CONFIG")
    file = Path(explicit or "aegis.yaml")
    if not file.exists() and not file.is_symlink():
        if explicit:
            raise ConfigError(f"config file {file} does not exist (set AEGIS_CONFIG to an existing file)")
        data: JsonObject = {}
    else:
        data = _read(file)
    return validate_config(data, str(file))


def validate_config(data: JsonObject, source: str) -> Config:
    """The checked config from parsed YAML (``source`` names it in every problem line); AEGIS_LOCALE wins."""
    if os.environ.get("AEGIS_LOCALE"):
        data["locale"] = os.environ["AEGIS_LOCALE"]
    file = source
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = [_one_line(f"{file}: {line}") for line in describe_errors(exc)]
        raise ConfigError("\n".join(problems), problems) from None
    # a component or storage target whose library is an extra that is not installed (bot/extras.py)
    missing = [_one_line(f"{file}: {line}") for line in missing_extras(config)]
    if missing:
        raise ConfigError("\n".join(missing), missing)
    return config


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per problem: "`storage[0].bukket`: unknown key; did you mean `bucket`?"."""
    lines = []
    for err in exc.errors(include_url=False):
        path, model = _locate(err["loc"])
        path, message = _explain(err, path, model)
        lines.append(f"`{path}`: {message}" if path else message)
    return lines


def _explain(err: ErrorDetails, path: str, model: type[BaseModel] | None) -> tuple[str, str]:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        fields = list(model.model_fields) if model else []
        return path, f"unknown key; {_did_you_mean(str(err['loc'][-1]), fields, 'valid keys')}"
    if kind == "missing":
        return path, "required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        kinds = ", ".join(STORAGE_KINDS)
        if kind == "union_tag_not_found":
            return f"{path}.kind", f"required key is missing; give one of {kinds}"
        tag = str(ctx.get("tag"))
        guess = closest(tag, STORAGE_KINDS)
        return f"{path}.kind", f"{tag!r} is not one of {kinds}" + (f"; did you mean `{guess}`?" if guess else "")
    message = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if path == "locale" and os.environ.get("AEGIS_LOCALE"):
        message += " (the value comes from AEGIS_LOCALE)"
    return path, message


def _locate(loc: tuple[int | str, ...]) -> tuple[str, type[BaseModel] | None]:
    """Pydantic's location as the user wrote it, and the model holding its last key.

    ``('storage', 0, 's3', 'bukket')`` → ``storage[0].bukket`` and S3Storage: the union's tag
    (``s3``) and a dict key marker (``[key]``) are pydantic's, not part of the file.
    """
    path = ""
    annotation: object = Config
    holder: type[BaseModel] | None = None
    for item in loc:
        annotation = _plain(annotation)
        members = _models_of_union(annotation)
        if members:  # a tagged union: this element of the location is the tag
            annotation = next((m for m in members if _is_tag(m.model_fields["kind"].annotation, item)), None)
            continue
        if item == "[key]":
            continue
        holder = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if isinstance(item, int):
            path += f"[{item}]"
            annotation = get_args(annotation)[0] if get_origin(annotation) is list else None
            continue
        path += f".{item}" if path else str(item)
        if holder is not None:
            field = holder.model_fields.get(str(item))
            annotation = field.annotation if field else None
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            annotation = None
    return path, holder


def _is_tag(annotation: object, item: int | str) -> bool:
    """Whether a union member's ``kind`` is ``Literal[item]`` (the same test as ``== Literal[item]``)."""
    return get_origin(annotation) is Literal and set(get_args(annotation)) == {item}


def _is_union(annotation: object) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _plain(annotation: object) -> object:
    """Strip ``Annotated[...]`` and ``| None``: what is left is what the location walks into."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif _is_union(annotation):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _models_of_union(annotation: object) -> list[type[BaseModel]]:
    if not _is_union(annotation):
        return []
    members = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return members if len(members) > 1 and all("kind" in m.model_fields for m in members) else []
