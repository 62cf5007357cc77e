"""While Slack's Web API is unreachable, Aegis still acks and records what people send.

Bolt's default single-workspace authorization calls ``auth.test`` on the first request and fails
every request until it succeeds, so during a Slack API outage no click or command would be acked.
Aegis authorizes with the bot token it already has (bot/slack/app.py): the request is acked, the
incident is stored, and the failed Slack calls are recorded on the timeline for later.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from statemachines import service as svc
from statemachines.models import require_id
from tests.harness.aegis_process import SIGNING_SECRET, AegisProcess, wait_for
from tests.harness.pgcluster import free_port
from tests.harness.signing import post, sign, slash_body
from tests.harness.team import SERVE_CONFIG


@pytest.fixture
def bot_without_slack(tmp_path: Path) -> Iterator[AegisProcess]:
    dead_api = f"http://127.0.0.1:{free_port()}/api/"      # nothing listens there
    bot = AegisProcess(tmp_path, SERVE_CONFIG, f"sqlite:///{tmp_path / 'aegis.db'}", dead_api).start()
    try:
        yield bot
    finally:
        bot.stop()


def test_commands_are_acked_and_recorded_while_the_slack_api_is_down(bot_without_slack: AegisProcess) -> None:
    bot = bot_without_slack
    body = slash_body("help")
    answer = post(bot, body, sign(SIGNING_SECRET, body))
    assert answer.status_code == 200 and "Aegis commands" in answer.text

    body = slash_body("incident database_failure critical primary unreachable during a Slack outage")
    assert post(bot, body, sign(SIGNING_SECRET, body)).status_code == 200
    store = bot.store()

    def read(query):  # type: ignore[no-untyped-def]
        # one short transaction per poll: a session held open would hold SQLite's write lock
        with store.session() as session:
            return query(session)

    try:
        incident = wait_for(lambda: read(lambda s: next(iter(svc.open_incidents(s)), None)),
                            what="the declared incident")
        assert incident.summary == "primary unreachable during a Slack outage" and incident.state == "detected"
        # what could not be told is on the timeline, to be seen once Slack answers again
        errors = wait_for(lambda: read(lambda s: [e for e in svc.timeline(s, require_id(incident))
                                                  if e.kind == "slack_error"]),
                          timeout=60, what="a recorded Slack error")
        assert "channel" in errors[0].text
    finally:
        store.dispose()
    assert "auth.test" not in bot.log()
