"""The recovery's choices in Slack (issue 9): the strategy select on the assessment message, the
ransomware infection-time form and the partial-recovery form — through a running ``aegis serve``
with the emulator as Slack, each choice re-planned as a new revision of the plan."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bot.slack import choice_forms
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from tests.harness.aegis_process import start_on_sqlite, wait_for
from tests.harness.pgcluster import free_port
from tests.harness.slack_reading import all_text, replies_for
from tests.harness.team import ROSTER
from tests.harness.walk import Walk

SEOUL = ZoneInfo("Asia/Seoul")


def config(locale: str = "en") -> dict[str, Any]:
    # nothing listens on these ports: the checks fail fast, the plans follow from what is configured
    return {
        "locale": locale, "timezone": "Asia/Seoul", "roster": ROSTER,
        "components": {"postgres": {
            "primary": {"dsn": f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres",
                        "label": "pg-primary"},
            "standby": {"dsn": f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres",
                        "label": "pg-standby"},
        }},
    }


def assessment_message(walk: Walk) -> dict[str, Any]:
    """The newest message carrying the strategy select (the assessment)."""
    def find() -> dict[str, Any] | None:
        message: dict[str, Any]
        for message in reversed(walk.chan()["messages"]):
            blocks = message.get("blocks") or []
            if any((b.get("accessory") or {}).get("action_id") == "aegis_strategy" for b in blocks):
                return message
        return None
    found: dict[str, Any] = wait_for(find, what="the assessment message with the strategy select")
    return found


def choose(walk: Walk, emulator: EmulatorServer, user: str, strategy: str) -> str:
    """Pick ``strategy`` in the select as ``user``; return the ephemeral answer it got."""
    before = len(emulator.state.responses_for(user))
    response = walk.driver.select(user, "aegis_strategy", strategy, walk.channel_id, assessment_message(walk)["ts"])
    assert response.status_code == 200, response.text
    wait_for(lambda: len(emulator.state.responses_for(user)) > before, what=f"the answer to {user}'s choice")
    return json.dumps(emulator.state.responses_for(user)[before:], ensure_ascii=False)


def open_view(emulator: EmulatorServer, user: str, callback: str, seen: int = 0) -> dict[str, Any]:
    views = wait_for(lambda: [v for v in emulator.state.views(user=user)
                              if v.get("callback_id") == callback and v.get("status") == "open"][seen:],
                     what=f"the {callback} form")
    found: dict[str, Any] = views[-1]
    return found


def revision(walk: Walk, number: int) -> Any:
    wait_for(lambda: walk.incident().plan_revision == number, timeout=60,
             what=f"plan revision {number} (now {walk.incident().plan_revision}); log:\n{walk.bot.log()[-3000:]}")
    return walk.incident()


def text_value(value: str) -> dict[str, Any]:
    return {"value": {"type": "plain_text_input", "value": value}}


def partial_values(component: str, database: str = "", table: str = "", collection: str = "") -> dict[str, Any]:
    return {"component": {"value": {"type": "static_select", "selected_option": {"value": component}}},
            "database": text_value(database), "table": text_value(table), "collection": text_value(collection),
            "target_date": {"value": {"type": "datepicker", "selected_date": None}},
            "target_time": {"value": {"type": "timepicker", "selected_time": None}}}


def ephemerals_to(emulator: EmulatorServer, user: str) -> str:
    calls = [c["params"] for c in emulator.state.calls("chat.postEphemeral") if c["params"].get("user") == user]
    return json.dumps(calls, ensure_ascii=False)


def test_switching_the_strategy_re_plans_and_the_partial_form_chooses_the_object(
    tmp_path: Path, emulator: EmulatorServer,
) -> None:
    bot = start_on_sqlite(tmp_path, emulator, config())
    try:
        walk = Walk(bot, emulator)
        walk.declare("incident datacenter_outage critical the primary region is down")
        walk.assemble_and_assess()
        first = walk.incident()
        assert first.strategy == "failover" and first.plan_revision == 1   # the scenario's default
        old_steps = walk.steps()
        assert "Switch the strategy" in all_text(assessment_message(walk))

        # the communication manager approves nothing in this plan: refused, nothing stored
        refused = choose(walk, emulator, "U0COMM", "restore_from_backup")
        assert "may change the recovery strategy" in refused
        assert walk.incident().recovery_options == {} and walk.incident().plan_revision == 1

        # the database lead approves the promotion: the switch re-plans as revision 2
        answer = choose(walk, emulator, "U0DB", "restore_from_backup")
        assert "restore from backup" in answer and "re-planning" in answer
        second = revision(walk, 2)
        assert second.state == "assessed" and second.strategy == "restore_from_backup"
        assert second.recovery_options["strategy"] == "restore_from_backup"
        new_steps = walk.steps()
        assert {s.action for s in new_steps} != {s.action for s in old_steps}
        assert "postgres_promote" not in {s.action for s in new_steps}
        with walk.store.session() as session:
            events = [e for e in svc.timeline(session, walk.incident_id)
                      if (e.data or {}).get("code") == "recovery_options_set"]
        assert [(e.actor, e.data["strategy"]) for e in events] == [("U0DB", "restore_from_backup")]
        # the new plan says who changed what; an old plan's button is refused
        wait_for(lambda: any("changed the recovery choices" in all_text(m) for m in walk.chan()["messages"]),
                 what="the plan of revision 2 naming the change")
        old_button = next(s for s in old_steps if s.status == "awaiting_approval")
        before = len(emulator.state.responses_for("U0DB"))
        channel_id, ts = walk.channel_id, walk.chan()["messages"][0]["ts"]
        walk.driver.click("U0DB", "aegis_approve", str(old_button.id), channel_id, ts)
        wait_for(lambda: len(emulator.state.responses_for("U0DB")) > before, what="the old button's refusal")
        assert "This plan was replaced" in replies_for(emulator, "U0DB")
        # the same choice again changes nothing
        assert "already the current choice" in choose(walk, emulator, "U0DB", "restore_from_backup")
        assert walk.incident().plan_revision == 2

        # partial recovery with no target yet opens the form instead of re-planning
        choose_started = len(emulator.state.views(user="U0DB"))
        walk.driver.select("U0DB", "aegis_strategy", "partial_recovery", walk.channel_id,
                           assessment_message(walk)["ts"])
        form = open_view(emulator, "U0DB", "aegis_partial_submit", 0)
        assert len(emulator.state.views(user="U0DB")) > choose_started
        for values, block in ((partial_values("postgres", "shop", "orders"), "table"),
                              (partial_values("oracle", "shop"), "component"),
                              (partial_values("neo4j", "graph"), "component"),
                              (partial_values("postgres"), "database")):
            bad = walk.driver.submit_view("U0DB", form["id"], values)
            assert bad.json()["response_action"] == "errors" and block in bad.json()["errors"], (values, bad.json())
        assert walk.incident().plan_revision == 2 and "partial" not in walk.incident().recovery_options
        good = walk.driver.submit_view("U0DB", form["id"], partial_values("postgres", "shop", "public.orders"))
        assert good.status_code == 200 and not good.content.strip()
        third = revision(walk, 3)
        assert third.strategy == "partial_recovery"
        assert third.recovery_options["partial"] == {"component": "postgres", "database": "shop",
                                                     "table": "public.orders", "collection": None,
                                                     "target_time": None}
        steps = walk.steps()
        assert any("public.orders" in s.title for s in steps), [s.title for s in steps]
        wait_for(lambda: "partial recovery of *postgres shop public.orders*" in ephemerals_to(emulator, "U0DB"),
                 what="the partial form's confirmation")
        wait_for(lambda: "public.orders" in all_text(assessment_message(walk)),
                 what="the new assessment naming the partial target")

    finally:
        bot.stop()


def test_ransomware_infection_time_form_in_korean(tmp_path: Path, emulator: EmulatorServer) -> None:
    bot = start_on_sqlite(tmp_path, emulator, config("ko"))
    try:
        walk = Walk(bot, emulator)
        walk.declare("incident ransomware high file servers encrypted")
        walk.assemble_and_assess()
        incident = walk.incident()
        message = assessment_message(walk)
        assert "복구 전략 변경" in all_text(message) and "감염 시각 입력" in all_text(message)
        assert "아직 입력되지 않음" in all_text(message)   # no infection time yet: the detection time is assumed

        walk.click("U0SEC", "aegis_infection_time", str(walk.incident_id))
        form = open_view(emulator, "U0SEC", "aegis_infection_submit")
        assert form["title"]["text"] == "감염 시각" and "Asia/Seoul" in all_text(form)
        inputs = {b["block_id"]: b["element"] for b in form["blocks"] if b["type"] == "input"}
        declared = incident.declared_at.replace(tzinfo=UTC).astimezone(SEOUL)
        assert inputs["date"]["initial_date"] == declared.strftime("%Y-%m-%d")   # the detection time, in Seoul
        assert inputs["time"]["initial_time"] == declared.strftime("%H:%M")

        def picked(when: datetime) -> dict[str, Any]:
            local = when.astimezone(SEOUL)
            return {"date": {"value": {"type": "datepicker", "selected_date": local.strftime("%Y-%m-%d")}},
                    "time": {"value": {"type": "timepicker", "selected_time": local.strftime("%H:%M")}}}

        future = walk.driver.submit_view("U0SEC", form["id"], picked(datetime.now(UTC) + timedelta(hours=2)))
        assert future.json()["response_action"] == "errors" and "미래 시각" in future.json()["errors"]["date"]
        assert walk.incident().failure_at is None and walk.incident().plan_revision == 1

        infected = (incident.declared_at.replace(tzinfo=UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)
        ok = walk.driver.submit_view("U0SEC", form["id"], picked(infected))
        assert ok.status_code == 200 and not ok.content.strip()
        second = revision(walk, 2)
        assert second.failure_at is not None and second.failure_at.replace(tzinfo=UTC) == infected
        assert datetime.fromisoformat(second.recovery_options["infection_time"]) == infected
        assert second.state == "assessed" and second.strategy == "restore_from_backup"
        wait_for(lambda: "감염 시각을" in ephemerals_to(emulator, "U0SEC"), what="the Korean confirmation")
        # the plan is made from the given time, and the new assessment shows it in Seoul time
        wait_for(lambda: any(infected.astimezone(SEOUL).strftime("%Y-%m-%d %H:%M") in all_text(m)
                             for m in walk.chan()["messages"] if "감염 시각:" in all_text(m)),
                 what="the new assessment showing the infection time")

        # a choice the planner cannot honour re-plans on the default, and the assessment says why
        choose(walk, emulator, "U0SEC", "failover")
        third = revision(walk, 3)
        assert third.strategy == "restore_from_backup" and third.recovery_options["strategy"] == "failover"
        # ... in Korean: the planner's reason code worded by ko/plan_reason.j2, not its English rationale
        wait_for(lambda: "전략은 불가능합니다: 스탠바이는 공격까지 복제하므로" in all_text(assessment_message(walk)),
                 what="the assessment saying why failover was not planned")
        assert "is not possible" not in all_text(assessment_message(walk))

        # once the recovery runs (a first approval starts it), the choices are refused until it is aborted
        step = next(s for s in walk.steps() if s.status == "awaiting_approval")
        answered = len(emulator.state.responses_for("U0SEC"))
        walk.click("U0SEC", "aegis_approve", str(step.id))
        walk.wait_state("recovering")
        if step.approvals_required >= 2:   # its answer ("a second approver is needed") must not be read as the next
            wait_for(lambda: len(emulator.state.responses_for("U0SEC")) > answered, what="the approval's answer")
        assert "먼저 복구를 중단하세요" in choose(walk, emulator, "U0SEC", "restore_from_backup")
        assert walk.incident().plan_revision == 3 and walk.incident().recovery_options["strategy"] == "failover"
    finally:
        bot.stop()


def test_the_forms_read_times_in_the_teams_zone_and_refuse_bad_input() -> None:
    declared = datetime(2026, 3, 1, 1, 0, tzinfo=UTC)          # 10:00 in Seoul
    now = declared + timedelta(minutes=30)

    def view(**values: str) -> dict[str, Any]:
        return {"state": {"values": {k: {"value": {"selected_date": v} if "date" in k else {"selected_time": v}
                                         if "time" in k else {"value": v}} for k, v in values.items()}}}

    ok = choice_forms.infection_time(view(date="2026-03-01", time="09:15"), zone=SEOUL, declared_at=declared, now=now)
    assert ok.value == {"infection_time": "2026-03-01T00:15:00+00:00"}
    after = choice_forms.infection_time(view(date="2026-03-01", time="10:20"), zone=SEOUL, declared_at=declared,
                                        now=now)
    assert after.value is None and after.errors == {"date": "after_declared"}
    assert choice_forms.infection_time(view(date="2026-03-01"), zone=SEOUL, declared_at=declared,
                                       now=now).errors == {"date": "missing"}
    half = choice_forms.partial_target(view(component="milvus", collection="docs", target_date="2026-03-01"),
                                       zone=SEOUL, configured=frozenset({"milvus"}), now=now)
    assert half.errors == {"target_date": "target_half"}
    milvus = choice_forms.partial_target(view(component="milvus", collection="docs", target_date="2026-03-01",
                                              target_time="09:00", database="ignored"),
                                         zone=SEOUL, configured=frozenset({"milvus"}), now=now)
    assert milvus.value == {"strategy": "partial_recovery", "partial": {
        "component": "milvus", "database": None, "table": None, "collection": "docs",
        "target_time": "2026-03-01T00:00:00+00:00"}}
    assert choice_forms.partial_target(view(component="milvus"), zone=SEOUL, configured=frozenset({"milvus"}),
                                       now=now).errors == {"collection": "collection_missing"}


def test_the_new_refusals_and_timeline_line_exist_in_both_locales() -> None:
    from messages.blocks import kit
    from messages.blocks.incident import timeline_event
    from messages.views import TimelineItem
    from tests.harness.message_samples import make_view

    for locale in ("en", "ko"):
        texts = [kit.refusal("choice_while_recovering", locale).text,
                 kit.refusal("not_allowed_to_choose", locale, roles=["incident_commander", "database_lead"]).text,
                 kit.refusal("unknown_strategy", locale, strategy="<b>").text,
                 kit.refusal("choice_unchanged", locale, strategy="failover").text,
                 kit.refusal("form_expired", locale, what="infection").text,
                 kit.refusal("wrong_state", locale, action="choose", state="verified").text]
        assert all(t and "None" not in t for t in texts) and "&lt;b&gt;" in texts[2]
        item = TimelineItem(datetime.now(UTC), "note", "U0DB", "", "recovery_options_set", {
            "strategy": "partial_recovery", "partial": {"component": "postgres", "database": "shop",
                                                        "table": "public.orders", "collection": None,
                                                        "target_time": None}})
        line = timeline_event(make_view(), item, locale)
        assert "public.orders" in line and ("partial recovery" in line or "부분 복구" in line)
