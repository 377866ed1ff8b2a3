"""The detectors' caches and plans (issue #3, back half) change no finding, and go stale on
nothing: each is compared with the full per-event path on real logs, and the reloads that
change a verdict (policy, reference tables) are exercised."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from breachwatch.detection.anomaly_policy import BaselinePolicy, BehaviourPolicy
from breachwatch.detection.baseline import BaselineDetector, LocalWindows, _Current
from breachwatch.detection.behaviour import BehaviourDetector
from breachwatch.detection.findings import Finding
from breachwatch.detection.need_to_know import PolicyView
from breachwatch.detection.policy import StaffMember, load_policy
from breachwatch.detection.suppression import Suppressor
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.pipeline import Pipeline
from tests.anomaly_samples import (
    COMPARED_POLICIES,
    compared_policy,
    make_policy,
    raw_events,
    run,
    seeded,
    seen,
    shifted,
)
from tests.conftest import SAMPLES
from tests.webhost_policy import write_webhost_policy

pytestmark = pytest.mark.usefixtures("samples_dir")

DAYSHIFT = SAMPLES / "pgaudit_workload_dayshift"


def _lena_reads_bills(time: datetime) -> AccessEvent:
    """The finance clerk reads the bills table, no subject named: a grant of the example
    policy whose conditions are planned."""
    return AccessEvent(
        time=time,
        store="pg",
        actor="lena_accounts",
        action=Action.READ,
        position=SourcePosition("postgresql.log", 0, 1),
        objects=("finance.bills",),
        application="pgAdmin 4",
        client="127.0.0.1",
    )


@pytest.mark.parametrize("policy_name", COMPARED_POLICIES)
def test_condition_plans_give_the_findings_of_the_full_path(
    policy_name: str, tmp_path: Path
) -> None:
    path = compared_policy(policy_name, tmp_path)
    planned, full = Pipeline(load_policy(path)), Pipeline(load_policy(path))
    full._conditions.use_plans = False
    events = raw_events()
    with_plans, without = run(planned, events), run(full, events)
    assert seen(with_plans) == seen(without)
    assert [f for f in without if f.rule.startswith(("ntk.", "gdpr.", "privileged."))]
    # The plans did serve events: a quiet key exists (else this would compare nothing).
    assert any(planned._conditions._plans.values())
    assert not full._conditions._plans


def test_a_policy_reload_gives_the_new_verdict(tmp_path: Path) -> None:
    path = write_webhost_policy(tmp_path, DAYSHIFT, hours=False)
    # A grant with no condition: the plan says quiet, and the event at night is quiet.
    event = _lena_reads_bills(datetime(2025, 6, 17, 21, 30, tzinfo=UTC))  # 23:30 in Brussels
    old = Pipeline(load_policy(path))
    assert [f.rule for f in old.evaluate(event) if f.rule.startswith("ntk.")] == []
    assert True in old._conditions._plans.values()
    # The file gains business hours; SIGHUP builds a new pipeline that takes the old one's
    # state (Daemon.reload -> use_pipeline): the cached plan must not survive.
    data = yaml.safe_load(path.read_text())
    for grant in data["grants"]:
        if grant.get("role") == "finance":
            grant["hours"] = "business"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    new = Pipeline(load_policy(path))
    new.restore(old.snapshot())
    assert "ntk.outside_hours" in [f.rule for f in new.evaluate(event)]


def test_a_register_reload_is_seen_by_a_planned_key(tmp_path: Path) -> None:
    path = write_webhost_policy(tmp_path, DAYSHIFT, hours=False)
    pipeline = Pipeline(load_policy(path))
    detect = pipeline._conditions
    base = _lena_reads_bills(datetime(2025, 6, 17, 9, 0, tzinfo=UTC))
    assert detect(base) == []  # no subject: planned quiet
    assert True in detect._plans.values()
    named = replace(base, subjects=("987654",))
    assert detect(named) == []
    erasures = tmp_path / "reference" / "erasures.csv"
    header, *_ = erasures.read_text(encoding="utf-8").splitlines()
    columns = header.split(",")
    row = {c: "" for c in columns}
    row["account_id"] = "987654"
    row["completed_at"] = "2025-06-01 10:00:00+02"
    with erasures.open("a", encoding="utf-8") as handle:
        handle.write(",".join(row[c] for c in columns) + "\n")
    assert any(h.refresh() for h in detect.holders)  # what the Refresher thread does
    assert [f.rule for f in detect(named)] == ["gdpr.erased_subject"]
    assert detect(base) == []


def test_baseline_bounds_give_the_findings_of_checking_every_event() -> None:
    """The per-window bounds (refreshed when any reservoir changes) against a detector that
    checks every event in full, over four real days: windows close, peers learn."""
    events = [e for back in (3, 2, 1) for e in shifted(raw_events(), back)] + list(raw_events())
    policy = make_policy(seeded())
    bounded, checked = Pipeline(policy), Pipeline(policy)
    slow: BaselineDetector = checked._anomaly.baseline

    def check_all(state: object, current: _Current) -> None:
        current.subjects_bound = current.statements_bound = -math.inf
        current.epoch = slow._epoch

    slow._bounds = check_all  # type: ignore[method-assign]
    fast, full = run(bounded, events), run(checked, events)
    assert seen(fast) == seen(full)
    assert [f for f in full if f.rule.startswith("baseline.")]


def test_known_values_are_forgotten_least_recently_used_first() -> None:
    detector = BehaviourDetector(
        PolicyView(make_policy()),
        BehaviourPolicy.model_validate({"learning": "1h", "learning_events": 1, "max_known": 8}),
        Suppressor(timedelta(hours=1)),
    )
    t0 = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)

    def seen_from(minute: int, client: str) -> list[str]:
        event = AccessEvent(
            time=t0 + timedelta(minutes=minute),
            store="pg",
            actor="tom_helpdesk",
            action=Action.READ,
            position=SourcePosition("t.log", minute, minute),
            objects=("clients.accounts",),
            client=client,
        )
        return [f.rule for f in detector(event)]

    for i in range(8):
        seen_from(i, f"10.0.0.{i}")
    seen_from(10, "10.0.0.0")  # used again: now the most recent
    seen_from(120, "10.0.0.99")  # a ninth address evicts the least recently USED: .1
    assert seen_from(121, "10.0.0.0") == []
    assert seen_from(122, "10.0.0.1") == ["behaviour.new_client"]
    state = detector.snapshot()["profiles"][0]
    assert state["clients"][-3:] == ["10.0.0.99", "10.0.0.0", "10.0.0.1"]


def test_local_time_is_shared_per_zone_and_exact_around_dst() -> None:
    days = LocalWindows("Europe/Brussels", timedelta(days=1))
    hours = LocalWindows("Europe/Brussels", timedelta(hours=1))
    # 2025-03-30 01:00 UTC: Brussels goes from +01:00 to +02:00.
    for minutes in range(-90, 90, 7):
        when = datetime(2025, 3, 30, 1, 0, tzinfo=UTC) + timedelta(minutes=minutes)
        offset = when.astimezone(days.zone).utcoffset()
        assert offset is not None
        expected = int(when.timestamp() + offset.total_seconds())
        assert days.local_seconds(when) == expected
        assert hours.local_seconds(when) == expected  # the memo of the other instance
        assert days.local_seconds(replace_tz(when)) == expected


def replace_tz(when: datetime) -> datetime:
    """The same instant as a different object (the memo is by identity, not equality)."""
    return when.astimezone(UTC) + timedelta(0)


def test_pipeline_detect_is_the_back_half_of_evaluate() -> None:
    events = raw_events()
    whole, halves = Pipeline(make_policy()), Pipeline(make_policy())
    found = run(whole, events)
    split: list[Finding] = []
    for event in events:
        actor = halves._view.resolve_actor(event.actor)
        person = actor.person if isinstance(actor, StaffMember) else event.person
        split += halves.detect(halves._sql.enrich(event, person))
    assert seen(found) == seen(split) and found
    assert list(whole.detectors()) == [
        "need_to_know",
        "unbounded",
        "volume",
        "anomaly",
        "conditions",
    ]


def test_a_peer_window_closing_mid_window_moves_the_limit_at_once() -> None:
    """The bound of a running window is recomputed when ANOTHER actor's window closes (its
    count joins the peer group's reservoir), not only when the actor's own window does."""
    detector = BaselineDetector(
        PolicyView(make_policy()),
        BaselinePolicy.model_validate({"learning_windows": 1}),
        Suppressor(timedelta(days=1)),
    )
    t0 = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)  # 09:00 in Brussels

    def read(actor: str, minute: int, subject: int) -> list[str]:
        event = AccessEvent(
            time=t0 + timedelta(minutes=minute),
            store="pg",
            actor=actor,
            action=Action.READ,
            position=SourcePosition("t.log", minute, minute),
            objects=("clients.accounts",),
            subjects=(str(subject),),
        )
        return [f.rule for f in detector(event)]

    day = 24 * 60
    assert [r for s in range(5) for r in read("tom_helpdesk", s, s)] == []
    # yasmine has no history and the helpdesk peers none yet: 25 customers say nothing.
    assert [r for s in range(25) for r in read("yasmine_helpdesk", day + s, 100 + s)] == []
    assert read("tom_helpdesk", day + 30, 1) == []  # closes tom's day: peers learn "5"
    # The peers' limit is now max(floor 20, 2 x 5, ...) = 20, and yasmine is at 26.
    assert read("yasmine_helpdesk", day + 31, 125) == ["baseline.distinct_subjects"]
