"""Reports and metrics (issue 10) against ``aegis serve`` as a process with the emulator as Slack.

The store holds incidents walked to ``closed``, drills, a real backup and monitor samples
(tests/harness/report_data.py). Checked: who may read ``/reports/`` (a link from ``/aegis report``,
forged, expired and missing tokens, basic auth), that the pages hold the figures as stored (an
incident's RTO, a drill's figures with their basis, last month's downtime and missing minutes from the
samples), that labels are escaped, that a drill's page is stored in the backup targets, and that
``/metrics`` parses with prometheus_client's parser and holds the expected samples.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bot.reports.tokens import LinkSigner
from messages import render
from slack_emulator.server import EmulatorServer
from tests.harness.aegis_process import SIGNING_SECRET, AegisProcess
from tests.harness.report_data import HOSTILE_STEP, PASSWORD, PASSWORD_ENV, REPORTS_SECRET, ReportWorld, seed

LINK = re.compile(r"(http://127\.0\.0\.1:[0-9]+/reports/\?token=[A-Za-z0-9._%-]+)")


@dataclass
class Served:
    world: ReportWorld
    bot: AegisProcess
    emulator: EmulatorServer

    def link(self, user: str = "U0IC") -> str:
        reply = self.emulator.driver.slash(user, "report").json()
        assert reply["response_type"] == "ephemeral", reply
        found = LINK.search(reply["text"])
        assert found, reply
        return found.group(1)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(f"{self.bot.url}{path}", timeout=10, **kwargs)


def _start(tmp_path: Path, emulator: EmulatorServer, **reports: Any) -> Served:
    world = seed(tmp_path, **reports)
    bot = AegisProcess(tmp_path, world.config, f"sqlite:///{tmp_path}/aegis.db", emulator.api_url)
    bot.env.update(world.env())
    emulator.bot_url = bot.url
    bot.start()
    return Served(world, bot, emulator)


@pytest.fixture
def served(tmp_path: Path, emulator: EmulatorServer) -> Iterator[Served]:
    running = _start(tmp_path, emulator, basic_auth_user="auditor", basic_auth_password_env=PASSWORD_ENV)
    try:
        yield running
    finally:
        running.bot.stop()
        running.world.store.dispose()


def _token(url: str) -> str:
    return url.split("token=", 1)[1]


def test_reports_need_a_fresh_signed_link_from_slack_or_basic_auth(served: Served) -> None:
    # nothing at all: the browser's login prompt (basic auth is configured) and how to get a link
    bare = served.get("/reports/")
    assert bare.status_code == 401 and bare.headers["WWW-Authenticate"].startswith("Basic")
    assert "/aegis report" in bare.text and "INC-1" not in bare.text
    # a malformed token, one signed with another secret, an expired one: 403 with the way to a new link
    forged, _ = LinkSigner(b"not-the-reports-secret-0123456789", timedelta(minutes=30)).token("U0IC")
    expired, _ = LinkSigner(REPORTS_SECRET.encode(), timedelta(minutes=-1)).token("U0IC")
    for token, words in (("garbage", "not valid"), (forged, "not valid"), (expired, "expired")):
        refused = served.get("/reports/", params={"token": token})
        assert refused.status_code == 403 and words in refused.text and "/aegis report" in refused.text, token
        assert "INC-1" not in refused.text
    # a token signed with the Slack signing secret is no key either
    slack_signed, _ = LinkSigner(SIGNING_SECRET.encode(), timedelta(minutes=30)).token("U0IC")
    assert served.get("/reports/", params={"token": slack_signed}).status_code == 403

    # /aegis report: an ephemeral link for people on the roster only
    outsider = served.emulator.driver.slash("U0OUT", "report").json()
    assert outsider["response_type"] == "ephemeral" and "roster" in outsider["text"]
    assert "token=" not in outsider["text"]
    link = served.link()
    page = requests.get(link, timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "INC-1" in page.text and "Recovery objectives" in page.text
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"] and "<script" not in page.text
    # pages link each other keeping the viewer's token
    assert f'/reports/drills/{served.world.passed_drill}?token={_token(link)}' in page.text
    missing = served.get("/reports/drills/99999", params={"token": _token(link)})
    assert missing.status_code == 404 and "no such report" in missing.text
    assert requests.post(link, timeout=10).status_code == 405

    # basic auth: the configured user and the password from the environment, nothing else
    assert served.get("/reports/", auth=("auditor", PASSWORD)).status_code == 200
    for user, password in (("auditor", PASSWORD + "x"), ("admin", PASSWORD), ("auditor", "")):
        wrong = served.get("/reports/", auth=(user, password))
        assert wrong.status_code == 401 and "INC-1" not in wrong.text, (user, password)


def _row(html: str, attribute: str, value: str) -> str:
    found = re.search(rf'<tr {attribute}="{re.escape(value)}">(.*?)</tr>', html, re.S)
    assert found, f"no row {attribute}={value}"
    return found.group(1)


def test_the_pages_hold_the_figures_as_stored(served: Served) -> None:
    token = {"token": _token(served.link())}
    world = served.world
    overview = served.get("/reports/", params=token).text
    durations = render.name_table("en", "durations")
    for incident in world.incidents:
        row = _row(overview, "data-incident", incident.key)
        assert render.format_duration(durations, incident.rto_seconds) in row
        assert f"{incident.rto_seconds / 60:.1f} min" in row
        assert render.format_duration(durations, incident.mttr_seconds) in row
        # the RTO chart has the incident's point, labelled with its minutes
        assert '<text class="value"' in overview and f">{incident.rto_seconds / 60:.1f}</text>" in overview
    first, second = world.incidents
    assert "replication lag at failover" in _row(overview, "data-incident", first.key)
    assert "not measured" in _row(overview, "data-incident", second.key)
    assert "4s" in _row(overview, "data-incident", first.key)           # RPO 4.25 s as recorded
    drill_row = _row(overview, "data-drill", str(world.passed_drill))
    assert "passed" in drill_row and "12m 34s" in drill_row and "42s" in drill_row
    assert "failed" in _row(overview, "data-drill", str(world.failed_drill))
    backups = _row(overview, "data-component", "postgres")
    assert "backup_20261101_020000" in backups and "1 passed, 0 failed, 0 never tested (of 1)" in backups
    # the current month's table is there; last month's figures are exact (the samples were last month)
    assert 'data-name="auth"' in overview and 'data-name="tier 1"' in overview

    month = served.get("/reports/", params={**token, "month": world.month}).text
    # 180 one-minute samples: each stands for the minute to the next, the last for 2.5 intervals
    watched = 179 + 2.5
    unknown = world.month_minutes - watched
    auth = _row(month, "data-name", "auth")
    assert "12.0 min" in auth and f"{43.8 - 12:.1f} min" in auth
    assert f"{unknown:,.1f} min" in auth and f"{100 * (watched - 12) / watched:.3f} %" in auth
    assert "unknown" in auth                      # 12 min down, but far more unwatched than the budget
    billing = _row(month, "data-name", "billing")
    assert "(no samples)" in billing and "0.0 min" in billing and f"{world.month_minutes:,.1f} min" in billing
    assert "Tier 1" in _row(month, "data-name", "tier 1") and "12.0 min" in _row(month, "data-name", "tier 1")
    assert "(no samples)" in _row(month, "data-name", "tier 2")
    assert "43.8 minutes" in month

    drill = served.get(f"/reports/drills/{world.passed_drill}", params=token).text
    rto = _row(drill, "data-objective", "rto")
    assert "12m 34s" in rto and "4h 00m" in rto and "met" in rto and "write verified on the promoted standby" in rto
    rpo = _row(drill, "data-objective", "database_failure_rpo")
    assert "42s" in rpo and "0s–5m 00s" in rpo and "newest archived WAL segment" in rpo
    assert "standby from backup_x + archived WAL" in drill and 'data-seconds="20.5"' in drill
    assert "Started from Slack by U0DB" in drill and "wal files" in drill
    # every label is escaped, in the table and in the SVG chart of the steps
    assert HOSTILE_STEP not in drill and "<script>" not in drill
    assert "restore-test &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; co" in drill
    assert 'data-label="restore-test &lt;script&gt;alert(&quot;x&quot;)&lt;/script' in drill
    failed = served.get(f"/reports/drills/{world.failed_drill}", params=token).text
    assert "FAILED" in failed and "checksum mismatch" in failed and "no backup could be restore-tested" in failed


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_parse_and_hold_what_the_store_holds(served: Served) -> None:
    response = served.get("/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    m = _metrics(response.text)
    world = served.world
    assert m[("aegis_incidents_open", (("severity", "high"), ("state", "recovering")))] == 1
    assert not [k for k in m if k[0] == "aegis_incidents_open" and ("state", "closed") in k[1]]
    assert m[("aegis_step_executions_total", (("action", "manual"), ("status", "succeeded")))] == 2
    assert m[("aegis_step_duration_seconds_count", (("action", "manual"),))] == 2
    assert ("aegis_step_duration_seconds_bucket", (("action", "manual"), ("le", "+Inf"))) in m
    assert world.backup_finished_at is not None and world.wal_archived_at is not None
    assert m[("aegis_backup_last_success_timestamp_seconds", (("component", "postgres"),))] == pytest.approx(
        world.backup_finished_at.timestamp())
    assert m[("aegis_backup_last_success_size_bytes", (("component", "postgres"),))] == world.backup_size
    assert m[("aegis_backup_restore_tests", (("component", "postgres"), ("result", "ok")))] == 1
    assert m[("aegis_wal_archive_last_success_timestamp_seconds", ())] == pytest.approx(
        world.wal_archived_at.timestamp())
    assert 0 <= m[("aegis_wal_archive_lag_seconds", ())] < 600
    assert m[("aegis_drill_last_success", (("drill", "database_failover_test"),))] == 1
    assert m[("aegis_drill_last_success", (("drill", "backup_restore_test"),))] == 0
    assert m[("aegis_drill_last_rto_seconds", (("drill", "database_failover_test"),))] == 754.5
    assert m[("aegis_drill_last_rpo_seconds", (("drill", "database_failover_test"),))] == 42.0
    assert ("aegis_drill_last_rto_seconds", (("drill", "backup_restore_test"),)) not in m   # unknown: absent
    assert m[("aegis_monitor_check_up", (("check", "service auth"), ("domain", "application")))] == 1
    assert m[("aegis_monitor_check_up", (("check", "postgres primary"), ("domain", "database")))] == 0
    assert m[("aegis_monitor_check_latency_seconds", (("check", "service auth"),))] == pytest.approx(0.0035)


def test_metrics_are_for_loopback_or_a_bearer_token(served: Served) -> None:
    from bot.metrics import MetricsApp

    def call(app: MetricsApp, **environ: str) -> tuple[str, bytes]:
        seen: list[str] = []
        body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "wsgi.input": BytesIO(), **environ},
                            lambda status, headers: seen.append(status)))  # type: ignore[arg-type,return-value]
        return seen[0], body

    store = served.world.store
    open_app = MetricsApp(store, None)
    assert call(open_app, REMOTE_ADDR="127.0.0.1")[0] == "200 OK"
    assert call(open_app, REMOTE_ADDR="::1")[0] == "200 OK"
    status, body = call(open_app, REMOTE_ADDR="10.2.3.4")
    assert status == "403 Forbidden" and b"loopback" in body
    import os

    os.environ["AEGIS_TEST_METRICS_TOKEN"] = "metrics-token-77"
    try:
        token_app = MetricsApp(store, "AEGIS_TEST_METRICS_TOKEN")
        assert call(token_app, REMOTE_ADDR="127.0.0.1")[0] == "403 Forbidden"       # the token, even on loopback
        assert call(token_app, REMOTE_ADDR="10.2.3.4", HTTP_AUTHORIZATION="Bearer wrong")[0] == "403 Forbidden"
        status, body = call(token_app, REMOTE_ADDR="10.2.3.4", HTTP_AUTHORIZATION="Bearer metrics-token-77")
        assert status == "200 OK" and b"aegis_incidents_open" in body
    finally:
        del os.environ["AEGIS_TEST_METRICS_TOKEN"]


def test_without_basic_auth_a_request_without_a_token_is_403_and_a_drill_report_is_stored_in_the_targets(
        tmp_path: Path, emulator: EmulatorServer) -> None:
    from bot.config import load_config
    from bot.reports.publish import STEP_NAME, publish_drill
    from bot.reports.tokens import signer_from_env
    from bot.reports.web import ReportLinks
    from recovery.drills import runs

    running = _start(tmp_path, emulator)
    try:
        bare = running.get("/reports/")
        assert bare.status_code == 403 and "/aegis report" in bare.text and "WWW-Authenticate" not in bare.headers
        # a finished drill's page goes to every backup target under reports/<id>.html, recorded as a step
        world = running.world
        import os

        os.environ.update(world.env())
        try:
            signer = signer_from_env("AEGIS_TEST_REPORTS_SECRET", timedelta(minutes=5), slack_signing_secret=None)
        finally:
            for name in world.env():
                os.environ.pop(name, None)
        url = publish_drill(world.store, load_config(tmp_path / "aegis.yaml"), ReportLinks(signer, running.bot.url),
                            world.passed_drill)
        stored = tmp_path / "staging" / "reports" / f"{world.passed_drill}.html"
        assert stored.is_file() and "12m 34s" in stored.read_text() and "database_failover_test" in stored.read_text()
        run = runs.get(world.store, world.passed_drill)
        assert run is not None and run.steps[-1]["name"] == STEP_NAME and run.steps[-1]["ok"] is True
        assert f"reports/{world.passed_drill}.html on local" in run.steps[-1]["detail"]
        # the link the result post carries opens the drill's page on the running bot (same secret)
        assert url is not None and f"/reports/drills/{world.passed_drill}?token=" in url
        page = requests.get(url, timeout=10)
        assert page.status_code == 200 and STEP_NAME in page.text
    finally:
        running.bot.stop()
        running.world.store.dispose()


def test_the_slack_signing_secret_is_refused_as_the_reports_secret(tmp_path: Path, emulator: EmulatorServer) -> None:
    world = seed(tmp_path)
    bot = AegisProcess(tmp_path, world.config, f"sqlite:///{tmp_path}/aegis.db", emulator.api_url)
    bot.env["AEGIS_TEST_REPORTS_SECRET"] = SIGNING_SECRET
    with pytest.raises(RuntimeError, match="must not be the Slack signing secret"):
        bot.start()
    world.store.dispose()
