"""Real events for the anomaly tests: the dayshift PostgreSQL workload, parsed once."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from breachwatch.detection.findings import Finding
from breachwatch.detection.policy import Policy
from breachwatch.events import AccessEvent
from breachwatch.parsers.registry import build_format
from breachwatch.pipeline import Pipeline
from breachwatch.sources.files import read_lines
from tests.conftest import REPO, SAMPLES
from tests.webhost_policy import write_webhost_policy

DAYSHIFT = SAMPLES / "pgaudit_workload_dayshift"
LOG = DAYSHIFT / "postgresql.log"
CASES = DAYSHIFT / "reference_cases_before_workload.csv"
OPTIONS = {"log_line_prefix": "%m [%p] %q%u@%d %a %h ", "timezone": "Europe/Berlin"}


@cache
def raw_events() -> tuple[AccessEvent, ...]:
    """Every event of the real log, as the parser makes it (not yet enriched)."""
    fmt = build_format("pgaudit_stderr", OPTIONS)
    framer = fmt.new_framer(str(LOG))
    records = []
    for line in read_lines(LOG, 1 << 20):
        records.extend(framer.push(line))
    records.extend(framer.flush())
    events: list[AccessEvent] = []
    for record in records:
        parsed = fmt.parse(record, "pg")
        if isinstance(parsed, Exception):
            continue
        events.extend(parsed)
    return tuple(events)


def policy_data(detection: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "config" / "policy.yml").read_text())
    if detection is not None:
        data["detection"] = detection
    return data


def make_policy(detection: dict[str, Any] | None = None) -> Policy:
    return Policy.model_validate(policy_data(detection))


def seeded(**behaviour: Any) -> dict[str, Any]:
    return {
        "baselines": {"seed": {"path": str(CASES), "before": "2025-06-17"}},
        "behaviour": behaviour,
    }


def shifted(events: tuple[AccessEvent, ...], days: int) -> list[AccessEvent]:
    """The same real events, ``days`` earlier (a history of ordinary business days)."""
    delta = timedelta(days=days)
    return [replace(e, time=e.time - delta) for e in events]


def run(pipeline: Pipeline, events: list[AccessEvent] | tuple[AccessEvent, ...]) -> list[Finding]:
    found: list[Finding] = []
    for event in events:
        found += pipeline.evaluate(event)
    return found


def seen(findings: list[Finding]) -> list[tuple[str, str, tuple[str, ...], str]]:
    """What two runs must agree on, finding for finding."""
    return [(f.rule, f.key, f.subjects, f.explanation) for f in findings]


# The policies the caches and plans are compared on: the shipped one, and the web host's
# (tests/webhost_policy.py) with and without business hours.
COMPARED_POLICIES = ["config", "webhost", "webhost-nohours"]


def compared_policy(name: str, tmp_path: Path) -> Path:
    """The policy file of one of COMPARED_POLICIES (written under ``tmp_path``)."""
    if name == "config":
        return REPO / "config" / "policy.yml"
    return write_webhost_policy(tmp_path, DAYSHIFT, hours=name == "webhost")


def ground_truth(gt_id: str) -> dict[str, Any]:
    for line in (DAYSHIFT / "ground_truth.jsonl").read_text().splitlines():
        item = json.loads(line)
        if item.get("id") == gt_id:
            return dict(item)
    raise KeyError(gt_id)


def lines_of(findings: list[Finding], rule: str) -> list[int]:
    return [f.evidence[0].line for f in findings if f.rule == rule]
