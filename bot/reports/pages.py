"""The report pages from the store and the config: gathers ``recovery.reporting``'s figures and hands
them to ``messages.report_pages`` (which holds every word of them)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo

from bot.config import Config
from messages import render, report_pages
from messages.report_pages import Href
from recovery.reporting import figures
from recovery.reporting.availability import WatchedService, availability
from statemachines.store import Store

_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


def watched_services(config: Config) -> list[WatchedService]:
    """The services the monitor samples (those with a health check), with their sampling interval."""
    monitoring = config.monitoring
    watched = []
    for service in config.services:
        if service.health is None:
            continue
        check = f"service {service.name}"      # bot/monitor_checks.py names the check so
        override = monitoring.checks.get(check)
        interval = override.interval_seconds if override and override.interval_seconds else monitoring.interval_seconds
        watched.append(WatchedService(service.name, service.tier, check, interval))
    return watched


def objectives(config: Config) -> dict[str, float]:
    return dict(config.objectives.model_dump())


def month_period(month: str | None, now: datetime, zone: tzinfo) -> tuple[datetime, datetime]:
    """[start, end) of ``month`` (``YYYY-MM`` in the display zone; the end no later than now), else this month."""
    if month and _MONTH.fullmatch(month):
        year, number = int(month[:4]), int(month[5:])
        start = datetime(year, number, 1, tzinfo=zone)
        following = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=zone)
        if start <= now:
            return start, min(following, now)
    return figures.month_start(now, zone), now


def overview_html(store: Store, config: Config, href: Href, now: datetime | None = None,
                  month: str | None = None) -> str:
    """The overview; availability over ``month`` (``YYYY-MM``, default: this month so far)."""
    now = now or datetime.now(UTC)
    zone = render.display_timezone()
    incidents = figures.incident_figures(store)
    since, until = month_period(month, now, zone)
    services, tiers = availability(store, watched_services(config), since, until,
                                   config.objectives.availability_percent)
    return report_pages.overview(
        config.locale, incidents=incidents, drills=figures.drill_figures(store),
        mttr=figures.mttr_by_month(incidents, zone), backups=figures.backup_status(store), services=services,
        tiers=tiers, objectives=objectives(config), since=since, until=until, now=now, href=href)


def drill_html(store: Store, config: Config, run_id: int, href: Href) -> str | None:
    run = figures.drill_figure(store, run_id)
    if run is None:
        return None
    return report_pages.drill(config.locale, run=run, objectives=objectives(config), href=href)
