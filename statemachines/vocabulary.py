"""The closed word lists the domain, the config and the Slack surface share, defined once.

Roles, scenarios and severities are stored in the database and typed by users (``/aegis declare
database_failure high``), so they are stable identifiers, not display names: the templates'
``names`` tables translate them.
"""

from __future__ import annotations

# --- roles (the incident's role holders; the roster lists who may claim each) -------------------
COMMANDER = "incident_commander"
INFRASTRUCTURE_LEAD = "infrastructure_lead"
DATABASE_LEAD = "database_lead"
APPLICATION_LEAD = "application_lead"
SECURITY_LEAD = "security_lead"
COMMUNICATION_MANAGER = "communication_manager"
ROLES = (COMMANDER, INFRASTRUCTURE_LEAD, DATABASE_LEAD, APPLICATION_LEAD, SECURITY_LEAD, COMMUNICATION_MANAGER)

# --- scenarios (each has a plan in recovery.planner) ---------------------------------------------
DATACENTER_OUTAGE = "datacenter_outage"
DATABASE_FAILURE = "database_failure"
RANSOMWARE = "ransomware"
SCENARIOS = (DATACENTER_OUTAGE, DATABASE_FAILURE, RANSOMWARE)

# --- severities ----------------------------------------------------------------------------------
SEVERITIES = ("critical", "high", "medium", "low")

# --- step details Aegis writes itself (every other detail is an action's own output, shown as it is) ----
# messages/ shows these in the channel's language (the ``own_details`` table of each locale's names.j2).
DETAIL_APPROVAL_EXPIRED = "approval expired: approve again"
DETAIL_CONFIRMED_AFTER_RESTART = "confirmed done after a restart (is_done)"
DETAIL_INTERRUPTED = "interrupted by a restart; outcome unknown — not re-run"
OWN_DETAILS = (DETAIL_APPROVAL_EXPIRED, DETAIL_CONFIRMED_AFTER_RESTART, DETAIL_INTERRUPTED)

# --- hooks (the site-specific steps a plan can hand to a configured hook; recovery.planner) ---------
# Here rather than in the planner so that loading the config (`aegis config check`, every one-shot
# command) does not import the planner's ORM stack for this one list.
HOOK_NAMES = ("fence_primary", "update_traffic", "activate_standby_environment", "start_services", "isolate_systems",
              # failover (S1): bring up the graph / vector standbys, then route traffic back once verified
              "neo4j_standby", "milvus_standby", "restore_traffic")

# --- plan step actions that change data or systems (recovery.planner) -----------------------------
# Under the ransomware two-person rule whatever their risk (recovery.planner); bot/config.py refuses
# to pre-approve those of them automatic recovery does not run (monitoring.pre_approved_actions).
# Here for the same reason as HOOK_NAMES: one list, read by the config without the planner.
DESTRUCTIVE_ACTIONS = frozenset({"postgres_restore", "neo4j_restore", "milvus_restore", "postgres_partial_restore",
                                 "hook", "service_start", "postgres_promote", "discard_aside", "postgres_reprotect"})
