"""The legal clock with an injected clock: reminders, overdue and release, without sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog.testing
from sqlalchemy import select

from breachwatch.config import ObligationsConfig
from breachwatch.detection.findings import Severity
from breachwatch.incidents.deadlines import DeadlineKeeper
from breachwatch.incidents.lifecycle import IncidentState
from breachwatch.incidents.obligations import next_action_at, plan_obligations, status_at
from breachwatch.incidents.service import IncidentService
from breachwatch.store.schema import IncidentHistory, Obligation, OutboxMessage
from tests.store_fixtures import finding, make_config, make_db

T0 = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)  # the night Belgium moves to summer time


def test_plan_gdpr_and_customer_notice_from_detection() -> None:
    config = ObligationsConfig()
    plans = plan_obligations(Severity.CRITICAL, True, T0, config)
    assert [(p.regime, p.due_at) for p in plans] == [
        ("gdpr_art33", T0 + timedelta(hours=72)),
        ("gdpr_art34", T0 + timedelta(hours=72)),
    ]
    assert plans[1].release_at == T0 + config.hold
    # a medium incident without subjects: only the authority clock
    assert [p.regime for p in plan_obligations(Severity.MEDIUM, False, T0, config)] == [
        "gdpr_art33"
    ]


def test_72h_is_elapsed_time_across_the_dst_change() -> None:
    # 72 h after 22:00 UTC on 28 March is 22:00 UTC on 31 March, whatever the wall clock did
    plan = plan_obligations(Severity.HIGH, False, T0, ObligationsConfig())[0]
    assert plan.due_at == datetime(2026, 3, 31, 22, 0, tzinfo=UTC)


def test_status_and_next_action_are_pure() -> None:
    due = T0 + timedelta(hours=72)
    kwargs = dict(
        clock_start=T0, due_at=due, release_at=None, released=False, fractions=(0.5, 0.75, 0.9)
    )
    assert status_at(reminders_sent=(), now=T0 + timedelta(hours=1), **kwargs).reminders_due == ()
    at_60h = status_at(reminders_sent=(0.5,), now=T0 + timedelta(hours=60), **kwargs)
    assert at_60h.reminders_due == (0.75,) and not at_60h.overdue
    assert status_at(reminders_sent=(0.5, 0.75, 0.9), now=due, **kwargs).overdue
    assert next_action_at(
        reminders_sent=(0.5,), overdue_recorded=False, **kwargs
    ) == T0 + timedelta(hours=54)
    assert next_action_at(reminders_sent=(0.5, 0.75, 0.9), overdue_recorded=True, **kwargs) is None


def test_obligation_reminds_then_goes_overdue(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    db = make_db(config)
    with db.transaction() as session:
        IncidentService(config).record(session, [finding(T0)], T0)
    keeper = DeadlineKeeper(db, config, "smtp")

    assert keeper.tick(T0 + timedelta(hours=1)).reminders == []
    half = keeper.tick(T0 + timedelta(hours=36))
    assert sorted(r[1:] for r in half.reminders) == [("gdpr_art33", 0.5), ("gdpr_art34", 0.5)]
    assert keeper.tick(T0 + timedelta(hours=36, minutes=5)).reminders == []  # once only
    late = keeper.tick(T0 + timedelta(hours=80))
    assert sorted(r[1:] for r in late.reminders) == [
        ("gdpr_art33", 0.75),
        ("gdpr_art33", 0.9),
        ("gdpr_art34", 0.75),
        ("gdpr_art34", 0.9),
    ]
    assert sorted(r[1] for r in late.overdue) == ["gdpr_art33", "gdpr_art34"]
    assert keeper.tick(T0 + timedelta(hours=81)).overdue == []
    with db.transaction() as session:
        actions = [h.action for h in session.scalars(select(IncidentHistory))]
        assert actions.count("obligation_overdue") == 2
        assert all(o.overdue_since is not None for o in session.scalars(select(Obligation)))


def test_notices_released_after_hold_once_per_subject(tmp_path: Path) -> None:
    config = make_config(tmp_path, obligations={"hold": "30m"})
    db = make_db(config)
    service = IncidentService(config)
    with db.transaction() as session:
        service.record(session, [finding(T0, subjects=("1001", "1002"))], T0)
    keeper = DeadlineKeeper(db, config, "smtp")
    assert keeper.tick(T0 + timedelta(minutes=29)).enqueued == 0
    assert keeper.tick(T0 + timedelta(minutes=30)).enqueued == 2
    assert keeper.tick(T0 + timedelta(minutes=31)).enqueued == 0
    with db.transaction() as session:  # a later finding adds a subject: one more notice only
        service.record(
            session,
            [finding(T0 + timedelta(minutes=40), offset=500, subjects=("1003",))],
            T0 + timedelta(minutes=40),
        )
    assert keeper.tick(T0 + timedelta(minutes=41)).enqueued == 1
    with db.transaction() as session:
        keys = sorted(m.recipient_id for m in session.scalars(select(OutboxMessage)))
    assert keys == ["1001", "1002", "1003"]


def test_dismissal_during_hold_cancels_everything(tmp_path: Path) -> None:
    config = make_config(tmp_path, obligations={"hold": "30m"})
    db = make_db(config)
    service = IncidentService(config)
    with db.transaction() as session:
        opened = service.record(session, [finding(T0)], T0).opened[0]
        ref = opened.ref
    with db.transaction() as session:
        service.transition(
            session, ref, IncidentState.DISMISSED, "dpo", "test data", T0 + timedelta(minutes=5)
        )
    report = DeadlineKeeper(db, config, "smtp").tick(T0 + timedelta(hours=80))
    assert report.enqueued == 0 and report.overdue == [] and report.reminders == []
    with db.transaction() as session:
        assert {o.state for o in session.scalars(select(Obligation))} == {"cancelled"}


def test_clock_jumping_back_an_hour_repeats_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path, obligations={"hold": "30m"})
    db = make_db(config)
    with db.transaction() as session:
        IncidentService(config).record(session, [finding(T0)], T0)
    keeper = DeadlineKeeper(db, config, "smtp")
    first = keeper.tick(T0 + timedelta(hours=37))
    assert first.enqueued == 1 and len(first.reminders) == 2 and first.clock_moved_back == 0
    with structlog.testing.capture_logs() as logs:
        back = keeper.tick(T0 + timedelta(hours=36))  # an NTP step or a VM restore
    assert back.clock_moved_back == 3600
    assert back.reminders == [] and back.enqueued == 0 and back.overdue == []
    assert any(e["event"] == "clock_moved_back" and e["log_level"] == "error" for e in logs)
    again = keeper.tick(T0 + timedelta(hours=37, minutes=1))
    assert again.clock_moved_back == 0 and again.reminders == [] and again.enqueued == 0
    with db.transaction() as session:
        assert len(list(session.scalars(select(OutboxMessage)))) == 1


def test_customers_found_after_every_notice_went_out_still_get_one(tmp_path: Path) -> None:
    config = make_config(tmp_path, obligations={"hold": "0s"})
    db = make_db(config)
    service = IncidentService(config)
    with db.transaction() as session:
        service.record(session, [finding(T0, subjects=("1001",))], T0)
    keeper = DeadlineKeeper(db, config, "smtp")
    assert keeper.tick(T0 + timedelta(minutes=1)).enqueued == 1
    with db.transaction() as session:  # the notice went out: the obligation completes
        for message in session.scalars(select(OutboxMessage)):
            message.state = "sent"
    assert [c[1] for c in keeper.tick(T0 + timedelta(minutes=2)).completed] == ["gdpr_art34"]
    with db.transaction() as session:  # later, the same actor's next finding names 1002
        service.record(
            session,
            [finding(T0 + timedelta(minutes=3), offset=700, subjects=("1002",))],
            T0 + timedelta(minutes=3),
        )
    assert keeper.tick(T0 + timedelta(minutes=4)).enqueued == 1
    with db.transaction() as session:
        recipients = sorted(m.recipient_id for m in session.scalars(select(OutboxMessage)))
    assert recipients == ["1001", "1002"]
