"""Render user-visible text from the per-locale Jinja2 templates in ``messages/templates/<locale>/``.

Decisions worth knowing:
- One ``Environment`` per locale. The display-name filters (``state``, ``role``, ...) must speak the
  template's language, so each environment gets filters bound to its own ``names.j2`` tables, and
  templates can ``{% include %}`` siblings by bare name.
- Display names live template-side (``names.j2``: top-level ``{% set %}`` dicts) so that every
  user-visible word, even a state name, is in the locale's template folder.
- ``StrictUndefined``: a template asking for a variable the caller did not pass is a bug and fails
  loudly (and in tests) instead of posting an empty hole to Slack.
- Autoescape is off because the output is Slack mrkdwn, not HTML. Free text that came from users or
  systems (summaries, step output) goes through ``esc``, which applies Slack's own escaping of
  ``& < >`` so that a summary cannot smuggle ``<!channel>`` or a fake mention into a post.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
LOCALES = ("en", "ko")
DEFAULT_LOCALE = "en"

# Tables every locale's names.j2 must define; each becomes a filter of the same (singular) name.
NAME_FILTERS: dict[str, str] = {
    "state": "states",
    "role": "roles",
    "scenario": "scenarios",
    "severity": "severities",
    "severity_mark": "severity_marks",
    "risk": "risks",
    "step_status": "step_statuses",
    "status_emoji": "status_emoji",
    "strategy": "strategies",
    "check_kind": "check_kinds",
    "operation": "operations",
}
NAME_TABLES: tuple[str, ...] = (*NAME_FILTERS.values(), "durations")

_SLACK_ID = re.compile(r"^[A-Z0-9]+$")


def resolve_locale(locale: str | None) -> str:
    """The locale to render in: an unknown or empty locale falls back to English."""
    return locale if locale in LOCALES else DEFAULT_LOCALE


def escape_mrkdwn(value: object) -> str:
    """Slack's required escaping for free text inside mrkdwn (and ``text`` fallbacks)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_user(user_id: str | None) -> str:
    """A Slack mention for a user id; the bot itself (``aegis`` or no actor) is shown as Aegis."""
    if not user_id or user_id.lower() == "aegis":
        return "Aegis"
    if _SLACK_ID.match(user_id):
        return f"<@{user_id}>"
    # Not a Slack id (e.g. a CLI user name): show it, but never let it become markup.
    return escape_mrkdwn(user_id)


def format_dt(value: datetime | None) -> str:
    """``2026-11-26 09:58 UTC``; a naive datetime is taken to be UTC already."""
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_duration(formats: dict[str, str], seconds: float | None) -> str:
    """``1h 02m`` / ``3m 05s`` / ``45s`` (formats come from the locale's ``durations`` table; the
    ``*_exact`` forms let a locale drop a zero part, e.g. Korean ``4시간`` rather than ``4시간 0분``)."""
    if seconds is None:
        return formats["none"]
    total = max(0, int(round(seconds)))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return formats["hours_exact" if m == 0 else "hours"].format(h=h, m=m)
    if m:
        return formats["minutes_exact" if s == 0 else "minutes"].format(m=m, s=s)
    return formats["seconds"].format(s=s)


def _lookup(table: dict[str, str], key: object) -> str:
    # An id the tables do not know yet is shown readable rather than crashing a live post;
    # tests check that every known id has a name in every locale.
    text = str(key)
    return table.get(text, text.replace("_", " "))


def _load_names(env: Environment) -> dict[str, dict[str, str]]:
    module = env.get_template("names.j2").module
    tables: dict[str, dict[str, str]] = {}
    for name in NAME_TABLES:
        table = getattr(module, name, None)
        if not isinstance(table, dict):
            raise RuntimeError(f"{env.loader!r}: names.j2 must define the table {name!r}")
        tables[name] = {str(k): str(v) for k, v in table.items()}
    return tables


def _make_env(locale: str) -> tuple[Environment, dict[str, dict[str, str]]]:
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR / locale),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=StrictUndefined,
    )
    names = _load_names(env)
    filters: dict[str, Callable[..., Any]] = {
        "user": format_user,
        "dt": format_dt,
        "esc": escape_mrkdwn,
        "duration": partial(format_duration, names["durations"]),
    }
    for filter_name, table in NAME_FILTERS.items():
        filters[filter_name] = partial(_lookup, names[table])
    env.filters.update(filters)
    return env, names


_ENVS: dict[str, tuple[Environment, dict[str, dict[str, str]]]] = {loc: _make_env(loc) for loc in LOCALES}


def text(locale: str, name: str, **ctx: Any) -> str:
    """Render ``<locale>/<name>.j2`` with ``ctx``; surrounding whitespace is stripped."""
    env, _ = _ENVS[resolve_locale(locale)]
    return env.get_template(f"{name}.j2").render(**ctx).strip()


def name_table(locale: str, table: str) -> dict[str, str]:
    """One display-name table (e.g. ``"scenarios"``) of a locale; keys keep the file's order."""
    return dict(_ENVS[resolve_locale(locale)][1][table])


def template_names(locale: str) -> Iterable[str]:
    """Template file names of a locale (used by tests to compare locales)."""
    return sorted(p.name for p in (TEMPLATE_DIR / resolve_locale(locale)).glob("*.j2"))
