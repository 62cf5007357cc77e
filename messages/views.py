"""Plain data handed to the message layer. Nothing here knows about databases or Slack.

The bot turns store rows into these views; ``messages.blocks`` turns views into text + Block Kit.
Times are timezone-aware UTC datetimes; durations are seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias

# Block Kit as Slack reads it: JSON. Read-only containers so a list of blocks is also a JSON value.
JsonValue: TypeAlias = "str | int | float | bool | None | Sequence[JsonValue] | Mapping[str, JsonValue]"
Block: TypeAlias = dict[str, JsonValue]   # one block, element, text object or modal view


@dataclass(frozen=True)
class Message:
    """What gets posted: a plain-text fallback plus Block Kit blocks."""

    text: str
    blocks: list[Block] = field(default_factory=list)


@dataclass(frozen=True)
class RoleView:
    role: str                      # e.g. "incident_commander"
    user_id: str | None            # Slack user id holding it, None when unclaimed


@dataclass(frozen=True)
class ApprovalView:
    user_id: str
    decision: str                  # "approve" | "reject"
    at: datetime
    roles: tuple[str, ...] = ()    # the roles that authorised the vote


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
    required_role: str | None = None   # one of the approvers must hold it (ransomware: security_lead)


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
    text: str                      # English fallback (logs, events stored before codes existed)
    code: str = ""                 # event code, rendered per locale by timeline.j2 ("" = show ``text``)
    params: dict[str, object] = field(default_factory=dict)   # the code's parameters (ids, names, user text)


@dataclass(frozen=True)
class RevisionView:
    """What a new plan revision changed against the one it replaces."""

    revision: int                  # this plan's revision (2, 3, …)
    added: list[str] = field(default_factory=list)     # step titles new in this revision
    removed: list[str] = field(default_factory=list)   # step titles of the previous revision dropped
    cause: str = ""                # rejected | aborted | verification_failed | "" (unknown)
    by: str | None = None          # who rejected / aborted
    reason: str = ""               # user-typed reason (reject form), or the failure's detail


@dataclass(frozen=True)
class ReplacedView:
    """An old plan message: which revision it showed, and where the newer one is."""

    revision: int                  # the old message's revision
    current_revision: int          # the revision that replaced it
    link: str | None = None        # permalink of the new plan message


@dataclass(frozen=True)
class PlanView:
    """One plan revision of an incident that has aftercare: the recovery, or an aftercare plan after it."""

    revision: int
    kind: str                      # recovery | reprotect | cleanup
    steps: list[StepView] = field(default_factory=list)


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
    roles_open: bool = False       # no roster: every role may be claimed by anyone in the channel
    plan_revision: int = 1
    revision: RevisionView | None = None   # set when the plan replaces an earlier revision
    objectives: ObjectiveReport | None = None   # RTO/RPO so far, for /aegis status (current revision only)
    aftercare: str | None = None   # reprotect | cleanup: the current plan runs after the recovery (state stays)
    protected: bool | None = None  # False: after a failover, running without a standby; True: re-protected
    standby_lag_bytes: int | None = None      # the replication lag the re-protect measured
    standby_lag_seconds: float | None = None
    # once an aftercare plan exists: the recovery plan that reached ``verified`` (with its approvals),
    # then each aftercare plan in order; empty before (``steps`` is then the whole story)
    plans: list[PlanView] = field(default_factory=list)


@dataclass(frozen=True)
class TransitionView:
    source: str
    dest: str
    actor: str | None
    reason: str                    # English, for logs; shown only where a person typed it (close)
    at: datetime
    trigger: str = ""              # what caused it; the stakeholder post words it per locale


@dataclass(frozen=True)
class EvidenceView:
    """One check a verification step made, and the value it observed."""

    check: str                     # "pg-standby accepts writes", "user-authentication (HTTP)", "manual verification"
    observed: str                  # "committed transaction 812", "HTTP 200 from 127.0.0.1", the responder's words
    expected: str
    ok: bool
    by: str | None = None          # Slack user id of the responder, for a manual verification


@dataclass(frozen=True)
class ExpectedView:
    """A figure against its scenario's expected range (the plan's table 3.1)."""

    requirement: str               # S1 | S2 | S3
    low_seconds: float
    high_seconds: float
    verdict: str                   # better (below the range) | within | over | unknown


@dataclass(frozen=True)
class ObjectiveReport:
    """Achieved versus target for the closing post (O1-O3).

    ``rto_met`` is True only for an incident verified *with evidence* within the target; the
    evidence (or who verified by hand) is listed in ``evidence``. An unknown RPO is
    ``rpo_seconds=None`` with ``rpo_basis`` saying why ("unknown: …"), never 0.
    """

    rto_seconds: float | None      # declared -> verified; None when never verified (false alarm)
    rto_target_seconds: float
    rpo_seconds: float | None      # e.g. replication lag at failure for a promotion; None = not measured
    rpo_target_seconds: float
    rpo_basis: str                 # how RPO was measured, e.g. "replication lag at failover"
    mttr_seconds: float | None     # declared -> closed
    mttr_target_seconds: float
    evidence: list[EvidenceView] = field(default_factory=list)   # what verification checked, with values
    verified_manually_by: str | None = None    # Slack user id when verification was manual
    rto_met: bool | None = None    # None: never verified; False: missed, or verified without evidence
    rto_expected: ExpectedView | None = None   # the scenario's range (S1-S3); None: no range for it
    rpo_expected: ExpectedView | None = None
    declared_at: datetime | None = None        # RTO's evidence: declared → verified
    verified_at: datetime | None = None
    verify_step: int | None = None             # position of the verification step whose checks are listed
    rpo_basis_data: Mapping[str, object] | None = None   # the basis as {code, params}, in the channel's language
