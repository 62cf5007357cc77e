"""The planner (C1, issue 9): strategy choice, each strategy's steps and their concrete titles, the
ransomware clean point, partial recovery, the aftercare plans, and Facts built from a real catalog.

The planner is pure, so most tests hand it Facts; the last ones build the Facts from a real config and
a real (SQLite) store holding BackupRecord rows, through the same ``wiring.facts`` the bot calls.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot import wiring
from bot.config import validate_config
from messages.blocks.plan_reason import plan_reason
from recovery.backup import catalog
from recovery.clean_point import BackupCandidate, choose, describe
from recovery.planner import (
    FAILOVER,
    PARTIAL,
    REASONS,
    RESTORE,
    Facts,
    Plan,
    PostgresControlInfo,
    ServiceInfo,
    cleanup_plan,
    propose,
    recovery_order,
    reprotect_plan,
)
from statemachines.models import BackupRecord
from statemachines.store import Store
from statemachines.vocabulary import DATABASE_LEAD, SECURITY_LEAD

DAY = datetime(2026, 12, 1, tzinfo=UTC)
INFECTION = DAY.replace(hour=9, minute=14)
CONTROL = PostgresControlInfo("/var/lib/postgresql/15/main", "pg_ctl", "postgres")


def at(hour: int, minute: int = 0, day: datetime = DAY) -> datetime:
    return day.replace(hour=hour, minute=minute)


def pg_backup(run: str, taken: datetime, *, verified: datetime | None = None, ok: bool | None = True,
              tested: datetime | None = None, test_ok: bool | None = None) -> BackupCandidate:
    return BackupCandidate(run, "postgres", taken, "pg_full", verified, ok if verified else None, tested, test_ok)


NIGHTLY = pg_backup("backup_20261201_020000", at(2), verified=at(2, 40))
MORNING = pg_backup("backup_20261201_080000", at(8), verified=at(9, 30))      # verified only after 09:14
NOON = pg_backup("backup_20261201_120000", at(12), verified=at(12, 20))
NEO4J = BackupCandidate("backup_20261201_030000", "neo4j", at(3), "neo4j", at(3, 30), True)
MILVUS = BackupCandidate("backup_20261201_040000", "milvus", at(4), "milvus", None, None, at(5), True,
                         ("docs", "faces"))

SERVICES = (
    ServiceInfo("reports", 3),                                                   # no start hook
    ServiceInfo("search", 1, ("auth",), "start", "./ops/start.sh search"),
    ServiceInfo("pipeline", 2, ("auth",), "restart", "systemctl restart pipeline"),
    ServiceInfo("auth", 1, (), "start", "./ops/start.sh auth"),
)


def facts(scenario: str = "database_failure", **values: object) -> Facts:
    base: dict[str, object] = {"has_postgres_primary": True}
    base.update(values)
    return Facts(scenario=scenario, **base)  # type: ignore[arg-type]


def actions(plan: Plan) -> list[str]:
    return [str(s.params["hook"]) if s.action == "hook" else s.action for s in plan.steps]


# --- strategy choice ------------------------------------------------------------------------------


@pytest.mark.parametrize(("scenario", "standby", "strategy"), [
    ("database_failure", True, FAILOVER), ("database_failure", False, RESTORE),
    ("datacenter_outage", False, FAILOVER), ("datacenter_outage", True, FAILOVER),
    ("ransomware", True, RESTORE), ("ransomware", False, RESTORE),
])
def test_the_default_strategy_follows_scenario_and_standby(scenario: str, standby: bool, strategy: str) -> None:
    assert propose(facts(scenario, has_postgres_standby=standby)).strategy == strategy


def test_a_chosen_strategy_wins_when_possible_and_is_refused_with_the_reason_when_not() -> None:
    chosen = propose(facts(has_postgres_standby=True, options={"strategy": RESTORE}))
    assert chosen.strategy == RESTORE and "chosen by the responders" in chosen.rationale
    # the same as data for the messages (rendered per locale): the default's code, the choice
    pg_only = {"restored": ["postgres"], "spared": [], "inconclusive": [], "basis": "no_check_failed"}
    assert (chosen.reason, chosen.reason_ctx) == ("standby_failover", {
        "choice": {"strategy": RESTORE, "outcome": "chosen"}, "scope": pg_only})

    no_standby = propose(facts(options={"strategy": FAILOVER}))
    assert no_standby.strategy == RESTORE
    assert "failover is not possible: no PostgreSQL standby is configured" in no_standby.rationale
    assert (no_standby.reason, no_standby.reason_ctx) == ("no_standby_restore", {"choice": {
        "strategy": FAILOVER, "outcome": "refused", "why_not": "no_standby", "why_not_ctx": {}}, "scope": pg_only})
    assert "postgres_promote" not in actions(no_standby)

    ransomware = propose(facts("ransomware", has_postgres_standby=True, options={"strategy": FAILOVER}))
    assert ransomware.strategy == RESTORE and "replicates the attack" in ransomware.rationale

    down = facts(has_postgres_standby=True, standby_check="pg-b", failing=frozenset({"pg-b"}))
    assert propose(down).strategy == RESTORE and "the standby is unreachable (pg-b failed)" in propose(down).rationale
    assert (propose(down).reason, propose(down).reason_ctx) == ("standby_down_restore",
                                                                {"check": "pg-b", "scope": pg_only})
    refused = propose(replace(down, options={"strategy": FAILOVER}))
    assert refused.strategy == RESTORE and "failover is not possible: the standby is unreachable" in refused.rationale

    unfilled = propose(facts(options={"strategy": PARTIAL}))
    assert unfilled.strategy == RESTORE
    assert "fill the partial-recovery form first" in unfilled.rationale

    unconfigured = propose(facts(options={"strategy": PARTIAL, "partial": {"component": "neo4j"}}))
    assert unconfigured.strategy == RESTORE and "neo4j is not configured" in unconfigured.rationale


# --- restore from backup (S2 without a standby, C3/C4) ---------------------------------------------


def test_restore_in_place_shows_backup_time_target_and_data_dir_and_starts_services_in_order() -> None:
    plan = propose(facts(hooks=frozenset({"fence_primary"}), hook_commands={"fence_primary": "./ops/fence.sh"},
                         postgres_control=CONTROL, neo4j_database="graph", has_milvus=True, services=SERVICES,
                         backups={"postgres": (NIGHTLY, NOON, MORNING), "neo4j": (NEO4J,), "milvus": (MILVUS,)}))
    assert plan.strategy == RESTORE
    # no confirm-down: the in-place restore stops the server itself (a running, corrupted primary is restorable)
    assert actions(plan) == ["fence_primary", "postgres_restore", "neo4j_restore",
                             "milvus_restore", "service_start", "service_start", "service_start", "manual", "verify"]
    fence, restore, graph, vectors = plan.steps[0:4]
    assert fence.title == "Stop writes to the failed database: ./ops/fence.sh"
    assert restore.params == {"node": "primary", "backup_id": NOON.run_id, "backup_time": "2026-12-01T12:00:00+00:00",
                              "target_time": None, "data_dir": CONTROL.data_dir, "control": "pg_ctl"}
    for shown in (NOON.run_id, "2026-12-01 12:00:00 UTC", "latest point", CONTROL.data_dir, "pg_ctl as postgres",
                  "moved aside"):
        assert shown in restore.title
    assert graph.params == {"backup_id": NEO4J.run_id, "backup_time": "2026-12-01T03:00:00+00:00", "database": "graph"}
    assert vectors.params["collections"] == ["docs", "faces"] and "docs, faces" in vectors.title
    # tier, then depends_on; the service without a hook goes to start_services, at its place in the order
    started = [(s.params.get("service"), s.params.get("hook")) for s in plan.steps if s.action == "service_start"]
    assert started == [("auth", "start"), ("search", "start"), ("pipeline", "restart")]
    assert "./ops/start.sh auth" in plan.steps[4].title
    assert plan.steps[7].title == "Start reports, in this order (manual)"
    assert plan.steps[7].params["instruction"] == "Start, in this order: reports"


def test_restore_without_control_or_without_a_backup_is_a_manual_step_saying_why() -> None:
    manual = propose(facts(backups={"postgres": (NIGHTLY,)}))
    step = next(s for s in manual.steps if "Restore" in s.title)
    assert step.action == "manual" and NIGHTLY.run_id in step.title
    assert "control is not configured" in step.params["instruction"]

    bad = pg_backup("backup_20261201_050000", at(5), verified=at(5, 30), ok=False)
    empty = propose(facts(postgres_control=CONTROL, backups={"postgres": (bad,)}))
    step = next(s for s in empty.steps if "Restore" in s.title)
    assert step.action == "manual" and "no good PostgreSQL backup" in step.params["instruction"]
    # a restore by hand needs the server stopped first: that is a step of its own (manual without a hook)
    assert empty.steps[0].title == "Stop writes to the failed database (manual)"
    in_place = propose(facts(postgres_control=CONTROL, backups={"postgres": (NIGHTLY,)}))
    assert "Stop writes" not in in_place.steps[0].title    # the in-place restore stops the server itself
    assert in_place.steps[0].action == "postgres_restore"

    nothing = propose(Facts(scenario="database_failure"))
    assert actions(nothing) == ["manual", "manual", "manual", "verify"]
    assert nothing.steps[2].title == "Start application services in tier order (manual)"


CHECKS = {"postgres": "pg-a", "neo4j": "neo4j", "milvus": "milvus"}
EVERY_DATABASE = {"postgres": (NIGHTLY, NOON), "neo4j": (NEO4J,), "milvus": (MILVUS,)}


def scoped(failing: set[str], scenario: str = "database_failure", refused: frozenset[str] = frozenset()) -> Plan:
    return propose(facts(scenario, hooks=frozenset({"fence_primary"}), postgres_control=CONTROL,
                         neo4j_database="graph", has_milvus=True, backups=EVERY_DATABASE, component_checks=CHECKS,
                         failing=frozenset(failing) | refused, inconclusive=refused, infection_time=at(13)))


def test_a_restore_restores_the_databases_whose_check_failed_and_leaves_the_healthy_ones() -> None:
    postgres = scoped({"pg-a"})
    assert actions(postgres) == ["fence_primary", "postgres_restore", "manual", "verify"]
    assert postgres.reason_ctx["scope"] == {"restored": ["postgres"], "spared": ["neo4j", "milvus"],
                                            "inconclusive": [], "basis": "failed_checks"}
    assert "neo4j, milvus passed its check and is left as it is" in postgres.rationale

    graph = scoped({"neo4j"})   # PostgreSQL answers: nothing stops or fences it
    assert actions(graph) == ["neo4j_restore", "manual", "verify"]
    assert graph.reason_ctx["scope"]["spared"] == ["postgres", "milvus"]

    two = scoped({"pg-a", "milvus", "some service"})
    assert actions(two) == ["fence_primary", "postgres_restore", "milvus_restore", "manual", "verify"]


def test_with_no_failed_database_check_every_database_is_restored_and_ransomware_always_restores_all() -> None:
    unseen = scoped({"some service"})          # corruption that no probe sees
    assert actions(unseen)[:4] == ["fence_primary", "postgres_restore", "neo4j_restore", "milvus_restore"]
    assert unseen.reason_ctx["scope"] == {"restored": ["postgres", "neo4j", "milvus"], "spared": [],
                                          "inconclusive": [], "basis": "no_check_failed"}
    # ransomware: every component from its clean point, whatever its check says (the attacker may be quiet)
    attacked = scoped({"neo4j"}, "ransomware")
    assert {"postgres_restore", "neo4j_restore", "milvus_restore"} <= set(actions(attacked))
    assert "scope" not in attacked.reason_ctx


def test_a_check_refused_our_credentials_is_not_a_broken_database() -> None:
    # PostgreSQL refuses connections (broken); Neo4j refused the password (says nothing about its graph)
    plan = scoped({"pg-a"}, refused=frozenset({"neo4j"}))
    assert [s.action for s in plan.steps if s.action.endswith("_restore")] == ["postgres_restore"]
    assert plan.reason_ctx["scope"]["inconclusive"] == ["neo4j"]
    for locale, said in (("en", "The check of Neo4j was refused Aegis's credentials"),
                         ("ko", "Neo4j 점검은 Aegis의 자격 증명이 거부되어")):
        assert said in plan_reason(locale, plan.reason, plan.reason_ctx)


@pytest.mark.parametrize("locale", ["en", "ko"])
def test_the_plan_says_which_databases_it_restores_and_which_it_leaves(locale: str) -> None:
    plan = scoped({"pg-a"})
    said = plan_reason(locale, plan.reason, plan.reason_ctx)
    restored, left = ("*Restored:* PostgreSQL", "*Left as it is:* Neo4j, Milvus") if locale == "en" else (
        "*복원:* PostgreSQL", "*그대로 둠:* Neo4j, Milvus")
    assert restored in said and left in said, said
    every = plan_reason(locale, "no_standby_restore", scoped(set()).reason_ctx)
    assert ("every configured database with a backup is restored" if locale == "en"
            else "백업이 있는 모든 데이터베이스를 복원합니다") in every, every


def test_recovery_order_is_tier_then_dependencies() -> None:
    order = [s.name for s in recovery_order((
        ServiceInfo("dashboard", 2, ("pipeline",)), ServiceInfo("pipeline", 2, ("auth",)),
        ServiceInfo("analytics", 3), ServiceInfo("search", 1, ("recommend",)), ServiceInfo("recommend", 1),
        ServiceInfo("auth", 1)))]
    assert order == ["recommend", "search", "auth", "pipeline", "dashboard", "analytics"]


# --- failover (S1, S2 with a standby) ---------------------------------------------------------------


def test_a_database_failover_keeps_todays_shape() -> None:
    plan = propose(facts(has_postgres_standby=True, hooks=frozenset({"fence_primary", "update_traffic"})))
    assert [s.action for s in plan.steps] == ["postgres_confirm_down", "hook", "postgres_promote", "hook", "verify"]
    assert plan.strategy == FAILOVER


@pytest.mark.parametrize("scenario", ["database_failure", "datacenter_outage"])
@pytest.mark.parametrize("hooks", [frozenset(), frozenset({"fence_primary"})])
@pytest.mark.parametrize("standby", [True, False])
def test_fencing_always_comes_before_any_promotion(scenario: str, hooks: frozenset[str], standby: bool) -> None:
    plan = propose(facts(scenario, has_postgres_standby=standby, hooks=hooks, options={"strategy": FAILOVER}))
    if plan.strategy != FAILOVER:
        return   # a database failure without a standby is not a failover
    titles = [s.title for s in plan.steps]
    fence = next(i for i, s in enumerate(plan.steps) if s.params.get("hook") == "fence_primary"
                 or s.title.startswith("Fence"))
    promote = next(i for i, t in enumerate(titles) if "Promote" in t)
    assert fence < promote
    if not hooks:   # no hook: a manual step that must be marked done, never left out
        assert plan.steps[fence].action == "manual" and "mark this done" in plan.steps[fence].params["instruction"]
        assert plan.steps[fence].approvals_required >= 1


def test_a_datacenter_failover_runs_every_configured_hook_in_order() -> None:
    hooks = frozenset({"activate_standby_environment", "fence_primary", "neo4j_standby", "milvus_standby",
                       "start_services", "update_traffic", "restore_traffic"})
    plan = propose(facts("datacenter_outage", has_postgres_standby=True, hooks=hooks, services=SERVICES,
                         hook_commands={"update_traffic": "POST https://lb.internal/failover"}))
    assert actions(plan) == ["activate_standby_environment", "postgres_confirm_down", "fence_primary",
                             "postgres_promote", "neo4j_standby", "milvus_standby", "service_start", "service_start",
                             "service_start", "start_services", "update_traffic", "verify", "restore_traffic"]
    assert plan.steps[10].title.endswith(": POST https://lb.internal/failover")
    assert plan.steps[11].params == {"services": True, "postgres_writable": "standby"}


def test_a_database_failover_starts_only_services_with_their_own_hook() -> None:
    plan = propose(facts(has_postgres_standby=True, services=SERVICES))
    assert "start_services" not in actions(plan)
    assert [s.params["service"] for s in plan.steps if s.action == "service_start"] == ["auth", "search", "pipeline"]


# --- ransomware (S3) --------------------------------------------------------------------------------


def test_ransomware_restores_every_component_from_its_clean_point_with_two_approvers() -> None:
    plan = propose(facts("ransomware", postgres_control=CONTROL, neo4j_database="neo4j", has_milvus=True,
                         services=SERVICES[:2], infection_time=INFECTION,
                         backups={"postgres": (NIGHTLY, MORNING, NOON), "neo4j": (NEO4J,), "milvus": (MILVUS,)}))
    assert actions(plan) == ["manual", "postgres_restore", "neo4j_restore", "milvus_restore", "service_start",
                             "manual", "verify"]
    restore = plan.steps[1]
    assert restore.params["backup_id"] == NIGHTLY.run_id
    assert restore.params["target_time"] == "2026-12-01T09:13:59+00:00"
    assert "to 2026-12-01 09:13:59 UTC" in restore.title
    for step in plan.steps[:-1]:   # every destructive step: two people, one the security lead
        assert step.approvals_required == 2 and step.approver_roles[0] == SECURITY_LEAD, step.title
    assert plan.steps[-1].approvals_required == 0
    assert ("Clean point: infection at 2026-12-01 09:14:00 UTC; PostgreSQL to 2026-12-01 09:13:59 UTC, 1 s before "
            "it; postgres: backup_20261201_020000 taken 02:00, verified 02:40 (backup verify) — the newest verified "
            "before the infection at 09:14; backup_20261201_120000 was skipped: taken 12:00, after the infection; "
            "backup_20261201_080000 was skipped: not verified before the infection (checked only at 09:30)"
            ) in plan.rationale
    assert "milvus: backup_20261201_040000 taken 04:00, restore-tested 05:00 (restore test)" in plan.rationale
    # the clean point as data: the messages word it in English and Korean (tests/test_plan_reason.py)
    assert plan.reason == "ransomware_restore"
    clean = plan.reason_ctx["clean_point"]
    assert (clean["infection_at"], clean["pitr_target"], clean["missing"]) == (
        "2026-12-01T09:14:00+00:00", "2026-12-01T09:13:59+00:00", None)
    assert clean["components"][0] == {
        "component": "postgres",
        "chosen": {"run_id": NIGHTLY.run_id, "taken_at": "2026-12-01T02:00:00+00:00", "proof": "verified",
                   "proof_at": "2026-12-01T02:40:00+00:00"},
        "skipped": [{"run_id": NOON.run_id, "code": "taken_after", "at": "2026-12-01T12:00:00+00:00"},
                    {"run_id": MORNING.run_id, "code": "proven_later", "at": "2026-12-01T09:30:00+00:00"}]}
    assert clean["components"][2]["chosen"]["proof"] == "restore_tested"


def test_ransomware_without_a_clean_point_or_an_infection_time_says_so_with_manual_restores() -> None:
    unverified = pg_backup("backup_20261201_020000", at(2))
    plan = propose(facts("ransomware", postgres_control=CONTROL, infection_time=INFECTION,
                         backups={"postgres": (unverified,)}))
    restore = plan.steps[1]
    assert restore.action == "manual" and restore.approvals_required == 2
    assert "no postgres backup was verified before the infection at 2026-12-01 09:14:00 UTC" in \
        restore.params["instruction"]
    assert "postgres: no backup verified before the infection" in plan.rationale
    assert "backup_20261201_020000 was skipped: not verified before the infection" in plan.rationale

    untimed = propose(facts("ransomware", postgres_control=CONTROL, backups={"postgres": (NIGHTLY,)}))
    assert [s.action for s in untimed.steps] == ["manual", "manual", "manual", "verify"]
    assert "time of infection is not given yet" in untimed.rationale
    assert untimed.reason_ctx["clean_point"]["missing"] == "no_infection_time"


@pytest.mark.parametrize("scenario", ["database_failure", "datacenter_outage", "ransomware"])
@pytest.mark.parametrize("standby", [True, False])
def test_no_rationale_carries_a_requirement_id(scenario: str, standby: bool) -> None:
    for options in ({}, {"strategy": FAILOVER}, {"strategy": RESTORE}, {"strategy": PARTIAL}):
        plan = propose(facts(scenario, has_postgres_standby=standby, options=options, infection_time=INFECTION))
        assert not re.search(r"\b[SCOTP][0-9]\b", plan.rationale), plan.rationale
        assert plan.reason in REASONS


def test_the_clean_point_may_be_proven_by_a_restore_test_and_never_by_a_failed_one() -> None:
    tested = pg_backup("b_tested", at(6), tested=at(7), test_ok=True)
    failed = pg_backup("b_failed", at(7), verified=at(7, 10), tested=at(7, 30), test_ok=False)
    point = choose("postgres", [tested, failed], INFECTION)
    assert point.chosen == tested and point.proof == "restore-tested 07:00 (restore test)"
    assert [(s.backup.run_id, s.reason) for s in point.skipped] == [
        ("b_failed", "its last verification or restore test failed")]
    earlier = pg_backup("b_old", at(23, 0, DAY - timedelta(days=1)), verified=at(23, 30, DAY - timedelta(days=1)))
    assert "taken 2026-11-30 23:00" in describe(choose("postgres", [earlier], INFECTION), INFECTION)


# --- partial recovery ---------------------------------------------------------------------------------


def test_partial_recovery_shapes() -> None:
    backups = {"postgres": (NIGHTLY, NOON), "neo4j": (NEO4J,), "milvus": (MILVUS,)}

    def partial(options: dict[str, object]) -> Plan:
        return propose(facts(neo4j_database="neo4j", has_milvus=True, backups=backups, options=options))

    table = partial({"partial": {
        "component": "postgres", "database": "shop", "table": "public.orders", "target_time": "2026-12-01T10:00:00Z"}})
    assert table.strategy == PARTIAL and actions(table) == ["postgres_partial_restore", "verify"]
    step = table.steps[0]
    assert step.params == {"backup_id": NIGHTLY.run_id, "backup_time": "2026-12-01T02:00:00+00:00",
                           "target_time": "2026-12-01T10:00:00+00:00", "database": "shop", "table": "public.orders"}
    assert "table public.orders of database shop as of 2026-12-01 10:00:00 UTC" in step.title
    assert "terminated" not in step.title     # a table is swapped inside the database: nobody is cut off

    whole = partial({"partial": {"component": "postgres", "database": "shop"}})
    assert whole.steps[0].params["table"] is None and whole.steps[0].params["backup_id"] == NOON.run_id
    assert whole.steps[0].title.endswith("; open connections to shop are terminated for the swap")

    graph = partial({"partial": {"component": "neo4j", "database": "people"}})
    assert actions(graph) == ["neo4j_restore", "verify"] and graph.steps[0].params["database"] == "people"

    vectors = partial({"partial": {"component": "milvus", "collection": "faces"}})
    assert vectors.steps[0].params["collections"] == ["faces"] and "Milvus faces" in vectors.steps[0].title

    missing = partial({"partial": {"component": "milvus", "collection": "nope"}})
    assert missing.steps[0].action == "manual" and "holds the collection nope" in missing.steps[0].params["instruction"]

    unnamed = partial({"strategy": PARTIAL, "partial": {"component": "postgres"}})
    assert unnamed.strategy == RESTORE and "names no PostgreSQL database" in unnamed.rationale


# --- aftercare ----------------------------------------------------------------------------------------


def test_reprotect_and_cleanup_plans() -> None:
    rewind = reprotect_plan(facts(has_postgres_standby=True, postgres_control=CONTROL))
    assert [s.params for s in rewind.steps] == [{"old_primary": "primary", "new_primary": "standby",
                                                 "method": "pg_rewind"}]
    assert CONTROL.data_dir in rewind.steps[0].title and rewind.steps[0].action == "postgres_reprotect"
    # without control the re-protect action cannot run on the old primary at all (either method): manual
    by_hand = reprotect_plan(facts(has_postgres_standby=True)).steps
    assert [s.action for s in by_hand] == ["manual"] and by_hand[0].approver_roles == [DATABASE_LEAD]
    assert by_hand[0].params["instruction"] == (
        "Rebuild the old primary as a standby of the new primary (the promoted standby): pg_rewind or a new base "
        "backup; configure components.postgres.primary.control to let Aegis do it")

    items = [{"kind": "postgres_data_dir", "location": "/var/lib/pg.aside-INC-1", "component": "postgres"},
             {"kind": "neo4j_export", "location": "/var/tmp/neo4j-INC-1.jsonl", "component": "neo4j"},
             {"kind": "milvus_collection", "location": "docs_aside_inc1", "component": "milvus"},
             {"kind": "milvus_collection", "location": "faces_aside_inc1", "component": "milvus"}]
    cleanup = cleanup_plan(items)
    assert [s.action for s in cleanup.steps] == ["discard_aside"] * 3
    assert [len(s.params["items"]) for s in cleanup.steps] == [1, 1, 2]
    assert all(s.risk == "high" and s.approvals_required == 1 for s in cleanup.steps)
    assert "/var/lib/pg.aside-INC-1 (data directory)" in cleanup.steps[0].title


# --- Facts from a real config and catalog ---------------------------------------------------------------


def _row(store: Store, run: str, kind: str, component: str, obj: str, finished: datetime, **values: object) -> None:
    record = catalog.insert_record(store, BackupRecord(run_id=run, kind=kind, component=component, object_name=obj,
                                                       started_at=finished - timedelta(minutes=5)))
    assert record.id is not None
    catalog.update_record(store, record.id, status=catalog.STATUS_OK, finished_at=finished, **values)


def test_facts_from_the_config_and_the_catalog_choose_the_clean_point(tmp_path: Path) -> None:
    config = validate_config({
        "components": {"postgres": {"primary": {"dsn": "host=/tmp port=5432", "control": {
                           "data_dir": "/var/lib/postgresql/15/main", "os_user": "postgres"}}},
                       "milvus": {"uri": str(tmp_path / "milvus.db")}},
        "services": [{"name": "auth", "tier": 1, "start": {"command": ["./ops/start.sh", "auth"]}},
                     {"name": "api", "tier": 2, "depends_on": ["auth"], "restart": {"webhook": "https://d/r?t=x"}}],
        "hooks": {"isolate_systems": {"command": ["./ops/isolate.sh", "--all"]}},
    }, "test.yaml")
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    store.migrate()
    try:
        ok = {"ok": True, "problems": [], "reread": []}
        _row(store, "backup_20261201_020000", catalog.KIND_FULL, "postgres",
             "backup_20261201_020000/postgres-base.tar.zst.aes", at(2, 10), verified_at=at(2, 40), verify_result=ok)
        _row(store, "backup_20261201_080000", catalog.KIND_FULL, "postgres",
             "backup_20261201_080000/postgres-base.tar.zst.aes", at(8, 10))          # never verified
        _row(store, "wal", catalog.WAL_KIND, "postgres", "wal/000000010000000000000003.zst.aes", at(9))
        for collection, tested in (("docs", at(4, 30)), ("faces", at(4, 40))):
            _row(store, "backup_20261201_040000", catalog.MILVUS_KIND, "milvus",
                 f"backup_20261201_040000/milvus-{collection}.jsonl.zst.aes", at(4, 5),
                 restore_tested_at=tested, restore_test_ok=True)

        found = wiring.facts(config, "ransomware", [], store=store,
                             options={"infection_time": "2026-12-01T09:14:00+00:00"},
                             infection_time=at(11))                  # the detection time: the form's value wins
        assert [b.run_id for b in found.backups["postgres"]] == ["backup_20261201_020000", "backup_20261201_080000"]
        milvus = found.backups["milvus"][0]
        assert milvus.collections == ("docs", "faces") and milvus.restore_tested_at == at(4, 40)
        assert found.infection_time == INFECTION
        assert found.postgres_control == PostgresControlInfo("/var/lib/postgresql/15/main", "pg_ctl", "postgres")
        assert found.services[0] == ServiceInfo("auth", 1, (), "start", "./ops/start.sh auth")
        assert found.services[1].start == "restart" and found.services[1].command == "POST https://d/r"

        plan = propose(found)
        assert actions(plan) == ["isolate_systems", "postgres_restore", "milvus_restore", "service_start",
                                 "service_start", "verify"]
        assert plan.steps[0].title == "Isolate the infected systems: ./ops/isolate.sh --all"
        assert plan.steps[1].params["backup_id"] == "backup_20261201_020000"
        assert plan.steps[2].params["collections"] == ["docs", "faces"]
        assert "backup_20261201_080000 was skipped: not verified before the infection" in plan.rationale

        assert found.standby_check is None
        without_store = wiring.facts(config, "database_failure", [])
        assert without_store.backups == {} and without_store.options == {}
    finally:
        store.dispose()
