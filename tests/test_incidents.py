"""Correlation of findings into incidents, and the staff lifecycle, on a real SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from breachwatch.detection.findings import Severity
from breachwatch.errors import StateError
from breachwatch.incidents.lifecycle import IncidentState
from breachwatch.incidents.service import IncidentService
from breachwatch.store.schema import FindingRow, Incident, IncidentHistory, IncidentSubject
from tests.store_fixtures import finding, make_config, make_db

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def test_fifty_findings_of_one_actor_make_one_incident(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    db = make_db(config)
    service = IncidentService(config)
    findings = [
        finding(T0 + timedelta(minutes=i), offset=i * 100, subjects=(str(2000 + i),))
        for i in range(50)
    ]
    with db.transaction() as session:
        result = service.record(session, findings, T0)
    assert len(result.opened) == 1
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Incident)) == 1
        assert session.scalar(select(func.count()).select_from(IncidentSubject)) == 50
        assert session.scalar(select(func.count()).select_from(FindingRow)) == 50


def test_same_finding_twice_is_recorded_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    db = make_db(config)
    service = IncidentService(config)
    for _ in range(2):
        with db.transaction() as session:
            service.record(session, [finding(T0)], T0)
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(FindingRow)) == 1


def test_window_and_actor_separate_incidents(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    db = make_db(config)
    service = IncidentService(config)
    with db.transaction() as session:
        service.record(session, [finding(T0)], T0)
        service.record(session, [finding(T0 + timedelta(hours=2), offset=100)], T0)
        service.record(session, [finding(T0, actor="omar_sysadmin", offset=200)], T0)
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Incident)) == 3


def test_low_findings_open_no_incident_but_join_an_open_one(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    db = make_db(config)
    service = IncidentService(config)
    low = finding(T0, severity=Severity.LOW, rule="auth.failed_login", subjects=())
    with db.transaction() as session:
        assert service.record(session, [low], T0).opened == []
        service.record(session, [finding(T0 + timedelta(minutes=1), offset=300)], T0)
        service.record(
            session,
            [
                finding(
                    T0 + timedelta(minutes=2),
                    offset=400,
                    severity=Severity.LOW,
                    rule="auth.failed_login",
                )
            ],
            T0,
        )
    with db.transaction() as session:
        rows = list(session.scalars(select(FindingRow).order_by(FindingRow.id)))
        assert [r.incident_id is None for r in rows] == [True, False, False]


def test_transitions_are_enforced_and_kept_in_history(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    db = make_db(config)
    service = IncidentService(config)
    with db.transaction() as session:
        ref = service.record(session, [finding(T0)], T0).opened[0].ref
    with db.transaction() as session:
        incident = service.transition(
            session,
            ref,
            IncidentState.CONFIRMED,
            "dpo",
            "customer data read by a departed account",
            T0,
        )
        assert incident.aware_at == T0
    with db.transaction() as session, pytest.raises(StateError, match="cannot go from"):
        service.transition(session, ref, IncidentState.SUSPECTED, "dpo", "oops", T0)
    with db.transaction() as session, pytest.raises(StateError, match="no incident"):
        service.transition(session, "BW-1999-0001", IncidentState.CLOSED, "dpo", "x", T0)
    with db.transaction() as session:
        actions = [
            (h.by, h.action)
            for h in session.scalars(select(IncidentHistory).order_by(IncidentHistory.id))
        ]
    assert actions[0] == ("breachwatch", "opened")
    assert ("dpo", "state") in actions


def _core_state(db: object) -> tuple[object, ...]:
    """What correlation decides: each finding's incident (by the incident's first finding),
    each incident's actor, severity, events span, categories and subjects."""
    with db.transaction() as session:  # type: ignore[attr-defined]
        incidents = {i.id: i for i in session.scalars(select(Incident))}
        rows = list(session.scalars(select(FindingRow).order_by(FindingRow.id)))
        first_key = {}
        for row in rows:
            if row.incident_id is not None:
                first_key.setdefault(row.incident_id, row.key)
        subjects: dict[int, set[str]] = {}
        for s in session.scalars(select(IncidentSubject)):
            subjects.setdefault(s.incident_id, set()).add(s.subject)
        return (
            sorted((r.key, first_key.get(r.incident_id)) for r in rows),
            sorted(
                (
                    first_key.get(i.id),
                    i.actor,
                    i.severity,
                    i.first_event_at,
                    i.last_event_at,
                    tuple(i.categories),
                    tuple(sorted(subjects.get(i.id, ()))),
                )
                for i in incidents.values()
            ),
        )


@pytest.mark.parametrize("seed", range(4))
def test_a_batch_correlates_as_one_finding_at_a_time(tmp_path: Path, seed: int) -> None:
    """record() stores a batch with one INSERT and reads each actor's open incidents and each
    incident's subjects once: the outcome must be what recording the same findings one at a
    time gives, including keys repeated in the batch and keys stored by an earlier batch."""
    import random

    rnd = random.Random(seed)
    actors = ["kevin_helpdesk", "omar_sysadmin", "lena_accounts"]
    severities = [Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]
    findings = [
        finding(
            T0 + timedelta(minutes=rnd.randrange(0, 300)),
            actor=rnd.choice(actors),
            offset=rnd.randrange(0, 60) * 100,  # repeats: the same key again
            severity=rnd.choice(severities),
            subjects=tuple(str(rnd.randrange(1000, 1012)) for _ in range(rnd.randrange(0, 3))),
            rule="auth.failed_login" if rnd.random() < 0.3 else "ntk.departed_account",
        )
        for _ in range(120)
    ]
    findings.sort(key=lambda f: f.time)  # as a log gives them, mostly
    earlier, batch = findings[:20], findings[20:]
    states = []
    for one_at_a_time in (False, True):
        (tmp_path / str(one_at_a_time)).mkdir()
        config = make_config(tmp_path / str(one_at_a_time))
        db = make_db(config)
        service = IncidentService(config)
        with db.transaction() as session:
            service.record(session, earlier, T0)
        with db.transaction() as session:
            if one_at_a_time:
                for f in batch:
                    service.record(session, [f], T0)
            else:
                service.record(session, batch, T0)
        states.append(_core_state(db))
    assert states[0] == states[1]
    assert len(states[0][1]) > 1, "several incidents were formed"
