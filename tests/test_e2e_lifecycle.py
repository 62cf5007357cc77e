"""End to end: ``aegis serve`` as a process, the emulator as Slack, a real primary + standby.

Every request reaches the bot as signed HTTP, exactly as Slack sends it; every assertion reads
what the bot posted (emulator) or stored (its database) or did (PostgreSQL, hook output files).
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from slack_emulator.driver import SlackDriver
from slack_emulator.faults import fault_from_json
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines.models import TimelineEvent
from tests.harness.aegis_process import BOT_TOKEN, PG_PASSWORD, SIGNING_SECRET, AegisProcess, wait_for
from tests.harness.concurrency import at_once
from tests.harness.pgcluster import PgPair, PgSingle
from tests.harness.slack_reading import all_text, channel, channel_by_id, message_with_button
from tests.harness.walk import Walk

HOOK = """#!/usr/bin/env bash
# test hook: count each run, mark done, then take a while (so a crash can land mid-step)
echo "run $AEGIS_INCIDENT step $AEGIS_STEP" >> "{workdir}/$1.count"
echo "hook $1 running for $AEGIS_INCIDENT"
var="HOOK_SLEEP_${{1^^}}"
sleep "${{!var:-0}}"
touch "{workdir}/$1.done"
"""


def make_config(pair: PgPair, workdir: Path) -> dict[str, Any]:
    hook = workdir / "hook.sh"
    hook.write_text(HOOK.format(workdir=workdir))
    hook.chmod(0o755)
    return {
        "locale": "en",
        "slack": {"stakeholder_channel": "C0STAKE", "ops_channel": "C0OPS", "reminder_minutes": 0.05},
        "roster": {
            "incident_commander": ["U0IC"], "database_lead": ["U0DB"], "infrastructure_lead": ["U0INFRA"],
            "application_lead": ["U0APP"], "security_lead": ["U0SEC"], "communication_manager": ["U0COMM"],
        },
        "components": {"postgres": {
            "primary": {"dsn": pair.primary.dsn(), "password_env": "AEGIS_TEST_PG_PASSWORD", "label": "pg-primary"},
            "standby": {"dsn": pair.standby.dsn(), "password_env": "AEGIS_TEST_PG_PASSWORD", "label": "pg-standby"},
        }},
        "hooks": {
            # hooks get a minimal environment: the sleep a test sets reaches them only through pass_env
            "fence_primary": {"command": [str(hook), "fence"], "timeout_seconds": 60,
                              "done_check": ["test", "-f", str(workdir / "fence.done")],
                              "pass_env": ["HOOK_SLEEP_FENCE"]},
            # no done_check: after a crash its outcome is unknown and it must be approved again
            "update_traffic": {"command": [str(hook), "traffic"], "timeout_seconds": 60,
                               "pass_env": ["HOOK_SLEEP_TRAFFIC"]},
        },
        "engine": {"lease_seconds": 3},
    }


def runs(workdir: Path, hook: str) -> int:
    path = workdir / f"{hook}.count"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.fixture
def failed_primary(pg_pair: PgPair) -> PgPair:
    pg_pair.primary.sql("CREATE TABLE orders (id int primary key, note text)")
    pg_pair.primary.sql("INSERT INTO orders SELECT g, 'before failure' FROM generate_series(1, 100) g")
    pg_pair.wait_replicated()
    pg_pair.primary.stop("immediate")
    return pg_pair


def start_bot(workdir: Path, pair: PgPair, emulator: EmulatorServer, *, database_url: str | None = None,
              name: str = "aegis") -> AegisProcess:
    bot = AegisProcess(workdir, make_config(pair, workdir), database_url or f"sqlite:///{workdir}/aegis.db",
                       emulator.api_url, name=name)
    emulator.bot_url = bot.url
    return bot.start()


def assert_no_secrets(workdir: Path, emulator: EmulatorServer, bots: list[AegisProcess]) -> None:
    posted = json.dumps(emulator.state.calls())
    logs = "".join(bot.log() for bot in bots)
    stored = b"".join(p.read_bytes() for p in workdir.glob("*.db*"))
    for secret in (BOT_TOKEN, SIGNING_SECRET, PG_PASSWORD):
        assert secret not in posted, "a secret was posted to Slack"
        assert secret not in logs, "a secret was logged"
        assert secret.encode() not in stored, "a secret was stored"


def test_database_failure_walk_from_slash_command_to_closed(
    workdir: Path, failed_primary: PgPair, emulator: EmulatorServer,
) -> None:
    bot = start_bot(workdir, failed_primary, emulator)
    try:
        walk = Walk(bot, emulator)
        walk.declare()
        card = wait_for(lambda: message_with_button(walk.chan(), "aegis_claim_role", "incident_commander"),
                        what="the incident card")
        assert "INC-" in all_text(card)
        # the response team of the scenario was invited (R1)
        assert {"U0IC", "U0DB", "U0INFRA"} <= set(walk.chan()["members"])
        walk.assemble_and_assess()
        steps = walk.steps()
        assert [s.action for s in steps] == ["postgres_confirm_down", "hook", "postgres_promote", "hook", "verify"]
        assert walk.incident().strategy == "failover"
        # while the plan waits for approval, stakeholders get a reminder every reminder_minutes (3 s here)
        wait_for(lambda: [m for m in channel_by_id(emulator.state, "C0STAKE")["messages"]
                          if "still open" in all_text(m) and m.get("thread_ts")], timeout=20, what="a reminder")

        fence, promote = walk.step("hook", "fence_primary"), walk.step("postgres_promote")
        traffic = walk.step("hook", "update_traffic")
        walk.click("U0INFRA", "aegis_approve", str(fence.id))        # first approval → recovering
        walk.wait_step(fence.id, "succeeded")
        assert walk.incident().state == "recovering"
        assert failed_primary.standby.sql("SELECT pg_is_in_recovery()")[0][0] is True  # not before approval
        walk.click("U0DB", "aegis_approve", str(promote.id))
        walk.wait_step(promote.id, "succeeded")
        walk.click("U0INFRA", "aegis_approve", str(traffic.id))
        walk.wait_state("verified")

        # the standby really was promoted: it accepts writes and kept the data
        standby = failed_primary.standby
        assert standby.sql("SELECT pg_is_in_recovery()")[0][0] is False
        standby.sql("INSERT INTO orders VALUES (101, 'after failover')")
        assert standby.sql("SELECT count(*) FROM orders")[0][0] == 101

        # status shows the state name, the steps and who approved what — the recovery plan that reached
        # verified, even once the re-protect plan (aftercare) is the current revision, which it lists too
        wait_for(lambda: walk.incident().aftercare == "reprotect", what="the re-protect plan")
        walk.driver.slash("U0IC", "status", channel_id=walk.channel_id)
        status = wait_for(lambda: [r for r in emulator.state.responses_for("U0IC") if "verified" in json.dumps(r)],
                          what="the status reply")
        reply = all_text(status[-1])
        assert "U0DB" in reply and "Promote" in reply and "Fence" in reply
        assert reply.index("Recovery plan") < reply.index("Promote") < reply.index("Aftercare: re-protect plan")
        assert "Rebuild the old primary" in reply.split("Aftercare: re-protect plan")[1]

        # close: the commander's button opens a modal; submitting it closes the incident
        walk.click("U0IC", "aegis_close", str(walk.incident_id))
        view = wait_for(lambda: [v for v in emulator.state.views() if v.get("callback_id") == "aegis_close_submit"],
                        what="the close modal")[-1]
        response = walk.driver.submit_view("U0IC", view["id"], {
            "summary": {"value": {"type": "plain_text_input", "value": "Standby promoted; primary fenced."}}})
        assert response.status_code == 200
        walk.wait_state("closed")

        incident = walk.incident()
        assert incident.rpo_seconds is not None and incident.verified_at and incident.closed_at
        closing = wait_for(lambda: [m for m in walk.chan()["messages"] if "RTO" in all_text(m)
                                    and "RPO" in all_text(m)], what="the closing post")[-1]
        closing_text = all_text(closing)
        assert "target 4h" in closing_text and "replication lag" in closing_text

        # stakeholders: one thread, its root shows the current state, one post per transition
        stake = channel_by_id(emulator.state, "C0STAKE")
        roots = [m for m in stake["messages"] if not m.get("thread_ts") or m.get("thread_ts") == m["ts"]]
        assert len(roots) == 1, f"expected one stakeholder thread, found {len(roots)}"
        assert "closed" in all_text(roots[0]).lower()
        replies = [m for m in stake["messages"] if m.get("thread_ts") == roots[0]["ts"] and m["ts"] != roots[0]["ts"]]
        replies_text = "\n".join(all_text(m) for m in replies)
        for state in ("assembled", "assessed", "recovering", "verified", "closed"):
            assert state in replies_text.lower(), f"no stakeholder post for {state}"
        assert "still open" in replies_text, "no reminder was posted while the incident was open"

        # the timeline is complete: every transition, every approval, every step
        with walk.store.session() as session:
            events = svc.timeline(session, walk.incident_id)
        transitions = [(e.source_state, e.dest_state) for e in events if e.kind == "transition"]
        assert transitions == [(None, "detected"), ("detected", "assembled"), ("assembled", "assessed"),
                               ("assessed", "recovering"), ("recovering", "verified"), ("verified", "closed")]
        assert len([e for e in events if e.kind == "approval"]) == 3
        assert len([e for e in events if e.kind == "step" and "succeeded" in e.text]) == 5
        assert runs(workdir, "fence") == 1 and runs(workdir, "traffic") == 1
    finally:
        bot.stop()
    assert_no_secrets(workdir, emulator, [bot])


def test_bad_signatures_are_rejected_and_change_nothing(
    workdir: Path, pg_pair: PgPair, emulator: EmulatorServer,
) -> None:
    bot = start_bot(workdir, pg_pair, emulator)
    try:
        body = "command=%2Faegis&text=incident+database_failure+critical+x&user_id=U0IC&channel_id=C0OPS"
        assert emulator.driver.post_raw(body, {"Content-Type": "application/x-www-form-urlencoded"}).status_code == 401
        wrong = SlackDriver(bot.url, "not-the-secret", emulator.state, emulator.url)
        assert wrong.slash("U0IC", "incident database_failure critical x").status_code == 401
        stale = emulator.driver.sign(body, int(time.time()) - 6 * 60)
        stale["Content-Type"] = "application/x-www-form-urlencoded"
        assert emulator.driver.post_raw(body, stale).status_code == 401
        # a 401 is answered before any handler runs: nothing can still be on its way
        with bot.store().session() as session:
            assert svc.open_incidents(session) == []
        assert channel(emulator.state, "inc-") is None
    finally:
        bot.stop()


def test_unauthorised_click_is_refused_and_duplicate_approvals_execute_once(
    workdir: Path, failed_primary: PgPair, emulator: EmulatorServer,
) -> None:
    bot = start_bot(workdir, failed_primary, emulator)
    try:
        walk = Walk(bot, emulator)
        walk.declare()
        walk.assemble_and_assess()
        fence, promote = walk.step("hook", "fence_primary"), walk.step("postgres_promote")

        # an outsider presses Approve on the promotion: ephemeral refusal, audit event, nothing changes
        walk.click("U0OUT", "aegis_approve", str(promote.id))
        refusal = wait_for(lambda: emulator.state.responses_for("U0OUT"), what="the refusal")
        assert "You can't approve" in refusal[-1]["text"] and "Nothing was changed" in refusal[-1]["text"]
        with walk.store.session() as session:
            audits = [e for e in svc.timeline(session, walk.incident_id) if e.kind == "audit"]
            assert audits and "U0OUT" == audits[-1].actor
            assert svc.get_step(session, promote.id).status == "awaiting_approval"
            assert svc.get(session, walk.incident_id).state == "assessed"

        # the same approval delivered twice at once, then again as a Slack retry
        message = message_with_button(walk.chan(), "aegis_approve", str(fence.id))
        press = partial(walk.driver.click, "U0INFRA", "aegis_approve", str(fence.id), walk.channel_id, message["ts"])
        at_once(press, press)
        walk.driver.click("U0INFRA", "aegis_approve", str(fence.id), walk.channel_id, message["ts"], retry_num=1)
        walk.wait_step(fence.id, "succeeded")

        message = message_with_button(walk.chan(), "aegis_approve", str(promote.id))
        press = partial(walk.driver.click, "U0DB", "aegis_approve", str(promote.id), walk.channel_id, message["ts"])
        at_once(press, press, partial(press, retry_num=1))
        walk.wait_step(promote.id, "succeeded")
        # every duplicate was processed and refused: two for the fence, two for the promotion
        wait_for(lambda: len(emulator.state.responses_for("U0INFRA")) >= 2, what="the fence duplicates' refusals")
        wait_for(lambda: len(emulator.state.responses_for("U0DB")) >= 2, what="the promotion duplicates' refusals")
        for user in ("U0INFRA", "U0DB"):
            assert all("already approved" in r["text"] or "not awaiting approval" in r["text"]
                       for r in emulator.state.responses_for(user)), emulator.state.responses_for(user)
        assert runs(workdir, "fence") == 1
        assert len(walk.ledger(fence.id)) == 1 and len(walk.ledger(promote.id)) == 1
        with walk.store.session() as session:
            approvals = [a for a in svc.all_approvals(session, walk.incident_id) if a.step_id == promote.id]
        assert len(approvals) == 1
        # the standby was promoted once: exactly one timeline switch, 1 → 2
        wal_file = failed_primary.standby.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        assert wal_file.startswith("00000002")
        assert failed_primary.standby.sql("SELECT pg_is_in_recovery()")[0][0] is False
    finally:
        bot.stop()
    assert_no_secrets(workdir, emulator, [bot])


def test_sigkill_mid_step_resumes_by_the_ledger_rule(
    workdir: Path, failed_primary: PgPair, emulator: EmulatorServer,
) -> None:
    bot = start_bot(workdir, failed_primary, emulator)
    bot.env["HOOK_SLEEP_FENCE"] = "3"    # long enough for the kill below to land while it runs
    bot.env["HOOK_SLEEP_TRAFFIC"] = "3"
    bot.stop()
    bot.start()
    bots = [bot]
    walk = Walk(bot, emulator)
    try:
        walk.declare()
        walk.assemble_and_assess()
        fence = walk.step("hook", "fence_primary")
        promote, traffic = walk.step("postgres_promote"), walk.step("hook", "update_traffic")

        # 1) killed while a step with an is_done probe runs: after restart it is confirmed, not re-run
        walk.click("U0INFRA", "aegis_approve", str(fence.id))
        wait_for(lambda: runs(workdir, "fence") == 1, what="the fence hook to start")
        bot.kill()
        # the hook outlives the bot (its own process group) and finishes while the bot is down
        wait_for(lambda: (workdir / "fence.done").exists(), timeout=15, what="the orphaned hook to finish")
        bot.start()
        walk.wait_step(fence.id, "succeeded", timeout=60)
        assert runs(workdir, "fence") == 1
        assert walk.ledger(fence.id)[0].status == "interrupted"

        # 2) killed while a step without a probe runs: it is not re-run; approval is asked again
        walk.click("U0DB", "aegis_approve", str(promote.id))
        walk.wait_step(promote.id, "succeeded")
        walk.click("U0INFRA", "aegis_approve", str(traffic.id))
        wait_for(lambda: runs(workdir, "traffic") == 1, what="the traffic hook to start")
        bot.kill()
        bot.start()
        step = walk.wait_step(traffic.id, "awaiting_approval", timeout=60)
        assert step.attempt == 2 and runs(workdir, "traffic") == 1
        wait_for(lambda: [m for m in walk.chan()["messages"] if "restart" in all_text(m).lower()],
                 what="a re-approval request in the channel")
        assert runs(workdir, "traffic") == 1, "a destructive step ran again without a new approval"
        assert [e.attempt for e in walk.ledger(traffic.id)] == [1], "a ledger row for a second attempt exists"

        # a responder approves again: it runs (once more) and the incident is verified
        walk.click("U0INFRA", "aegis_approve", str(traffic.id))
        walk.wait_state("verified")
        assert runs(workdir, "traffic") == 2 and runs(workdir, "fence") == 1
        assert failed_primary.standby.sql("SELECT pg_is_in_recovery()")[0][0] is False
    finally:
        bot.stop()
    assert_no_secrets(workdir, emulator, bots)


def test_two_replicas_on_one_postgresql_store_execute_a_click_once(
    workdir: Path, failed_primary: PgPair, emulator: EmulatorServer,
) -> None:
    store_server = PgSingle.create()
    try:
        store_server.primary.sql("CREATE DATABASE aegis")
        node = store_server.primary
        url = f"postgresql+psycopg://postgres@/aegis?host={node.socket_dir}&port={node.port}"
        first = start_bot(workdir, failed_primary, emulator, database_url=url, name="first")
        second = AegisProcess(workdir, make_config(failed_primary, workdir), url, emulator.api_url,
                              name="second").start()
        second_driver = SlackDriver(second.url, SIGNING_SECRET, emulator.state, emulator.url)
        try:
            walk = Walk(first, emulator)
            walk.declare()
            walk.assemble_and_assess()
            fence, promote = walk.step("hook", "fence_primary"), walk.step("postgres_promote")
            for step, user in ((fence, "U0INFRA"), (promote, "U0DB")):
                message = message_with_button(walk.chan(), "aegis_approve", str(step.id))
                at_once(*(partial(d.click, user, "aegis_approve", str(step.id), walk.channel_id, message["ts"])
                          for d in (emulator.driver, second_driver)))
                walk.wait_step(step.id, "succeeded")
                # the replica that lost the race answered too: with a refusal, not a second run
                wait_for(lambda user=user: emulator.state.responses_for(user),
                         what=f"the losing click's refusal ({user})")
            assert runs(workdir, "fence") == 1
            assert len(walk.ledger(fence.id)) == 1 and len(walk.ledger(promote.id)) == 1
        finally:
            first.stop()
            second.stop()
        assert_no_secrets(workdir, emulator, [first, second])
    finally:
        store_server.destroy()


def slack_errors(walk: Walk) -> list[TimelineEvent]:
    with walk.store.session() as session:
        return [e for e in svc.timeline(session, walk.incident_id) if e.kind == "slack_error"]


def test_slack_errors_are_retried_or_recorded_and_state_survives(
    workdir: Path, failed_primary: PgPair, emulator: EmulatorServer,
) -> None:
    bot = start_bot(workdir, failed_primary, emulator)
    try:
        faults = emulator.state.faults
        faults.add(fault_from_json({"method": "chat.postMessage", "count": 2, "status": 429, "retry_after": 1}))
        faults.add(fault_from_json({"method": "chat.update", "count": 1, "error": "internal_error"}))
        walk = Walk(bot, emulator)
        walk.declare()
        # rate-limited twice, then posted: the card arrives and the lifecycle goes on
        wait_for(lambda: message_with_button(walk.chan(), "aegis_claim_role", "incident_commander"), timeout=30,
                 what="the card after 429s")
        limited = [c for c in emulator.state.calls("chat.postMessage") if c.get("http_status") == 429]
        assert len(limited) == 2
        walk.assemble_and_assess()

        # a permanent error: the post is recorded as failed on the timeline, the state is kept
        faults.add(fault_from_json({"method": "chat.postMessage", "count": 50, "error": "channel_not_found"}))
        fence = walk.step("hook", "fence_primary")
        walk.click("U0INFRA", "aegis_approve", str(fence.id))
        walk.wait_step(fence.id, "succeeded")
        # each poll reads in its own transaction: one long read would keep SQLite's first snapshot
        errors = wait_for(lambda: slack_errors(walk), what="a recorded Slack error")
        assert "channel_not_found" in errors[-1].text
        assert walk.incident().state == "recovering"
        faults.clear()
        walk.driver.slash("U0IC", f"status INC-{walk.incident_id}")
        wait_for(lambda: [r for r in emulator.state.responses_for("U0IC") if "recovering" in json.dumps(r)],
                 what="status after the outage")
    finally:
        bot.stop()
    assert_no_secrets(workdir, emulator, [bot])
