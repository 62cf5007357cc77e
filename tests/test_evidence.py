"""Evidence before ``verified``, manual verification, RTO only on evidence, honest RPO.

Real components: the flows in-process on a SQLite store with the emulator as Slack, a real HTTP
health endpoint, a real PostgreSQL primary (tests.harness.pgcluster) for the database checks.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.presenters import objective_report
from messages.blocks import incident as incident_blocks
from messages.blocks import kit as block_kit
from recovery.actions.base import NeedsHuman, VerificationFailed
from recovery.actions.verify import IntegrityQuery, PostgresVerification, VerifyRecovery
from recovery.engine import rpo_from_promotion
from slack_emulator.server import EmulatorServer
from statemachines import service as svc
from statemachines.models import require_id, utcnow
from statemachines.service import StepSpec
from statemachines.store import Store
from tests.harness.aegis_process import wait_for
from tests.harness.flows_harness import Harness, harness_for, new_store, outcome_of
from tests.harness.http_health import HealthyHandler
from tests.harness.incidents import recovering_incident
from tests.harness.pgcluster import PgSingle, free_port
from tests.harness.slack_reading import all_text, channel_by_id, message_with_button


@pytest.fixture
def health_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HealthyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = new_store("sqlite", tmp_path, None)
    try:
        yield store
    finally:
        store.dispose()


def approve_until_verification(harness: Harness) -> Any:
    """Approve every step before the verification, in order, by a user allowed to."""
    users = {"database_lead": "U0DB", "application_lead": "U0APP", "security_lead": "U0SEC",
             "infrastructure_lead": "U0INFRA"}
    for step in harness.steps():
        if step.action == "verify":
            return step
        harness.flows.approve(user_id=users.get((step.approver_roles or ["x"])[0], "U0IC"), step_id=require_id(step))
        harness.wait_step(require_id(step), "succeeded")
    raise AssertionError("the plan has no verification step")


def close(harness: Harness) -> str:
    harness.flows.close(user_id="U0IC", incident_id=harness.incident_id, summary="recovered")
    chan = harness.incident().channel_id or ""
    closing = wait_for(lambda: [m for m in channel_by_id(harness.emulator.state, chan)["messages"]
                                if "RTO" in all_text(m)], what="the closing report")
    return all_text(closing[-1])


def test_a_verification_with_nothing_to_check_never_passes() -> None:
    with pytest.raises(NeedsHuman):
        VerifyRecovery([], None).execute(lambda _line: None)


def test_verified_on_evidence_each_check_with_its_observed_value(
    sqlite_store: Store, emulator: EmulatorServer, tmp_path: Path, health_url: str, pg_single: PgSingle,
) -> None:
    pg_single.primary.sql("CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 3) g")
    harness = harness_for(sqlite_store, emulator, tmp_path, {
        "services": [{"name": "user-authentication", "tier": 1, "health": {"http": health_url}}],
        "components": {"postgres": {
            "primary": {"dsn": pg_single.primary.dsn(), "label": "pg-main"},
            "integrity_checks": [{"name": "orders kept", "sql": "SELECT count(*) FROM orders", "min": 3}],
        }},
    })
    try:
        harness.walk_to_assessed()
        verify = approve_until_verification(harness)
        harness.wait_state("verified")
        evidence = harness.step(require_id(verify)).evidence or []
        by_check = {e["check"]: e for e in evidence}
        assert by_check["pg-main role (pg_is_in_recovery)"]["observed"] == "primary (false)"
        assert by_check["pg-main accepts writes"]["observed"].startswith("committed transaction ")
        assert "HTTP 200" in by_check["user-authentication (HTTP)"]["observed"]
        assert by_check["integrity: orders kept"] == {"check": "integrity: orders kept", "observed": "3",
                                                     "expected": "≥ 3", "ok": True}
        assert all(e["ok"] and e["expected"] for e in evidence)
        report = close(harness)
        assert "✅ met" in next(line for line in report.splitlines() if "RTO:" in line)
        assert "pg-main accepts writes: committed transaction" in report
        assert "user-authentication (HTTP): HTTP 200" in report
    finally:
        harness.stop()


def test_integrity_queries_are_read_only_evidence_and_fail_on_their_value(pg_single: PgSingle) -> None:
    node = pg_single.primary
    node.sql("CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 5) g")
    queries = (
        IntegrityQuery("rows", "SELECT count(*) FROM orders", minimum=5),
        IntegrityQuery("too few", "SELECT count(*) FROM orders", minimum=6),
        IntegrityQuery("newest id", "SELECT max(id) FROM orders", expect="4"),
        IntegrityQuery("gone table", "SELECT count(*) FROM no_such_table"),
        IntegrityQuery("sneaky write", "DELETE FROM orders RETURNING id"),
        IntegrityQuery("null", "SELECT NULL"),
    )
    observed = {e["check"]: e for e in PostgresVerification(node.dsn(), "pg", queries).observe()}
    assert observed["integrity: rows"]["ok"] is True and observed["integrity: rows"]["observed"] == "5"
    assert observed["integrity: too few"]["ok"] is False and observed["integrity: too few"]["expected"] == "≥ 6"
    assert observed["integrity: newest id"] == {"check": "integrity: newest id", "observed": "5",
                                                "expected": "= 4", "ok": False}
    assert observed["integrity: gone table"]["ok"] is False
    assert "does not exist" in observed["integrity: gone table"]["observed"]
    assert observed["integrity: sneaky write"]["ok"] is False
    assert "read-only" in observed["integrity: sneaky write"]["observed"]
    assert observed["integrity: null"]["ok"] is False and observed["integrity: null"]["observed"] == "NULL"
    assert node.sql("SELECT count(*) FROM orders")[0][0] == 5, "an integrity query changed the data"
    with pytest.raises(VerificationFailed) as failed:
        VerifyRecovery([], PostgresVerification(node.dsn(), "pg", queries[1:2])).execute(lambda _line: None)
    assert "integrity: too few: 5" in str(failed.value)


def test_a_failed_check_is_recorded_with_its_value_and_sends_the_incident_back(
    sqlite_store: Store, emulator: EmulatorServer, tmp_path: Path,
) -> None:
    port = free_port()     # nothing listens there
    harness = harness_for(sqlite_store, emulator, tmp_path, {
        "services": [{"name": "billing", "tier": 1, "health": {"tcp": f"127.0.0.1:{port}", "timeout_seconds": 1}}],
    })
    try:
        harness.walk_to_assessed()
        verify = approve_until_verification(harness)
        wait_for(lambda: harness.incident().plan_revision == 2, what="a new plan after the failed verification")
        (failed,) = harness.step(require_id(verify)).evidence or []
        assert failed["check"] == "billing (TCP)" and failed["ok"] is False
        assert "unreachable" in failed["observed"]
        assert harness.incident().state == "assessed" and harness.incident().verified_at is None
    finally:
        harness.stop()


def test_manual_verification_by_an_authorised_responder_with_the_evidence(
    sqlite_store: Store, emulator: EmulatorServer, tmp_path: Path,
) -> None:
    harness = harness_for(sqlite_store, emulator, tmp_path)     # no services, no database: nothing automated
    try:
        harness.walk_to_assessed()
        verify = approve_until_verification(harness)
        harness.wait_step(require_id(verify), "awaiting_verification")
        assert harness.incident().state == "recovering"          # not verified on nothing
        chan = harness.incident().channel_id or ""
        request = wait_for(lambda: message_with_button(channel_by_id(emulator.state, chan), block_kit.VERIFY_MANUAL,
                                                       str(verify.id)), what="the manual verification request")
        assert "no automated check" in all_text(request)

        # the communication manager approves nothing in this plan: may not state the evidence
        assert outcome_of(lambda: harness.flows.verify_modal(user_id="U0COMM", step_id=require_id(verify))) \
            == "not_allowed_to_verify"
        assert outcome_of(lambda: harness.flows.verify_manually(user_id="U0COMM", step_id=require_id(verify),
                                                                evidence="looks fine")) == "not_allowed_to_verify"
        assert outcome_of(lambda: harness.flows.verify_manually(user_id="U0DB", step_id=require_id(verify),
                                                                evidence="   ")) == "evidence_required"
        modal = harness.flows.verify_modal(user_id="U0DB", step_id=require_id(verify))
        assert modal["callback_id"] == block_kit.VERIFY_CALLBACK and modal["private_metadata"] == str(verify.id)

        harness.flows.verify_manually(user_id="U0DB", step_id=require_id(verify),
                                      evidence="placed test order 991; orders table has today's rows")
        harness.wait_state("verified")
        (stated,) = harness.step(require_id(verify)).evidence or []
        assert (stated["by"], stated["observed"]) == ("U0DB", "placed test order 991; orders table has today's rows")
        assert any(e.kind == "verification" and e.actor == "U0DB" for e in harness.events())
        report = close(harness)
        assert "Verified manually by" in report and "placed test order 991" in report
        assert "✅ met" in next(line for line in report.splitlines() if "RTO:" in line)
    finally:
        harness.stop()


def test_rto_is_met_only_for_an_incident_verified_with_evidence(
    sqlite_store: Store, emulator: EmulatorServer, tmp_path: Path,
) -> None:
    harness = harness_for(sqlite_store, emulator, tmp_path)
    try:
        with sqlite_store.session() as session:
            incident_id = recovering_incident(
                session, [StepSpec(title="verify", action="verify", approvals_required=0)], strategy="failover")
            # a store written by an older Aegis: verified although its verification checked nothing
            (step,) = svc.current_steps(session, incident_id)
            svc.move_step(session, step=step, to="succeeded", detail="services_checked=0, database_checked=False")
            svc.transition(session, incident_id=incident_id, trigger="verify", actor="aegis",
                           values={"verified_at": utcnow()})
        with sqlite_store.session() as session:
            incident = svc.get(session, incident_id)
            report = objective_report(session, incident, harness.flows.config)
            view = harness.flows.view(session, incident, timeline=True)
        assert report.rto_seconds is not None and report.rto_seconds < report.rto_target_seconds
        assert report.rto_met is False and report.evidence == []
        text = all_text({"text": "", "blocks": incident_blocks.closing_report(view, report, "en").blocks})
        rto_line = next(line for line in text.splitlines() if "RTO:" in line)
        assert "✅" not in rto_line and "not verified with evidence" in rto_line
    finally:
        harness.stop()


def test_an_unknown_rpo_is_unknown_with_its_reason_never_zero() -> None:
    assert rpo_from_promotion({"unreplayed_bytes": None, "replay_lag_seconds": None})[0] is None
    rpo, basis = rpo_from_promotion({"unreplayed_bytes": None, "replay_lag_seconds": 3.0})
    assert rpo is None and basis.text.startswith("unknown:")
    rpo, basis = rpo_from_promotion({"already_promoted": True, "promoted": True})
    assert rpo is None and "already a primary" in basis.text
    assert rpo_from_promotion({"unreplayed_bytes": 0, "replay_lag_seconds": 12.0})[0] == 0.0
    rpo, basis = rpo_from_promotion({"unreplayed_bytes": 4096, "replay_lag_seconds": 2.5})
    assert (rpo, basis.text) == (2.5, "replication lag at failover (4096 bytes unreplayed)")
    assert rpo_from_promotion({"unreplayed_bytes": 4096, "replay_lag_seconds": None})[0] is None
