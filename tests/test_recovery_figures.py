"""What each recovery achieved: RTO and RPO against O1-O3 and the scenario's range (S1-S3), with evidence.

The computation (recovery/objectives.py) is pure: tests feed it the outputs a promotion or a
PostgreSQL restore step reports (``recovered_to`` + ``recovered_to_basis``, the contract of issue 9)
and the incident's times. The presenter is tested on a real SQLite store; the end-to-end walk is a
real failover (``aegis serve`` as a process, the emulator as Slack, a real primary + standby) whose
closing post and ``/aegis status`` must show the figures with their evidence, in English and Korean.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config
from bot.presenters import incident_view, objective_report
from messages.blocks import incident as incident_blocks
from messages.views import IncidentView
from recovery import objectives
from recovery.drills.scoring import EXPECTED
from recovery.objectives import (
    EXPECTED_RANGES,
    LOST_PROMOTION_RPO,
    LOST_RESTORE_RPO,
    NO_PROMOTION_RPO,
    Basis,
    Targets,
    incident_figures,
    lost_rpo,
    rpo_from_promotion,
    rpo_from_restore,
)
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines.models import PlanStep, require_id, utcnow
from statemachines.service import StepSpec
from statemachines.store import Store
from tests.harness.aegis_process import AegisProcess, wait_for
from tests.harness.pgcluster import PgPair
from tests.harness.slack_reading import all_text
from tests.harness.walk import Walk, close_with_modal

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TARGETS = Targets(rto_seconds=4 * 3600, rpo_seconds=15 * 60, mttr_seconds=2 * 3600)


def figures(scenario: str, *, verified_after: timedelta | None, rpo: tuple[float | None, Basis | None],
            evidence_ok: bool = True) -> objectives.IncidentFigures:
    return incident_figures(declared_at=T0, verified_at=None if verified_after is None else T0 + verified_after,
                            closed_at=None, rpo_seconds=rpo[0], rpo_basis=rpo[1], evidence_ok=evidence_ok,
                            targets=TARGETS, scenario=scenario)


# --- RPO of each kind of recovery -------------------------------------------------------------


def test_a_promotion_loses_its_replication_lag_at_failover() -> None:
    measured = rpo_from_promotion({"unreplayed_bytes": 8192, "replay_lag_seconds": 4.0})
    rpo = figures("database_failure", verified_after=timedelta(minutes=40), rpo=measured).rpo
    assert (rpo.seconds, rpo.met, rpo.requirement) == (4.0, True, "O2")
    assert rpo.expected is not None and rpo.expected.range.requirement == "S2" and rpo.expected.verdict == "within"
    assert "replication lag at failover (8192 bytes unreplayed)" in rpo.basis.text


def test_an_in_place_restore_loses_from_its_last_recovered_transaction_to_the_failure() -> None:
    failure = T0 - timedelta(minutes=10)
    output = {"recovered_to": (failure - timedelta(seconds=90)).isoformat(),
              "recovered_to_basis": "pg_last_xact_replay_timestamp()"}
    seconds, basis = rpo_from_restore(output, failure_at=failure, declared_at=T0)
    assert seconds == 90.0
    assert basis.text == ("failure at 2024-05-01 11:50:00Z − last recovered transaction 2024-05-01 11:48:30Z "
                     "(pg_last_xact_replay_timestamp())")
    rpo = figures("database_failure", verified_after=timedelta(hours=1), rpo=(seconds, basis)).rpo
    assert rpo.met is True and rpo.expected is not None and rpo.expected.verdict == "within"


def test_without_a_failure_time_the_declaration_time_stands_in_and_the_basis_says_so() -> None:
    output = {"recovered_to": (T0 - timedelta(minutes=20)).isoformat(),
              "recovered_to_basis": "pg_last_xact_replay_timestamp()"}
    seconds, basis = rpo_from_restore(output, failure_at=None, declared_at=T0)
    assert seconds == 20 * 60
    assert "declaration time" in basis.text and "upper bound" in basis.text and "2024-05-01 12:00:00Z" in basis.text
    rpo = figures("database_failure", verified_after=timedelta(hours=1), rpo=(seconds, basis)).rpo
    assert rpo.met is False and rpo.expected is not None and rpo.expected.verdict == "over"   # O2 15 min, S2 5 min


def test_a_point_in_time_restore_before_the_infection_loses_what_came_between() -> None:
    infection = T0 - timedelta(hours=3)
    target = infection - timedelta(minutes=1)
    output = {"recovered_to": target.isoformat(), "recovered_to_basis": "recovery target (recovery_target_time)"}
    seconds, basis = rpo_from_restore(output, failure_at=infection, declared_at=T0)
    assert seconds == 60.0 and "recovery target" in basis.text and "failure at 2024-05-01 09:00:00Z" in basis.text
    rpo = figures("ransomware", verified_after=timedelta(hours=5), rpo=(seconds, basis)).rpo
    assert rpo.expected is not None and (rpo.expected.range.requirement, rpo.expected.verdict) == ("S3", "within")


def test_a_recovery_past_the_failure_time_lost_nothing_before_it() -> None:
    output = {"recovered_to": (T0 + timedelta(minutes=2)).isoformat(), "recovered_to_basis": "replay"}
    seconds, basis = rpo_from_restore(output, failure_at=T0, declared_at=T0)
    assert seconds == 0.0 and "nothing before it was lost" in basis.text


def test_a_naive_recovered_to_is_read_as_utc() -> None:
    output = {"recovered_to": "2024-05-01T11:59:00", "recovered_to_basis": "replay"}
    assert rpo_from_restore(output, failure_at=T0, declared_at=T0)[0] == 60.0


@pytest.mark.parametrize(("output", "said"), [
    ({"recovered_to": None, "recovered_to_basis": "no transaction was replayed"}, "no transaction was replayed"),
    ({}, "did not report"),
    ({"recovered_to": "yesterday", "recovered_to_basis": "replay"}, "unreadable"),
])
def test_a_restore_that_cannot_say_what_it_recovered_has_an_unknown_rpo(output: dict[str, Any], said: str) -> None:
    seconds, basis = rpo_from_restore(output, failure_at=T0, declared_at=T0)
    assert seconds is None and basis.text.startswith("unknown:") and said in basis.text
    rpo = figures("database_failure", verified_after=timedelta(hours=1), rpo=(seconds, basis)).rpo
    assert rpo.seconds is None and rpo.met is None and rpo.expected is not None and rpo.expected.verdict == "unknown"


def test_unknown_when_nothing_measured_or_the_measuring_process_died() -> None:
    assert lost_rpo("postgres_promote") == LOST_PROMOTION_RPO
    assert lost_rpo("postgres_restore") == lost_rpo("postgres_partial_restore") == LOST_RESTORE_RPO
    assert lost_rpo("neo4j_restore") is None and lost_rpo("hook") is None
    nothing = figures("datacenter_outage", verified_after=timedelta(hours=3), rpo=(None, None)).rpo
    assert nothing.seconds is None and nothing.met is None and nothing.basis == NO_PROMOTION_RPO
    assert nothing.basis.text.startswith("unknown:")


# --- RTO, and the scenario ranges -----------------------------------------------------------


def test_rto_is_declared_to_verified_named_by_its_timestamps_and_met_only_on_evidence() -> None:
    fast = figures("database_failure", verified_after=timedelta(minutes=50), rpo=(0.0, Basis("", "x"))).rto
    assert (fast.seconds, fast.met, fast.requirement) == (3000.0, True, "O1")
    assert fast.basis.text == "declared 2024-05-01 12:00:00Z → verified 2024-05-01 12:50:00Z"
    assert fast.expected is not None and fast.expected.verdict == "within"
    slow = figures("database_failure", verified_after=timedelta(hours=5), rpo=(0.0, Basis("", "x"))).rto
    assert slow.met is False and slow.expected is not None and slow.expected.verdict == "over"
    unproven = figures("database_failure", verified_after=timedelta(minutes=50), rpo=(0.0, Basis("", "x")),
                       evidence_ok=False)
    assert unproven.rto.met is False and unproven.rto.reason == "verified without passing evidence"
    assert unproven.rto.expected is not None and unproven.rto.expected.verdict == "unknown"
    never = figures("database_failure", verified_after=None, rpo=(0.0, Basis("", "x"))).rto
    assert never.seconds is None and never.met is None and never.expected is not None
    assert never.expected.verdict == "unknown"


@pytest.mark.parametrize(("scenario", "requirement", "rto_hours", "rpo_minutes"), [
    ("datacenter_outage", "S1", (2, 4), (5, 15)),
    ("database_failure", "S2", (0.5, 2), (0, 5)),
    ("ransomware", "S3", (4, 8), (0, 60)),
])
def test_the_scenario_ranges_are_the_plans_table(scenario: str, requirement: str, rto_hours: tuple[float, float],
                                                 rpo_minutes: tuple[float, float]) -> None:
    rto, rpo = EXPECTED_RANGES[scenario]["rto"], EXPECTED_RANGES[scenario]["rpo"]
    assert rto.requirement == rpo.requirement == requirement
    assert (rto.low_seconds, rto.high_seconds) == (rto_hours[0] * 3600, rto_hours[1] * 3600)
    assert (rpo.low_seconds, rpo.high_seconds) == (rpo_minutes[0] * 60, rpo_minutes[1] * 60)
    # faster than expected is better, not a miss; the drills score against the same table
    assert rto.judge(rto.low_seconds - 1) == "better" and rto.judge(rto.high_seconds) == "within"
    assert rto.judge(rto.high_seconds + 1) == "over" and rto.judge(None) == "unknown"
    assert EXPECTED[scenario].rto == (rto.low_seconds, rto.high_seconds)
    assert EXPECTED[scenario].rpo == (rpo.low_seconds, rpo.high_seconds)


def test_a_datacenter_failover_faster_than_s1_is_better_than_expected() -> None:
    result = figures("datacenter_outage", verified_after=timedelta(minutes=20), rpo=(2.0, Basis("", "lag")))
    assert result.rto.expected is not None and result.rto.expected.verdict == "better" and result.rto.met
    assert result.rpo.expected is not None and result.rpo.expected.verdict == "better" and result.rpo.met


def test_an_unknown_scenario_has_no_range() -> None:
    assert figures("drill", verified_after=timedelta(minutes=5), rpo=(1.0, Basis("", "x"))).rto.expected is None


# --- the presenter on a real store ------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    store.migrate()
    try:
        yield store
    finally:
        store.dispose()


def verified_restore(store: Store, *, failure_at: datetime | None) -> int:
    """A database_failure incident recovered by an in-place restore and verified on evidence, the
    RPO stored as the engine stores it; then a re-protect plan whose own check succeeded later."""
    with store.session() as session:
        incident = svc.declare(session, scenario="database_failure", severity="high", summary="primary lost",
                               declared_by="U0IC", locale="en", stakeholder_channel=None)
        incident_id = require_id(incident)
        svc.set_fields(session, incident_id=incident_id, failure_at=failure_at)
        svc.replace_plan(session, incident_id=incident_id, strategy="restore_from_backup", specs=[
            StepSpec(title="Restore backup_20240501_110000 in place", action="postgres_restore"),
            StepSpec(title="Verify the recovery", action="verify", approvals_required=0)])
        for trigger in ("assemble", "assess", "start_recovery"):
            svc.transition(session, incident_id=incident_id, trigger=trigger, actor="U0IC")
        restore, verify = svc.current_steps(session, incident_id)
        svc.move_step(session, step=restore, to="succeeded")
        svc.move_step(session, step=verify, to="succeeded", evidence=[
            {"check": "pg-primary accepts writes", "observed": "committed transaction 77",
             "expected": "a committed write", "ok": True}])
        declared = svc.get(session, incident_id).declared_at
        seconds, basis = rpo_from_restore(
            {"recovered_to": ((failure_at or declared) - timedelta(seconds=42)).isoformat(),
             "recovered_to_basis": "pg_last_xact_replay_timestamp()"}, failure_at=failure_at, declared_at=declared)
        named = objectives.measured_by(basis, 1, "Restore backup_20240501_110000 in place")
        svc.set_fields(session, incident_id=incident_id, rpo_seconds=seconds, rpo_basis=named.text,
                       rpo_basis_data=named.as_data())
        svc.transition(session, incident_id=incident_id, trigger="verify", actor="aegis",
                       values={"verified_at": utcnow()})
    with store.session() as session:
        # aftercare: a later plan revision with a check of its own, after verified_at
        svc.replace_plan(session, incident_id=incident_id, strategy="restore_from_backup", specs=[
            StepSpec(title="Check the new standby streams", action="verify", approvals_required=0)])
        svc.set_fields(session, incident_id=incident_id, aftercare="reprotect")
        (check,) = svc.current_steps(session, incident_id)
        svc.move_step(session, step=check, to="succeeded", evidence=[
            {"check": "replication probe", "observed": "lag 0 bytes", "expected": "streaming", "ok": True}])
    return incident_id


@pytest.mark.parametrize("locale", ["en", "ko"])
def test_status_and_closing_post_show_a_restores_figures_with_evidence(store: Store, locale: str) -> None:
    incident_id = verified_restore(store, failure_at=utcnow() - timedelta(minutes=5))
    with store.session() as session:
        incident = svc.get(session, incident_id)
        report = objective_report(session, incident, Config())
        view = incident_view(session, incident, Config())
    # the recovery plan's verification is the evidence, not the aftercare plan's later check
    assert [e.check for e in report.evidence] == ["pg-primary accepts writes"] and report.verify_step == 2
    assert report.rpo_seconds == 42.0 and report.rto_met is True
    assert report.rpo_expected is not None and report.rpo_expected.requirement == "S2"
    assert view.objectives == report
    for message in (incident_blocks.status_reply(view, locale), incident_blocks.closing_report(view, report, locale)):
        text = all_text({"text": message.text, "blocks": message.blocks})
        rto_line = next(line for line in text.splitlines() if "RTO:" in line)
        rpo_line = next(line for line in text.splitlines() if "RPO:" in line)
        assert "O1" in rto_line and "S2" in rto_line and ("step 2" if locale == "en" else "2단계") in rto_line
        assert "O2" in rpo_line and "S2" in rpo_line and ("42s" if locale == "en" else "42초") in rpo_line
        assert "pg_last_xact_replay_timestamp()" in rpo_line
        assert ("measured by step 1 (Restore backup_20240501_110000 in place)" if locale == "en"
                else "1단계(Restore backup_20240501_110000 in place)에서 측정") in rpo_line
        assert ("failure at" if locale == "en" else "장애 시각") in rpo_line
        assert ("✅ met" if locale == "en" else "✅ 목표 달성") in rpo_line
        assert ("✅ within" if locale == "en" else "✅ 범위 내") in rpo_line
        assert "replication probe" not in text and "lag 0 bytes" not in text


def view_for(store: Store, incident_id: int) -> IncidentView:
    with store.session() as session:
        return incident_view(session, svc.get(session, incident_id), Config())


def test_without_a_failure_time_the_status_says_the_declaration_time_was_used(store: Store) -> None:
    incident_id = verified_restore(store, failure_at=None)
    message = incident_blocks.status_reply(view_for(store, incident_id), "en")
    text = all_text({"text": message.text, "blocks": message.blocks})
    rpo_line = next(line for line in text.splitlines() if "RPO:" in line)
    assert "the declaration time: no failure time was recorded" in rpo_line


# --- end to end: a real failover, its closing post and /aegis status, in both locales ----------

HOOK = """#!/usr/bin/env bash
echo "$1 $AEGIS_INCIDENT" >> "{workdir}/hooks.log"
"""


@pytest.mark.parametrize("locale", ["en", "ko"])
def test_a_failovers_closing_post_and_status_show_rto_and_rpo_with_evidence(
    tmp_path: Path, pg_pair: PgPair, emulator: EmulatorServer, locale: str,
) -> None:
    tmp_path.chmod(0o755)
    pg_pair.primary.sql("CREATE TABLE orders (id int primary key)")
    pg_pair.primary.sql("INSERT INTO orders SELECT generate_series(1, 10)")
    pg_pair.wait_replicated()
    pg_pair.primary.stop("immediate")
    hook = tmp_path / "hook.sh"
    hook.write_text(HOOK.format(workdir=tmp_path))
    hook.chmod(0o755)
    config = {
        "locale": locale,
        "slack": {"stakeholder_channel": "C0STAKE"},
        "roster": {"incident_commander": ["U0IC"], "database_lead": ["U0DB"], "infrastructure_lead": ["U0INFRA"]},
        "components": {"postgres": {
            "primary": {"dsn": pg_pair.primary.dsn(), "password_env": "AEGIS_TEST_PG_PASSWORD", "label": "pg-primary"},
            "standby": {"dsn": pg_pair.standby.dsn(), "password_env": "AEGIS_TEST_PG_PASSWORD", "label": "pg-standby"},
        }},
        "hooks": {"fence_primary": {"command": [str(hook), "fence"]},
                  "update_traffic": {"command": [str(hook), "traffic"]}},
    }
    bot = AegisProcess(tmp_path, config, f"sqlite:///{tmp_path}/aegis.db", emulator.api_url)
    emulator.bot_url = bot.url
    bot.start()
    try:
        walk = Walk(bot, emulator)
        walk.declare()
        walk.assemble_and_assess()
        # read before verified: a failover's re-protect plan then becomes the current revision
        promote, verify = walk.step("postgres_promote"), walk.step("verify")
        approvers = {"postgres_promote": "U0DB"}
        for step in walk.steps():
            if step.status == "awaiting_approval":
                walk.click(approvers.get(step.action, "U0INFRA"), "aegis_approve", str(step.id))
                walk.wait_step(step.id, "succeeded")
        walk.wait_state("verified")

        walk.driver.slash("U0IC", "status", channel_id=walk.channel_id)
        reply = wait_for(lambda: [r for r in emulator.state.responses_for("U0IC") if "RPO" in json.dumps(r)],
                         what="the status reply with the figures")[-1]
        check_figures(all_text(reply), locale, promote, verify.position, closing=False)

        close_with_modal(walk, emulator, "U0IC", "Standby promoted.")
        closing = wait_for(lambda: [m for m in walk.chan()["messages"] if "MTTR" in all_text(m)],
                           what="the closing post")[-1]
        check_figures(all_text(closing), locale, promote, verify.position, closing=True)
        incident = walk.incident()
        assert incident.rpo_seconds is not None
        assert incident.rpo_basis.endswith(f" — measured by step {promote.position} ({promote.title})")
        assert incident.rpo_basis_data is not None and incident.rpo_basis_data["code"] in ("promotion_all_replayed",
                                                                                          "promotion_lag")
    finally:
        bot.stop()


def check_figures(text: str, locale: str, promote: PlanStep, verify: int, *, closing: bool) -> None:
    """RTO: O1 + S2 + declared → verified on the verification step; RPO: O2 + S2 + the promotion's lag."""
    rto_line = next(line for line in text.splitlines() if "RTO:" in line)
    rpo_line = next(line for line in text.splitlines() if "RPO:" in line)
    met, within = ("✅ met", "✅ within") if locale == "en" else ("✅ 목표 달성", "✅ 범위 내")
    assert "O1" in rto_line and met in rto_line, rto_line
    assert "S2" in rto_line, rto_line   # a failover within minutes: better than S2's 30 min–2 h
    assert ("✅ better than expected" if locale == "en" else "✅ 예상보다 좋음") in rto_line, rto_line
    assert (f"on the checks of step {verify}" if locale == "en" else f"{verify}단계의 검증 결과") in rto_line, rto_line
    assert "O2" in rpo_line and met in rpo_line and "S2" in rpo_line and within in rpo_line, rpo_line
    if locale == "en":
        assert "replication lag at failover" in rpo_line, rpo_line
        assert f"measured by step {promote.position} ({promote.title})" in rpo_line, rpo_line
    else:
        assert "장애 조치 시점의 복제 지연" in rpo_line, rpo_line
        assert f"{promote.position}단계({promote.title})에서 측정" in rpo_line, rpo_line
    assert "postgres_promote" not in text     # the step as the plan showed it, not the action's internal name
    assert ("MTTR" in text) is closing
