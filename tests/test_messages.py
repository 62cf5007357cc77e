"""Message layer: Block Kit structure, the button contract, both locales, and Slack's limits."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from messages import monitor_notices, render
from messages.blocks import backup as backup_blocks
from messages.blocks import incident as incident_blocks
from messages.blocks import kit as block_kit
from messages.blocks import modals as modal_blocks
from messages.views import (
    CheckView,
    IncidentView,
    Message,
    ObjectiveReport,
    RoleView,
    StepView,
    TimelineItem,
    TransitionView,
)
from statemachines.vocabulary import DETAIL_APPROVAL_EXPIRED, OWN_DETAILS
from tests.harness.message_samples import (
    REFUSALS,
    T0,
    USAGE_PROBLEMS,
    backup_run,
    every_message,
    long_timeline,
    make_report,
    make_steps,
    make_view,
)

LOCALES = render.LOCALES
STATE_NAMES = {"en": "recovering", "ko": "복구 중"}


# ---------------------------------------------------------------------------------------------
# Helpers


def buttons(msg: Message) -> list[tuple[str, str, str]]:
    """(block_id, action_id, value) of every button, in order."""
    return [(b["block_id"], e["action_id"], e["value"])
            for b in msg.blocks if b["type"] == "actions" for e in b["elements"]]


def button_labels(msg: Message) -> dict[tuple[str, str], str]:
    return {(e["action_id"], e["value"]): e["text"]["text"]
            for b in msg.blocks if b["type"] == "actions" for e in b["elements"]}


def all_text(msg: Message) -> str:
    parts = [msg.text]
    for b in msg.blocks:
        if "text" in b:
            parts.append(b["text"]["text"])
        for e in b.get("elements", []):
            parts.append(e["text"]["text"] if e.get("type") == "button" else e.get("text", ""))
    return "\n".join(parts)


def assert_slack_valid(msg: Message) -> None:
    assert isinstance(msg, Message)
    assert msg.text.strip(), "the notification fallback must never be empty"
    assert len(msg.blocks) <= 50
    block_ids = [b["block_id"] for b in msg.blocks]
    assert len(block_ids) == len(set(block_ids)), f"duplicate block_id in {block_ids}"
    for b in msg.blocks:
        if b["type"] == "section":
            assert 0 < len(b["text"]["text"]) <= 3000
        elif b["type"] == "header":
            assert b["text"]["type"] == "plain_text" and 0 < len(b["text"]["text"]) <= 150
        elif b["type"] == "context":
            assert 1 <= len(b["elements"]) <= 10
            assert all(len(e["text"]) <= 3000 for e in b["elements"])
        elif b["type"] == "actions":
            assert 1 <= len(b["elements"]) <= 25
            ids = [e["action_id"] for e in b["elements"]]
            assert len(ids) == len(set(ids)), "action_id must be unique within a block"
            assert all(0 < len(e["text"]["text"]) <= 75 for e in b["elements"])
        else:
            pytest.fail(f"unexpected block type {b['type']}")
    # A variable that rendered as Python's None is a template bug that StrictUndefined cannot see.
    assert "None" not in all_text(msg)


def assert_modal_valid(view: dict[str, Any]) -> None:
    assert view["type"] == "modal"
    for key in ("title", "submit", "close"):
        assert view[key]["type"] == "plain_text" and 0 < len(view[key]["text"]) <= 24
    for b in view["blocks"]:
        if b["type"] == "input":
            assert 0 < len(b["label"]["text"]) <= 2000
            assert b["element"]["action_id"] == "value"


# ---------------------------------------------------------------------------------------------
# Templates and names


def test_every_template_exists_in_both_locales() -> None:
    en, ko = set(render.template_names("en")), set(render.template_names("ko"))
    assert en == ko
    assert {"names.j2", "incident_card.j2", "plan.j2", "refusal.j2", "usage_error.j2"} <= en


@pytest.mark.parametrize("table", render.NAME_TABLES)
def test_name_tables_have_the_same_keys_in_both_locales(table: str) -> None:
    assert list(render.name_table("en", table)) == list(render.name_table("ko", table))


@pytest.mark.parametrize("table, keys", [
    ("states", ["detected", "assembled", "assessed", "recovering", "verified", "closed"]),
    ("roles", ["incident_commander", "infrastructure_lead", "database_lead", "application_lead",
               "security_lead", "communication_manager"]),
    ("scenarios", ["datacenter_outage", "database_failure", "ransomware"]),
    ("severities", ["critical", "high", "medium", "low"]),
    ("risks", ["low", "high", "critical"]),
    ("step_statuses", ["pending", "awaiting_approval", "approved", "running", "succeeded", "failed",
                       "rejected", "skipped"]),
    ("strategies", ["failover", "restore_from_backup", "partial_recovery", "manual"]),
    ("check_kinds", ["tcp", "http", "postgres", "neo4j", "milvus"]),
    ("operations", ["claim", "claim_role", "approve", "reject", "retry", "abort", "close"]),
    ("own_details", list(OWN_DETAILS)),
])
def test_every_known_id_has_a_display_name(table: str, keys: list[str]) -> None:
    for locale in LOCALES:
        names = render.name_table(locale, table)
        assert set(keys) <= set(names), (locale, set(keys) - set(names))
        assert all(names[k].strip() for k in keys)


def test_korean_names_are_operational_korean() -> None:
    states = render.name_table("ko", "states")
    assert states == {"detected": "탐지됨", "assembled": "소집됨", "assessed": "평가됨",
                      "recovering": "복구 중", "verified": "검증됨", "closed": "종료됨"}
    roles = render.name_table("ko", "roles")
    assert roles["incident_commander"] == "인시던트 지휘관"
    assert roles["database_lead"] == "데이터베이스 리드"


def test_filters() -> None:
    assert render.format_user("U123") == "<@U123>"
    assert render.format_user("aegis") == "Aegis"
    assert render.format_user("<!channel>") == "&lt;!channel&gt;"
    assert render.format_dt(datetime(2026, 11, 26, 18, 58, tzinfo=UTC)) == "2026-11-26 18:58 UTC"
    kst = datetime(2026, 11, 26, 18, 58, tzinfo=UTC).astimezone(timezone(timedelta(hours=9)))
    assert render.format_dt(kst) == "2026-11-26 18:58 UTC"
    en, ko = render.name_table("en", "durations"), render.name_table("ko", "durations")
    assert render.format_duration(en, 3720) == "1h 02m"
    assert render.format_duration(en, 45) == "45s"
    assert render.format_duration(en, 190) == "3m 10s"
    assert render.format_duration(en, None) == "—"
    assert render.format_duration(ko, 3720) == "1시간 2분"
    assert render.format_duration(ko, 4 * 3600) == "4시간"
    assert render.format_duration(ko, None) == "—"


def test_unknown_locale_falls_back_to_english() -> None:
    assert render.text("fr", "buttons", part="approve") == "Approve"
    assert block_kit.help_text("xx").text == block_kit.help_text("en").text


def test_missing_variable_is_an_error() -> None:
    from jinja2 import UndefinedError

    with pytest.raises(UndefinedError):
        render.text("en", "refusal", reason="role_taken", role="database_lead")  # no holder


# ---------------------------------------------------------------------------------------------
# Every message, both locales: limits hold and nothing is undefined


@pytest.mark.parametrize("locale", LOCALES)
def test_every_message_renders_within_slack_limits(locale: str) -> None:
    for name, msg in every_message(locale).items():
        try:
            assert_slack_valid(msg)
        except AssertionError as exc:
            raise AssertionError(f"{locale}/{name}: {exc}") from exc


@pytest.mark.parametrize("locale", LOCALES)
def test_locales_really_differ(locale: str) -> None:
    other = "ko" if locale == "en" else "en"
    mine, theirs = every_message(locale), every_message(other)
    for name in mine:
        if name != "ops_notice":  # the caller renders ops notices
            assert all_text(mine[name]) != all_text(theirs[name]), name


# ---------------------------------------------------------------------------------------------
# Incident card


@pytest.mark.parametrize("locale", LOCALES)
def test_incident_card_buttons(locale: str) -> None:
    msg = incident_blocks.incident_card(make_view(), locale)
    assert buttons(msg) == [
        ("claim_database_lead", "aegis_claim_role", "database_lead"),
        ("claim_security_lead", "aegis_claim_role", "security_lead"),
        ("incident_actions", "aegis_close", "7"),
    ]
    close = next(e for b in msg.blocks if b["type"] == "actions" for e in b["elements"]
                 if e["action_id"] == "aegis_close")
    assert close["style"] == "danger"
    assert msg.blocks[0]["type"] == "header"
    assert "INC-7" in msg.blocks[0]["text"]["text"]
    assert STATE_NAMES[locale] in all_text(msg)
    labels = button_labels(msg)
    assert labels[("aegis_claim_role", "database_lead")] == (
        "Claim database lead" if locale == "en" else "데이터베이스 리드 맡기")


@pytest.mark.parametrize("locale", LOCALES)
def test_closed_incident_card_has_no_close_button(locale: str) -> None:
    v = make_view("closed", roles=[RoleView("incident_commander", "U0IC")])
    msg = incident_blocks.incident_card(v, locale)
    assert buttons(msg) == []
    assert ("closed" if locale == "en" else "종료됨") in all_text(msg)


def test_incident_card_shows_holders_and_unclaimed() -> None:
    text = all_text(incident_blocks.incident_card(make_view(), "en"))
    assert "<@U0IC>" in text and "<@U0INFRA>" in text and "unclaimed" in text
    assert "미지정" in all_text(incident_blocks.incident_card(make_view(), "ko"))


# ---------------------------------------------------------------------------------------------
# Plan


@pytest.mark.parametrize("locale", LOCALES)
def test_plan_buttons_only_where_a_decision_is_needed(locale: str) -> None:
    msg = incident_blocks.plan_message(make_view(), locale)
    assert buttons(msg) == [
        ("step_13", "aegis_approve", "13"), ("step_13", "aegis_reject", "13"),
        ("step_14", "aegis_retry", "14"), ("step_14", "aegis_abort", "14"),
        ("step_15", "aegis_approve", "15"), ("step_15", "aegis_reject", "15"),
    ]
    styles = {(e["action_id"], e["value"]): e.get("style")
              for b in msg.blocks if b["type"] == "actions" for e in b["elements"]}
    assert styles[("aegis_approve", "13")] == "primary"
    assert styles[("aegis_reject", "13")] == "danger"
    assert styles[("aegis_abort", "14")] == "danger"
    labels = button_labels(msg)
    if locale == "en":
        assert labels[("aegis_approve", "13")] == "Approve"
        assert labels[("aegis_approve", "15")] == "Mark done"
    else:
        assert labels[("aegis_approve", "13")] == "승인"
        assert labels[("aegis_approve", "15")] == "완료 표시"


@pytest.mark.parametrize("locale", LOCALES)
def test_aegis_own_step_details_are_translated_and_an_actions_output_is_shown_as_it_is(locale: str) -> None:
    view = make_view()
    expired = replace(view.steps[0], detail=DETAIL_APPROVAL_EXPIRED)
    output = replace(view.steps[1], detail="the server did not start (exit 1)")
    text = all_text(incident_blocks.plan_message(replace(view, steps=[expired, output]), locale))
    assert (DETAIL_APPROVAL_EXPIRED in text) == (locale == "en")
    if locale == "ko":
        assert "승인이 만료되었습니다: 다시 승인하세요" in text
    assert "the server did not start (exit 1)" in text   # an action's own output: never translated


@pytest.mark.parametrize("locale", LOCALES)
def test_plan_shows_steps_statuses_and_approvals(locale: str) -> None:
    msg = incident_blocks.plan_message(make_view(), locale)
    text = all_text(msg)
    assert msg.blocks[0]["type"] == "header"
    assert ("failover" if locale == "en" else "페일오버") in msg.blocks[0]["text"]["text"]
    for n, title in enumerate(["Check primary health", "Fence old primary pg-primary",
                               "Promote standby pg-standby", "Restore orders from backup"], start=1):
        assert f"{n}. {title}" in text
    assert "✅" in text and "❌" in text and "🔒" in text and "⏳" in text
    # who approved, never a bare "(2/2)" count (approval progress is tested in test_message_trust.py)
    assert "<@U0SEC>, <@U0DB>" in text and "<@U0INFRA>" in text and "/2)" not in text
    # The failure detail is shown in a context block under its step.
    detail = next(b for b in msg.blocks if b["block_id"] == "step_14_detail")
    assert detail["type"] == "context" and "checksum mismatch" in detail["elements"][0]["text"]
    if locale == "en":
        assert "approved by" in text.lower() and "database lead" in text and "awaiting approval" in text
    else:
        assert "승인 대기" in text and "데이터베이스 리드" in text


@pytest.mark.parametrize("locale", LOCALES)
def test_plan_without_steps(locale: str) -> None:
    msg = incident_blocks.plan_message(make_view("assembled", steps=[], strategy=None), locale)
    assert buttons(msg) == []
    assert ("No plan yet" if locale == "en" else "아직 복구 계획이 없습니다") in all_text(msg)


def huge_plan(n: int) -> list[StepView]:
    statuses = ["succeeded", "awaiting_approval", "pending", "failed", "running"]
    return [StepView(100 + i, i + 1, f"Step number {i}", "hook", "high", ["database_lead"], 1,
                     statuses[i % len(statuses)], detail="some output " * 20) for i in range(n)]


@pytest.mark.parametrize("n", [30, 60])
def test_long_plan_keeps_every_button_within_50_blocks(n: int) -> None:
    steps = huge_plan(n)
    for locale in LOCALES:
        msg = incident_blocks.plan_message(make_view(steps=steps), locale)
        assert_slack_valid(msg)
        assert {v for _, _, v in buttons(msg)} == {
            str(s.id) for s in steps if s.status in ("awaiting_approval", "failed")}
        assert f"Step number {n - 1}" in all_text(msg)


def test_absurd_plan_is_cut_cleanly() -> None:
    msg = incident_blocks.plan_message(make_view(steps=huge_plan(120)), "en")
    assert_slack_valid(msg)
    assert msg.blocks[-1]["block_id"] == "truncated" and "more blocks" in all_text(msg)
    # Every actions block still follows the section describing its step.
    for i, b in enumerate(msg.blocks):
        if b["type"] == "actions":
            assert msg.blocks[i - 1]["type"] == "section"
            assert msg.blocks[i - 1]["block_id"].startswith(b["block_id"])


# ---------------------------------------------------------------------------------------------
# Assessment, status, list


@pytest.mark.parametrize("locale", LOCALES)
def test_assessment(locale: str) -> None:
    msg = incident_blocks.assessment(make_view("assessed"), locale)
    text = all_text(msg)
    assert "❌ *pg-primary* (PostgreSQL) — connection refused" in text
    assert "✅ *user-authentication* (HTTP)" in text
    assert ("failover to the standby" if locale == "en" else "스탠바이로 페일오버") in text
    # issue 9: the strategy select (a section accessory) and the partial-recovery form; no step buttons
    assert buttons(msg) == [("assessment_actions", "aegis_partial_target", "7")]
    assert msg.blocks[-3]["accessory"]["action_id"] == "aegis_strategy"


@pytest.mark.parametrize("locale", LOCALES)
def test_status_reply(locale: str) -> None:
    msg = incident_blocks.status_reply(make_view(), locale)
    text = all_text(msg)
    assert STATE_NAMES[locale] in text
    assert "<@U0SEC>, <@U0DB>" in text and "(2/2)" not in text
    assert "<@U0INFRA>" in text
    assert ("database lead" if locale == "en" else "데이터베이스 리드") in text.lower()
    assert buttons(msg) == []


@pytest.mark.parametrize("locale", LOCALES)
def test_incident_list(locale: str) -> None:
    items = [make_view(), make_view("assessed", key="INC-8", id=8, channel_id="C0INC8"),
             make_view("closed", key="INC-3", id=3)]
    msg = incident_blocks.incident_list(items, locale)
    text = all_text(msg)
    assert "INC-7" in text and "INC-8" in text and "INC-3" not in text
    assert "<#C0INC7>" in text and "<#C0INC8>" in text
    assert STATE_NAMES[locale] in text
    empty = incident_blocks.incident_list([make_view("closed")], locale)
    assert empty.text == ("No open incidents. 🎉" if locale == "en" else "진행 중인 인시던트가 없습니다. 🎉")


def test_many_incidents_split_into_sections() -> None:
    items = [make_view(key=f"INC-{i}", id=i, summary="s" * 500) for i in range(40)]
    msg = incident_blocks.incident_list(items, "en")
    assert_slack_valid(msg)
    assert len([b for b in msg.blocks if b["type"] == "section"]) > 1
    assert "INC-39" in all_text(msg)


# ---------------------------------------------------------------------------------------------
# Stakeholders and reminders


@pytest.mark.parametrize("locale", LOCALES)
def test_stakeholder_root_shows_current_state_in_bold(locale: str) -> None:
    for state in ("detected", "recovering", "closed"):
        msg = incident_blocks.stakeholder_root(make_view(state), locale)
        name = render.name_table(locale, "states")[state]
        assert f"*{name}*" in msg.blocks[0]["text"]["text"]
        assert name in msg.text
    msg = incident_blocks.stakeholder_root(make_view(), locale)
    assert "2026-11-26 11:00 UTC" in all_text(msg)  # last update
    assert "INC-7" in msg.text


def test_stakeholder_update() -> None:
    v = make_view()
    t = TransitionView("assessed", "recovering", "U0DB", "plan approved", T0)
    en = incident_blocks.stakeholder_update(v, t, "en")
    assert en.text == "INC-7 moved from *assessed* to *recovering* (by <@U0DB>): plan approved"
    ko = incident_blocks.stakeholder_update(v, t, "ko")
    assert "*평가됨* → *복구 중*" in ko.text and "<@U0DB>" in ko.text
    auto = incident_blocks.stakeholder_update(v, TransitionView("recovering", "verified", "aegis", "", T0), "en")
    assert auto.text == "INC-7 moved from *recovering* to *verified* (by Aegis)"


@pytest.mark.parametrize("locale", LOCALES)
def test_reminder_names_what_is_awaited(locale: str) -> None:
    v = make_view(steps=[s for s in make_steps() if s.status != "failed"])
    msg = incident_blocks.reminder(v, 3725, locale)
    text = all_text(msg)
    assert STATE_NAMES[locale] in text
    assert ("1h 02m" if locale == "en" else "1시간 2분") in text
    assert "Promote standby pg-standby" in text  # the first step awaiting approval, by name
    failed = incident_blocks.reminder(make_view(), 60, locale)
    assert "Restore orders from backup" in failed.text  # a failed step is the most urgent


def test_reminder_waiting_for_commander() -> None:
    v = make_view("detected", steps=[], roles=[RoleView("incident_commander", None)])
    assert "incident commander" in incident_blocks.reminder(v, 600, "en").text
    assert "인시던트 지휘관" in incident_blocks.reminder(v, 600, "ko").text


# ---------------------------------------------------------------------------------------------
# Closing report


@pytest.mark.parametrize("locale", LOCALES)
def test_closing_report_marks_missed_rto(locale: str) -> None:
    msg = incident_blocks.closing_report(make_view("closed", close_summary="Failed over to pg-standby"),
                                make_report(rto=5 * 3600), locale)
    objectives = next(b for b in msg.blocks if b["block_id"] == "report_objectives")["text"]["text"]
    rto_line = next(line for line in objectives.splitlines() if "RTO" in line)
    assert "⚠️" in rto_line and ("missed" if locale == "en" else "목표 초과") in rto_line
    assert ("5h 00m" if locale == "en" else "5시간") in rto_line
    rpo_line = next(line for line in objectives.splitlines() if "RPO" in line)
    assert "✅" in rpo_line and "replication lag at failover" in rpo_line
    assert "MTTR" in objectives
    assert "⚠️" in msg.text  # the notification says it too
    text = all_text(msg)
    assert "Failed over to pg-standby" in text and "took command" in text


def test_closing_report_met_rto_and_false_alarm() -> None:
    met = incident_blocks.closing_report(make_view("closed"), make_report(rto=3600), "en")
    objectives = next(b for b in met.blocks if b["block_id"] == "report_objectives")["text"]["text"]
    assert "✅ met" in next(line for line in objectives.splitlines() if "RTO" in line)
    false_alarm = incident_blocks.closing_report(
        make_view("closed", steps=[]),
        ObjectiveReport(None, 14400, None, 900, "not measured", 600, 7200), "en")
    assert "not reached" in all_text(false_alarm)


@pytest.mark.parametrize("locale", LOCALES)
def test_closing_report_with_200_timeline_items(locale: str) -> None:
    msg = incident_blocks.closing_report(make_view("closed", timeline=long_timeline(200)), make_report(), locale)
    assert_slack_valid(msg)
    text = all_text(msg)
    lines = [line for line in text.splitlines() if line.startswith("`2026-")]
    assert len(lines) == 40
    assert "event 0:" in text and "event 199:" in text and "event 100:" not in text
    assert ("160 more events" if locale == "en" else "이벤트 160건 생략") in text


def test_timeline_of_very_long_lines_is_split_into_sections() -> None:
    items = [TimelineItem(T0, "note", "U0IC", "y" * 5000) for _ in range(40)]
    msg = incident_blocks.closing_report(make_view("closed", timeline=items), make_report(), "en")
    assert_slack_valid(msg)
    assert len([b for b in msg.blocks if b["block_id"].startswith("report_timeline")]) > 1


# ---------------------------------------------------------------------------------------------
# Help, usage errors, refusals


@pytest.mark.parametrize("locale", LOCALES)
def test_help_lists_every_command(locale: str) -> None:
    text = all_text(block_kit.help_text(locale))
    for command in ("/aegis incident <scenario> <severity> <summary…>", "/aegis status [INC-id]",
                    "/aegis list", "/aegis help", "datacenter_outage", "database_failure", "ransomware",
                    "critical", "high", "medium", "low"):
        assert command in text


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("problem", list(USAGE_PROBLEMS))
def test_usage_errors_say_what_to_type(locale: str, problem: str) -> None:
    msg = block_kit.usage_error(problem, locale, **USAGE_PROBLEMS[problem])
    text = all_text(msg)
    assert "/aegis incident <scenario> <severity> <summary…>" in text  # the usage line
    for value in USAGE_PROBLEMS[problem].values():
        assert value in text
    assert "/aegis incident <scenario>" not in msg.text  # the notification is just the problem


def test_usage_error_hints() -> None:
    assert "`datacenter_outage`, `database_failure`, `ransomware`" in block_kit.usage_error(
        "unknown_scenario", "en", value="meteor").text
    assert "`critical`, `high`, `medium`, `low`" in block_kit.usage_error(
        "unknown_severity", "en", value="x").text
    assert "/aegis status INC-7" in block_kit.usage_error("no_incident_here", "en").text
    assert "``" not in block_kit.usage_error("unknown_severity", "en", value="").text  # nothing typed
    assert "/aegis list" in block_kit.usage_error("incident_not_found", "ko", key="INC-9").text


def test_user_text_in_usage_errors_is_escaped() -> None:
    msg = block_kit.usage_error("unknown_command", "en", text="<!channel> hi")
    assert "<!channel>" not in all_text(msg) and "&lt;!channel&gt;" in msg.text


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("reason", list(REFUSALS))
def test_refusals(locale: str, reason: str) -> None:
    msg = block_kit.refusal(reason, locale, **REFUSALS[reason])
    assert_slack_valid(msg)
    assert buttons(msg) == []


def test_refusal_contents() -> None:
    text = block_kit.refusal("not_allowed_to_approve", "en", **REFUSALS["not_allowed_to_approve"]).text
    assert "Promote standby" in text and "database lead or incident commander" in text
    assert "데이터베이스 리드 또는 인시던트 지휘관" in block_kit.refusal(
        "not_allowed_to_approve", "ko", **REFUSALS["not_allowed_to_approve"]).text
    assert "<@U0DB>" in block_kit.refusal("role_taken", "en", role="database_lead", holder="U0DB").text
    assert "<@U0IC>" in block_kit.refusal("not_commander", "en", commander="U0IC").text
    assert "nobody" in block_kit.refusal("not_commander", "en", commander=None).text
    assert "security lead" in block_kit.refusal("second_approver_required", "en", step_title="Restore").text
    internal = block_kit.refusal("internal_error", "en", reference="err-4f2a9c").text
    assert "err-4f2a9c" in internal and "Nothing was changed" in internal
    ko_internal = block_kit.refusal("internal_error", "ko", reference="err-4f2a9c").text
    assert "err-4f2a9c" in ko_internal and "변경되지 않았" in ko_internal
    wrong = block_kit.refusal("wrong_state", "en", action="close", state="recovering").text
    assert "recovering" in wrong and "losing the incident" in wrong


# ---------------------------------------------------------------------------------------------
# Step posts


@pytest.mark.parametrize("locale", LOCALES)
def test_reapproval_request(locale: str) -> None:
    v = make_view()
    step = v.steps[2]
    msg = incident_blocks.reapproval_request(v, step, locale)
    assert buttons(msg) == [("step_13", "aegis_approve", "13"), ("step_13", "aegis_reject", "13")]
    text = all_text(msg)
    assert "Promote standby pg-standby" in text
    assert ("not* run again" if locale == "en" else "다시 실행하지 *않았습니다*") in text


@pytest.mark.parametrize("locale", LOCALES)
def test_step_result(locale: str) -> None:
    v = make_view()
    failed = incident_blocks.step_result(v, v.steps[3], locale)
    text = all_text(failed)
    assert "checksum mismatch in chunk 17" in text
    assert ("*Retry* or *Abort*" if locale == "en" else "*재시도* 또는 *중단*") in text
    assert buttons(failed) == []
    ok = incident_blocks.step_result(v, v.steps[1], locale)
    assert "✅" in ok.text and "Fence old primary pg-primary" in ok.text


# ---------------------------------------------------------------------------------------------
# Modals and ops notices


@pytest.mark.parametrize("locale", LOCALES)
def test_declare_modal(locale: str) -> None:
    view = modal_blocks.declare_modal(locale)
    assert_modal_valid(view)
    assert view["callback_id"] == "aegis_declare"
    by_id = {b["block_id"]: b for b in view["blocks"]}
    assert [o["value"] for o in by_id["scenario"]["element"]["options"]] == [
        "datacenter_outage", "database_failure", "ransomware"]
    assert [o["value"] for o in by_id["severity"]["element"]["options"]] == [
        "critical", "high", "medium", "low"]
    assert by_id["scenario"]["element"]["type"] == "static_select"
    summary = by_id["summary"]["element"]
    assert summary["type"] == "plain_text_input" and summary["multiline"] is True
    assert all(b["element"]["action_id"] == "value" for b in by_id.values())


@pytest.mark.parametrize("locale", LOCALES)
def test_close_modal_label_depends_on_state(locale: str) -> None:
    verified = modal_blocks.close_modal(make_view("verified"), locale)
    early = modal_blocks.close_modal(make_view("assessed"), locale)
    for view in (verified, early):
        assert_modal_valid(view)
        assert view["callback_id"] == "aegis_close_submit"
        assert view["private_metadata"] == "7"
        summary = next(b for b in view["blocks"] if b["block_id"] == "summary")
        assert summary["element"]["action_id"] == "value" and summary["element"]["multiline"]
    label = next(b for b in verified["blocks"] if b["block_id"] == "summary")["label"]["text"]
    reason = next(b for b in early["blocks"] if b["block_id"] == "summary")["label"]["text"]
    if locale == "en":
        assert (label, reason) == ("Closing summary", "Reason (false alarm)")
    else:
        assert (label, reason) == ("종료 요약", "사유 (오탐)")


def test_ops_notice() -> None:
    msg = block_kit.ops_notice("Backup failed", "pg_basebackup: disk full", "en")
    assert msg.text == "Backup failed: pg_basebackup: disk full"
    assert msg.blocks[0]["text"]["text"] == "*Backup failed*\npg_basebackup: disk full"


# ---------------------------------------------------------------------------------------------
# Limits and safety


LONG_BUILDERS: list[Callable[[IncidentView, str], Message]] = [
    incident_blocks.incident_card, incident_blocks.plan_message, incident_blocks.assessment,
    incident_blocks.stakeholder_root,
    incident_blocks.status_reply,
]


@pytest.mark.parametrize("builder", LONG_BUILDERS)
def test_long_free_text_is_truncated(builder: Callable[[IncidentView, str], Message]) -> None:
    steps = [StepView(1, 1, "t" * 4000, "hook", "high", ["database_lead"], 1, "awaiting_approval",
                      detail="d" * 5000)]
    v = make_view(summary="s" * 5000, steps=steps,
                  checks=[CheckView("c" * 100, "tcp", False, "e" * 4000)] * 30)
    for locale in LOCALES:
        msg = builder(v, locale)
        assert_slack_valid(msg)
        assert len(msg.text) <= 3000


def test_summary_markup_is_escaped() -> None:
    v = make_view(summary="<!channel> please <@U999> & <https://evil|click>")
    for msg in (incident_blocks.incident_card(v, "en"), incident_blocks.stakeholder_root(v, "ko")):
        text = all_text(msg)
        assert "<!channel>" not in text and "<@U999>" not in text and "<https://evil" not in text
        assert "&lt;!channel&gt; please &lt;@U999&gt; &amp;" in text


@pytest.mark.parametrize("locale", LOCALES)
def test_backup_failure_names_the_target_the_reason_and_the_previous_good_backup(locale: str) -> None:
    failed = backup_run("failed")
    for msg in (backup_blocks.backup_result(failed, locale), backup_blocks.backup_ops_alert(failed, locale)):
        text = all_text(msg)
        assert "backup_20261129_020000" in text and "s3" in text and "backup_20261122_020000" in text
    alert = all_text(backup_blocks.backup_ops_alert(failed, locale))
    assert "connection refused" in alert and "<@U0DB>" in alert
    warning = all_text(backup_blocks.backup_ops_alert(backup_run("warning"), locale))
    assert "s3" in warning and "backup_20261122_020000" not in warning
    assert "3.0 GiB" in all_text(backup_blocks.backup_list([failed.previous_good], locale))


@pytest.mark.parametrize("locale", ["en", "ko"])
def test_the_monitors_alert_says_whom_it_invited_and_never_claims_a_page_without_a_roster(locale: str) -> None:
    alert = functools.partial(monitor_notices.critical_alert, key="primary_down", scenario="database_failure",
                              summary="primary down", evidence=[], incident_key="INC-3", locale=locale)
    nobody, three = alert(invited=0).text, alert(invited=3).text
    assert "roster:" in nobody and "3" not in nobody.replace("INC-3", "")
    assert "3" in three.replace("INC-3", "") and "roster:" not in three
