"""ENISA (2013) severity: the worked examples of the method, bands, credentials, overrides."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from breachwatch.config import CategoryRisk, RiskConfig
from breachwatch.incidents.casework import Casework
from breachwatch.incidents.service import IncidentService
from breachwatch.incidents.severity import (
    RiskBand,
    RiskInputs,
    assess,
    band_of,
    effective_band,
    with_override,
)
from breachwatch.store.schema import IncidentHistory
from tests.store_fixtures import finding, make_config, make_db

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def config(**categories: CategoryRisk) -> RiskConfig:
    return RiskConfig(
        categories=categories,
        unknown_recipient_rules=("anomaly.export",),
        malicious_rules=("ntk.departed_account",),
    )


def test_simple_data_ei_max_known_recipients_is_low() -> None:
    # ENISA worked example: simple data, EI 1, exposed to known recipients: 1 x 1 + 0.25
    cfg = config(contact=CategoryRisk(kind="simple", ease_of_identification=1.0))
    result = assess(
        RiskInputs(categories=("contact",), rules=("ntk.outside_grants",), subjects=1), cfg
    )
    assert result.score == 1.25
    assert result.band is RiskBand.LOW
    assert result.to_json()["formula"] == "1 x 1 + 0.25 = 1.25"
    conf = result.circumstances[0]
    assert (conf.name, conf.value) == ("confidentiality", 0.25)
    assert "known recipients" in conf.reason


def test_financial_unknown_recipients_malicious_is_high() -> None:
    # financial data, EI 0.75, unknown recipients, malicious: 3 x 0.75 + 0.5 + 0.5 = 3.25
    cfg = config(billing=CategoryRisk(kind="financial", ease_of_identification=0.75))
    result = assess(
        RiskInputs(
            categories=("billing",), rules=("anomaly.export", "ntk.departed_account"), subjects=3
        ),
        cfg,
    )
    assert result.score == 3.25
    assert result.band is RiskBand.HIGH
    by_name = {f.name: f for f in result.circumstances}
    assert by_name["confidentiality"].value == 0.5
    assert "anomaly.export" in by_name["confidentiality"].reason
    assert by_name["malicious"].value == 0.5


def test_highest_dpc_wins_and_adjustments_carry_their_reason() -> None:
    cfg = config(
        identity=CategoryRisk(kind="simple", ease_of_identification=1.0),
        support=CategoryRisk(kind="simple", dpc=2, reason="free text reveals situation"),
        health=CategoryRisk(kind="sensitive", ease_of_identification=0.5, special=True),
    )
    result = assess(RiskInputs(categories=("identity", "support"), rules=(), subjects=1), cfg)
    assert result.dpc.value == 2 and "free text reveals situation" in result.dpc.reason
    assert result.ei.value == 1.0
    sensitive = assess(RiskInputs(categories=("identity", "health"), rules=(), subjects=1), cfg)
    assert sensitive.dpc.value == 4
    assert sensitive.special_categories == ("health",)
    assert sensitive.band is RiskBand.VERY_HIGH  # 4 x 1 + 0.25


def test_credentials_score_as_what_they_unlock() -> None:
    cfg = config(
        mailbox=CategoryRisk(
            kind="behavioural", dpc=3, reason="mail content", ease_of_identification=1.0
        ),
        credentials=CategoryRisk(kind="credentials", unlocks=("mailbox",)),
    )
    result = assess(RiskInputs(categories=("credentials",), rules=(), subjects=1), cfg)
    assert result.dpc.value == 3
    assert "what they unlock" in result.dpc.reason
    assert result.ei.value == 1.0


def test_adjusted_dpc_without_reason_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs a reason"):
        CategoryRisk(kind="financial", dpc=4)
    with pytest.raises(ValidationError, match="one of"):
        CategoryRisk(ease_of_identification=0.6)


@pytest.mark.parametrize(
    ("score", "band"),
    [
        (1.99, RiskBand.LOW),
        (2, RiskBand.MEDIUM),
        (2.99, RiskBand.MEDIUM),
        (3, RiskBand.HIGH),
        (3.99, RiskBand.HIGH),
        (4, RiskBand.VERY_HIGH),
        (5.5, RiskBand.VERY_HIGH),
    ],
)
def test_bands(score: float, band: RiskBand) -> None:
    assert band_of(score) is band


def test_flags_and_unmapped_categories() -> None:
    result = assess(
        RiskInputs(
            categories=("mystery",), rules=(), subjects=101, count_unknown=True, unintelligible=True
        ),
        RiskConfig(),
    )
    flags = result.to_json()["flags"]
    assert flags["more_than_100_individuals"] and flags["number_unknown"]
    assert flags["data_unintelligible"]
    assert "not in the severity map" in result.dpc.reason


def test_override_needs_a_reason_and_keeps_the_computation() -> None:
    computed = assess(
        RiskInputs(categories=("contact",), rules=(), subjects=1), RiskConfig()
    ).to_json()
    with pytest.raises(ValueError, match="justification"):
        with_override(computed, RiskBand.HIGH, "dpo", T0, " ")
    overridden = with_override(computed, RiskBand.HIGH, "dpo", T0, "customer is a minor")
    assert effective_band(overridden) is RiskBand.HIGH
    assert overridden["band"] == "low"


def test_assessed_at_open_on_change_and_overridden_in_the_store(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    db = make_db(cfg)
    service = IncidentService(cfg)
    with db.transaction() as session:
        ref = service.record(session, [finding(T0)], T0).opened[0].ref
    with db.transaction() as session:
        export = finding(T0, offset=100, rule="anomaly.export")
        service.record(session, [export], T0)
    with db.transaction() as session:
        inc = Casework(cfg).override_risk(
            session, ref, RiskBand.VERY_HIGH, None, "dpo", "the customer list includes minors", T0
        )
        assert inc.risk_band == "very_high"
        stored = inc.risk_assessment
        assert stored is not None
        # identity/contact: 1 x 1 + unknown recipients 0.5 + malicious 0.5
        assert stored["score"] == 2.0 and stored["band"] == "medium"
        assert stored["override"]["reason"] == "the customer list includes minors"
        actions = [h.action for h in session.scalars(select(IncidentHistory))]
    assert actions.count("risk_assessed") == 2
    assert "risk_overridden" in actions
