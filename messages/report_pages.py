"""The report pages (``/reports/``) as HTML, and the Slack reply that carries a fresh link.

Plain values in — the figures of ``recovery.reporting`` are read by attribute, never imported — and
HTML out, from ``templates/<locale>/report_*.html.j2``. This environment autoescapes (the output is
HTML, unlike the Slack templates'), and its charts come from ``messages.svg``, which escapes every
label it is given; the words of the charts are written in the templates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Protocol

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from messages import render
from messages.svg import Bar, Point, bar_chart, line_chart
from messages.views import Message

Href = Callable[[str], str]     # a path under /reports/ → the URL to link (the viewer's token kept on it)


# What the Python here reads of recovery.reporting's figures (the templates read more, by name).
class _IncidentFigure(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def declared_at(self) -> datetime: ...
    @property
    def rto_seconds(self) -> float | None: ...
    @property
    def rpo_seconds(self) -> float | None: ...


class _DrillFigure(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def steps(self) -> Sequence[Mapping[str, object]]: ...
    @property
    def rto_seconds(self) -> float | None: ...
    @property
    def rpo_seconds(self) -> float | None: ...


class _MonthlyMttr(Protocol):
    @property
    def month(self) -> str: ...
    @property
    def incidents(self) -> int: ...
    @property
    def mean_seconds(self) -> float: ...


class _Availability(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def tier(self) -> int | None: ...
    @property
    def downtime_minutes(self) -> float: ...
    @property
    def known_minutes(self) -> float: ...
    @property
    def unknown_minutes(self) -> float: ...


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 60


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _name(table: dict[str, str], key: object) -> str:
    text = str(key)
    return table.get(text, text.replace("_", " "))


def _make_env(locale: str) -> Environment:
    env = Environment(loader=FileSystemLoader(render.TEMPLATE_DIR / locale), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True, undefined=StrictUndefined)
    env.filters.update({
        "dt": render.format_dt,
        "duration": partial(render.format_duration, render.name_table(locale, "durations")),
        "num": _number,
        "minutes": _minutes,
        "scenario": partial(_name, render.name_table(locale, "scenarios")),
        "state": partial(_name, render.name_table(locale, "states")),
        "severity": partial(_name, render.name_table(locale, "severities")),
        "basis": partial(render.basis_text, locale),
        "drill_step": partial(render.drill_step_text, locale),
    })
    env.globals.update(line_chart=line_chart, bar_chart=bar_chart)
    return env


_ENVS = {locale: _make_env(locale) for locale in render.LOCALES}


def _page(locale: str, name: str, **ctx: object) -> str:
    return _ENVS[render.resolve_locale(locale)].get_template(name).render(locale=render.resolve_locale(locale), **ctx)


def _ticks(times: Sequence[datetime], count: int = 5) -> list[tuple[float, str]]:
    """Up to ``count`` dates spread over the points' time range, in the display zone."""
    if not times:
        return []
    low, high = min(times).timestamp(), max(times).timestamp()
    steps = [low] if high - low < 1 else [low + (high - low) * i / (count - 1) for i in range(count)]
    zone = render.display_timezone()
    return [(t, datetime.fromtimestamp(t, zone).strftime("%Y-%m-%d")) for t in steps]


def _over_time(incidents: Sequence[_IncidentFigure], drills: Sequence[_DrillFigure],
               figure: str) -> dict[str, list[Point]]:
    """Minutes of ``figure`` (rto_seconds / rpo_seconds) per incident and per drill, at their start."""
    series: dict[str, list[Point]] = {"incidents": [], "drills": []}
    for incident in incidents:
        value = getattr(incident, figure)
        if value is not None:
            series["incidents"].append(Point(incident.declared_at.timestamp(), value / 60, incident.key))
    for drill in drills:
        value = getattr(drill, figure)
        if value is not None:
            series["drills"].append(Point(drill.started_at.timestamp(), value / 60, f"#{drill.id} {drill.name}"))
    return series


def overview(locale: str, *, incidents: Sequence[_IncidentFigure], drills: Sequence[_DrillFigure],
             mttr: Sequence[_MonthlyMttr], backups: Sequence[object], services: Sequence[_Availability],
             tiers: Sequence[_Availability], objectives: Mapping[str, float],
             since: datetime, until: datetime, now: datetime, href: Href) -> str:
    """The overview: RTO/RPO over time, MTTR by month, backups per component, availability (O4)."""
    times = [i.declared_at for i in incidents] + [d.started_at for d in drills]
    return _page(locale, "report_overview.html.j2", incidents=incidents, drills=drills, mttr=mttr, backups=backups,
                 services=services, tiers=tiers, objectives=objectives, since=since, until=until, now=now,
                 href=href, rto_series=_over_time(incidents, drills, "rto_seconds"),
                 rpo_series=_over_time(incidents, drills, "rpo_seconds"), ticks=_ticks(times),
                 mttr_bars=[Bar(m.month, m.mean_seconds / 60, f"{m.incidents}") for m in mttr],
                 downtime_bars=[_downtime_bar(a) for a in [*services, *tiers]])


def _downtime_bar(figure: _Availability) -> Bar:
    """A service's (or tier's, "T1") downtime minutes; unknown when none of its time was watched."""
    label = figure.name if figure.tier is None else f"T{figure.tier}"
    value = figure.downtime_minutes if figure.known_minutes > 0 else None
    return Bar(label, value, f"{figure.unknown_minutes:.1f}")


def _seconds(value: object) -> float | None:
    """A step's recorded ``seconds`` (a JSON number), or None when it has none."""
    return float(value) if isinstance(value, int | float) else None


def drill(locale: str, *, run: _DrillFigure, objectives: Mapping[str, float], href: Href) -> str:
    """One drill: the steps with timings, the figures against the objectives, pass/fail, each figure's basis."""
    step_bars = [Bar(str(s.get("name", ""))[:40], _seconds(s.get("seconds"))) for s in run.steps]
    return _page(locale, "report_drill.html.j2", run=run, objectives=objectives, href=href, step_bars=step_bars)


def denied(locale: str, reason: str) -> str:
    """The one-line page of a refused request: ``missing``, ``bad``, ``expired`` or ``password``."""
    return _page(locale, "report_denied.html.j2", reason=reason)


def not_found(locale: str, href: Href) -> str:
    return _page(locale, "report_not_found.html.j2", href=href)


def link_reply(locale: str, *, url: str | None, expires_at: datetime | None, reason: str = "") -> Message:
    """``/aegis report``'s ephemeral answer: the link and when it expires, or why there is none."""
    text = render.text(locale, "report_link", url=url, expires_at=expires_at, reason=reason)
    return Message(text=text, blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text}}])
