"""More walks through Slack: the declare form, ransomware's two-person rule, a failing step with
Retry, a failed verification going back to ``assessed``, user mistakes, a false alarm, Korean, and
the embedded default (``aegis serve`` with no Slack credentials)."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import requests

from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from tests.harness.aegis_process import start_on_sqlite, wait_for
from tests.harness.http_health import HealthyHandler
from tests.harness.pgcluster import free_port
from tests.harness.slack_reading import all_text, channel, message_with_button, replies_for
from tests.harness.team import ROSTER
from tests.harness.walk import Walk, close_with_modal


def approve_all(walk: Walk, approvers: dict[str, str]) -> None:
    """Approve each step awaiting approval, in order, by the user for its action/hook."""
    for step in walk.steps():
        if step.status == "awaiting_approval":
            walk.click(approvers.get(step.action, approvers.get("*", "U0IC")), "aegis_approve", str(step.id))
            walk.wait_step(step.id, "succeeded")


def approve_by_two(walk: Walk, step_id: int, first: str, second: str, outcome: str = "succeeded") -> None:
    """A two-person step: one approval recorded, then the second person's; it then runs to ``outcome``."""
    walk.click(first, "aegis_approve", str(step_id))

    def votes() -> list[str]:
        with walk.store.session() as session:
            return [a.user_id for a in svc.all_approvals(session, walk.incident_id) if a.step_id == step_id]

    wait_for(lambda: votes() == [first], what="the first approval")
    walk.click(second, "aegis_approve", str(step_id))
    walk.wait_step(step_id, outcome)


def verify_with_modal(walk: Walk, emulator: EmulatorServer, user: str, evidence: str) -> None:
    """Nothing automated to check: press Verify manually, state the evidence in the form."""
    verify = next(s for s in walk.steps() if s.action == "verify")
    walk.wait_step(verify.id, "awaiting_verification")
    walk.click(user, "aegis_verify_manual", str(verify.id))
    view = wait_for(lambda: [v for v in emulator.state.views(user=user) if v.get("callback_id") == "aegis_verify_submit"
                             and v.get("status") == "open"], what="the verification form")[-1]
    walk.driver.submit_view(user, view["id"], {"evidence": {"value": {"type": "plain_text_input", "value": evidence}}})


def test_ransomware_via_the_form_needs_two_approvers_one_from_security_in_korean(
    tmp_path: Path, emulator: EmulatorServer,
) -> None:
    bot = start_on_sqlite(tmp_path, emulator, {"locale": "ko", "roster": ROSTER})
    try:
        walk = Walk(bot, emulator)
        # /aegis incident with no arguments opens the declare form
        assert walk.driver.slash("U0SEC", "incident").status_code == 200
        form = wait_for(lambda: [v for v in emulator.state.views(user="U0SEC")
                                 if v.get("callback_id") == "aegis_declare"], what="the declare form")[-1]
        missing = walk.driver.submit_view("U0SEC", form["id"], {
            "scenario": {"value": {"type": "static_select", "selected_option": {"value": "ransomware"}}},
            "severity": {"value": {"type": "static_select", "selected_option": {"value": "high"}}},
            "summary": {"value": {"type": "plain_text_input", "value": ""}}})
        assert missing.json()["response_action"] == "errors" and "summary" in missing.json()["errors"]
        walk.driver.submit_view("U0SEC", form["id"], {
            "scenario": {"value": {"type": "static_select", "selected_option": {"value": "ransomware"}}},
            "severity": {"value": {"type": "static_select", "selected_option": {"value": "high"}}},
            "summary": {"value": {"type": "plain_text_input", "value": "파일 서버 암호화됨"}}})
        chan = wait_for(lambda: channel(emulator.state, "inc-"), what="the incident channel")
        walk.channel_id = chan["id"]
        with walk.store.session() as session:
            walk.incident_id = svc.find_by_channel(session, walk.channel_id).id
        card = wait_for(lambda: message_with_button(walk.chan(), "aegis_claim_role"), what="the card")
        assert "탐지됨" in all_text(card)      # Korean state name on the card
        walk.assemble_and_assess()
        # every destructive step of the ransomware plan needs two people, one of them the security lead
        assert all(s.approvals_required == 2 for s in walk.steps() if s.action != "verify")
        restore = next(s for s in walk.steps() if "Restore" in s.title)

        approve_all_before = [s for s in walk.steps() if s.position < restore.position]
        for step in approve_all_before:
            approve_by_two(walk, step.id, "U0SEC", "U0IC")
        # one approval is not enough; the same person twice is still one; then the security lead
        walk.click("U0DB", "aegis_approve", str(restore.id))
        wait_for(lambda: "🔐" in replies_for(emulator, "U0DB"), what="the second-approver notice")
        walk.click("U0DB", "aegis_approve", str(restore.id))
        # wait for the second click's own answer, then check that it still counts once
        wait_for(lambda: len(emulator.state.responses_for("U0DB")) >= 2, what="the repeated approval's refusal")
        with walk.store.session() as session:
            assert svc.get_step(session, restore.id).status == "awaiting_approval"
            restore_votes = [a for a in svc.all_approvals(session, walk.incident_id) if a.step_id == restore.id]
            assert [a.user_id for a in restore_votes] == ["U0DB"]
        walk.click("U0SEC", "aegis_approve", str(restore.id))
        walk.wait_step(restore.id, "succeeded")
        for step in [s for s in walk.steps() if s.status == "awaiting_approval"]:
            approve_by_two(walk, step.id, "U0APP", "U0SEC")
        # no service health check and no database configured: verified only on a responder's evidence
        assert walk.incident().state == "recovering"
        verify_with_modal(walk, emulator, "U0SEC", "파일 서버 샘플 복원 확인, 해시 일치")
        walk.wait_state("verified")
        close_with_modal(walk, emulator, "U0IC", "깨끗한 백업으로 복구 완료")
        closing = wait_for(lambda: [m for m in walk.chan()["messages"] if "RTO" in all_text(m)], what="closing")
        assert "수동 검증: 파일 서버 샘플 복원 확인, 해시 일치" in all_text(closing[-1])
        assert "종료" in all_text(closing[-1])
    finally:
        bot.stop()


def test_failed_step_retry_and_failed_verification_back_to_assessed(tmp_path: Path, emulator: EmulatorServer) -> None:
    marker = tmp_path / "activated"
    hook = tmp_path / "activate.sh"
    # fails on its first run (the standby region "is not ready"), works afterwards
    hook.write_text(f"#!/usr/bin/env bash\nif [ -f {marker} ]; then echo ready; exit 0; fi\n"
                    f"touch {marker}; echo 'region not ready' >&2; exit 3\n")
    hook.chmod(0o755)
    port = free_port()
    config = {
        "roster": ROSTER,
        "services": [{"name": "user-authentication", "tier": 1,
                      "health": {"http": f"http://127.0.0.1:{port}/health", "timeout_seconds": 1}}],
        "hooks": {"activate_standby_environment": {"command": [str(hook)], "timeout_seconds": 30}},
    }
    bot = start_on_sqlite(tmp_path, emulator, config)
    server = None
    try:
        walk = Walk(bot, emulator)
        walk.declare("incident datacenter_outage critical region A is dark")
        walk.assemble_and_assess()
        activate = walk.steps()[0]
        assert activate.action == "hook"
        walk.click("U0INFRA", "aegis_approve", str(activate.id))
        failed = walk.wait_step(activate.id, "failed")
        assert "3" in failed.detail or "not ready" in failed.detail
        walk.click("U0INFRA", "aegis_retry", str(activate.id))
        assert walk.wait_step(activate.id, "succeeded").attempt == 2

        approve_all(walk, {"manual": "U0IC"})
        # the service is down, so verification fails and the incident goes back with a new plan
        walk.wait_state("assessed")
        wait_for(lambda: walk.incident().plan_revision == 2, what="a new plan")
        with walk.store.session() as session:
            texts = [e.text for e in svc.timeline(session, walk.incident_id)]
        assert any("verification failed" in t and "user-authentication" in t for t in texts)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), HealthyHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        approve_all(walk, {"*": "U0IC"})
        walk.wait_state("verified")
        close_with_modal(walk, emulator, "U0IC", "failed over to region B")
    finally:
        if server:
            server.shutdown()
        bot.stop()


def test_user_mistakes_get_usage_and_a_false_alarm_closes_early(tmp_path: Path, emulator: EmulatorServer) -> None:
    bot = start_on_sqlite(tmp_path, emulator, {})   # no roster at all: the declarer may take command
    try:
        walk = Walk(bot, emulator)
        cases = {
            "incident flood critical x": "datacenter_outage",
            "incident database_failure urgent x": "critical",
            "incident database_failure high": "summary",
            "reboot everything": "/aegis incident",
            "status INC-999": "INC-999",
        }
        for text, expected in cases.items():
            assert walk.driver.slash("U0APP", text).status_code == 200
            wait_for(lambda e=expected: e in replies_for(emulator, "U0APP"), what=f"usage for {text!r}")
        assert "Traceback" not in replies_for(emulator, "U0APP")
        with walk.store.session() as session:
            assert svc.open_incidents(session) == []

        walk.declare("incident database_failure low replica lag alert")
        # not the declarer, no roster: may not take command
        walk.click("U0APP", "aegis_claim_role", "incident_commander")
        wait_for(lambda: "roster" in replies_for(emulator, "U0APP"), what="the claim refusal")
        assert walk.incident().state == "detected"
        walk.click("U0IC", "aegis_claim_role", "incident_commander")
        walk.wait_state("assessed")   # nothing configured: a plan of manual steps
        assert all(s.action in ("manual", "hook", "verify") for s in walk.steps())
        walk.click("U0APP", "aegis_close", str(walk.incident_id))
        wait_for(lambda: "incident commander" in replies_for(emulator, "U0APP"), what="the close refusal")
        close_with_modal(walk, emulator, "U0IC", "alert was a monitoring glitch")
        with walk.store.session() as session:
            last = svc.timeline(session, walk.incident_id)[-1]
        assert (last.source_state, last.dest_state) == ("assessed", "closed") and "false alarm" in last.text
        closing = wait_for(lambda: [m for m in walk.chan()["messages"] if "RTO" in all_text(m)], what="closing")
        assert "not reached" in all_text(closing[-1])
    finally:
        bot.stop()


def test_embedded_default_serves_the_emulator_page_and_runs_a_command(tmp_path: Path) -> None:
    port, emulator_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "AEGIS_"))}
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "serve", "--port", str(port),
                             "--emulator-port", str(emulator_port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        url = wait_for(lambda: next((m.group(1) for line in lines
                                     if (m := re.search(r"emulator: open (\S+)", line))), None),
                       what="the emulator URL on stdout")
        page = requests.get(url, params={"user": "U0IC"}, timeout=5)
        assert page.status_code == 200 and "/aegis" in page.text
        requests.post(f"{url.rstrip('/')}/_emulator/ui/slash", timeout=10, data={
            "user": "U0IC", "channel": "C0OPS", "text": "/aegis incident database_failure high embedded test"})
        chans = wait_for(lambda: [c for c in requests.get(f"{url.rstrip('/')}/_emulator/channels", timeout=5).json()
                                  if c["name"].startswith("inc-") and c["messages"]], what="the incident channel")
        assert "INC-1" in json.dumps(chans[0]["messages"])
        assert (tmp_path / "aegis.db").exists()   # the SQLite default
        page = requests.get(url, params={"user": "U0IC", "channel": chans[0]["id"]}, timeout=5)
        assert "aegis_claim_role" in page.text and "INC-1" in page.text
    finally:
        proc.terminate()
        proc.wait(10)


def test_abort_after_a_failed_step_goes_back_to_assessed_with_a_new_plan(
    tmp_path: Path, emulator: EmulatorServer,
) -> None:
    hook = tmp_path / "isolate.sh"
    hook.write_text("#!/usr/bin/env bash\necho 'firewall API refused' >&2\nexit 1\n")
    hook.chmod(0o755)
    hooks = {"isolate_systems": {"command": [str(hook)], "timeout_seconds": 10}}
    bot = start_on_sqlite(tmp_path, emulator, {"roster": ROSTER, "hooks": hooks})
    try:
        walk = Walk(bot, emulator)
        walk.declare("incident ransomware critical file servers encrypted")
        walk.assemble_and_assess()
        isolate = walk.steps()[0]
        approve_by_two(walk, isolate.id, "U0SEC", "U0IC", outcome="failed")   # isolation: two people too
        wait_for(lambda: message_with_button(walk.chan(), "aegis_abort", str(isolate.id)), what="Retry/Abort")
        walk.click("U0APP", "aegis_abort", str(isolate.id))          # not an approver of this step
        wait_for(lambda: "can't" in replies_for(emulator, "U0APP"), what="the abort refusal")
        assert walk.incident().state == "recovering"
        walk.click("U0SEC", "aegis_abort", str(isolate.id))
        walk.wait_state("assessed")
        wait_for(lambda: walk.incident().plan_revision == 2, what="a fresh plan after the abort")
        with walk.store.session() as session:
            assert svc.get_step(session, isolate.id).status == "skipped"
            texts = [e.text for e in svc.timeline(session, walk.incident_id)]
        assert any("aborted at" in t for t in texts)
        assert len([t for t in texts if "step 1 failed" in t]) == 1      # the failing hook ran once
    finally:
        bot.stop()
