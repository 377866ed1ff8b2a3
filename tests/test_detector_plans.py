"""The pipeline's per-key plans (issue #3, back half): ``Pipeline.detect`` skips a detector
whose ``skips`` says an event's key raises nothing there and changes no state. Skipping must
change no finding and no state: compared with every detector called on every event."""

from __future__ import annotations

from pathlib import Path

import pytest

from breachwatch.detection.findings import Finding
from breachwatch.detection.policy import StaffMember, load_policy
from breachwatch.events import AccessEvent
from breachwatch.pipeline import Pipeline
from tests.anomaly_samples import COMPARED_POLICIES, compared_policy, raw_events, run, seen, shifted

pytestmark = pytest.mark.usefixtures("samples_dir")


def _every_detector(pipeline: Pipeline, events: list[AccessEvent]) -> list[Finding]:
    """What ``evaluate`` means: enrich, then every detector in order, none skipped."""
    found: list[Finding] = []
    detectors = list(pipeline.detectors().values())
    for event in events:
        actor = pipeline._view.resolve_actor(event.actor)
        person = actor.person if isinstance(actor, StaffMember) else event.person
        enriched = pipeline._sql.enrich(event, person)
        for detector in detectors:
            found += detector(enriched)
    return found


@pytest.mark.parametrize("policy_name", COMPARED_POLICIES)
def test_skipping_detectors_changes_no_finding_and_no_state(
    policy_name: str, tmp_path: Path
) -> None:
    path = compared_policy(policy_name, tmp_path)
    # Two days, so that windows close and profiles carry over.
    events = [*shifted(raw_events(), 1), *raw_events()]
    planned, full = Pipeline(load_policy(path)), Pipeline(load_policy(path))
    with_plans, without = run(planned, events), _every_detector(full, events)
    assert seen(with_plans) == seen(without) and without
    assert planned.snapshot() == full.snapshot()
    # The plans did skip detectors (else this would compare nothing) and did not skip all.
    plans = list(planned._plans.values())
    assert any(d is None for plan in plans for d in plan)
    assert any(d is not None for plan in plans for d in plan)
