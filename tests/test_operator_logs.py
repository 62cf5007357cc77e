"""Logs an operator can read (issue 11): ``aegis serve`` as a process walked through one incident.

declare → claim → approve → step results → verified → close, with the log in text (the default) and
in JSON (``--log-format json``). The log holds one ``aegis.incident`` line per transition, per step
start and result and per vote, each naming the incident; in JSON every line is one object; no
harness secret appears (a hook prints one, the summary quotes the bot token); a request rejected at
the front door is logged without its body.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.cli.main import build_parser
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from tests.harness.aegis_process import BOT_TOKEN, PG_PASSWORD, SIGNING_SECRET, AegisProcess, wait_for
from tests.harness.http_health import HealthyHandler
from tests.harness.pgcluster import free_port
from tests.harness.team import ROSTER
from tests.harness.walk import Walk, close_with_modal

MARKER = "REJECTED-BODY-MARKER-5150"
LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)$")


@pytest.fixture
def healthy_service() -> Iterator[int]:
    """The service the plan's verification step checks: really up, so the incident is verified on evidence."""
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), HealthyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield port
    finally:
        server.shutdown()


def start(workdir: Path, emulator: EmulatorServer, port: int, log_format: str | None) -> AegisProcess:
    hook = workdir / "activate.sh"
    # prints a secret (the harness's PostgreSQL password, passed to the hook): it must reach no log line
    hook.write_text('#!/usr/bin/env bash\necho "region B active, password $AEGIS_TEST_PG_PASSWORD"\n')
    hook.chmod(0o755)
    config = {
        "roster": ROSTER,
        "slack": {"stakeholder_channel": "C0STAKE", "reminder_minutes": 30},
        "services": [{"name": "user-authentication", "tier": 1,
                      "health": {"http": f"http://127.0.0.1:{port}/health", "timeout_seconds": 1}}],
        "hooks": {"activate_standby_environment": {"command": [str(hook)], "timeout_seconds": 30,
                                                   "pass_env": ["AEGIS_TEST_PG_PASSWORD"]}},
    }
    workdir.chmod(0o755)
    bot = AegisProcess(workdir, config, f"sqlite:///{workdir}/aegis.db", emulator.api_url)
    if log_format:
        bot.extra_args = ["--log-format", log_format]
    emulator.bot_url = bot.url
    return bot.start()


def walk_one_incident(bot: AegisProcess, emulator: EmulatorServer) -> Walk:
    walk = Walk(bot, emulator)
    walk.declare(f"incident datacenter_outage critical region A is dark, token {BOT_TOKEN} pasted by mistake")
    walk.assemble_and_assess()
    for step in walk.steps():
        if step.status == "awaiting_approval":
            walk.click("U0IC", "aegis_approve", str(step.id))
        walk.wait_step(step.id, "succeeded")
    walk.wait_state("verified")
    close_with_modal(walk, emulator, "U0IC", "failed over to region B")
    return walk


def incident_records(log: str, log_format: str) -> list[dict[str, Any]]:
    """The ``aegis.incident`` lines as dicts: the JSON object, or the text line's parts."""
    records = []
    for line in log.splitlines():
        if log_format == "json":
            record = json.loads(line)
        else:
            match = LINE.match(line)
            if match is None:
                continue
            record = match.groupdict()
        if record.get("logger") == "aegis.incident":
            records.append(record)
    return records


def lines_of(records: list[dict[str, Any]], pattern: str) -> list[dict[str, Any]]:
    return [r for r in records if re.search(pattern, r["message"])]


@pytest.mark.parametrize("log_format", [None, "json"], ids=["text", "json"])
def test_one_walk_logs_each_transition_step_and_vote_once_with_the_incident_and_no_secret(
    tmp_path: Path, emulator: EmulatorServer, healthy_service: int, log_format: str | None,
) -> None:
    bot = start(tmp_path, emulator, healthy_service, log_format)
    try:
        rejected = emulator.driver.post_raw(f"command=%2Faegis&text={MARKER}&user_id=U0IC", {
            "X-Slack-Signature": "v0=" + "0" * 64, "X-Slack-Request-Timestamp": str(int(time.time()))})
        assert rejected.status_code == 401
        walk = walk_one_incident(bot, emulator)
        key = f"INC-{walk.incident_id}"
        with walk.store.session() as session:
            events = svc.timeline(session, walk.incident_id)
        # the close commits before its line is written: wait for the line, not a while
        fmt = log_format or "text"
        wait_for(lambda: lines_of(incident_records(bot.log(), fmt), r"→ closed"), what="the close line in the log")
    finally:
        bot.stop()
    log = bot.log()
    if fmt == "json":
        for line in log.splitlines():
            assert isinstance(json.loads(line), dict), line      # every line: one JSON object
    records = incident_records(log, fmt)
    assert records and all(key in r["message"] for r in records), "an aegis.incident line without its incident"
    if fmt == "json":
        assert all(r["incident"] == key and r["level"] == "INFO" and r["time"] for r in records)

    transitions = [(e.source_state, e.dest_state) for e in events if e.kind == "transition" and e.source_state]
    assert transitions == [("detected", "assembled"), ("assembled", "assessed"), ("assessed", "recovering"),
                           ("recovering", "verified"), ("verified", "closed")]
    for source, dest in transitions:
        found = lines_of(records, f"{key} {source} → {dest} ")
        assert len(found) == 1, (source, dest, found)
        if fmt == "json":
            assert (found[0]["event"], found[0]["source"], found[0]["dest"]) == ("transition", source, dest)
            assert found[0]["trigger"] and "actor" in found[0]
    assert lines_of(records, rf"{key} verified → closed \(close, by U0IC\): failed over to region B")
    assert len(lines_of(records, rf"{key} declared: datacenter_outage / critical by U0IC")) == 1

    # each step: one start line and one result line (status and its one-line detail)
    results = [e for e in events if e.kind == "step" and (e.data or {}).get("outcome")]
    starts, finished = lines_of(records, rf"{key} step \d+ started"), lines_of(records, rf"{key} step \d+ succeeded")
    assert len(starts) == len(results) == len(finished) == len(walk.steps()), (starts, finished)
    assert any("HTTP 200" in r["message"] for r in finished), "the verification's evidence is its result's detail"
    votes = [e for e in events if e.kind == "approval"]
    assert len(lines_of(records, rf"{key} step \d+ approved by U0IC")) == len(votes) > 0

    # no secret of the harness anywhere in the log; the hook's password line was masked
    for secret in (BOT_TOKEN, SIGNING_SECRET, PG_PASSWORD):
        assert secret not in log, "a secret was logged"
    # the front door: the rejection is in the log, the rejected body is not
    assert "rejected a request to /slack/events" in log
    assert MARKER not in log


def test_the_log_format_comes_from_the_option_or_aegis_log_format(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_parser().parse_args(["serve"]).log_format == "text"
    assert build_parser().parse_args(["serve", "--log-format", "json"]).log_format == "json"
    monkeypatch.setenv("AEGIS_LOG_FORMAT", "json")
    assert build_parser().parse_args(["serve"]).log_format == "json"
    assert build_parser().parse_args(["--log-format", "text", "serve"]).log_format == "text"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--log-format", "xml"])
