"""The Grafana dashboard and the alert rules only use metric names the daemon really exports:
a real daemon (tests/daemon_harness.py) is run through a violation, a parse error and a
delivered notice, its /metrics endpoint is scraped, and every `breachwatch_*` name in the
dashboard's and the rules' PromQL must be in that scrape. A renamed metric breaks this test."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, skip_or_fail
from tests.daemon_harness import (
    DaemonProcess,
    append,
    audit_read,
    cli_json,
    free_port,
    metric_value,
    pg_line,
    scrape,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

DASHBOARD = REPO / "config" / "grafana" / "breachwatch.json"
RULES = REPO / "config" / "prometheus" / "breachwatch-rules.yml"
NAME = re.compile(r"\bbreachwatch_[a-z0-9_]+\b")
TYPE_LINE = re.compile(r"^# TYPE (\S+) \S+$")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]")
# Grafana's variables, replaced by what Grafana would put there
VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}

VIOLATION = audit_read(
    "2026-11-30 10:00:02.000 CET",
    4242,
    "kevin_helpdesk",
    1,
    "clients.accounts",
    "SELECT full_name, email, phone FROM clients.accounts WHERE id = 1001;",
)
BENIGN = audit_read(
    "2026-11-30 10:00:01.000 CET",
    4100,
    "svc_shop",
    1,
    "clients.accounts",
    "SELECT id, full_name FROM accounts WHERE email = 'x@example.org'",
)
GARBAGE = "this is not a PostgreSQL log line\n"


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    exprs.extend(a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a)
    return exprs


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def exported_names(exposition: str) -> set[str]:
    """Metric names in a scrape: declared families (# TYPE) and samples."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if (match := TYPE_LINE.match(line)) or (match := SAMPLE.match(line)):
            names.add(match.group(1))
    return names


def unknown_names(exprs: list[str], exported: set[str]) -> set[str]:
    return {name for expr in exprs for name in NAME.findall(expr)} - exported


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A scrape of a real daemon that has seen events, a parse error, an incident with open
    obligations and a delivered notice (so the label-only families have samples too)."""
    tmp = tmp_path_factory.mktemp("grafana")
    port = free_port()
    config = write_config(tmp, smtp_port=None, metrics_port=port)
    log = tmp / "logs" / "postgresql.log"
    log.write_text("")
    daemon = DaemonProcess(config, tmp / "daemon.out").start()
    try:
        append(log, BENIGN + pg_line("2026-11-30 10:00:01.500 CET", 1, "x", GARBAGE) + VIOLATION)
        wait_for(
            lambda: [n for n in cli_json(config, "notices") if n["state"] == "sent"],
            20,
            "a delivered notice",
            daemon,
        )

        def sent() -> str | None:
            text = scrape(port)
            return text if metric_value(text, "breachwatch_notices_total", outcome="sent") else None

        return wait_for(sent, 10, "the sent notice on the endpoint", daemon)
    finally:
        assert daemon.stop() == 0


def test_dashboard_is_valid_json_with_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "breachwatch"
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    titles = " | ".join(p["title"].lower() for p in _panels(dashboard["panels"]))
    for topic in (
        "ingest rate",
        "lag",
        "findings by rule",
        "open incidents",
        "nearest deadline",
        "notices by state",
        "parse errors",
    ):
        assert topic in titles, topic
    for panel in _panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]


def test_dashboard_and_rules_use_only_exported_metric_names(exposition: str) -> None:
    exported = exported_names(exposition)
    dashboard = json.loads(DASHBOARD.read_text())
    assert unknown_names(dashboard_expressions(dashboard), exported) == set()
    assert unknown_names(rule_expressions(), exported) == set()
    # the scrape really had data for what the panels show
    for name in (
        "breachwatch_events_total",
        "breachwatch_findings_total",
        "breachwatch_open_incidents",
        "breachwatch_nearest_deadline_seconds",
        "breachwatch_notices_queued",
        "breachwatch_parse_errors_total",
        "breachwatch_source_lag_seconds",
        "breachwatch_source_stalled",
    ):
        assert metric_value(exposition, name) is not None, name


def test_control_a_renamed_metric_is_caught(exposition: str) -> None:
    exported = exported_names(exposition)
    renamed = [
        e.replace("breachwatch_events_total", "breachwatch_event_total") for e in rule_expressions()
    ]
    assert unknown_names(renamed, exported) == {"breachwatch_event_total"}
    assert unknown_names(['up{job="breachwatch"}'], exported) == set()


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """Every panel query is valid PromQL: promtool parses them as recording rules."""
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool is not installed (Debian: apt-get install prometheus)")
        return
    exprs = dashboard_expressions(json.loads(DASHBOARD.read_text()))
    rules = []
    for n, expr in enumerate(e for e in exprs if not e.startswith("label_values(")):
        for variable, value in VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:panel_{n}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # control: a broken query is refused
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "d",
                        "rules": [
                            {"record": "dashboard:broken", "expr": "sum by (source (rate(x[5m]))"}
                        ],
                    }
                ]
            }
        )
    )
    broken = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert broken.returncode != 0
