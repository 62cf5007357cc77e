"""Who may do what (P3, R1): pure functions over the roster and the incident's role holders.

- A role may be claimed by the users the roster lists for it.
- The roles that gate approvals (security lead, database lead, infrastructure lead) are claimed
  only from the roster whenever a roster exists: a role the roster leaves unlisted is then
  claimable by nobody. Otherwise anyone could take ``security_lead`` and satisfy the ransomware
  two-person rule alone.
- Any other role the roster does not list may be claimed by anyone in the channel — except the
  incident commander, which, with no roster for it, only the declarer may claim (someone has to
  be accountable).
- With no roster at all (the demo) every role is open: ``roles_open`` says so, and the incident
  card tells the channel.
- A step may be approved by anyone who holds, or is rostered for, one of the step's approver
  roles. The incident commander may approve every step.
- The recovery's choices (strategy, infection time, partial target) are made by the same people:
  the incident commander or an approver of the current plan (``may_choose_recovery``).
- A step needing two approvals (ransomware restores) needs two different people, one of them the
  security lead.
- A manual verification (a verify step with nothing automated to check) is recorded by the same
  people who approve: the step's approver roles, or, for a verification step that needs no
  approval, the approver roles of the plan's other steps; always the incident commander.
- Only the incident commander closes an incident; before anyone holds that role, the declarer
  may close it as a false alarm.
"""

from __future__ import annotations

from dataclasses import dataclass

from statemachines.vocabulary import COMMANDER, DATABASE_LEAD, INFRASTRUCTURE_LEAD, SECURITY_LEAD

#: roles whose holders approve destructive steps: never self-appointed while a roster exists
GATING_ROLES = frozenset({SECURITY_LEAD, DATABASE_LEAD, INFRASTRUCTURE_LEAD})


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""              # refusal key for the message layer
    roles: tuple[str, ...] = ()   # roles that authorise the user


def user_roles(user_id: str, *, roster: dict[str, list[str]], holders: dict[str, str]) -> set[str]:
    """Roles the user has for this incident: claimed ones plus rostered ones."""
    claimed = {role for role, holder in holders.items() if holder == user_id}
    rostered = {role for role, users in roster.items() if user_id in users}
    return claimed | rostered


def roles_open(roster: dict[str, list[str]]) -> bool:
    """True when no roster lists anyone: every role may be claimed by anyone (the demo)."""
    return not any(roster.values())


def may_claim(role: str, user_id: str, *, roster: dict[str, list[str]], declared_by: str) -> Decision:
    listed = roster.get(role)
    if listed:
        return Decision(user_id in listed, "not_on_roster")
    if role in GATING_ROLES and not roles_open(roster):
        return Decision(False, "not_on_roster")
    if role == COMMANDER:
        return Decision(user_id == declared_by, "not_on_roster")
    return Decision(True)


def may_approve(
    approver_roles: list[str], user_id: str, *, roster: dict[str, list[str]], holders: dict[str, str],
) -> Decision:
    allowed_roles = set(approver_roles) | {COMMANDER}
    mine = user_roles(user_id, roster=roster, holders=holders) & allowed_roles
    return Decision(bool(mine), "not_allowed_to_approve", tuple(sorted(mine)))


def may_choose_recovery(
    user_id: str, *, plan_roles: list[str], roster: dict[str, list[str]], holders: dict[str, str],
) -> Decision:
    """Who may switch the strategy or set the recovery's inputs (infection time, partial target):
    the incident commander, or anyone who may approve a step of the current plan (holds or is
    rostered for one of its approver roles). Choosing re-plans but runs nothing, so the people who
    would approve the new plan may ask for it; a bystander may not churn it."""
    return may_approve(plan_roles, user_id, roster=roster, holders=holders)


def verification_roles(step_roles: list[str], plan_roles: list[str]) -> list[str]:
    """Roles whose holders may state the evidence of a manual verification (see module rules)."""
    return sorted(set(step_roles or plan_roles) | {COMMANDER})


def approvals_satisfied(
    votes: list[tuple[str, tuple[str, ...]]], required: int,
) -> bool:
    """``votes`` are (user, roles) of distinct approvers; two-person steps need the security lead."""
    users = {user for user, _ in votes}
    if len(users) < required:
        return False
    if required >= 2:
        return any(SECURITY_LEAD in roles for _, roles in votes)
    return True


def may_close(user_id: str, *, holders: dict[str, str], declared_by: str, state: str) -> Decision:
    commander = holders.get(COMMANDER)
    if commander is not None:
        return Decision(user_id == commander, "not_commander")
    return Decision(user_id == declared_by and state != "verified", "not_commander")


#: who may start a drill (``/aegis drill run``): it restores production backups into scratch
#: servers and loads the storage targets, so the same roster roles as ``/aegis backup run``
DRILL_ROLES = (COMMANDER, DATABASE_LEAD, INFRASTRUCTURE_LEAD)


def may_run_drill(user_id: str, *, roster: dict[str, list[str]]) -> Decision:
    """Only users the roster lists for one of ``DRILL_ROLES``; with an empty roster nobody (from Slack)."""
    mine = tuple(role for role in DRILL_ROLES if user_id in roster.get(role, []))
    return Decision(bool(mine), "drill_not_allowed", mine)


# --- backup commands (``/aegis backup run|list|verify``) -------------------------------------------

#: who may start a backup (``/aegis backup run``): it loads the primary and the network
BACKUP_RUN_ROLES = (COMMANDER, DATABASE_LEAD, INFRASTRUCTURE_LEAD)


def may_run_backup(user_id: str, *, roster: dict[str, list[str]]) -> Decision:
    """Only users the roster lists for one of ``BACKUP_RUN_ROLES``; with an empty roster nobody (from
    Slack: the CLI on the bot's host still works — a bot anyone in the workspace can drive to load the
    production database is not a safe default)."""
    mine = tuple(role for role in BACKUP_RUN_ROLES if user_id in roster.get(role, []))
    return Decision(bool(mine), "backup_run_not_allowed", mine)


def may_read_backups(user_id: str, *, roster: dict[str, list[str]]) -> Decision:
    """``backup list`` and ``backup verify`` change nothing: anyone the roster lists, under any role."""
    mine = tuple(role for role, users in roster.items() if user_id in users)
    return Decision(bool(mine), "backup_read_not_allowed", mine)
