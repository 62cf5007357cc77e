"""The report pages in Debian's headless Chromium (Playwright for Python, ``/usr/bin/chromium``).

``aegis serve`` runs on a store holding incidents walked to ``closed``, drills, a backup and monitor
samples (tests/harness/report_data.py). The link comes from ``/aegis report`` in Slack (the
emulator); the browser opens it, and the test reads what Chromium rendered: the values drawn in the
SVG charts, the table cells, the drill page reached by clicking its link, and no console error or
failed request (the pages load nothing from outside and run no script).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from messages import render
from slack_emulator.server import EmulatorServer
from tests.harness.aegis_process import AegisProcess
from tests.harness.report_data import HOSTILE_STEP, ReportWorld, seed

CHROMIUM = "/usr/bin/chromium"   # Debian's package `chromium` (scripts/setup); never a Playwright download
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LINK = re.compile(r"(http://127\.0\.0\.1:[0-9]+/reports/\?token=[A-Za-z0-9._%-]+)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (./scripts/setup installs it)"
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def served(tmp_path: Path, emulator: EmulatorServer) -> Iterator[tuple[ReportWorld, AegisProcess]]:
    world = seed(tmp_path)
    bot = AegisProcess(tmp_path, world.config, f"sqlite:///{tmp_path}/aegis.db", emulator.api_url)
    bot.env.update(world.env())
    emulator.bot_url = bot.url
    bot.start()
    try:
        yield world, bot
    finally:
        bot.stop()
        world.store.dispose()


def test_the_report_pages_render_their_figures_in_chromium(
        browser: Browser, served: tuple[ReportWorld, AegisProcess], emulator: EmulatorServer) -> None:
    world, _bot = served
    reply = emulator.driver.slash("U0IC", "report").json()
    found = LINK.search(reply["text"])
    assert found, reply
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    try:
        response = page.goto(found.group(1))
        assert response is not None and response.status == 200
        assert page.title() == "Aegis reports — overview"
        # the RTO chart: one point per incident and drill, drawn with its value in minutes (SVG text has
        # no innerText: its text content is what is drawn)
        rto_chart = page.locator('svg.line-chart[aria-label="RTO per incident and drill"]')
        assert rto_chart.count() == 1 and rto_chart.bounding_box() is not None
        drawn = rto_chart.locator("text.value").all_text_contents()
        for incident in world.incidents:
            assert f"{incident.rto_seconds / 60:.1f}" in drawn, drawn
        assert f"{754.5 / 60:.1f}" in drawn, drawn                      # the passed drill's RTO
        assert "RTO objective 240.0" in (rto_chart.text_content() or "")
        assert rto_chart.locator("circle").count() == len(world.incidents) + 1
        # table cells as Chromium shows them
        durations = render.name_table("en", "durations")
        first = world.incidents[0]
        cell = page.locator(f'tr[data-incident="{first.key}"] td.rto').inner_text()
        assert render.format_duration(durations, first.rto_seconds) in cell
        assert f"{first.rto_seconds / 60:.1f} min" in cell
        mttr_bars = page.locator('svg.bar-chart[aria-label="Mean time to recover, by month closed"] text.value')
        assert mttr_bars.count() >= 1
        backups = page.locator('tr[data-component="postgres"]').inner_text()
        assert "1 passed, 0 failed, 0 never tested (of 1)" in backups

        # last month's availability: the downtime bar and the table cells from the samples
        assert page.goto(f"{found.group(1)}&month={world.month}") is not None
        downtime = page.locator('svg.bar-chart[aria-label="Downtime this month"]')
        assert downtime.locator('g.bar[data-label="auth"] text.value').text_content() == "12.0"
        assert downtime.locator('g.bar[data-label="billing"] text.value').text_content() == "unknown"
        assert page.locator('tr[data-name="auth"] td.downtime').inner_text() == "12.0 min"
        assert page.locator('tr[data-name="auth"] td.left').inner_text() == "31.8 min"
        assert "(no samples)" in page.locator('tr[data-name="billing"] td.missing').inner_text()

        # the drill's page, reached by its link (the token travels with it)
        page.locator(f'tr[data-drill="{world.passed_drill}"] a').click()
        page.wait_for_url(re.compile(rf"/reports/drills/{world.passed_drill}\?token="))
        assert page.locator("#drill-status").inner_text() == "passed"
        rto = page.locator('tr[data-objective="rto"]').inner_text()
        assert "12m 34s" in rto and "met" in rto and "write verified on the promoted standby" in rto
        steps = page.locator("#steps tbody tr")
        assert steps.count() == 5 and HOSTILE_STEP in steps.nth(3).inner_text()   # shown as text, not run
        step_chart = page.locator('svg.bar-chart[aria-label="Time per step"]')
        assert "20.5" in step_chart.locator("text.value").all_text_contents()
        assert problems == [], problems
    finally:
        page.close()
