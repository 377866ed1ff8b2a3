"""Volume detectors: distinct-subject windows (with persisted state) and unbounded reads."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from breachwatch.detection.findings import Finding, Severity
from breachwatch.detection.policy import Policy
from breachwatch.detection.rules import RULES
from breachwatch.detection.volume import DistinctSubjectsDetector, UnboundedReadDetector
from breachwatch.events import AccessEvent, Action, SourcePosition

CEST = timezone(timedelta(hours=2))
T0 = datetime(2025, 6, 17, 8, 6, 10, tzinfo=CEST)
LOG = "/var/log/postgresql/postgresql.log"


def make_policy(threshold: int = 5, window: str = "10m", **anomaly: Any) -> Policy:
    return Policy.model_validate(
        {
            "version": 1,
            "staff": [
                {"person": "tom", "accounts": ["tom_helpdesk", "tom_panel"], "roles": ["helpdesk"]},
                {"person": "nina", "accounts": ["nina_helpdesk"], "roles": ["helpdesk"]},
            ],
            "service_accounts": [{"account": "svc_shop", "roles": ["webshop"]}],
            "data_map": [
                {"object": "clients.accounts", "categories": ["identity", "contact"]},
                {"object": "webmail.accounts", "categories": ["mailbox"]},
            ],
            "anomaly": {
                "distinct_subjects": {
                    "window": window,
                    "threshold": threshold,
                    "exempt_roles": ["webshop"],
                },
                **anomaly,
            },
        }
    )


POLICY = make_policy()


def read(
    seconds: float,
    *subjects: str,
    actor: str = "tom_helpdesk",
    obj: str = "clients.accounts",
    action: Action = Action.READ,
    offset: int | None = None,
    unbounded: bool = False,
) -> AccessEvent:
    at = offset if offset is not None else int(seconds * 1000)
    return AccessEvent(
        time=T0 + timedelta(seconds=seconds),
        store="pg-main",
        actor=actor,
        action=action,
        position=SourcePosition(LOG, at, at // 100 + 1, 100),
        objects=(obj,),
        subjects=subjects,
        unbounded=unbounded,
    )


def run(detector: DistinctSubjectsDetector, events: list[AccessEvent]) -> list[Finding]:
    return [finding for event in events for finding in detector(event)]


def lookups(start: float, count: int, step: float = 2.0, prefix: str = "c") -> list[AccessEvent]:
    return [read(start + i * step, f"{prefix}{start:.0f}-{i}") for i in range(count)]


def test_crossing_the_threshold_fires_once_with_the_window_as_evidence() -> None:
    detector = DistinctSubjectsDetector(POLICY)
    events = lookups(0, 5)
    events.insert(2, read(3, "c0-0"))  # the same customer again adds nothing
    assert run(detector, events) == []
    events = [read(20, "c-last", obj="webmail.accounts")]
    [finding] = run(detector, events)
    assert finding.rule == "anomaly.distinct_subjects"
    assert finding.severity is Severity.HIGH
    assert finding.controls == RULES["anomaly.distinct_subjects"].controls
    assert finding.person == "tom" and finding.actor == "tom_helpdesk"
    assert finding.time == T0 + timedelta(seconds=20)
    assert len(finding.subjects) == 6 and "c-last" in finding.subjects
    assert finding.objects == ("clients.accounts", "webmail.accounts")
    assert finding.categories == ("identity", "contact", "mailbox")
    # one position per subject, newest sighting, oldest first
    assert [p.offset for p in finding.evidence] == [2000, 3000, 4000, 6000, 8000, 20000]
    assert "tom (account tom_helpdesk) read 6 distinct customers in 10 min" in finding.explanation
    assert finding.explanation.endswith("threshold 5.")


def test_suppressed_until_the_window_has_passed_then_fires_again() -> None:
    detector = DistinctSubjectsDetector(POLICY)
    assert len(run(detector, lookups(0, 6))) == 1  # crossing at t=10 s
    assert run(detector, lookups(60, 40)) == []  # still inside 10 min of the crossing
    # the window after the crossing still holds >5 subjects, but suppression lasts until
    # t=10+600 s; the first event at or after that fires again
    assert run(detector, [read(609, "late-1")]) == []
    assert len(run(detector, [read(610, "late-2")])) == 1


def test_sliding_window_forgets_old_subjects() -> None:
    detector = DistinctSubjectsDetector(POLICY)
    # one new customer every 2.5 min: never more than 4 inside any 10-minute window
    assert run(detector, [read(i * 150, f"s{i}") for i in range(40)]) == []
    assert detector.tracked("tom") == 4
    # a subject exactly one window old has left the window
    detector = DistinctSubjectsDetector(POLICY)
    run(detector, [read(0, "a"), read(600, "b")])
    assert detector.tracked("tom") == 1


def test_window_is_per_person_across_accounts_and_separate_between_people() -> None:
    detector = DistinctSubjectsDetector(POLICY)
    events = [read(i, f"c{i}", actor="tom_helpdesk" if i % 2 else "tom_panel") for i in range(5)]
    events += [read(i, f"n{i}", actor="nina_helpdesk") for i in range(5)]
    assert run(detector, events) == []
    [finding] = run(detector, [read(10, "c99", actor="tom_panel")])
    assert finding.person == "tom" and finding.actor == "tom_panel"
    assert detector.tracked("nina") == 5


def test_only_reads_and_exports_of_personal_data_by_non_exempt_actors_count() -> None:
    detector = DistinctSubjectsDetector(POLICY)
    events = [read(i, f"w{i}", action=Action.WRITE) for i in range(10)]
    events += [read(i, f"p{i}", obj="public.settings") for i in range(10)]
    events += [read(i, f"s{i}", actor="svc_shop") for i in range(10)]
    events += [read(i, "x", "y", "z", action=Action.DENIED) for i in range(10)]
    assert run(detector, events) == []
    assert detector.snapshot()["windows"] == []
    # an unknown account is tracked under its own name; exports count too
    assert run(detector, [read(1, *[f"e{i}" for i in range(6)], actor="etl", action=Action.EXPORT)])


def test_out_of_order_times_within_the_window_still_count() -> None:
    detector = DistinctSubjectsDetector(POLICY)
    times = [10, 7, 12, 5, 11]  # a few seconds out of order
    assert run(detector, [read(t, f"c{t}") for t in times]) == []
    [finding] = run(detector, [read(4, "c4")])
    assert finding.time == T0 + timedelta(seconds=4)
    assert len(finding.subjects) == 6
    # quiet for a full window after the NEWEST time seen (12 s), not after the late record
    assert run(detector, [read(300 + i, f"m{i}") for i in range(5)]) == []
    assert run(detector, [read(606, "n1")]) == []
    assert len(run(detector, [read(612, "n2")])) == 1


def test_dropping_idle_actors_does_not_lose_what_a_late_record_still_needs() -> None:
    detector = DistinctSubjectsDetector(POLICY)
    run(detector, [read(1004, *[f"c{i}" for i in range(5)])])
    run(detector, [read(1604, "x", actor="nina_helpdesk")])  # moves the watermark on
    # 4 s late for the pipeline, but inside tom's window: his five customers still count
    assert len(run(detector, [read(1600, "c5")])) == 1


def test_a_record_older_than_the_window_is_not_counted() -> None:
    detector = DistinctSubjectsDetector(POLICY)
    run(detector, lookups(700, 5))
    assert run(detector, [read(50, "ancient")]) == []
    assert detector.tracked("tom") == 5
    # a later sighting of a known subject moves it forward; an older one does not move it back
    run(detector, [read(720, "c700-0"), read(701, "c700-0")])
    assert detector.snapshot()["windows"][0]["sightings"][0]["time"].endswith("08:18:10+02:00")


def test_idle_actors_are_dropped() -> None:
    detector = DistinctSubjectsDetector(POLICY)
    run(detector, [read(0, "a", actor="nina_helpdesk"), read(1, "b")])
    run(detector, [read(1300, "c"), read(2000, "d")])
    assert [w["actor"] for w in detector.snapshot()["windows"]] == ["tom"]
    assert detector.tracked("nina") == 0


def scenario() -> list[AccessEvent]:
    """Three actors, bursts, repeats, jitter and idle gaps: exercises every state change."""
    events: list[AccessEvent] = []
    offset = 0
    for burst, start in enumerate([0, 200, 900, 1000, 2600, 2700]):
        for i in range(9):
            jitter = (-3, 0, 2, -1, 4, 0, -2, 1, 0)[i]
            actor = ("tom_helpdesk", "nina_helpdesk", "tom_panel")[(burst + i) % 3]
            subject = f"c{(burst * 7 + i * 3) % 23}"
            offset += 120
            events.append(read(start + i * 5 + jitter, subject, actor=actor, offset=offset))
    return events


def test_snapshot_restore_gives_the_same_findings_as_an_uninterrupted_run() -> None:
    policy = make_policy(threshold=3)
    events = scenario()
    expected = run(DistinctSubjectsDetector(policy), events)
    assert len(expected) >= 3  # the scenario must exercise firing and suppression
    for split in range(len(events) + 1):
        first = DistinctSubjectsDetector(policy)
        found = run(first, events[:split])
        saved = json.loads(json.dumps(first.snapshot()))  # what the daemon stores
        second = DistinctSubjectsDetector(policy)
        second.restore(saved)
        assert second.snapshot() == first.snapshot()
        found += run(second, events[split:])
        assert found == expected, f"differs when restarted before event {split}"


def test_restore_refuses_a_malformed_snapshot_and_keeps_its_state() -> None:
    detector = DistinctSubjectsDetector(POLICY)
    run(detector, lookups(0, 3))
    before = detector.snapshot()
    broken = json.loads(json.dumps(before))
    broken["windows"][0]["newest"] = "2025-06-17T08:06:10"  # naive time
    with pytest.raises(ValidationError):
        detector.restore(broken)
    with pytest.raises(ValidationError):
        detector.restore({"version": 2, "watermark": None, "swept": None, "windows": []})
    assert detector.snapshot() == before


def test_cap_must_exceed_threshold() -> None:
    with pytest.raises(ValueError, match="must exceed the threshold"):
        DistinctSubjectsDetector(POLICY, cap=5)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["tom_helpdesk", "nina_helpdesk", "intruder"]),
            st.integers(min_value=-5, max_value=120),  # seconds since the previous event
            st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=6),
        ),
        max_size=120,
    ),
    cap=st.integers(min_value=6, max_value=12),
)
def test_never_holds_more_than_the_cap(
    steps: list[tuple[str, int, list[int]]],
    cap: int,
) -> None:
    policy = make_policy(threshold=5, window="1h")
    detector = DistinctSubjectsDetector(policy, cap=cap)
    now = 0
    for actor, delta, subjects in steps:
        now += delta
        detector(read(now, *(f"c{s}" for s in subjects), actor=actor))
        for key in ("tom", "nina", "intruder"):
            assert detector.tracked(key) <= cap
    for window in detector.snapshot()["windows"]:
        assert len(window["sightings"]) <= cap


def test_unbounded_read_and_export() -> None:
    detect = UnboundedReadDetector(POLICY)
    assert detect(read(0, "1", unbounded=False)) == []
    assert detect(read(0, obj="public.settings", unbounded=True)) == []
    [unbounded] = detect(read(0, unbounded=True))
    assert unbounded.rule == "anomaly.unbounded_read"
    assert unbounded.severity is Severity.MEDIUM
    assert unbounded.categories == ("identity", "contact")
    assert unbounded.person == "tom"
    assert "read clients.accounts (identity, contact) without a data-subject predicate" in (
        unbounded.explanation
    )
    [export] = detect(read(0, action=Action.EXPORT, unbounded=True))
    assert export.rule == "anomaly.export"
    assert export.severity is Severity.HIGH
    assert export.explanation == (
        "tom (account tom_helpdesk) exported clients.accounts (identity, contact) out of "
        "pg-main without a data-subject predicate."
    )
    assert detect(read(0, "7", action=Action.EXPORT))[0].rule == "anomaly.export"
    assert detect(read(0, action=Action.WRITE, unbounded=True)) == []


def test_unbounded_reads_can_be_switched_off_exports_cannot() -> None:
    detect = UnboundedReadDetector(make_policy(unbounded_reads=False))
    assert detect(read(0, unbounded=True)) == []
    assert [f.rule for f in detect(read(0, action=Action.EXPORT))] == ["anomaly.export"]
