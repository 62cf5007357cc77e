"""Reading the recovery-choice forms (issue 9): the ransomware infection time and the partial target.

Pure functions over a submitted view's ``state.values``: each returns what to store, or the errors
to show in the form (``{block_id: template part}``; ``messages/templates/*/infection_modal.j2`` and
``partial_modal.j2`` word them), so nothing is stored from bad input and the form stays open.

Decided here, where the issue is silent:
- A time is a date and a time of day (Slack's ``datepicker`` + ``timepicker``) in the team's zone
  (config ``timezone``; the form names it), stored in UTC as ISO-8601. Minutes are the resolution.
- The infection time may be neither in the future nor after the declaration: the infection began
  at or before its detection.
- A partial target names one object: PostgreSQL ``database`` (+ optional ``schema.table``; no
  table = the whole database), Neo4j ``database``, Milvus ``collection``; the fields of the other
  components are dropped. The component must be configured. No target time = the latest point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from statemachines.json_types import JsonObject

PARTIAL_COMPONENTS = ("postgres", "neo4j", "milvus")
_NAME = re.compile(r"[^\s.\"';]{1,63}")                    # one identifier: no dots, quotes, spaces
_TABLE = re.compile(r"[^\s.\"';]{1,63}\.[^\s.\"';]{1,63}")   # schema.table


@dataclass(frozen=True)
class Parsed:
    """A form's value (None when it has errors) and its errors by block id (template part names)."""

    value: JsonObject | None
    errors: dict[str, str] = field(default_factory=dict)


def picked(view: JsonObject, block: str) -> str:
    """One input's value: a date, a time, an option's value or the typed text; "" when missing."""
    state = view.get("state")
    values = state.get("values") if isinstance(state, dict) else None
    block_values = values.get(block) if isinstance(values, dict) else None
    item = block_values.get("value") if isinstance(block_values, dict) else None
    if not isinstance(item, dict):
        return ""
    option = item.get("selected_option")
    if isinstance(option, dict):
        return str(option.get("value") or "")
    for key in ("selected_date", "selected_time", "value"):
        found = item.get(key)
        if isinstance(found, str) and found.strip():
            return found.strip()
    return ""


def local_time(date: str, time: str, zone: tzinfo) -> datetime | None:
    """``YYYY-MM-DD`` + ``HH:MM`` in ``zone`` as an aware datetime; None when either does not parse."""
    try:
        naive = datetime.strptime(f"{date} {time}", "%Y-%m-%d %H:%M")
    except ValueError:
        return None
    return naive.replace(tzinfo=zone)


def form_defaults(when: datetime, zone: tzinfo) -> tuple[str, str]:
    """The (date, time) a form shows for ``when``, in ``zone``."""
    local = when.astimezone(zone)
    return local.strftime("%Y-%m-%d"), local.strftime("%H:%M")


def infection_time(view: JsonObject, *, zone: tzinfo, declared_at: datetime, now: datetime) -> Parsed:
    """``{"infection_time": ISO (UTC)}``, or the errors: missing, in the future, after the declaration."""
    when = local_time(picked(view, "date"), picked(view, "time"), zone)
    if when is None:
        return Parsed(None, {"date": "missing"})
    if when > now:
        return Parsed(None, {"date": "future"})
    if when > declared_at:
        return Parsed(None, {"date": "after_declared"})
    return Parsed({"infection_time": when.astimezone(now.tzinfo).isoformat()})


def partial_target(view: JsonObject, *, zone: tzinfo, configured: frozenset[str], now: datetime) -> Parsed:
    """The contract's ``partial`` object (every key present, unused ones None), or the errors."""
    component = picked(view, "component")
    database, table, collection = picked(view, "database"), picked(view, "table"), picked(view, "collection")
    date, time = picked(view, "target_date"), picked(view, "target_time")
    errors: dict[str, str] = {}
    if component not in PARTIAL_COMPONENTS:
        errors["component"] = "unknown_component"
    elif component not in configured:
        errors["component"] = "not_configured"
    elif component in ("postgres", "neo4j") and not _NAME.fullmatch(database):
        errors["database"] = "database_missing"
    elif component == "postgres" and table and not _TABLE.fullmatch(table):
        errors["table"] = "table_format"
    elif component == "milvus" and not _NAME.fullmatch(collection):
        errors["collection"] = "collection_missing"
    target = None
    if bool(date) != bool(time):
        errors["target_date"] = "target_half"
    elif date:
        target = local_time(date, time, zone)
        if target is None:
            errors["target_date"] = "target_half"
        elif target > now:
            errors["target_date"] = "target_future"
    if errors:
        return Parsed(None, errors)
    partial: JsonObject = {
        "component": component,
        "database": database if component in ("postgres", "neo4j") else None,
        "table": (table or None) if component == "postgres" else None,
        "collection": collection if component == "milvus" else None,
        "target_time": target.astimezone(now.tzinfo).isoformat() if target else None,
    }
    return Parsed({"partial": partial, "strategy": "partial_recovery"})


def describe(partial: JsonObject) -> str:
    """``postgres shop.public.orders`` — the chosen object, for the confirmation reply."""
    parts = [str(partial.get("component"))]
    parts += [str(partial[k]) for k in ("database", "table", "collection") if partial.get(k)]
    return " ".join(parts)
