"""Sigma rules on real events: detections, conditions, correlations, the CLI check."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from breachwatch.detection.findings import Severity
from breachwatch.detection.sigma import SigmaDetector, SigmaError, load_sigma, parse_sigma
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.pipeline import Pipeline
from tests.anomaly_samples import ground_truth, make_policy, raw_events, run
from tests.conftest import REPO

RULES = """
title: Dump of the customer table by a person
id: 6a1f0c7e-0000-4000-8000-000000000001
status: experimental
description: pg_dump run by a staff account rather than the backup job.
logsource: {product: postgresql, service: pgaudit}
detection:
  dump:
    application|startswith: pg_dump
    object: clients.accounts
  staff:
    actor|endswith: [_sysadmin, _helpdesk]
  condition: dump and staff
level: high
tags: [attack.collection, attack.t1005]
---
title: Failed login
name: failed_login
id: 6a1f0c7e-0000-4000-8000-000000000002
logsource: {product: postgresql}
detection:
  selection:
    action: login_failed
  condition: selection
level: low
---
title: Password guessing from one address
id: 6a1f0c7e-0000-4000-8000-000000000003
correlation:
  type: value_count
  rules: [failed_login]
  group-by: [client]
  timespan: 1m
  condition: {gte: 3, field: actor}
level: high
tags: [attack.credential-access, attack.t1110]
"""


@pytest.fixture
def rule_file(tmp_path: Path) -> Path:
    path = tmp_path / "db.yml"
    path.write_text(RULES)
    return path


def _lines(gt_id: str) -> set[int]:
    return set(ground_truth(gt_id)["log_lines"]["postgresql.log"])


@pytest.mark.usefixtures("samples_dir")
def test_rules_from_the_policy_fire_on_the_real_log(rule_file: Path) -> None:
    findings = run(Pipeline(make_policy({"sigma_rules": [str(rule_file)]})), raw_events())
    sigma = [f for f in findings if f.rule.startswith("sigma.")]
    dump = [f for f in sigma if f.rule.endswith("-000000000001")]
    assert dump and all(f.actor == "omar_sysadmin" for f in dump)
    assert dump[0].evidence[0].line in _lines("PG-22")
    assert dump[0].severity is Severity.HIGH
    assert dump[0].controls == ("attack.collection", "attack.t1005")
    guessing = [f for f in sigma if f.rule.endswith("-000000000003")]
    assert len(guessing) == 1  # once per burst, not per attempt
    assert guessing[0].evidence[0].line in _lines("PG-23")
    assert "3 distinct actor values" in guessing[0].explanation
    assert "client=127.0.0.1" in guessing[0].explanation
    # the base rule of a correlation is not emitted on its own (Sigma: generate: false)
    assert not [f for f in sigma if f.rule.endswith("-000000000002")]


T0 = datetime(2025, 6, 17, 9, 0, tzinfo=UTC)


def _event(**kw: object) -> AccessEvent:
    fields: dict[str, object] = {
        "time": T0,
        "store": "pg",
        "actor": "tom_helpdesk",
        "action": Action.READ,
        "position": SourcePosition("t.log", 0, 1),
    }
    fields.update(kw)
    return AccessEvent(**fields)  # type: ignore[arg-type]


def _rule(detection: str) -> SigmaDetector:
    text = f"title: t\nid: r1\nlevel: medium\ndetection:\n{detection}"
    return SigmaDetector(parse_sigma(text))


@pytest.mark.parametrize(
    ("detection", "event", "hit"),
    [
        (
            "  s: {statement|contains: 'FROM finance'}\n  condition: s",
            {"statement": "select * from FINANCE.bills"},
            True,
        ),
        (
            "  s: {statement|re: '^COPY .* TO '}\n  condition: s",
            {"statement": "COPY x TO '/tmp/f'"},
            True,
        ),
        (
            "  s: {statement|re: '^COPY .* TO '}\n  condition: s",
            {"statement": "copy x to '/tmp/f'"},
            False,
        ),
        (
            "  s: {objects|all: [clients.accounts, finance.bills]}\n  condition: s",
            {"objects": ("clients.accounts", "finance.bills")},
            True,
        ),
        (
            "  s: {objects|all: [clients.accounts, finance.bills]}\n  condition: s",
            {"objects": ("clients.accounts",)},
            False,
        ),
        ("  s: {object: 'webmail.*'}\n  condition: s", {"objects": ("webmail.messages",)}, True),
        ("  s: {application: null}\n  condition: s", {}, True),
        ("  s: {application: null}\n  condition: s", {"application": "psql"}, False),
        ("  s1: {actor: tom_helpdesk}\n  s2: {action: write}\n  condition: 1 of s*", {}, True),
        ("  s1: {actor: tom_helpdesk}\n  s2: {action: write}\n  condition: all of them", {}, False),
        (
            "  s1: {actor: tom_helpdesk}\n  f: {client: '10.*'}\n  condition: s1 and not f",
            {"client": "10.1.1.1"},
            False,
        ),
        (
            "  s1: {actor: x}\n  s2: {action: read}\n  f: {store: pg}\n"
            "  condition: (s1 or s2) and f",
            {},
            True,
        ),
        (
            "  s: [{actor: x}, {tags: 'class:READ'}]\n  condition: s",
            {"tags": frozenset({"class:READ"})},
            True,
        ),
        (
            "  k: [bills_archive]\n  condition: k",
            {"statement": "SELECT iban FROM finance.bills_archive"},
            True,
        ),
        (
            "  s: {user: TOM_HELPDESK, query|startswith: sel}\n  condition: s",
            {"statement": "SELECT 1"},
            True,
        ),
    ],
)
def test_modifiers_and_conditions(detection: str, event: dict[str, object], hit: bool) -> None:
    assert bool(_rule(detection)(_event(**event))) is hit


def test_event_count_correlation_fires_once_per_window() -> None:
    text = RULES.replace("type: value_count", "type: event_count").replace(
        "{gte: 3, field: actor}", "{gt: 3}"
    )
    detector = SigmaDetector(parse_sigma(text))
    attempts = [
        _event(time=T0 + timedelta(seconds=i), action=Action.LOGIN_FAILED, client="192.0.2.1")
        for i in range(8)
    ]
    fired = [f for e in attempts for f in detector(e)]
    assert len(fired) == 1 and fired[0].time == T0 + timedelta(seconds=3)
    later = _event(time=T0 + timedelta(minutes=5), action=Action.LOGIN_FAILED, client="192.0.2.1")
    assert detector(later) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("title: t\nid: a\ndetection: {s: {colour: red}, condition: s}", "unknown field"),
        (
            "title: t\nid: a\ndetection: {s: {actor|base64: x}, condition: s}",
            "unsupported modifier",
        ),
        ("title: t\nid: a\ndetection: {s: {actor: x}, condition: s and}", "ends too early"),
        ("title: t\nid: a\ndetection: {s: {actor: x}, condition: t}", "not a selection"),
        ("title: t\nid: a\nlevel: severe\ndetection: {s: {actor: x}, condition: s}", "level"),
        ("title: t\ndetection: {s: {actor: x}, condition: s}", "needs an id"),
        (
            "title: t\nid: a\ndetection: {s: {statement|re: '('}, condition: s}",
            "regular expression",
        ),
    ],
)
def test_bad_rules_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(SigmaError, match=message):
        parse_sigma(text, "x.yml")


def test_correlations_must_name_known_rules(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(RULES.replace("rules: [failed_login]", "rules: [nope]"))
    with pytest.raises(SigmaError, match="unknown base rule"):
        load_sigma([path])


def test_cli_sigma_check(rule_file: Path, tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "breachwatch.cli", "sigma", "check", "--json", str(rule_file)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert '"sigma.6a1f0c7e-0000-4000-8000-000000000003"' in ok.stdout
    bad = tmp_path / "bad.yml"
    bad.write_text("title: t\nid: a\ndetection: {s: {colour: red}, condition: s}\n")
    refused = subprocess.run(
        [sys.executable, "-m", "breachwatch.cli", "sigma", "check", str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert refused.returncode == 2 and "unknown field 'colour'" in refused.stderr
