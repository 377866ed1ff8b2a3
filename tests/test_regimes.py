"""Regimes, their clocks (awareness vs detection, DST with hypothesis) and the case work that
moves them: confirm, triage window, late notices, follow-ups, reopen, merge, split."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from breachwatch.config import ObligationsConfig, RegimesConfig
from breachwatch.detection.findings import Severity
from breachwatch.errors import StateError
from breachwatch.incidents import regimes
from breachwatch.incidents.casework import Casework
from breachwatch.incidents.deadlines import DeadlineKeeper
from breachwatch.incidents.lifecycle import IncidentState
from breachwatch.incidents.service import IncidentService
from breachwatch.incidents.severity import RiskBand
from breachwatch.store.schema import FindingRow, Incident, IncidentSubject, Obligation
from tests.store_fixtures import finding, make_config, make_db

BRUSSELS = regimes.BRUSSELS
# Both 2026 changes in Belgium: 29 March 01:00 UTC (02:00 -> 03:00), 25 October 01:00 UTC
SPRING = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
AUTUMN = datetime(2026, 10, 25, 1, 0, tzinfo=UTC)
around_dst = st.sampled_from([SPRING, AUTUMN]).flatmap(
    lambda change: st.integers(-4 * 86400, 2 * 86400).map(lambda s: change + timedelta(seconds=s))
)


def facts(
    categories: tuple[str, ...],
    band: RiskBand | None,
    *,
    subjects: bool = True,
    malicious: bool = False,
    special: bool = False,
    severity: Severity = Severity.MEDIUM,
) -> regimes.IncidentFacts:
    return regimes.IncidentFacts(
        categories, band, special, malicious, subjects, severity, SPRING, None
    )


def names(f: regimes.IncidentFacts, config: ObligationsConfig | None = None) -> list[str]:
    return [d.regime for d in regimes.decide(f, config or ObligationsConfig())]


def test_controller_data_low_risk_authority_only() -> None:
    assert names(facts(("identity", "contact"), RiskBand.LOW)) == ["gdpr_art33"]


def test_high_risk_or_special_categories_add_art34() -> None:
    assert names(facts(("billing",), RiskBand.HIGH)) == ["gdpr_art33", "gdpr_art34"]
    decisions = regimes.decide(
        facts(("identity",), RiskBand.MEDIUM, special=True), ObligationsConfig()
    )
    assert decisions[1].regime == "gdpr_art34" and "EDPB" in decisions[1].reason
    assert names(facts(("billing",), RiskBand.HIGH, subjects=False)) == ["gdpr_art33"]


def test_mail_content_is_processor_and_eprivacy() -> None:
    assert names(facts(("communications_content",), RiskBand.HIGH)) == [
        "gdpr_art33_2",
        "eprivacy_611",
    ]


def test_nis2_only_when_enabled_and_significant() -> None:
    on = ObligationsConfig(regimes=RegimesConfig(nis2={"enabled": True}))
    assert "nis2_early_warning" not in names(facts(("identity",), RiskBand.LOW, malicious=True))
    assert names(facts(("identity",), RiskBand.LOW, malicious=True), on)[-2:] == [
        "nis2_early_warning",
        "nis2_notification",
    ]
    assert "nis2_early_warning" not in names(facts(("identity",), RiskBand.HIGH), on)


def test_band_to_duty_mapping_is_configurable() -> None:
    strict = ObligationsConfig(
        regimes=RegimesConfig(subjects_from_band="medium", authority_from_band="medium")
    )
    assert names(facts(("identity",), RiskBand.MEDIUM), strict) == ["gdpr_art33", "gdpr_art34"]
    assert names(facts(("identity",), RiskBand.LOW), strict) == []


@given(around_dst)
def test_deadlines_are_elapsed_time_across_dst(start: datetime) -> None:
    config = ObligationsConfig(regimes=RegimesConfig(nis2={"enabled": True}))
    for regime, hours in [
        ("gdpr_art33", 72),
        ("eprivacy_611", 24),
        ("nis2_early_warning", 24),
        ("nis2_notification", 72),
        ("eprivacy_611_followup", 72),
    ]:
        due = regimes.due_from(regime, start, config)
        assert (due - start).total_seconds() == hours * 3600
        assert due.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=hours)


@given(around_dst)
def test_nis2_final_report_is_one_calendar_month_in_brussels(start: datetime) -> None:
    due = regimes.due_from("nis2_final_report", start, ObligationsConfig())
    local_start, local_due = start.astimezone(BRUSSELS), due.astimezone(BRUSSELS)
    assert (local_due.year * 12 + local_due.month) - (
        local_start.year * 12 + local_start.month
    ) == 1
    month_end = calendar.monthrange(local_due.year, local_due.month)[1]
    assert local_due.day == min(local_start.day, month_end)  # 31 March -> 30 April
    # the wall-clock time is kept (an hour apart at most when it falls in a DST gap)
    delta = abs(
        (local_due.hour * 60 + local_due.minute) - (local_start.hour * 60 + local_start.minute)
    )
    assert delta in (0, 60)


@given(around_dst, st.integers(0, 47 * 3600))
def test_awareness_recomputes_only_awareness_clocks(detected: datetime, later: int) -> None:
    aware = detected + timedelta(seconds=later)
    assert regimes.clock_start("gdpr_art33", detected, None) == detected
    assert regimes.clock_start("gdpr_art33", detected, aware) == aware
    assert regimes.clock_start("eprivacy_611", detected, aware) == detected


def _open(tmp_path: Path, when: datetime, **kw: object) -> tuple[object, object, str]:
    config = make_config(tmp_path, **kw)  # type: ignore[arg-type]
    db = make_db(config)
    with db.transaction() as session:
        ref = IncidentService(config).record(session, [finding(when)], when).opened[0].ref
    return config, db, ref


@settings(
    deadline=None, max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(0, 23 * 3600))
def test_confirm_moves_the_art33_clock_to_awareness(
    tmp_path_factory: pytest.TempPathFactory, delay: int
) -> None:
    tmp = tmp_path_factory.mktemp("aware")
    config, db, ref = _open(tmp, SPRING - timedelta(hours=3))
    detected = SPRING - timedelta(hours=3)
    confirmed = detected + timedelta(seconds=delay)
    with db.transaction() as session:  # type: ignore[attr-defined]
        IncidentService(config).transition(
            session,
            ref,
            IncidentState.CONFIRMED,  # type: ignore[arg-type]
            "dpo",
            "real",
            confirmed,
        )
        ob = session.scalars(select(Obligation).where(Obligation.regime == "gdpr_art33")).one()
        assert ob.clock_start == confirmed
        assert ob.due_at - confirmed == timedelta(hours=72)


def test_triage_window_sets_awareness_so_the_clock_cannot_stop(tmp_path: Path) -> None:
    t0 = AUTUMN - timedelta(hours=2)
    config, db, ref = _open(
        tmp_path, t0, incidents={"triage_window": "4h", "unconfirmed_awareness": "window_end"}
    )
    keeper = DeadlineKeeper(db, config, "mailfolder")  # type: ignore[arg-type]
    assert ("triage-1", t0 + timedelta(hours=4)) in keeper.next_wakeups()
    assert keeper.tick(t0 + timedelta(hours=3)).awareness == []
    assert keeper.tick(t0 + timedelta(hours=4)).awareness == [ref]
    with db.transaction() as session:  # type: ignore[attr-defined]
        inc = session.scalars(select(Incident)).one()
        assert (inc.aware_at, inc.aware_source) == (t0 + timedelta(hours=4), "triage_window")
        ob = session.scalars(select(Obligation).where(Obligation.regime == "gdpr_art33")).one()
        assert ob.due_at == t0 + timedelta(hours=76)
    assert keeper.tick(t0 + timedelta(hours=5)).awareness == []


def test_late_notice_needs_reasons(tmp_path: Path) -> None:
    config, db, ref = _open(tmp_path, SPRING)
    late = SPRING + timedelta(hours=80)
    work = Casework(config)  # type: ignore[arg-type]
    with db.transaction() as session, pytest.raises(StateError, match="reasons for the delay"):  # type: ignore[attr-defined]
        work.notice_given(session, ref, "gdpr_art33", "complete", "dpo", " ", late)
    with db.transaction() as session:  # type: ignore[attr-defined]
        ob = work.notice_given(
            session,
            ref,
            "gdpr_art33",
            "initial",
            "dpo",
            "sent by form",
            late,
            late_reason="forensic copy needed first",
        )
        assert ob.state == "done" and ob.notes["late_reason"] == "forensic copy needed first"


def test_eprivacy_initial_notice_starts_the_three_day_follow_up(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    db = make_db(config)
    mail = finding(SPRING, subjects=("1001",))
    mail = type(mail)(
        **{
            **{f: getattr(mail, f) for f in mail.__dataclass_fields__},
            "categories": ("communications_content",),
        }
    )
    with db.transaction() as session:
        ref = IncidentService(config).record(session, [mail], SPRING).opened[0].ref
        regs = {o.regime: o for o in session.scalars(select(Obligation))}
        assert {"gdpr_art33_2", "eprivacy_611"} <= set(regs)
        assert regs["eprivacy_611"].due_at == SPRING + timedelta(hours=24)
    sent = SPRING + timedelta(hours=20)
    with db.transaction() as session:
        Casework(config).notice_given(session, ref, "eprivacy_611", "initial", "dpo", "ok", sent)
        follow = session.scalars(
            select(Obligation).where(Obligation.regime == "eprivacy_611_followup")
        ).one()
        assert follow.due_at == sent + timedelta(days=3)


def test_exemption_is_recorded_with_its_ground(tmp_path: Path) -> None:
    config, db, ref = _open(tmp_path, SPRING)
    with db.transaction() as session:  # type: ignore[attr-defined]
        with pytest.raises(StateError, match="no exemption"):
            Casework(config).exempt(session, ref, "gdpr_art34", "bored", "dpo", "x", SPRING)  # type: ignore[arg-type]
        ob = Casework(config).exempt(
            session,
            ref,
            "gdpr_art34",
            "unintelligible",
            "dpo",  # type: ignore[arg-type]
            "disk encrypted, key not compromised",
            SPRING,
        )
        assert ob.state == "exempt" and ob.notes["exemption"]["ground"] == "unintelligible"


def test_reopen_assign_comment(tmp_path: Path) -> None:
    config, db, ref = _open(tmp_path, SPRING)
    service = IncidentService(config)  # type: ignore[arg-type]
    with db.transaction() as session:  # type: ignore[attr-defined]
        service.transition(session, ref, IncidentState.DISMISSED, "dpo", "test data", SPRING)
        assert {o.state for o in session.scalars(select(Obligation))} == {"cancelled"}
    with db.transaction() as session, pytest.raises(StateError, match="reason"):  # type: ignore[attr-defined]
        service.transition(session, ref, IncidentState.SUSPECTED, "dpo", " ", SPRING)
    with db.transaction() as session:  # type: ignore[attr-defined]
        inc = service.transition(
            session,
            ref,
            IncidentState.SUSPECTED,
            "dpo",
            "not test data after all",
            SPRING + timedelta(hours=1),
        )
        assert inc.state == "suspected"
        assert {o.state for o in session.scalars(select(Obligation))} == {"open"}
        Casework(config).assign(session, ref, "nina", "dpo", SPRING)  # type: ignore[arg-type]
        Casework(config).comment(session, ref, "called the customer", "nina", SPRING)  # type: ignore[arg-type]
        assert inc.assignee == "nina"


def test_merge_and_split(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    db = make_db(config)
    service = IncidentService(config)
    with db.transaction() as session:
        a = service.record(session, [finding(SPRING, subjects=("1001",))], SPRING).opened[0].ref
        b = (
            service.record(
                session,
                [finding(SPRING, actor="omar_sysadmin", offset=300, subjects=("1002",))],
                SPRING - timedelta(hours=1),
            )
            .opened[0]
            .ref
        )
    work = Casework(config)
    with db.transaction() as session:
        merged = work.merge(session, a, b, "dpo", "same attacker", SPRING + timedelta(hours=1))
        assert merged.detected_at == SPRING - timedelta(hours=1)  # the earlier detection wins
        other = session.scalars(select(Incident).where(Incident.ref == b)).one()
        assert (other.state, other.merged_into) == ("merged", merged.id)
        subjects = set(
            session.scalars(
                select(IncidentSubject.subject).where(IncidentSubject.incident_id == merged.id)
            )
        )
        assert subjects == {"1001", "1002"}
        moved = session.scalars(select(FindingRow).where(FindingRow.actor == "omar_sysadmin")).one()
    with db.transaction() as session:
        part = work.split(session, a, moved.id, "dpo", "unrelated", SPRING + timedelta(hours=2))
        assert part.detected_at == SPRING - timedelta(hours=1)
        assert set(
            session.scalars(
                select(IncidentSubject.subject).where(IncidentSubject.incident_id == part.id)
            )
        ) == {"1002"}
        assert set(
            session.scalars(
                select(IncidentSubject.subject).where(IncidentSubject.incident_id == merged.id)
            )
        ) == {"1001"}
        assert {
            o.regime
            for o in session.scalars(select(Obligation).where(Obligation.incident_id == part.id))
        } >= {"gdpr_art33"}
    with db.transaction() as session, pytest.raises(StateError, match="nothing to split"):
        last = session.scalars(select(FindingRow).where(FindingRow.incident_id == merged.id)).one()
        work.split(session, a, last.id, "dpo", "x", SPRING)
