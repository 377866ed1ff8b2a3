"""Behaviour detectors on real events: brute force, a typo, the night bulk read."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest

from breachwatch.detection.anomaly_policy import BehaviourPolicy
from breachwatch.detection.behaviour import BehaviourDetector, app_family
from breachwatch.detection.findings import Finding, Severity
from breachwatch.detection.need_to_know import PolicyView
from breachwatch.detection.suppression import Suppressor
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.pipeline import Pipeline
from tests.anomaly_samples import ground_truth, make_policy, raw_events, run, shifted

pytestmark = pytest.mark.usefixtures("samples_dir")

BEHAVIOUR = {
    "learning": "2d",
    "learning_events": 5,
    "hour_learning_days": 3,
    "exempt_roles": ["webshop"],
}
NIGHT_STARTS = datetime(2025, 6, 17, 22, 0, tzinfo=UTC)  # midnight in Brussels


def _gt_lines(gt_id: str) -> set[int]:
    return set(ground_truth(gt_id)["log_lines"]["postgresql.log"])


@cache
def _week() -> tuple[Finding, ...]:
    """Three ordinary business days (the real day's events, shifted back), then the real log."""
    pipeline = Pipeline(make_policy({"behaviour": BEHAVIOUR}))
    day = tuple(e for e in raw_events() if e.time < NIGHT_STARTS)
    for back in (3, 2, 1):
        run(pipeline, shifted(day, back))
    return tuple(run(pipeline, raw_events()))


def test_brute_force_fires_once_and_the_typo_stays_low() -> None:
    findings = run(Pipeline(make_policy({"behaviour": BEHAVIOUR})), raw_events())
    brute = [f for f in findings if f.rule == "auth.brute_force"]
    assert len(brute) == 1
    assert brute[0].severity is Severity.HIGH and brute[0].actor == "address:127.0.0.1"
    assert {p.line for p in brute[0].evidence} <= _gt_lines("PG-23")
    assert "against 3 account names (webhost, sa, postgres)" in brute[0].explanation
    typo = _gt_lines("PG-01")
    about_typo = [f for f in findings if f.evidence[0].line in typo]
    assert ("auth.failed_login", Severity.LOW) in [(f.rule, f.severity) for f in about_typo]
    assert not [f for f in about_typo if f.rule == "auth.brute_force" or f.rule.startswith("b")]


def test_the_night_bulk_read_is_unusual_for_lena_and_uses_a_new_application() -> None:
    findings = _week()
    night = _gt_lines("PG-24") | _gt_lines("PG-25") | _gt_lines("PG-26")
    lena = [f for f in findings if f.person == "lena" and f.rule.startswith("behaviour.")]
    rules = {f.rule for f in lena}
    assert {"behaviour.unusual_hour", "behaviour.new_application"} <= rules
    hour = next(f for f in lena if f.rule == "behaviour.unusual_hour")
    assert "at 03:xx (Europe/Brussels)" in hour.explanation and "0% of their" in hour.explanation
    app = next(f for f in lena if f.rule == "behaviour.new_application")
    assert "'psql'" in app.explanation and "pgAdmin" in app.explanation
    # the night session is one finding per cause, not one per statement
    assert len([f for f in lena if f.rule == "behaviour.unusual_hour"]) == 1
    assert all(f.time >= NIGHT_STARTS for f in lena)
    assert any(f.evidence[0].line in night or f.evidence[0].line == 2012 for f in lena)


def test_ordinary_business_hours_raise_nothing() -> None:
    day = [f for f in _week() if f.time < NIGHT_STARTS]
    assert not [f for f in day if f.rule == "behaviour.unusual_hour"]
    for f in day:
        assert f.rule != "behaviour.new_client" or f.actor != "yasmine_helpdesk"


def test_learning_period_keeps_a_first_day_quiet() -> None:
    findings = run(
        Pipeline(make_policy({"behaviour": {"exempt_roles": ["webshop"]}})), raw_events()
    )
    assert not [f for f in findings if f.rule.startswith("behaviour.")]


# ---- synthetic events, clock = event time ------------------------------------------------
T0 = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)  # 09:00 in Brussels


def _event(hours: float, action: Action = Action.READ, **kw: object) -> AccessEvent:
    fields: dict[str, object] = {
        "store": "pg",
        "actor": "tom_helpdesk",
        "objects": ("clients.accounts",),
        "client": "10.0.0.5",
        "application": "psql",
    }
    fields.update(kw)
    line = int(hours * 100)
    return AccessEvent(
        time=T0 + timedelta(hours=hours),
        action=action,
        position=SourcePosition("t.log", line, line),
        **fields,  # type: ignore[arg-type]
    )


def _detector(**config: object) -> BehaviourDetector:
    settings = {"learning": "1h", "learning_events": 3, "unusual_hours": False, **config}
    return BehaviourDetector(
        PolicyView(make_policy()),
        BehaviourPolicy.model_validate(settings),
        Suppressor(timedelta(hours=1)),
    )


def test_new_client_first_access_and_denied_burst() -> None:
    detector = _detector()
    for i in range(5):
        assert detector(_event(i * 0.1)) == []
    found = detector(_event(2, client="203.0.113.9"))
    assert [f.rule for f in found] == ["behaviour.new_client"]
    assert "203.0.113.9" in found[0].explanation and "10.0.0.5" in found[0].explanation
    found = detector(_event(2.1, objects=("finance.bills_archive",)))
    assert [f.rule for f in found] == ["behaviour.first_access"]
    assert "finance.bills_archive (billing, bank)" in found[0].explanation
    denied = [f for i in range(8) for f in detector(_event(3 + i / 600, Action.DENIED))]
    assert [f.rule for f in denied] == ["behaviour.denied_burst"]
    assert "refused 5 times" in denied[0].explanation


def test_one_typo_is_not_brute_force_but_many_names_are() -> None:
    detector = _detector()
    assert detector(_event(1, Action.LOGIN_FAILED, actor="lena_accounts")) == []
    burst = [
        f
        for i, name in enumerate(["root", "admin", "sa", "oracle", "test", "guest"])
        for f in detector(
            _event(5 + i / 3600, Action.LOGIN_FAILED, actor=name, client="198.51.100.7")
        )
    ]
    assert [f.rule for f in burst] == ["auth.brute_force"]
    later = detector(_event(6, Action.LOGIN_FAILED, actor="x", client="198.51.100.7"))
    assert later == []  # 55 minutes later, alone: the window has moved on


def test_failed_logins_out_of_time_order_are_grouped_by_their_own_times() -> None:
    """Two logs reach the detector out of time order. A night log read after a morning one:
    its failures are not counted with the morning's (that once read "within -28799 s"). Two
    backends flushing seconds apart: a failure read late still completes the burst its own
    time belongs to."""
    address = {"client": "198.51.100.7"}
    detector = _detector()
    for i, name in enumerate(["sa", "test"]):  # the morning log, read first
        assert detector(_event(10 + i / 3600, Action.LOGIN_FAILED, actor=name, **address)) == []
    for i, name in enumerate(["root", "admin"]):  # then the night log: two names, no burst
        assert detector(_event(2 + i / 3600, Action.LOGIN_FAILED, actor=name, **address)) == []

    detector = _detector()
    assert detector(_event(3, Action.LOGIN_FAILED, actor="root", **address)) == []
    assert detector(_event(3 + 10 / 3600, Action.LOGIN_FAILED, actor="admin", **address)) == []
    late = detector(_event(3 + 5 / 3600, Action.LOGIN_FAILED, actor="oracle", **address))
    assert [f.rule for f in late] == ["auth.brute_force"]
    assert "3 failed logins" in late[0].explanation and "within 10 s" in late[0].explanation


def test_snapshot_round_trip_keeps_what_was_learnt() -> None:
    detector = _detector()
    for i in range(5):
        detector(_event(i * 0.1))
    state = json.loads(json.dumps(detector.snapshot()))
    copy = _detector()
    copy.restore(state)
    assert copy.snapshot() == detector.snapshot()
    assert [f.rule for f in copy(_event(2, client="203.0.113.9"))] == ["behaviour.new_client"]
    with pytest.raises(ValueError):
        copy.restore({"version": 1, "profiles": [{"actor": "x"}], "failures": {}})


def test_application_families_ignore_versions_and_tabs() -> None:
    assert app_family("DBeaver 24.1.0 - SQLEditor <Script-3.sql>") == "DBeaver"
    assert app_family("DBeaver 24.1.0 - Main <webhostdb>") == "DBeaver"
    assert app_family("pgAdmin 4 - DB:webhostdb") == "pgAdmin"
    assert app_family("leadlift-connector/3.2") == "leadlift-connector"
    assert app_family("[unknown]") is None and app_family(None) is None


def test_suppression_merges_then_re_emits_on_expiry_or_higher_severity() -> None:
    suppressor = Suppressor(timedelta(minutes=10))
    base = Finding(
        rule="behaviour.unusual_hour",
        severity=Severity.MEDIUM,
        time=T0,
        actor="lena_accounts",
        store="pg",
        explanation="night work.",
        controls=(),
        evidence=(SourcePosition("t.log", 0, 1),),
        person="lena",
    )

    def at(minutes: int, severity: Severity = Severity.MEDIUM) -> Finding:
        return replace(base, time=T0 + timedelta(minutes=minutes), severity=severity)

    assert suppressor.admit(at(0), "night") == at(0)
    assert suppressor.admit(at(1), "night") is None
    assert suppressor.admit(at(2), "night") is None
    assert suppressor.merged("behaviour.unusual_hour", "lena", "night") == 2
    assert suppressor.admit(at(2), "other cause") is not None
    graver = suppressor.admit(at(3, Severity.HIGH), "night")
    assert graver is not None and "Severity rose from medium to high" in graver.explanation
    assert suppressor.admit(at(4), "night") is None
    later = suppressor.admit(at(30), "night")
    assert later is not None and "1 further occurrence(s) were merged" in later.explanation
    copy = Suppressor(timedelta(minutes=10))
    copy.restore(json.loads(json.dumps(suppressor.snapshot())))
    assert copy.snapshot() == suppressor.snapshot()
    assert copy.admit(at(31), "night") is None
