"""Why the planner chose a strategy, in the reader's language (``plan_reason.j2``).

The planner (recovery/planner.py) gives a reason *code* and its params (``Plan.reason``,
``Plan.reason_ctx``): the scenario's default, the responders' choice and why it could or could not
be followed, and for ransomware the clean point per component with every newer backup skipped and
why. They travel as JSON in the assessment's outbox row; here the ISO times become datetimes so that
each locale shows them in the display zone. The English ``Plan.rationale`` stays for the timeline/logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from messages.blocks.kit import phrase

# the keys of reason_ctx that hold ISO-8601 times (recovery/planner.py, recovery/clean_point.py as_json)
TIME_KEYS = frozenset({"infection_at", "pitr_target", "taken_at", "proof_at", "at"})


def _with_times(value: object, key: str = "") -> object:
    if isinstance(value, Mapping):
        return {str(k): _with_times(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_times(v) for v in value]
    if key in TIME_KEYS and isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return value


def plan_reason(locale: str, reason: str, ctx: Mapping[str, object] | None) -> str:
    """The paragraph under *Why:* for ``reason`` and its ``ctx``; "" when there is no reason code."""
    if not reason:
        return ""
    return phrase(locale, "plan_reason", reason=reason, ctx=_with_times(dict(ctx or {})))
