"""Per-actor volume baselines on the real dayshift workload (tom's slow exfiltration)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from breachwatch.detection.anomaly_policy import BaselinePolicy
from breachwatch.detection.baseline import BaselineDetector, LocalWindows, read_seed
from breachwatch.detection.findings import Severity
from breachwatch.detection.need_to_know import PolicyView
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.pipeline import Pipeline
from tests.anomaly_samples import (
    CASES,
    ground_truth,
    make_policy,
    raw_events,
    run,
    seeded,
)

pytestmark = pytest.mark.usefixtures("samples_dir")

RULE = "baseline.distinct_subjects"


def test_tom_slow_exfiltration_is_caught_and_yasmine_and_nina_are_not() -> None:
    findings = run(Pipeline(make_policy(seeded())), raw_events())
    volume = [f for f in findings if f.rule.startswith("baseline.")]
    assert {f.person for f in volume} == {"tom"}, [f.explanation for f in volume]
    toms = [f for f in volume if f.rule == RULE]
    # One finding when the limit is crossed, one more when the severity rises: not one per read.
    assert [f.severity for f in toms] == [Severity.MEDIUM, Severity.HIGH]
    exfiltration = set(ground_truth("PG-02")["log_lines"]["postgresql.log"])
    assert toms[0].evidence[0].line in exfiltration
    first = toms[0].explanation
    assert "tom (account tom_helpdesk) read 23 distinct customers on 2025-06-17" in first
    assert "usual p99 is 11" in first and "peers' (helpdesk) p99 is 36" in first
    assert "alert above 22" in first
    assert "Severity rose from medium to high" in toms[1].explanation
    assert len(toms[1].subjects) > 2 * 22


def test_without_history_nothing_is_said_learning_period() -> None:
    findings = run(Pipeline(make_policy({})), raw_events())
    assert not [f for f in findings if f.rule.startswith("baseline.")]


def test_snapshot_restore_midway_gives_the_same_findings() -> None:
    events = raw_events()
    policy = make_policy(seeded())
    whole = run(Pipeline(policy), events)
    first = Pipeline(policy)
    half = len(events) // 2
    found = run(first, events[:half])
    state = json.loads(json.dumps(first.snapshot()))
    second = Pipeline(make_policy({}))  # no seed: the snapshot alone must carry the baseline
    second.restore(state)
    found += run(second, events[half:])
    key = [(f.rule, f.actor, f.evidence[0].line, f.severity) for f in whole]
    assert [(f.rule, f.actor, f.evidence[0].line, f.severity) for f in found] == key


def test_a_malformed_snapshot_is_refused_and_changes_nothing() -> None:
    pipeline = Pipeline(make_policy(seeded()))
    before = pipeline.snapshot()
    broken = json.loads(json.dumps(before))
    broken["anomaly"]["baseline"]["actors"][0]["subjects"] = "nonsense"
    with pytest.raises(ValueError):
        pipeline.restore(broken)
    assert pipeline.snapshot() == before


def test_seed_counts_distinct_customers_per_local_day() -> None:
    windows = LocalWindows("Europe/Brussels", timedelta(days=1))
    seed = BaselinePolicy.model_validate(
        {"seed": {"path": str(CASES), "before": "2025-06-17"}}
    ).seed
    assert seed is not None
    counts = read_seed(seed, windows)
    tom = counts["tom_helpdesk"]
    assert 80 <= len(tom) <= 90 and max(tom.values()) == 11
    assert max(windows.start(o).date() for o in tom) < datetime(2025, 6, 17).date()


# ---- small synthetic cases (the clock is the event time) ---------------------------------
T0 = datetime(2025, 6, 17, 7, 0, tzinfo=UTC)


def _read(minute: int, subject: str, *, actor: str = "tom_helpdesk", day: int = 0) -> AccessEvent:
    return AccessEvent(
        time=T0 + timedelta(days=day, minutes=minute),
        store="pg",
        actor=actor,
        action=Action.READ,
        position=SourcePosition("x.log", minute, minute + 1),
        objects=("clients.accounts",),
        subjects=(subject,),
    )


def _detector(**config: object) -> BaselineDetector:
    return BaselineDetector(PolicyView(make_policy()), BaselinePolicy.model_validate(config))


def test_floor_and_learning_windows() -> None:
    detector = _detector(learning_windows=3, floor_subjects=5, ratio=1.0, mad_k=0.0)
    detector.seed({"tom_helpdesk": {20000: 1, 20001: 1}})  # two windows: still learning
    assert not [f for i in range(10) for f in detector(_read(i, str(i)))]
    detector = _detector(learning_windows=2, floor_subjects=5, ratio=1.0, mad_k=0.0)
    detector.seed({"tom_helpdesk": {20000: 1, 20001: 1}})
    fired = [(i, f) for i in range(10) for f in detector(_read(i, str(i)))]
    # usual p99 is 1, but the floor says never at or below 5 customers
    assert [i for i, _ in fired] == [5]
    assert "read 6 distinct customers" in fired[0][1].explanation


def test_peers_stand_in_for_a_newcomer() -> None:
    detector = _detector(learning_windows=2, floor_subjects=3)
    detector.seed({"yasmine_helpdesk": {20000: 4, 20001: 5, 20002: 4}})
    fired = [f for i in range(15) for f in detector(_read(i, str(i), actor="nina_helpdesk"))]
    assert len(fired) == 1
    assert "no own baseline yet" in fired[0].explanation
    assert "peers' (helpdesk) p99 is 5" in fired[0].explanation
    assert "read 11 distinct customers" in fired[0].explanation


def test_window_rollover_feeds_the_baseline_and_emits_again() -> None:
    detector = _detector(learning_windows=1, floor_subjects=0, ratio=1.0, mad_k=0.0)
    for i in range(3):
        detector(_read(i, str(i)))  # day 0: 3 customers -> history [3]
    day1 = [f for i in range(5) for f in detector(_read(i, f"b{i}", day=1))]
    assert len(day1) == 1 and "read 4 distinct customers" in day1[0].explanation
    # the same day goes on: merged, not repeated
    assert not detector(_read(30, "b30", day=1))
