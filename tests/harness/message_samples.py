"""Realistic views and one of every message, in both locales, for the message tests.

``make_view`` is an incident in the middle of a recovery (every step status, roles held and open);
``every_message`` renders one of each message, with the context each refusal and usage problem needs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from messages.blocks import backup as backup_blocks
from messages.blocks import incident as incident_blocks
from messages.blocks import kit as block_kit
from messages.views import (
    ApprovalView,
    CheckView,
    EvidenceView,
    IncidentView,
    Message,
    ObjectiveReport,
    RoleView,
    StepView,
    TimelineItem,
    TransitionView,
)

T0 = datetime(2026, 11, 26, 9, 58, tzinfo=UTC)


def make_steps() -> list[StepView]:
    return [
        StepView(11, 1, "Check primary health", "check", "low", [], 0, "succeeded",
                 detail="pg-primary: connection refused"),
        StepView(12, 2, "Fence old primary pg-primary", "hook", "high", ["infrastructure_lead"], 1,
                 "succeeded", [ApprovalView("U0INFRA", "approve", T0 + timedelta(minutes=5))]),
        StepView(13, 3, "Promote standby pg-standby", "postgres_promote", "critical", ["database_lead"], 1,
                 "awaiting_approval"),
        StepView(14, 4, "Restore orders from backup", "restore", "critical",
                 ["security_lead", "database_lead"], 2, "failed",
                 [ApprovalView("U0SEC", "approve", T0 + timedelta(minutes=9)),
                  ApprovalView("U0DB", "approve", T0 + timedelta(minutes=10))],
                 detail="checksum mismatch in chunk 17"),
        StepView(15, 5, "Tell customers", "manual", "low", ["communication_manager"], 1,
                 "awaiting_approval", manual=True),
        StepView(16, 6, "Repoint application", "hook", "high", ["infrastructure_lead"], 1, "pending"),
    ]


def make_view(state: str = "recovering", **overrides: Any) -> IncidentView:
    fields: dict[str, Any] = {
        "key": "INC-7",
        "id": 7,
        "scenario": "database_failure",
        "severity": "critical",
        "summary": "Primary database is not accepting writes",
        "state": state,
        "declared_by": "U0IC",
        "declared_at": T0,
        "channel_id": "C0INC7",
        "roles": [
            RoleView("incident_commander", "U0IC"),
            RoleView("database_lead", None),
            RoleView("infrastructure_lead", "U0INFRA"),
            RoleView("security_lead", None),
        ],
        "steps": make_steps(),
        "strategy": "failover",
        "checks": [
            CheckView("pg-primary", "postgres", False, "connection refused"),
            CheckView("user-authentication", "http", True, "200 OK in 12 ms"),
            CheckView("pg-standby", "tcp", True, "accepting connections on port 5433"),
        ],
        "timeline": [
            TimelineItem(T0, "transition", "U0IC", "declared"),
            TimelineItem(T0 + timedelta(minutes=2), "transition", "U0IC", "took command"),
            TimelineItem(T0 + timedelta(minutes=4), "step", "aegis", "health checks ran"),
        ],
        "updated_at": T0 + timedelta(hours=1, minutes=2),
    }
    fields.update(overrides)
    return IncidentView(**fields)


def make_report(rto: float | None = 5 * 3600) -> ObjectiveReport:
    # a verified incident carries its evidence; RTO is met only with it (see bot.presenters)
    evidence = [EvidenceView("pg-standby accepts writes", "committed transaction 812", "a committed write", True)]
    return ObjectiveReport(
        rto_seconds=rto, rto_target_seconds=4 * 3600,
        rpo_seconds=12, rpo_target_seconds=15 * 60, rpo_basis="replication lag at failover",
        mttr_seconds=5.5 * 3600, mttr_target_seconds=2 * 3600,
        evidence=evidence if rto is not None else [],
        rto_met=None if rto is None else rto <= 4 * 3600,
    )


def long_timeline(n: int) -> list[TimelineItem]:
    return [TimelineItem(T0 + timedelta(minutes=i), "note", "U0IC" if i % 2 else "aegis",
                         f"event {i}: " + "x" * 150) for i in range(n)]




# a ransomware plan's reason as recovery/planner.py gives it (a refused failover, one clean point, one none)
CLEAN_POINT_REASON: dict[str, Any] = {
    "choice": {"strategy": "failover", "outcome": "refused", "why_not": "ransomware_no_failover", "why_not_ctx": {}},
    "clean_point": {"infection_at": "2026-11-26T09:14:00+00:00", "pitr_target": "2026-11-26T09:13:59+00:00",
                    "missing": None, "components": [
                        {"component": "postgres",
                         "chosen": {"run_id": "backup_20261126_020000", "taken_at": "2026-11-26T02:00:00+00:00",
                                    "proof": "verified", "proof_at": "2026-11-26T02:40:00+00:00"},
                         "skipped": [{"run_id": "backup_20261126_120000", "code": "taken_after",
                                      "at": "2026-11-26T12:00:00+00:00"},
                                     {"run_id": "backup_20261126_080000", "code": "proven_later",
                                      "at": "2026-11-26T09:30:00+00:00"}]},
                        {"component": "neo4j", "chosen": None, "skipped": []}]},
}


def every_message(locale: str) -> dict[str, Message]:
    """One of every message, with the context each refusal/usage problem needs."""
    v = make_view()
    step = v.steps[2]
    t = TransitionView("assessed", "recovering", "U0DB", "plan approved", T0)
    msgs: dict[str, Message] = {
        "incident_card": incident_blocks.incident_card(v, locale),
        "incident_card_closed": incident_blocks.incident_card(make_view("closed"), locale),
        "plan": incident_blocks.plan_message(v, locale),
        "plan_empty": incident_blocks.plan_message(make_view("assembled", steps=[], strategy=None), locale),
        "assessment": incident_blocks.assessment(v, locale),
        "assessment_empty": incident_blocks.assessment(make_view(checks=[], strategy=None), locale),
        "assessment_clean_point": incident_blocks.assessment(
            make_view("assessed", scenario="ransomware", strategy="restore_from_backup"), locale,
            reason="ransomware_restore", reason_ctx=CLEAN_POINT_REASON),
        "stakeholder_root": incident_blocks.stakeholder_root(v, locale),
        "stakeholder_update": incident_blocks.stakeholder_update(v, t, locale),
        "stakeholder_update_auto": incident_blocks.stakeholder_update(
            v, TransitionView("recovering", "verified", None, "", T0), locale),
        "reminder": incident_blocks.reminder(v, 3725, locale),
        "closing_report": incident_blocks.closing_report(make_view("closed", close_summary="Failed over"),
                                                make_report(), locale),
        "closing_report_false_alarm": incident_blocks.closing_report(
            make_view("closed", steps=[], timeline=[]),
            ObjectiveReport(None, 14400, None, 900, "not measured", None, 7200), locale),
        "status_reply": incident_blocks.status_reply(v, locale),
        "status_reply_empty": incident_blocks.status_reply(make_view("detected", steps=[], roles=[]), locale),
        "incident_list": incident_blocks.incident_list([v, make_view("assessed", key="INC-8", id=8, channel_id=None)],
                                              locale),
        "incident_list_empty": incident_blocks.incident_list([], locale),
        "help": block_kit.help_text(locale),
        "reapproval": incident_blocks.reapproval_request(v, step, locale),
        "step_result_ok": incident_blocks.step_result(v, v.steps[1], locale),
        "step_result_failed": incident_blocks.step_result(v, v.steps[3], locale),
        "step_result_other": incident_blocks.step_result(v, v.steps[5], locale),
        "ops_notice": block_kit.ops_notice("Backup failed", "pg_basebackup: disk full", locale),
    }
    for waiting_state in ("detected", "assembled", "assessed", "recovering", "verified", "closed"):
        msgs[f"reminder_{waiting_state}"] = incident_blocks.reminder(make_view(waiting_state, steps=[]), 60, locale)
    for problem, ctx in USAGE_PROBLEMS.items():
        msgs[f"usage_{problem}"] = block_kit.usage_error(problem, locale, **ctx)
    for reason, ctx in REFUSALS.items():
        msgs[f"refusal_{reason}"] = block_kit.refusal(reason, locale, **ctx)
    msgs["refusal_not_commander_nobody"] = block_kit.refusal("not_commander", locale, commander=None)
    msgs.update(backup_messages(locale))
    return msgs


def backup_run(status: str, **overrides: Any) -> backup_blocks.BackupRunView:
    good = backup_blocks.BackupObjectView("backup_20261122_020000", "backup_20261122_020000/postgres-base.tar.zst.aes",
                                   "pg_full", "ok", 3 * 2**30, T0, [backup_blocks.BackupTargetView("s3", True)])
    failed = status != "ok"
    obj = backup_blocks.BackupObjectView(
        "backup_20261129_020000", "backup_20261129_020000/postgres-base.tar.zst.aes", "pg_full",
        "failed" if status == "failed" else "ok", 123456, T0,
        [backup_blocks.BackupTargetView("local", True),
         backup_blocks.BackupTargetView("s3", not failed, "s3: connection refused"),
         backup_blocks.BackupTargetView("azure", True, removed=True)],
        "every remote target failed; the local staging copy is kept" if status == "failed" else "")
    fields: dict[str, Any] = {
        "run_id": "backup_20261129_020000", "kind": "postgresql", "status": status, "objects": [obj],
        "failed_targets": ["s3"] if failed else [], "reasons": ["s3: connection refused"] if failed else [],
        "started_by": "U0DB", "previous_good": good if status == "failed" else None,
        "local_kept": status == "failed",
    }
    fields.update(overrides)
    return backup_blocks.BackupRunView(**fields)


def backup_messages(locale: str) -> dict[str, Message]:
    failed = backup_run("failed")
    check = backup_blocks.BackupCheckView("backup_20261129_020000", failed.objects[0].object_name, False,
                                   ["local: authentication failed (chunk 3)"], ["local"])
    return {
        "backup_started": backup_blocks.backup_started("postgresql", locale),
        "backup_verify_started": backup_blocks.backup_verify_started("backup_20261129_020000", locale),
        "backup_result_ok": backup_blocks.backup_result(backup_run("ok"), locale),
        "backup_result_warning": backup_blocks.backup_result(backup_run("warning"), locale),
        "backup_result_failed": backup_blocks.backup_result(failed, locale),
        "backup_result_failed_scheduled_no_previous": backup_blocks.backup_result(
            backup_run("failed", started_by=None, schedule="backup-postgres_full", previous_good=None,
                       objects=[], errors=["postgresql: OperationalError: connection refused"]), locale),
        "backup_ops_failed": backup_blocks.backup_ops_alert(failed, locale),
        "backup_ops_warning": backup_blocks.backup_ops_alert(backup_run("warning"), locale),
        "backup_list": backup_blocks.backup_list(failed.objects * 40, locale),
        "backup_list_empty": backup_blocks.backup_list([], locale),
        "backup_verify_ok": backup_blocks.backup_verify_result(
            "backup_20261129_020000", [backup_blocks.BackupCheckView("backup_20261129_020000", "x", True, [], ["s3"])],
            [None], locale),
        "backup_verify_failed": backup_blocks.backup_verify_result("backup_20261129_020000", [check],
                                                            [failed.previous_good], locale),
        **{f"backup_job_{p}": backup_blocks.backup_job_alert(p, "backup-wal_switch", "OperationalError: refused",
                                                               locale)
           for p in ("not_run", "wal_failed", "prune_failed")},
    }


USAGE_PROBLEMS: dict[str, dict[str, Any]] = {
    "unknown_command": {"text": "frobnicate now"},
    "unknown_scenario": {"value": "meteor"},
    "unknown_severity": {"value": "apocalyptic"},
    "missing_summary": {},
    "incident_not_found": {"key": "INC-99"},
    "no_incident_here": {},
    "unknown_backup_command": {"text": "backup frobnicate"},
    "unknown_backup_kind": {"value": "postgres"},
    "missing_backup_id": {},
    "backup_not_found": {"ident": "backup_19990101_000000"},
}
REFUSALS: dict[str, dict[str, Any]] = {
    "not_allowed_to_approve": {"step_title": "Promote standby",
                               "roles": ["database_lead", "incident_commander"]},
    "not_commander": {"commander": "U0IC"},
    "role_taken": {"role": "database_lead", "holder": "U0DB"},
    "not_on_roster": {"role": "security_lead"},
    "step_not_awaiting": {"step_title": "Promote standby", "status": "running"},
    "already_approved": {"step_title": "Promote standby"},
    "second_approver_required": {"step_title": "Restore orders from backup"},
    "wrong_state": {"action": "close", "state": "recovering"},
    "internal_error": {"reference": "err-4f2a9c"},
    "backup_run_not_allowed": {"roles": ["incident_commander", "database_lead", "infrastructure_lead"]},
    "backup_read_not_allowed": {},
    "backup_busy": {"what": "backup-postgres_full", "since": T0},
    "backups_not_configured": {"detail": "no storage targets: add a `storage:` list"},
    "backup_no_storage": {},
    "backup_component_missing": {"kind": "neo4j"},
}
