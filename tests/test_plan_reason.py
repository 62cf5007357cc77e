"""The planner's reason on the assessment message: worded per locale from its code and params.

The planner (recovery/planner.py) is run for real on its Facts; its ``reason`` + ``reason_ctx`` are what
usecases.assess stores in the assessment's outbox row, and what messages/blocks/incident.py renders
under *Why:* — in English and in Korean, the ransomware clean point included, never a requirement id.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from messages import render
from messages.blocks import incident as incident_blocks
from messages.views import Message
from recovery.clean_point import BackupCandidate
from recovery.planner import FAILOVER, REASONS, WHY_NOT_CODES, Facts, Plan, propose
from tests.harness.message_samples import make_view

INFECTION = datetime(2026, 12, 1, 9, 14, tzinfo=UTC)
IDS = re.compile(r"\b[SCOTP][0-9]\b")


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, 1, hour, minute, tzinfo=UTC)


def pg(run_id: str, taken: datetime, verified: datetime | None = None) -> BackupCandidate:
    return BackupCandidate(run_id, "postgres", taken, verified_at=verified, verify_ok=True if verified else None)


def why(plan: Plan, locale: str, scenario: str = "database_failure") -> str:
    view = make_view("assessed", scenario=scenario, strategy=plan.strategy)
    msg: Message = incident_blocks.assessment(view, locale, reason=plan.reason, reason_ctx=plan.reason_ctx,
                                              rationale="the English rationale must not be shown")
    block: Any = next(b for b in msg.blocks if b.get("block_id") == "assessment_strategy")
    text = str(block["text"]["text"])
    assert "English rationale" not in text and not IDS.search(text), text
    return text.split("_Why:_" if locale == "en" else "_근거:_", 1)[1].strip()


def ransomware_plan() -> Plan:
    backups = (pg("backup_20261201_120000", at(12)), pg("backup_20261201_080000", at(8), verified=at(9, 30)),
               pg("backup_20261201_020000", at(2), verified=at(2, 40)))
    return propose(Facts(scenario="ransomware", has_postgres_primary=True, neo4j_database="graph",
                         backups={"postgres": backups}, infection_time=INFECTION, options={"strategy": FAILOVER}))


def test_the_clean_point_and_every_skipped_backup_are_explained_in_english_and_korean() -> None:
    plan = ransomware_plan()
    en, ko = why(plan, "en", "ransomware"), why(plan, "ko", "ransomware")
    assert en.startswith("*failover to the standby* is not possible: a standby replicates the attack")
    assert "Planned instead: ransomware: isolate the systems" in en
    assert "*Clean point:* infection at 2026-12-01 09:14 UTC; PostgreSQL is recovered to 1 s before it." in en
    assert ("• PostgreSQL: `backup_20261201_020000` taken 2026-12-01 02:00 UTC, verified 2026-12-01 02:40 UTC: "
            "the newest backup proven intact before the infection; `backup_20261201_120000` skipped: taken "
            "2026-12-01 12:00 UTC, after the infection; `backup_20261201_080000` skipped: not verified before the "
            "infection (checked only at 2026-12-01 09:30 UTC)") in en
    assert "• Neo4j: no backup was verified before the infection: restore it by hand" in en

    assert ko.startswith("*스탠바이로 페일오버* 전략은 불가능합니다: 스탠바이는 공격까지 복제하므로")
    assert "*깨끗한 복원 지점:* 감염 시각 2026-12-01 09:14 UTC; PostgreSQL은 그 1초 전까지 복구합니다." in ko
    assert ("• PostgreSQL: `backup_20261201_020000`(2026-12-01 02:00 UTC 생성, 2026-12-01 02:40 UTC에 검증됨): "
            "감염 전에 무결성이 입증된 가장 최근 백업; `backup_20261201_120000` 제외: "
            "감염 이후인 2026-12-01 12:00 UTC에 생성됨; `backup_20261201_080000` 제외: "
            "감염 전에 검증되지 않음(2026-12-01 09:30 UTC에야 점검됨)") in ko
    assert "• Neo4j: 감염 전에 검증된 백업이 없습니다" in ko
    for english in ("skipped", "taken", "infection", "Clean point", "not possible"):
        assert english not in ko


@pytest.mark.parametrize(("facts", "en", "ko"), [
    (Facts(scenario="database_failure", has_postgres_primary=True),
     "no standby is configured: restore from backup in place.",
     "스탠바이가 구성되어 있지 않습니다: 백업에서 제자리 복원합니다."),
    (Facts(scenario="database_failure", has_postgres_primary=True, has_postgres_standby=True),
     "a streaming standby is configured: promote it.", "스트리밍 스탠바이가 구성되어 있습니다: 스탠바이를 승격합니다."),
    (Facts(scenario="database_failure", has_postgres_primary=True, has_postgres_standby=True, standby_check="pg-b",
           failing=frozenset({"pg-b"}), options={"strategy": FAILOVER}),
     "*failover to the standby* is not possible: the standby is unreachable (pg-b failed). Planned instead: the "
     "standby is unreachable (pg-b failed): restore from backup.",
     "*스탠바이로 페일오버* 전략은 불가능합니다: 스탠바이에 연결할 수 없습니다(pg-b 실패). 대신 계획한 전략: "
     "스탠바이에 연결할 수 없습니다(pg-b 실패): 백업에서 복원합니다."),
    (Facts(scenario="database_failure", has_postgres_primary=True, has_postgres_standby=True,
           options={"strategy": "restore_from_backup"}),
     "*restore from backup* chosen by the responders (default: a streaming standby is configured: promote it).",
     "담당자가 *백업에서 복원* 전략을 선택했습니다"
     "(기본값: 스트리밍 스탠바이가 구성되어 있습니다: 스탠바이를 승격합니다)."),
    (Facts(scenario="ransomware", has_postgres_primary=True),
     "ransomware: isolate the systems, then restore every component from a clean point.\n*Clean point:* not "
     "chosen yet: set the time of infection (ransomware form).",
     "랜섬웨어: 시스템을 격리한 뒤 모든 구성 요소를 깨끗한 복원 지점에서 복원합니다.\n*깨끗한 복원 지점:* 아직 "
     "정하지 않았습니다: 감염 시각을 입력하세요(랜섬웨어 양식)."),
])
def test_each_reason_reads_in_both_locales(facts: Facts, en: str, ko: str) -> None:
    plan = propose(facts)
    assert (why(plan, "en", facts.scenario), why(plan, "ko", facts.scenario)) == (en, ko)


def test_every_default_reason_and_refusal_code_has_words_in_every_locale() -> None:
    """A code the templates do not know would be shown raw: every one the planner can give is worded."""
    for locale in render.LOCALES:
        for code in REASONS:
            assert code not in why(Plan("failover", [], "", code, {"check": "pg-b"}), locale)
        for code in WHY_NOT_CODES:
            ctx = {"choice": {"strategy": "partial_recovery", "outcome": "refused", "why_not": code,
                              "why_not_ctx": {"component": "neo4j", "check": "pg-b"}}}
            assert code not in why(Plan("failover", [], "", "standby_failover", ctx), locale)
