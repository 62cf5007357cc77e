"""A figure's basis (what an RTO, RPO or MTTR was measured from) and a drill step's name in the
channel's language.

Aegis stores each basis as its English sentence plus ``{code, params}`` (recovery/objectives.py
``Basis``); Korean renders the code with its params (templates/ko/basis.j2). The bases here are the
real ones: produced by the functions that measure incidents and drills, not typed in.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from messages import drill_notices, render
from recovery import objectives
from recovery.drills import runs
from recovery.drills.context import STEP_CODES, Steps
from recovery.drills.drills import ONE_RECOVERY
from recovery.drills.scoring import Figure, Objectives, score
from recovery.objectives import BASIS_CODES, RECOVERED_TO_BASES, Basis
from statemachines.store import Store

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HANGUL = re.compile("[\uac00-\ud7a3]")


def real_bases() -> list[Basis]:
    """One basis of every kind the incident figures produce."""
    promotions = [{"already_promoted": True}, {"unreplayed_bytes": None}, {"unreplayed_bytes": 0},
                  {"unreplayed_bytes": 4096, "replay_lag_seconds": None},
                  {"unreplayed_bytes": 4096, "replay_lag_seconds": 2.5}]
    restores = [{"recovered_to": None, "recovered_to_basis": objectives.RECOVERED_TO_UNKNOWN},
                {"recovered_to": "yesterday"},
                {"recovered_to": (T0 - timedelta(seconds=90)).isoformat(),
                 "recovered_to_basis": objectives.RECOVERED_TO_LAST_REPLAYED},
                {"recovered_to": (T0 + timedelta(minutes=2)).isoformat(),
                 "recovered_to_basis": objectives.RECOVERED_TO_TARGET}]
    bases = [objectives.rpo_from_promotion(o)[1] for o in promotions]
    bases += [objectives.rpo_from_restore(o, failure_at=f, declared_at=T0)[1] for o in restores for f in (None, T0)]
    bases += [objectives.NO_PROMOTION_RPO, objectives.LOST_PROMOTION_RPO, objectives.LOST_RESTORE_RPO, ONE_RECOVERY]
    for verified, closed in ((None, None), (T0 + timedelta(minutes=40), T0 + timedelta(hours=1))):
        figures = objectives.incident_figures(declared_at=T0, verified_at=verified, closed_at=closed, rpo_seconds=None,
                                              rpo_basis=None, evidence_ok=True,
                                              targets=objectives.Targets(3600, 900, 7200))
        bases += [figures.rto.basis, figures.mttr.basis]
    return bases + [objectives.measured_by(bases[4], 3, "Promote pg-standby")]


def test_every_basis_code_and_recovered_to_sentence_has_korean_words() -> None:
    module = render._ENVS["ko"][0].get_template("basis.j2").module
    missing = [code for code in BASIS_CODES if not callable(getattr(module, code, None))]
    assert not missing, missing
    table = module.recovered_to_bases
    assert set(RECOVERED_TO_BASES) <= set(table), set(RECOVERED_TO_BASES) - set(table)


@pytest.mark.parametrize("basis", real_bases(), ids=lambda b: b.code)
def test_a_real_basis_is_korean_in_korean_and_its_own_text_in_english(basis: Basis) -> None:
    assert basis.code in BASIS_CODES
    assert render.basis_text("en", basis.text, basis.as_data()) == basis.text
    korean = render.basis_text("ko", basis.text, basis.as_data())
    assert HANGUL.search(korean) and korean != basis.text, korean
    # the English sentence's own words are gone (identifiers such as pg_last_xact_replay_timestamp stay)
    for word in ("unknown", "failure at", "replication lag", "declared", "measured by", "recovered"):
        assert word not in korean, (word, korean)
    for value in basis.params.values():
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value) not in RECOVERED_TO_BASES:
            assert str(value) in korean, (value, korean)     # every figure it names is still named


def test_the_step_that_measured_it_is_named_in_both_languages() -> None:
    basis = objectives.measured_by(objectives.rpo_from_promotion({"unreplayed_bytes": 0})[1], 3, "Promote pg-standby")
    assert basis.text.endswith(" — measured by step 3 (Promote pg-standby)")
    assert render.basis_text("ko", basis.text, basis.as_data()).endswith(" — 3단계(Promote pg-standby)에서 측정")


@pytest.mark.parametrize("data", [None, {}, {"code": "no_such_code", "params": {}}, {"code": "restore", "params": {}},
                                  {"code": "promotion_lag", "params": "not a dict"}, "garbage"])
def test_a_basis_without_usable_data_is_shown_as_its_stored_text(data: object) -> None:
    # rows written before the data was kept, or data a later version no longer fits: never a broken post
    for locale in render.LOCALES:
        assert render.basis_text(locale, "replication lag at failover", data) == "replication lag at failover"


def test_stored_rebuilds_a_basis_and_keeps_an_old_row_as_text() -> None:
    basis = objectives.rpo_from_promotion({"unreplayed_bytes": 4096, "replay_lag_seconds": 2.5})[1]
    assert Basis.stored(basis.text, basis.as_data()) == basis
    assert Basis.stored("lag 2 s", None) == Basis("", "lag 2 s")
    assert Basis.stored(None, basis.as_data()) is None


def test_a_drill_result_shows_its_figures_bases_in_the_channels_language() -> None:
    span = {"started": "2026-11-01T02:00:00+00:00", "verified": "2026-11-01T02:12:34+00:00"}
    figures = {"rto": Figure(754.0, Basis("drill_rto_failover", f"drill start {span['started']} → write verified on "
                                          f"the promoted standby {span['verified']}", span)),
               "mttr": Figure(754.0, ONE_RECOVERY)}
    scored = [s.as_dict() for s in score("database_failure", figures, Objectives())]
    assert all(s["basis_data"]["code"] in BASIS_CODES for s in scored)
    messages = {locale: drill_notices.result(
        run_id=1, name="database_failover_test", status="passed", trigger="cli", requested_by=None, objectives=scored,
        steps=[], figures={}, error="", report_path=None, locale=locale).text for locale in render.LOCALES}
    assert "write verified on the promoted standby" in messages["en"]
    assert "승격된 스탠바이에서 쓰기 검증" in messages["ko"] and "write verified" not in messages["ko"]
    assert span["verified"] in messages["ko"] and "복구 1회" in messages["ko"]


def test_every_drill_step_code_has_korean_words() -> None:
    module = render._ENVS["ko"][0].get_template("drill_steps.j2").module
    missing = [code for code in STEP_CODES if not callable(getattr(module, code, None))]
    assert not missing, missing


def test_a_drill_posts_its_step_names_in_the_channels_language(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/aegis.db")
    store.migrate()
    run_id = runs.start(store, "database_failover_test", "cli").id or 0
    steps = Steps(store, run_id, lambda _line: None)
    with steps.step("standby from backup_20261101_020000 + archived WAL", "standby",
                    {"backup": "backup_20261101_020000"}):
        pass
    with pytest.raises(RuntimeError), steps.step("service auth (tier 1)", "service", {"service": "auth", "tier": 1}):
        raise RuntimeError("connection refused")
    recorded = runs.get(store, run_id)
    assert recorded is not None
    posts = {locale: drill_notices.result(
        run_id=run_id, name="database_failover_test", status="failed", trigger="cli", requested_by=None,
        objectives=[], steps=recorded.steps, figures={}, error="", report_path=None, locale=locale).text
        for locale in render.LOCALES}
    assert "standby from backup_20261101_020000 + archived WAL" in posts["en"]
    assert "service auth (tier 1)" in posts["en"]
    assert "backup_20261101_020000 + 아카이브된 WAL로 스탠바이 구성" in posts["ko"]
    assert "서비스 auth (티어 1)" in posts["ko"] and "connection refused" in posts["ko"]
    assert "standby from" not in posts["ko"]
    listing = drill_notices.listing([{"id": run_id, "name": "database_failover_test", "status": "failed",
                                      "started_at": recorded.started_at, "trigger": "cli"}], "ko").text
    assert "실패" in listing and "명령줄" in listing
