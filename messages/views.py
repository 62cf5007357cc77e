"""Plain data handed to the message layer. Nothing here knows about databases or Slack.

The bot turns store rows into these views; ``messages.blocks`` turns views into text + Block Kit.
Times are timezone-aware UTC datetimes; durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Message:
    """What gets posted: a plain-text fallback plus Block Kit blocks."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RoleView:
    role: str                      # e.g. "incident_commander"
    user_id: str | None            # Slack user id holding it, None when unclaimed


@dataclass(frozen=True)
class ApprovalView:
    user_id: str
    decision: str                  # "approve" | "reject"
    at: datetime


@dataclass(frozen=True)
class StepView:
    id: int                        # plan step id, the value of approve/reject/retry/abort buttons
    position: int                  # 1-based order in the plan
    title: str                     # what the step does ("Promote standby pg-standby")
    action: str                    # action kind ("postgres_promote", "hook", "manual", "check")
    risk: str                      # "low" | "high" | "critical"
    approver_roles: list[str]      # roles allowed to approve
    approvals_required: int        # 0 for read-only checks, 1 normally, 2 for ransomware restores
    status: str                    # pending|awaiting_approval|approved|running|succeeded|failed|rejected|skipped
    approvals: list[ApprovalView] = field(default_factory=list)
    detail: str = ""               # last output line or error, already free of secrets
    manual: bool = False           # a manual step: approve means "done by a human"


@dataclass(frozen=True)
class CheckView:
    target: str
    kind: str                      # tcp | http | postgres
    ok: bool
    detail: str


@dataclass(frozen=True)
class TimelineItem:
    at: datetime
    kind: str                      # "transition", "approval", "step", "audit", "note", ...
    actor: str | None              # Slack user id or "aegis"
    text: str                      # already human-readable, free of secrets


@dataclass(frozen=True)
class IncidentView:
    key: str                       # "INC-7"
    id: int
    scenario: str                  # datacenter_outage | database_failure | ransomware
    severity: str                  # critical | high | medium | low
    summary: str
    state: str                     # detected | assembled | assessed | recovering | verified | closed
    declared_by: str               # Slack user id, or "aegis" for the detector
    declared_at: datetime
    channel_id: str | None
    roles: list[RoleView] = field(default_factory=list)
    steps: list[StepView] = field(default_factory=list)
    strategy: str | None = None    # failover | restore_from_backup | partial_recovery | manual
    checks: list[CheckView] = field(default_factory=list)
    timeline: list[TimelineItem] = field(default_factory=list)
    close_summary: str | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class TransitionView:
    source: str
    dest: str
    actor: str | None
    reason: str
    at: datetime


@dataclass(frozen=True)
class ObjectiveReport:
    """Achieved versus target for the closing post (O1-O3)."""

    rto_seconds: float | None      # declared -> verified; None when never verified (false alarm)
    rto_target_seconds: float
    rpo_seconds: float | None      # e.g. replication lag at failure for a promotion; None = not measured
    rpo_target_seconds: float
    rpo_basis: str                 # how RPO was measured, e.g. "replication lag at failover"
    mttr_seconds: float | None     # declared -> closed
    mttr_target_seconds: float
