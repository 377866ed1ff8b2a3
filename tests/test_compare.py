"""`breachwatch scan --policy NEW --compare OLD`: what a policy change would do, replayed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from breachwatch.commands_detect import compare_findings
from breachwatch.detection.policy import Policy
from breachwatch.pipeline import Pipeline
from tests.anomaly_samples import LOG, make_policy, policy_data, raw_events, run, seeded
from tests.conftest import REPO
from tests.daemon_harness import write_config

pytestmark = pytest.mark.usefixtures("samples_dir")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "breachwatch.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def test_compare_shows_what_appears_and_exits_1_then_0_when_identical(tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_port=None)
    new = tmp_path / "new-policy.yml"
    new.write_text(yaml.safe_dump(policy_data(seeded())))
    old = REPO / "config" / "policy.yml"
    base = ("scan", "--config", str(config), "--format", "pgaudit_stderr")

    differs = _cli(*base, "--policy", str(new), "--compare", str(old), "--json", str(LOG))
    assert differs.returncode == 1, differs.stderr
    report = json.loads(differs.stdout)
    assert report["identical"] is False and not report["disappeared"]
    appeared = {(f["rule"], f["actor"]) for f in report["appeared"]}
    assert ("baseline.distinct_subjects", "tom_helpdesk") in appeared
    assert all(f["source"]["path"] == str(LOG) for f in report["appeared"])
    assert report["by_rule"]["+baseline.distinct_subjects"] == 2
    assert report["unchanged"] > 0

    table = _cli(*base, "--policy", str(old), "--compare", str(new), str(LOG))
    assert table.returncode == 1
    assert "- medium   baseline.distinct_subjects" in table.stdout
    assert "0 appear, 2 disappear" in table.stderr

    same = _cli(*base, "--policy", str(old), "--compare", str(old), "--json", str(LOG))
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["identical"] is True


def test_severity_changes_are_reported() -> None:
    events = raw_events()[:400]
    old = run(Pipeline(make_policy()), events)
    data = policy_data()
    data["severity"] = {"auth.failed_login": "medium"}
    stricter = run(Pipeline(Policy.model_validate(data)), events)
    report = compare_findings(old, stricter)
    assert not report["appeared"] and not report["disappeared"]
    assert {c["rule"] for c in report["changed"]} == {"auth.failed_login"}
    assert all(c["old_severity"] == "low" for c in report["changed"])
    assert compare_findings(old, old)["identical"] is True
