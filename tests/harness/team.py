"""The responder team every test incident uses, and the plain ``aegis serve`` config built on it."""

from __future__ import annotations

from typing import Any

ROSTER: dict[str, list[str]] = {
    "incident_commander": ["U0IC"], "database_lead": ["U0DB"], "infrastructure_lead": ["U0INFRA"],
    "application_lead": ["U0APP"], "security_lead": ["U0SEC"], "communication_manager": ["U0COMM"],
}

# what the front-door tests serve with: the team, a stakeholder and an ops channel, rare reminders
SERVE_CONFIG: dict[str, Any] = {
    "locale": "en",
    "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 30},
    "roster": ROSTER,
}
