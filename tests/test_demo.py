"""`breachwatch demo --json`: the real daemon on a scratch directory, fed for a few seconds,
must open incidents and schedule (and deliver) customer notices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_demo_json_shows_incidents_and_notices(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "breachwatch.cli",
            "demo",
            "--duration",
            "8",
            "--json",
            "--dir",
            str(directory),
            "--seed",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout)

    assert summary["lines_written"] >= 20
    assert summary["events"] == summary["lines_written"]  # every line was parsed
    actors = {i["actor"]: i for i in summary["incidents"]}
    assert {"kevin_helpdesk", "omar_sysadmin", "paula_sales"} <= actors.keys()
    assert actors["kevin_helpdesk"]["severity"] == "critical"
    assert "ntk.departed_account" in summary["findings"]
    assert "anomaly.export" in summary["findings"]
    assert "anomaly.unbounded_read" in summary["findings"]
    # the helpdesk and web-shop reads are within their grants: no incident for them
    assert not {"yasmine_helpdesk", "tom_helpdesk", "svc_shop"} & actors.keys()

    recipients = {n["recipient"]: n["state"] for n in summary["notices"]}
    assert {"1002", "1003", "1005", "1007"} <= recipients.keys()
    assert "sent" in recipients.values()
    mail = list(Path(summary["mail_folder"]).glob("*.eml"))
    assert len(mail) == sum(1 for state in recipients.values() if state == "sent")
    assert summary["metrics_url"].startswith("http://127.0.0.1:")
    assert Path(summary["daemon_log"]).read_text().count('"event": "stopped"') == 1
