"""SQLModel tables of the incident store.

Rows are never updated through stale ORM objects: every state change is an explicit
``UPDATE … WHERE version = :seen`` (see ``statemachines.service``), so two bot replicas or a
Slack retry cannot both win. JSON columns hold plain data only, never secrets.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import JSON, Column, DateTime, Index, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from statemachines.json_types import JsonObject


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Keyed(Protocol):
    @property
    def id(self) -> int | None: ...


def require_id(row: _Keyed) -> int:
    """The primary key of a row read from (or flushed to) the database.

    SQLModel types ``id`` as ``int | None`` because a new row has none until it is flushed; every
    row the code passes around was loaded or flushed, so a missing id is a bug, not a zero.
    """
    if row.id is None:
        raise ValueError(f"{type(row).__name__} has no id yet: flush it before using its key")
    return row.id


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which drops tzinfo) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Incident(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    key: str | None = Field(default=None, index=True, unique=True)   # "INC-7"
    # the request that declared it (a slash command's trigger_id, a form's view id): a retried or
    # redelivered request finds this incident instead of declaring a second one
    request_key: str | None = Field(default=None, index=True, unique=True)
    scenario: str
    severity: str
    summary: str
    state: str = Field(default="detected", index=True)
    version: int = 1
    declared_by: str
    declared_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    locale: str = "en"
    strategy: str | None = None
    plan_revision: int = 0
    channel_id: str | None = None
    card_ts: str | None = None
    plan_ts: str | None = None
    stakeholder_channel: str | None = None
    stakeholder_ts: str | None = None
    checks: list[JsonObject] = Field(default_factory=list, sa_column=Column(JSON))
    verified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    close_summary: str | None = None
    rpo_seconds: float | None = None
    rpo_basis: str | None = None      # in English (logs, the CLI, the JSON API)
    # the same basis as {"code", "params"} for the channel's language (recovery/objectives.py Basis)
    rpo_basis_data: JsonObject | None = Field(default=None, sa_column=Column(JSON))
    last_reminder_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # what responders chose in forms: {"strategy", "infection_time", "partial": {...}} (bot/flows/incident.py)
    recovery_options: JsonObject = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # when the failure happened, the RPO baseline: None = the declaration time; ransomware: the infection time
    failure_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # None while the current plan revision is the recovery plan; "reprotect" | "cleanup" for a plan that
    # runs after the incident is verified (or closed) without moving its state
    aftercare: str | None = None
    # None = not applicable; False = after a failover, running without a standby; True = re-protected
    protected: bool | None = None


class TimelineEvent(SQLModel, table=True):
    __tablename__ = "timeline_event"
    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    kind: str                      # transition | approval | step | audit | note | slack_error
    actor: str | None = None
    source_state: str | None = None
    dest_state: str | None = None
    text: str = ""
    data: JsonObject = Field(default_factory=dict, sa_column=Column(JSON))


class RoleAssignment(SQLModel, table=True):
    __tablename__ = "role_assignment"
    __table_args__ = (UniqueConstraint("incident_id", "role", name="uq_role_per_incident"),)
    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    role: str
    user_id: str
    assigned_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PlanStep(SQLModel, table=True):
    __tablename__ = "plan_step"
    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    revision: int                  # plan revision; a new assessment supersedes older steps
    position: int
    title: str
    action: str                    # action kind: postgres_promote, hook, manual, check, …
    params: JsonObject = Field(default_factory=dict, sa_column=Column(JSON))   # config names only
    risk: str = "low"
    approver_roles: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    approvals_required: int = 1
    status: str = "pending"
    attempt: int = 1
    version: int = 1
    detail: str = ""
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # what a verification step observed: [{check, observed, expected, ok}] (+ "by" when manual)
    evidence: list[JsonObject] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class Approval(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("step_id", "attempt", "user_id", name="uq_one_vote_per_attempt"),)
    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    step_id: int = Field(foreign_key="plan_step.id", index=True)
    attempt: int
    user_id: str
    decision: str                  # approve | reject
    roles: list[str] = Field(default_factory=list, sa_column=Column(JSON))  # roles that authorised it
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # "" for a person's vote; why Aegis approved it otherwise ("pre-approved by config (…)", usecases.pre_approve)
    basis: str = ""


class LedgerEntry(SQLModel, table=True):
    """One execution attempt of one step, written *before* the action starts (C1-C4)."""

    __tablename__ = "action_ledger"
    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    step_id: int = Field(foreign_key="plan_step.id", index=True)
    idempotency_key: str = Field(unique=True)   # "<incident>:<step>:<attempt>"
    attempt: int
    action: str
    status: str = "running"        # running | succeeded | failed | interrupted
    owner: str = ""                # process that runs it (host:pid:boot)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    lease_until: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    output: JsonObject = Field(default_factory=dict, sa_column=Column(JSON))


class BackupRecord(SQLModel, table=True):
    """One stored backup object (B4): a base backup, a WAL segment, a dump or an export.

    ``run_id`` is the ``backup_YYYYMMDD_HHMMSS`` id of the run that took it; ``targets`` holds each
    storage target's outcome (``{"s3": {"ok": true, "error": null}}``). No key material is stored,
    only the key id.
    """

    __tablename__ = "backup_catalog"
    __table_args__ = (UniqueConstraint("run_id", "object_name", name="uq_backup_object"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)             # backup_YYYYMMDD_HHMMSS
    kind: str                                   # pg_full | pg_incremental | pg_logical | pg_wal | neo4j | milvus
    component: str                              # postgres | neo4j | milvus
    object_name: str                            # key on every target
    status: str = "running"                     # running | ok | failed | deleted
    reason: str = ""                            # e.g. why an incremental slot took a full backup
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    start_lsn: str | None = None
    stop_lsn: str | None = None
    timeline: int | None = None
    source_size: int = 0
    stored_size: int = 0
    sha256: str | None = None                   # of the stored (encrypted) bytes
    source_sha256: str | None = None            # of the plaintext; WAL pushes compare it (idempotency)
    parent_run_id: str | None = None            # an incremental's base: the previous backup in its chain
    key_id: str | None = None
    targets: JsonObject = Field(default_factory=dict, sa_column=Column(JSON))
    verified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    verify_result: JsonObject = Field(default_factory=dict, sa_column=Column(JSON))
    # what the backup held when it was taken (PostgreSQL: row counts and checksums per table, before
    # and after the base backup; recovery/drills/contents.py), compared by the restore test
    contents: JsonObject = Field(default_factory=dict, sa_column=Column(JSON))
    # the last restore test of this backup (recovery/drills): None = never tested
    restore_tested_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    restore_test_ok: bool | None = None
    restore_test_reason: str = ""


class ScheduledClaim(SQLModel, table=True):
    """Who runs one fire of a scheduled job (``backup-postgres_full`` at ``2026-11-29T02:00:00+00:00``).

    The scheduler leader inserts this row before doing the work; the unique (job, fire time) keeps a
    fire to one run even across a leader change. ``fire_time`` is the scheduled time as an ISO
    string in UTC. The claimant renews ``lease_until`` while it works and sets ``done_at`` at the end.
    """

    __tablename__ = "scheduled_claim"
    __table_args__ = (UniqueConstraint("job_id", "fire_time", name="uq_one_claim_per_fire"),)
    id: int | None = Field(default=None, primary_key=True)
    job_id: str
    fire_time: str
    owner: str = ""                              # host:pid:boot of the replica that won
    claimed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # what to run again if the claimant dies mid-fire: a lapsed lease without done_at is re-run
    job_name: str = ""                           # stable registry name (``backup.prune``)
    args: list[object] = Field(default_factory=list, sa_column=Column(JSON))
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    done_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ScheduledJob(SQLModel, table=True):
    """One schedule the scheduler leader runs: a stable job name, plain arguments and a trigger.

    Only the name is stored (``reminder``, ``backup.prune``), never a module path, so moving code
    does not orphan a stored job. ``cron`` (crontab, in ``timezone``) or ``interval_seconds``
    (counted from ``start_at``) says when it fires.
    """

    __tablename__ = "scheduled_job"
    job_id: str = Field(primary_key=True)        # reminder-12, backup-postgres_full
    name: str
    args: list[object] = Field(default_factory=list, sa_column=Column(JSON))
    cron: str | None = None
    interval_seconds: float | None = None
    timezone: str = "UTC"
    start_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    misfire_grace_seconds: int = 300


class OutboxRow(SQLModel, table=True):
    """Something a committed change must tell Slack (Mechanism 1: the transactional outbox).

    Written in the same transaction as the change it reports, so a crash can delay a message but
    never lose it. ``kind`` names what to do (``open_room``, ``card``, ``plan``, ``stakeholder_update``,
    …), ``version`` is the incident's version that commit produced, ``payload`` holds plain data the
    message needs beyond the incident itself (a step id, a transition). The dispatcher claims a row
    with a lease (``claimed_by``/``claimed_until``), delivers it, and sets ``done_at``; a failed try
    sets ``next_try_at`` later (back-off) and counts ``attempts``.
    """

    __tablename__ = "outbox"
    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    kind: str
    version: int = 0
    payload: JsonObject = Field(default_factory=dict, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    attempts: int = 0
    next_try_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    done_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    claimed_by: str | None = None
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = None


class MonitorSample(SQLModel, table=True):
    """One run of one monitor check (M1): what it observed against its threshold.

    Kept (about 400 days) for the availability figures (O4): read by check and time.
    """

    __tablename__ = "monitor_sample"
    __table_args__ = (Index("ix_monitor_sample_check_at", "check", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    check: str
    domain: str                                  # infrastructure | database | application | network
    ok: bool
    value: float | None = None
    unit: str = ""
    threshold: float | None = None
    reason: str = ""
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class MonitorCondition(SQLModel, table=True):
    """A risk condition that held for N consecutive samples (M2), one row per ongoing condition.

    ``key`` is stable (``database_failure:postgres primary``); ``open_key`` equals it while the
    condition is open and is NULL once cleared, and is unique: two replicas, or a loop restarted
    mid-condition, cannot open the same condition twice, yet a cleared one can happen again.
    """

    __tablename__ = "monitor_condition"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(index=True)
    open_key: str | None = Field(default=None, unique=True)
    rule: str = ""
    level: str                                   # CRITICAL | HIGH
    scenario: str | None = None
    summary: str = ""
    checks: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    since: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_seen: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    cleared_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    incident_id: int | None = Field(default=None, foreign_key="incident.id")
    last_warned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    evidence: list[JsonObject] = Field(default_factory=list, sa_column=Column(JSON))


class MonitorStreak(SQLModel, table=True):
    """How many consecutive samples a finding has held (``failing``) or a condition has been good.

    One row per finding key, written with the cycle's samples (``recovery.monitor.history``), so a
    restarted loop or a new leader continues counting. A streak whose ``last_at`` is older than its
    checks' allowed gap (``recovery.monitor.risk.ConditionTracker``) starts again at 1.
    """

    __tablename__ = "monitor_streak"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True)
    failing: bool                                # True: a finding not yet a condition; False: an open one clearing
    count: int
    checks: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    last_at: datetime = Field(sa_type=UTCDateTime)


class MonitorSignal(SQLModel, table=True):
    """A signal an endpoint-security tool sent to ``POST /signals`` (bot/signals.py), HMAC-verified.

    The monitor's ``signal ransomware`` check reads the recent ones (recovery/monitor/signals.py).
    ``digest`` (sha256 of the signed timestamp and body) is unique: a replay inside the five-minute
    window is answered but stored once.
    """

    __tablename__ = "monitor_signal"
    id: int | None = Field(default=None, primary_key=True)
    digest: str = Field(unique=True)
    source: str
    kind: str = Field(index=True)                # ransomware
    host: str = ""
    detail: str = ""                             # redacted, at most 2000 characters
    at: datetime = Field(sa_type=UTCDateTime)    # when the tool saw it (its clock)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class DrillRun(SQLModel, table=True):
    """One DR drill (D1, D2): prepared, run, validated, cleaned up, reported.

    Plain, queryable columns for the reports and /metrics. ``scratch`` lists every scratch resource
    (``{"kind": "postgres", "data_dir": …, "port": …, "state": "registered|created|removed"}``),
    written *before* the resource is created, so the leftovers of a drill whose process died can be
    found and removed. ``owner`` (host:pid:start) and ``lease_until`` tell a dead drill from a live one.
    ``objectives`` holds one entry per objective: ``{objective, target, value, unit, passed, basis}``
    (``passed`` None = unknown, with the reason in ``basis``).
    """

    __tablename__ = "drill_run"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)                # backup_restore_test | database_failover_test | …
    trigger: str                                 # schedule | slack | cli
    requested_by: str | None = None
    scenario: str | None = None                  # the scenario whose expected range scores it
    status: str = Field(default="running", index=True)   # running | passed | failed | error | interrupted
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    owner: str = ""
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    steps: list[JsonObject] = Field(default_factory=list, sa_column=Column(JSON))
    figures: JsonObject = Field(default_factory=dict, sa_column=Column(JSON))
    objectives: list[JsonObject] = Field(default_factory=list, sa_column=Column(JSON))
    scratch: list[JsonObject] = Field(default_factory=list, sa_column=Column(JSON))
    cleaned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    report_path: str | None = None
    error: str = ""
