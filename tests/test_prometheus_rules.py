"""The alert rules, their promtool unit tests and the Alertmanager route, checked by the real
tools (promtool from Debian's prometheus package, amtool from prometheus-alertmanager)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, skip_or_fail

PROMETHEUS = REPO / "config" / "prometheus"
RULES = PROMETHEUS / "breachwatch-rules.yml"
RULE_TESTS = PROMETHEUS / "breachwatch-rules.test.yml"
ROUTE = REPO / "config" / "alertmanager" / "breachwatch-route.yml"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(
            f"{name} is not installed (Debian: apt-get install prometheus prometheus-alertmanager)"
        )
    assert path is not None
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, cwd=REPO)


def _alerts() -> dict[str, dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_rules_are_valid() -> None:
    result = _run(_tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_every_alert_is_labelled_and_documented() -> None:
    for name, rule in _alerts().items():
        labels = rule["labels"]
        annotations = rule["annotations"]
        assert isinstance(labels, dict) and isinstance(annotations, dict)
        assert labels.get("severity") in {"page", "ticket"}, name
        assert labels.get("team") == "security", name
        assert {"summary", "description", "runbook"} <= annotations.keys(), name
        assert str(annotations["runbook"]).startswith("README.md#"), name


def test_rule_unit_tests_pass() -> None:
    result = _run(_tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - firing == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a not-firing case"


def _with_wrong_expectation(tmp_path: Path, alert: str) -> Path:
    """The unit tests with the expected alerts of ``alert`` swapped: firing ↔ silent."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    doc["rule_files"] = [str(RULES)]
    swapped = 0
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            if check["alertname"] != alert:
                continue
            if check["exp_alerts"]:
                check["exp_alerts"] = []
            else:
                check["exp_alerts"] = [{"exp_labels": {"severity": "page", "team": "security"}}]
            swapped += 1
    assert swapped
    path = tmp_path / "wrong.test.yml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


@pytest.mark.parametrize("alert", ["BreachwatchDeadlineNear", "BreachwatchSourceStalled"])
def test_control_a_wrong_expectation_fails(tmp_path: Path, alert: str) -> None:
    """promtool test rules can fail: a copy of the tests expecting the opposite is rejected."""
    result = _run(_tool("promtool"), "test", "rules", str(_with_wrong_expectation(tmp_path, alert)))
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout + result.stderr
    assert alert in result.stdout + result.stderr


def test_prometheus_scrape_example_is_valid() -> None:
    result = _run(_tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    # BreachwatchDown watches up{job="breachwatch"}
    assert "breachwatch" in {job["job_name"] for job in jobs}


def test_alertmanager_route_is_valid() -> None:
    result = _run(_tool("amtool"), "check-config", str(ROUTE))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (("alertname=BreachwatchIncidentOpened", "severity=page"), "security-oncall,dpo-mailbox"),
        (
            ("alertname=BreachwatchObligationOverdue", "severity=page"),
            "security-oncall,dpo-mailbox",
        ),
        (("alertname=BreachwatchDown", "severity=page"), "security-oncall"),
        (("alertname=BreachwatchSourceStalled", "severity=ticket"), "security-tickets"),
    ],
)
def test_alertmanager_routes_by_severity(labels: tuple[str, ...], receivers: str) -> None:
    amtool = _tool("amtool")
    args = ("config", "routes", "test", f"--config.file={ROUTE}", "team=security", *labels)
    result = _run(amtool, *args, f"--verify.receivers={receivers}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers
    # control: a wrong receiver is reported as a mismatch
    wrong = _run(amtool, *args, "--verify.receivers=ops-default")
    assert wrong.returncode != 0
