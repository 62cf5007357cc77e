"""Messages a responder can trust (issue 7): replaced plans, reject reasons, approval progress, terminal
states, no internal identifiers, Korean bold, the team's time zone, escaping, open roles.

The rendering rules are tested on the message layer; the flows through ``aegis serve`` as a process
with the emulator as Slack (no database servers needed: with nothing configured the plan is manual).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from messages import render
from messages.blocks import incident as incident_blocks
from messages.blocks import kit as block_kit
from messages.blocks import modals as modal_blocks
from messages.views import ApprovalView, Message, ReplacedView, RevisionView, StepView, TimelineItem
from slack_emulator.mrkdwn import mrkdwn_to_html
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from tests.harness.aegis_process import start_on_sqlite, wait_for
from tests.harness.message_samples import REFUSALS, T0, every_message, make_report, make_view
from tests.harness.slack_reading import all_text, buttons, channel_by_id, replies_for
from tests.harness.team import ROSTER
from tests.harness.walk import Walk, close_with_modal

HANGUL = re.compile("[\uac00-\ud7a3]")
# a formatted span: marker, text neither starting nor ending with a space, the same marker
SPAN = re.compile(r"([*_~])[^\s*_~](?:[^*_~\n]*?[^\s*_~])?\1")
MARKUP = ("<!channel>", "<@U123>", "<http://x|y>")
HOSTILE = "ping <!channel> and <@U123> via <http://x|y>"


def hangul_against_a_span(text: str) -> list[str]:
    """Spans that Slack would show with literal markers: a Hangul letter right outside them."""
    return [m.group(0) for m in SPAN.finditer(text)
            if (m.start() and HANGUL.match(text[m.start() - 1])) or HANGUL.match(text[m.end():m.end() + 1])]


def two_person_step(approvals: list[ApprovalView], status: str = "awaiting_approval") -> StepView:
    return StepView(21, 1, "Restore orders from backup", "restore", "critical",
                    ["security_lead", "database_lead"], 2, status, approvals, required_role="security_lead")


def vote(user: str, *roles: str) -> ApprovalView:
    return ApprovalView(user, "approve", T0, tuple(roles))


def plan_text(step: StepView, locale: str = "en") -> str:
    return all_text_of(incident_blocks.plan_message(make_view(steps=[step]), locale))


def all_text_of(msg: Message) -> str:
    return all_text({"text": msg.text, "blocks": msg.blocks})


# ---------------------------------------------------------------------------------------------
# 3. Approval progress states the rule


@pytest.mark.parametrize("locale", render.LOCALES)
def test_approval_progress_states_the_two_person_rule(locale: str) -> None:
    one = plan_text(two_person_step([vote("U0DB", "database_lead")]), locale)
    if locale == "en":
        assert "1 of 2 approvals — the security lead must be one of them (approved by <@U0DB>)" in one
    else:
        assert "승인 2건 중 1건 — 그중 한 명은 보안 리드여야 합니다" in one
    # two people, neither the security lead: still waiting, and it says for whom — never "(2/2)"
    two = plan_text(two_person_step([vote("U0DB", "database_lead"), vote("U0IC", "incident_commander")]), locale)
    assert "2/2" not in two and "2 of 2" not in two
    assert ("still waiting for the security lead" if locale == "en" else "계속 기다립니다") in two
    # three votes on a finished step: who approved, never "(3/2)"
    done = two_person_step([vote("U0DB", "database_lead"), vote("U0IC", "incident_commander"),
                            vote("U0SEC", "security_lead")], status="succeeded")
    for text in (plan_text(done, locale), all_text_of(incident_blocks.status_reply(make_view(steps=[done]), locale))):
        assert "3/2" not in text and "<@U0DB>, <@U0IC>, <@U0SEC>" in text


# ---------------------------------------------------------------------------------------------
# 4. Terminal states look terminal; 9. open roles


@pytest.mark.parametrize("locale", render.LOCALES)
def test_closed_card_has_no_claim_buttons_and_the_plan_header_follows_the_incident(locale: str) -> None:
    closed = make_view("closed")     # roles database_lead and security_lead are still unclaimed
    assert [b for b in buttons({"blocks": incident_blocks.incident_card(closed, locale).blocks})] == []
    assert any(b["action_id"] == "aegis_claim_role" for b in buttons(
        {"blocks": incident_blocks.incident_card(make_view("assessed"), locale).blocks}))
    for state in ("verified", "closed"):
        header = incident_blocks.plan_message(make_view(state), locale).blocks[0]["text"]["text"]
        assert render.name_table(locale, "states")[state] in header
        assert render.name_table(locale, "states")["recovering"] not in header


@pytest.mark.parametrize("locale", render.LOCALES)
def test_card_says_roles_are_open_to_everyone_without_a_roster(locale: str) -> None:
    phrase = "open to everyone" if locale == "en" else "누구나 역할을 맡을 수 있습니다"
    assert phrase in all_text_of(incident_blocks.incident_card(make_view("detected", roles_open=True), locale))
    assert phrase not in all_text_of(incident_blocks.incident_card(make_view("detected"), locale))


# ---------------------------------------------------------------------------------------------
# 1. and 2. Replaced plans and revisions (rendering)


@pytest.mark.parametrize("locale", render.LOCALES)
def test_replaced_plan_has_no_buttons_and_links_the_new_revision(locale: str) -> None:
    link = "https://aegis-emulator.slack.com/archives/C0INC7/p1700000000000200"
    msg = incident_blocks.plan_replaced(make_view("assessed"), ReplacedView(1, 2, link), locale)
    assert buttons({"blocks": msg.blocks}) == []
    text = all_text_of(msg)
    assert f"<{link}|" in text and ("revision 2" if locale == "en" else "개정 2") in text
    # a link that could carry markup is dropped, not pasted
    bad = incident_blocks.plan_replaced(make_view("assessed"), ReplacedView(1, 2, "https://x|<!channel>"), locale)
    assert "<!channel>" not in all_text_of(bad) and "https://x" not in all_text_of(bad)
    refusal = block_kit.refusal("plan_replaced", locale, revision=2, link=link).text
    assert ("This plan was replaced — use revision 2" if locale == "en" else "개정 2 계획을 사용하세요") in refusal


@pytest.mark.parametrize("locale", render.LOCALES)
def test_new_revision_says_what_changed_and_why(locale: str) -> None:
    revision = RevisionView(2, added=["Restore from backup"], removed=["Promote standby"], cause="rejected",
                            by="U0DB", reason="standby is also corrupted")
    text = all_text_of(incident_blocks.plan_message(make_view("assessed", plan_revision=2, revision=revision), locale))
    assert "Restore from backup" in text and "Promote standby" in text and "standby is also corrupted" in text
    assert "<@U0DB>" in text
    assert ("Revision 2" if locale == "en" else "개정 2") in text


# ---------------------------------------------------------------------------------------------
# 5. Timeline events per locale, no internal identifiers, no audit lines in the report


def coded_timeline() -> list[TimelineItem]:
    at = [T0 + timedelta(minutes=i) for i in range(6)]
    return [
        TimelineItem(at[0], "transition", "U0IC", "declared: database_failure / critical: x", "declared",
                     {"source": None, "dest": "detected"}),
        TimelineItem(at[1], "role", "U0IC", "took the role incident_commander", "role_claimed",
                     {"role": "incident_commander"}),
        TimelineItem(at[2], "transition", "aegis", "restore_from_backup: no standby (S2, C3)", "transition",
                     {"source": "assembled", "dest": "assessed", "trigger": "assess"}),
        TimelineItem(at[3], "audit", "U0OUT", "refused: approve step 1 (x) — not an approver"),
        TimelineItem(at[4], "step", "aegis", "step 1 succeeded: Confirm — confirmed_by_human=True",
                     "step_succeeded", {"position": 1, "title": "Confirm"}),
        TimelineItem(at[5], "approval", "U0DB", "rejected step 2: Promote", "step_rejected",
                     {"position": 2, "title": "Promote", "reason": HOSTILE}),
    ]


@pytest.mark.parametrize("locale", render.LOCALES)
def test_closing_report_words_the_timeline_in_its_locale_without_internal_ids(locale: str) -> None:
    msg = incident_blocks.closing_report(make_view("closed", timeline=coded_timeline()), make_report(), locale)
    text = all_text_of(msg)
    for internal in ("incident_commander", "database_failure", "confirmed_by_human", "(S2", "refused:",
                     "not an approver"):
        assert internal not in text, internal
    assert "U0OUT" not in text                      # the refused click stays in the audit trail only
    if locale == "ko":
        assert "인시던트 지휘관 역할을 맡음" in text and "1단계 성공: Confirm" in text
        assert "평가됨" in text and "소집됨" in text
    else:
        assert "took the role of incident commander" in text and "step 1. Confirm succeeded" in text
    assert "&lt;!channel&gt;" in text and "<!channel>" not in text


# ---------------------------------------------------------------------------------------------
# 6. Korean bold renders


def test_no_korean_message_puts_a_formatting_marker_against_hangul() -> None:
    for name, msg in every_message("ko").items():
        for text in (msg.text, *(b["text"]["text"] for b in msg.blocks if b.get("type") == "section")):
            assert not hangul_against_a_span(text), f"{name}: {text!r}"
    help_text = block_kit.help_text("ko").blocks[0]["text"]["text"]
    assert "<b>Aegis</b>" in mrkdwn_to_html(help_text)


def test_the_emulator_formats_like_slack_only_at_word_boundaries() -> None:
    assert str(mrkdwn_to_html("*Aegis*는")) == "*Aegis*는"               # Slack shows the asterisks too
    assert str(mrkdwn_to_html("단계*3*개")) == "단계*3*개"
    assert str(mrkdwn_to_html("*Aegis* 는")) == "<b>Aegis</b> 는"
    assert str(mrkdwn_to_html("상태: *복구 중*.")) == "상태: <b>복구 중</b>."
    assert str(mrkdwn_to_html("(*bold*)")) == "(<b>bold</b>)"
    assert str(mrkdwn_to_html("snake_case_name a*b*c")) == "snake_case_name a*b*c"
    assert render.separate_markers_from_cjk("*Aegis*는 단계 *3*개") == "*Aegis* 는 단계 *3* 개"


# ---------------------------------------------------------------------------------------------
# 7. Times in the team's zone


def test_times_are_shown_in_the_configured_zone_with_its_name() -> None:
    at = datetime(2026, 11, 26, 0, 30, tzinfo=UTC)
    try:
        render.set_timezone("Asia/Seoul")
        assert render.format_dt(at) == "2026-11-26 09:30 KST"
        stakeholder = all_text_of(incident_blocks.stakeholder_root(make_view(updated_at=at), "ko"))
        assert "09:30 KST" in stakeholder
        render.set_timezone("America/Sao_Paulo")   # a zone without an abbreviation is named by its key
        assert render.format_dt(at) == "2026-11-25 21:30 America/Sao_Paulo"
    finally:
        render.set_timezone("UTC")
    assert render.format_dt(at) == "2026-11-26 00:30 UTC"


# ---------------------------------------------------------------------------------------------
# 8. Every user- or payload-supplied string is escaped


def hostile_messages(locale: str) -> dict[str, Message]:
    step = StepView(31, 1, HOSTILE, "hook", "high", ["database_lead"], 1, "failed", detail=HOSTILE)
    v = make_view(summary=HOSTILE, close_summary=HOSTILE, steps=[step],
                  timeline=[TimelineItem(T0, "note", "U0IC", HOSTILE)])
    msgs = {
        "card": incident_blocks.incident_card(v, locale), "plan": incident_blocks.plan_message(v, locale),
        "status": incident_blocks.status_reply(v, locale),
        "stakeholder_root": incident_blocks.stakeholder_root(v, locale),
        "reminder": incident_blocks.reminder(v, 60, locale),
        "step_result": incident_blocks.step_result(v, step, locale),
        "report": incident_blocks.closing_report(v, make_report(), locale),
        "rejected": incident_blocks.step_rejected(v, step, "U0DB", HOSTILE, locale),
        "revision": incident_blocks.plan_message(make_view(plan_revision=2, revision=RevisionView(
            2, [HOSTILE], [HOSTILE], "rejected", "U0DB", HOSTILE)), locale),
        "list": incident_blocks.incident_list([v], locale),
    }
    # refusals echo payload values: a role, a step title, a state, an action
    for reason, ctx in REFUSALS.items():
        hostile_ctx = {k: (HOSTILE if isinstance(val, str) and k not in ("commander", "holder") else val)
                       for k, val in ctx.items()}
        if "roles" in hostile_ctx:
            hostile_ctx["roles"] = [HOSTILE]
        msgs[f"refusal_{reason}"] = block_kit.refusal(reason, locale, **hostile_ctx)
    msgs["refusal_role"] = block_kit.refusal("not_on_roster", locale, role="<!channel>")
    return msgs


@pytest.mark.parametrize("locale", render.LOCALES)
def test_markup_in_user_and_payload_text_is_escaped_everywhere(locale: str) -> None:
    for name, msg in hostile_messages(locale).items():
        text = all_text_of(msg)
        for markup in MARKUP:
            assert markup not in text, f"{locale}/{name} posts {markup} unescaped"
    assert "&lt;!channel&gt;" in all_text_of(block_kit.refusal("not_on_roster", locale, role="<!channel>"))
    modal = json.dumps(modal_blocks.reject_modal(make_view(), StepView(1, 1, HOSTILE, "hook", "high", [], 1,
                                                                 "awaiting_approval"), locale))
    assert "<!channel>" not in modal


# ---------------------------------------------------------------------------------------------
# The flows, through aegis serve and the emulator


def plan_messages(walk: Walk) -> list[dict[str, Any]]:
    return [m for m in walk.chan()["messages"]
            if any(b.get("block_id") == "plan_header" for b in m.get("blocks") or [])]


def submit_reject(walk: Walk, emulator: EmulatorServer, user: str, step_id: int, reason: str) -> Any:
    walk.click(user, "aegis_reject", str(step_id))
    form = wait_for(lambda: [v for v in emulator.state.views(user=user)
                             if v.get("callback_id") == "aegis_reject_submit" and v.get("status") == "open"],
                    what="the reject form")[-1]
    assert form["private_metadata"] == str(step_id)
    return walk.driver.submit_view(user, form["id"], {
        "reason": {"value": {"type": "plain_text_input", "value": reason}}})


def test_reject_asks_a_reason_and_the_replaced_plan_retires_its_buttons(
    tmp_path: Path, emulator: EmulatorServer,
) -> None:
    bot = start_on_sqlite(tmp_path, emulator, {"roster": ROSTER, "timezone": "Asia/Seoul",
                                               "slack": {"stakeholder_channel": "C0STAKE"}})
    try:
        walk = Walk(bot, emulator)
        walk.declare("incident database_failure high orders database <!channel> is down")
        walk.assemble_and_assess()
        first = walk.steps()[0]
        old_plan = wait_for(lambda: plan_messages(walk), what="the first plan")[-1]
        assert any(b["action_id"] == "aegis_approve" for b in buttons(old_plan))

        # Reject opens a form; an empty reason keeps it open with the error; nothing is rejected yet
        empty = submit_reject(walk, emulator, "U0IC", first.id, "")
        assert empty.json()["response_action"] == "errors" and "reason" in empty.json()["errors"]
        assert walk.wait_step(first.id, "awaiting_approval")
        reason = "wrong order: fence first <@U123> <!channel>"
        assert submit_reject(walk, emulator, "U0IC", first.id, reason).status_code == 200
        wait_for(lambda: walk.incident().plan_revision == 2, what="a new revision of the plan")

        # the reason is posted in the channel (escaped) and stored in the timeline as data
        posted = wait_for(lambda: [m for m in walk.chan()["messages"] if "rejected" in all_text(m)
                                   and "wrong order" in all_text(m)], what="the rejection post")
        assert "&lt;!channel&gt;" in all_text(posted[-1]) and "<!channel>" not in all_text(posted[-1])
        with walk.store.session() as session:
            events = svc.timeline(session, walk.incident_id)
        rejected = [e for e in events if (e.data or {}).get("code") == "step_rejected"]
        assert rejected and rejected[-1].data["reason"] == reason and rejected[-1].actor == "U0IC"

        # the old plan message is updated in place: no buttons, "replaced by revision 2" with a link
        def retired() -> dict[str, Any] | None:
            message = emulator.state.find_message(walk.channel_id, old_plan["ts"])
            return message if message and "revision 2" in all_text(message) else None

        old = wait_for(retired, what="the old plan marked as replaced")
        assert buttons(old) == []
        new_plan = wait_for(lambda: [m for m in plan_messages(walk) if m["ts"] != old_plan["ts"]],
                            what="the new plan")[-1]
        assert f"/archives/{walk.channel_id}/p{new_plan['ts'].replace('.', '')}" in all_text(old)
        assert "Revision 2" in all_text(new_plan) and "wrong order" in all_text(new_plan)

        # an old button still pressed (a stale client): refused with the revision to use
        walk.driver.click("U0IC", "aegis_approve", str(first.id), walk.channel_id, old_plan["ts"])
        wait_for(lambda: "This plan was replaced — use revision 2" in replies_for(emulator, "U0IC"),
                 what="the replaced-plan refusal")
        with walk.store.session() as session:
            assert svc.get_step(session, first.id).status == "rejected"

        # an outsider's refused click is audited but not reported to stakeholders
        current = walk.steps()[0]
        walk.click("U0OUT", "aegis_approve", str(current.id))
        wait_for(lambda: emulator.state.responses_for("U0OUT"), what="the outsider's refusal")
        with walk.store.session() as session:
            assert any(e.kind == "audit" and e.actor == "U0OUT" for e in svc.timeline(session, walk.incident_id))

        close_with_modal(walk, emulator, "U0IC", "false alarm after all")
        card = wait_for(lambda: [m for m in walk.chan()["messages"] if any(
            b.get("block_id") == "incident_header" for b in m.get("blocks") or [])
            and "closed" in all_text(m)], what="the closed card")[-1]
        assert buttons(card) == []
        wait_for(lambda: any("closed" in m["blocks"][0]["text"]["text"] for m in plan_messages(walk)
                             if m["ts"] == new_plan["ts"]), what="the plan header to follow the incident")
        report = wait_for(lambda: [m for m in walk.chan()["messages"] if "RTO" in all_text(m)],
                          what="the closing report")[-1]
        report_text = all_text(report)
        for internal in ("incident_commander", "database_failure /", "confirmed_by_human", "(S2", "U0OUT",
                         "refused:"):
            assert internal not in report_text, internal
        assert "KST" in report_text and "UTC" not in report_text
        assert "wrong order" in report_text          # the reason is in the timeline the report shows

        # nowhere — channel, stakeholder thread, report — a raw key, an internal flag or live markup
        stakeholder = "\n".join(all_text(m) for m in channel_by_id(emulator.state, "C0STAKE")["messages"])
        assert "closed" in stakeholder.lower() and "false alarm after all" in stakeholder
        everything = [all_text(m) for c in emulator.state.channels() for m in c["messages"]]
        for text in everything:
            for internal in ("incident_commander", "database_failure", "(S2", "confirmed_by_human", "<!channel>",
                             "<@U123>"):
                assert internal not in text, (internal, text)
    finally:
        bot.stop()


def test_korean_closing_report_has_korean_timeline_lines(tmp_path: Path, emulator: EmulatorServer) -> None:
    bot = start_on_sqlite(tmp_path, emulator, {"roster": ROSTER, "locale": "ko"})
    try:
        walk = Walk(bot, emulator)
        walk.declare("incident ransomware high 파일 서버 암호화됨")
        walk.assemble_and_assess()
        close_with_modal(walk, emulator, "U0IC", "오탐")
        report = all_text(wait_for(lambda: [m for m in walk.chan()["messages"] if "RTO" in all_text(m)],
                                   what="the closing report")[-1])
        assert "인시던트 지휘관 역할을 맡음" in report and "인시던트 선언: 랜섬웨어" in report
        for english in ("took the role", "declared:", "incident_commander", "ransomware /"):
            assert english not in report, english
        posted = [m for c in emulator.state.channels() for m in c["messages"]]
        for message in posted:
            assert not hangul_against_a_span(all_text(message)), all_text(message)
    finally:
        bot.stop()


@pytest.mark.parametrize("locale", render.LOCALES)
def test_stakeholder_updates_word_the_cause_instead_of_the_internal_reason(locale: str) -> None:
    from messages.views import TransitionView

    v = make_view("assessed", strategy="restore_from_backup", close_summary=HOSTILE)
    assess = TransitionView("assembled", "assessed", "aegis",
                            "restore_from_backup: no standby is configured: restore from backup (S2, C3)", T0,
                            "assess")
    text = all_text_of(incident_blocks.stakeholder_update(v, assess, locale))
    assert "(S2" not in text and "restore_from_backup" not in text
    assert render.name_table(locale, "strategies")["restore_from_backup"] in text
    close = TransitionView("assessed", "closed", "U0IC", f"false alarm: {HOSTILE}", T0, "close_false_alarm")
    closed = all_text_of(incident_blocks.stakeholder_update(v, close, locale))
    assert "&lt;!channel&gt;" in closed and "<!channel>" not in closed and "false alarm:" not in closed
