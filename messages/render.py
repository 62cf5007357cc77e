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
  ``& < >`` so that a summary cannot smuggle ``<!channel>`` or a fake mention into a post. The name
  filters escape too: an id the tables do not know (a role typed into a payload) is shown, escaped.
- Times are shown in the team's zone (``set_timezone``, from the config's ``timezone``), with the
  zone named ("09:30 KST"), so nobody converts from UTC in their head during an incident.
- Slack only treats ``*bold*`` (and ``_`` / ``~``) as formatting at a word boundary: whitespace,
  punctuation or the end of the text. Korean attaches particles to words (``*Aegis*는``), which
  Slack then shows with literal asterisks. ``text`` therefore puts a space between a marker and an
  adjacent Hangul/CJK letter (the rule the emulator's renderer follows too).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError

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
# "own_details": the step details Aegis writes itself (statemachines.vocabulary.OWN_DETAILS), keyed by
# their English text; any other detail is an action's output and shown unchanged (``own_detail``)
NAME_TABLES: tuple[str, ...] = (*NAME_FILTERS.values(), "durations", "own_details")

_SLACK_ID = re.compile(r"^[A-Z0-9]+$")

# A CJK letter (Hangul syllables and jamo, kana, CJK ideographs); and one formatted span: a marker,
# text that neither starts nor ends with a space, the same marker.
_CJK = re.compile("[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u4e00-\u9fff\uac00-\ud7a3]")
_SPAN = re.compile(r"([*_~])([^\s*_~](?:[^*_~\n]*?[^\s*_~])?)\1")

_display_zone: tzinfo = UTC


def set_timezone(name: str | None) -> None:
    """The zone every displayed time is shown in (config ``timezone``); unknown names fall back to UTC."""
    global _display_zone
    try:
        _display_zone = ZoneInfo(name) if name and name.upper() != "UTC" else UTC
    except (ZoneInfoNotFoundError, ValueError):
        _display_zone = UTC


def display_timezone() -> tzinfo:
    return _display_zone


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


def format_dt(value: datetime | None, zone: tzinfo | None = None) -> str:
    """``2026-11-26 18:58 KST`` in the display zone; a naive datetime is taken to be UTC already.

    The zone is named by its abbreviation, or by its key where it has none (``-03`` → ``America/Sao_Paulo``).
    """
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    zone = zone or _display_zone
    local = value.astimezone(zone)
    abbreviation = local.strftime("%Z")
    if not abbreviation or abbreviation[0] in "+-":
        abbreviation = getattr(zone, "key", None) or abbreviation or "UTC"
    return f"{local.strftime('%Y-%m-%d %H:%M')} {abbreviation}"


def separate_markers_from_cjk(text: str) -> str:
    """Put a space between a formatted span and an adjacent CJK letter, so that Slack formats it."""
    def spaced(m: re.Match[str]) -> str:
        before = text[m.start() - 1] if m.start() else ""
        after = text[m.end()] if m.end() < len(text) else ""
        return (" " if _CJK.match(before) else "") + m.group(0) + (" " if _CJK.match(after) else "")

    return _SPAN.sub(spaced, text)


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
    return escape_mrkdwn(table.get(text, text.replace("_", " ")))


def _own_detail(table: dict[str, str], detail: object) -> str:
    """A step's detail for the channel: Aegis's own words translated, an action's output as it is."""
    text = str(detail)
    return escape_mrkdwn(table.get(text, text))


def _translated(env: Environment, words: str, data: object) -> str | None:
    """Words Aegis stored as ``{code, params}`` beside their English text (a figure's basis, a drill
    step's name) in the template's language, as plain text (the caller escapes it): the macro named by
    the code in the template ``words``, called with the params. None when there is no such macro or the
    params do not fit it (a row of an older version): the caller shows the English, and a live post
    never breaks on it."""
    code = data.get("code") if isinstance(data, dict) else None
    params = data.get("params") if isinstance(data, dict) else None
    macro = getattr(env.get_template(words).module, str(code), None) if code else None
    if macro is None or not isinstance(params, dict):
        return None
    try:
        return str(macro(params))
    except (TemplateError, TypeError, AttributeError):
        return None


def _coded_basis(env: Environment, text: object, data: object = None) -> str:
    said = _translated(env, "basis.j2", data)
    if said is None:
        return str(text or "")
    params = data.get("params") if isinstance(data, dict) else {}
    if isinstance(params, dict) and "step_position" in params:   # named the step that measured it
        said += _translated(env, "basis.j2", {"code": "measured_by", "params": params}) or ""
    return said


def _coded_step(env: Environment, step: object) -> str:
    entry = step if isinstance(step, dict) else {}
    return _translated(env, "drill_steps.j2", entry.get("name_data")) or str(entry.get("name", ""))


def basis_text(locale: str, text: object, data: object = None) -> str:
    """A figure's basis (recovery/objectives.py ``Basis``: its stored English text and ``{code, params}``)
    in ``locale``'s words, as plain text."""
    return _coded_basis(_ENVS[resolve_locale(locale)][0], text, data)


def drill_step_text(locale: str, step: object) -> str:
    """A drill step's name (a ``drill_run.steps`` entry: ``name`` and ``name_data``) in ``locale``'s words."""
    return _coded_step(_ENVS[resolve_locale(locale)][0], step)


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
    filters: dict[str, Callable[..., str]] = {
        "user": format_user,
        "dt": format_dt,
        "esc": escape_mrkdwn,
        "duration": partial(format_duration, names["durations"]),
        "own_detail": partial(_own_detail, names["own_details"]),
        "basis": partial(_coded_basis, env),
        "drill_step": partial(_coded_step, env),
    }
    for filter_name, table in NAME_FILTERS.items():
        filters[filter_name] = partial(_lookup, names[table])
    env.filters.update(filters)
    return env, names


_ENVS: dict[str, tuple[Environment, dict[str, dict[str, str]]]] = {loc: _make_env(loc) for loc in LOCALES}


def text(locale: str, name: str, **ctx: object) -> str:
    """Render ``<locale>/<name>.j2`` with ``ctx``; surrounding whitespace is stripped."""
    env, _ = _ENVS[resolve_locale(locale)]
    return separate_markers_from_cjk(env.get_template(f"{name}.j2").render(**ctx).strip())


def name_table(locale: str, table: str) -> dict[str, str]:
    """One display-name table (e.g. ``"scenarios"``) of a locale; keys keep the file's order."""
    return dict(_ENVS[resolve_locale(locale)][1][table])


def template_names(locale: str) -> Iterable[str]:
    """Template file names of a locale (used by tests to compare locales)."""
    return sorted(p.name for p in (TEMPLATE_DIR / resolve_locale(locale)).glob("*.j2"))
