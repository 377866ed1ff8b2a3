"""The sample provider's labelled logs through `breachwatch scan --json` with the example policy.

config/examples/webhost-policy.yml encodes the provider's written policy; each sample directory
brings its own exports (cases, registers), copied beside a copy of the policy. For every log:
every ground-truth event of severity medium or above must produce a finding on one of its
lines, and findings on lines that belong to no ground-truth event are false positives. The
floors below are the measured values (README "Detection quality"); a regression fails.

The realclock runs (and auditd, which has no dayshift variant) were recorded at night: there
the business-hours condition is taken out of the grants and events found only by their time
of day (tag ``off_hours``) are not required.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from breachwatch.cli import main
from tests.webhost_policy import REFERENCES, write_webhost_policy

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "config" / "examples"
SAMPLES = ROOT.parent / "shared" / "samples"  # CI clones beside shared/
RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}

# (directory, log file, required events, minimum recall, maximum false positives)
CASES = [
    ("pgaudit_workload_dayshift", "postgresql.log", 25, 25, 0),
    ("pgaudit_workload_dayshift", "postgresql.csv", 25, 25, 0),
    ("pgaudit_workload_dayshift", "postgresql.json", 25, 25, 0),
    ("mariadb_audit_dayshift", "server_audit.log", 24, 24, 0),
    ("nginx_panel_dayshift", "access.log", 20, 20, 0),
    ("auditd_files", "audit.log", 8, 8, 0),
    ("pgaudit_workload_realclock", "postgresql.log", 22, 22, 0),
    ("mariadb_audit_realclock", "server_audit.log", 22, 22, 0),
    ("nginx_panel_realclock", "access.log", 19, 19, 0),
]

pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"{SAMPLES} is not available")


def _csv_record_lines(path: Path) -> dict[int, int]:
    """csvlog record number -> its first line (quoted fields span lines)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    starts: dict[int, int] = {}
    record = index = 0
    while index < len(lines):
        record += 1
        starts[record] = index + 1
        text = lines[index]
        index += 1
        while text.count('"') % 2 and index < len(lines):
            text += lines[index]
            index += 1
    return starts


def _labels(directory: Path, name: str) -> tuple[dict[str, dict[str, Any]], dict[int, str]]:
    events = {}
    for line in (directory / "ground_truth.jsonl").read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        events[event["id"]] = event
    by_line: dict[int, str] = {}
    if name == "postgresql.log":
        for event in events.values():
            by_line.update(dict.fromkeys(event["log_lines"].get(name, []), event["id"]))
        return events, by_line
    with (directory / "labels.csv").open(encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["gt_id"]]
    if name == "postgresql.csv":
        starts = _csv_record_lines(directory / name)
        by_line = {starts[int(r["csv_record"])]: r["gt_id"] for r in rows}
    elif name == "postgresql.json":
        by_line = {int(r["csv_record"]): r["gt_id"] for r in rows}
    else:
        by_line = {int(r["line"]): r["gt_id"] for r in rows}
    return events, by_line


def _setup(tmp: Path, directory: Path, night: bool) -> Path:
    exports = (
        directory
        if (directory / REFERENCES["cases"]).exists()
        else SAMPLES / "pgaudit_workload_dayshift"
    )
    write_webhost_policy(tmp, exports, hours=not night)
    config = yaml.safe_load((EXAMPLES / "webhost-breachwatch.yml").read_text(encoding="utf-8"))
    config["state_dir"] = str(tmp / "state")
    config["notifications"]["customers"] = str(ROOT / "config" / "customers.csv")
    path = tmp / "breachwatch.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def measure(
    tmp: Path, directory_name: str, log: str, capsys: pytest.CaptureFixture[str]
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(required event ids, detected ones, false-positive findings) for one log."""
    directory = SAMPLES / directory_name
    # auditd has no dayshift variant: its kernel timestamps are the night of the recording.
    night = directory_name.endswith("realclock") or directory_name == "auditd_files"
    config = _setup(tmp, directory, night)
    events, by_line = _labels(directory, log)
    capsys.readouterr()
    code = main(["scan", "--config", str(config), "--json", "--no-progress", str(directory / log)])
    assert code in (0, 1)
    findings = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    required = [
        gid
        for gid, event in events.items()
        if RANK[event["severity"]] >= RANK["medium"]
        and not (night and "off_hours" in event.get("tags", ()))
    ]
    hit = {by_line[f["source"]["line"]] for f in findings if f["source"]["line"] in by_line}
    false = [f for f in findings if f["source"]["line"] not in by_line]
    return required, [g for g in required if g in hit], false


@pytest.mark.parametrize(("directory", "log", "required", "recall", "fp_max"), CASES)
def test_labelled_log(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    directory: str,
    log: str,
    required: int,
    recall: int,
    fp_max: int,
) -> None:
    want, found, false = measure(tmp_path, directory, log, capsys)
    assert len(want) == required
    missed = sorted(set(want) - set(found))
    assert len(found) >= recall, f"missed {missed}"
    described = [(f["source"]["line"], f["rule"], f["actor"]) for f in false]
    assert len(false) <= fp_max, f"false positives: {described}"
