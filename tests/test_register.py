"""The GDPR Art. 33(5) register for a period, as CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

from breachwatch.incidents.casework import Casework
from breachwatch.incidents.lifecycle import IncidentState
from breachwatch.incidents.service import IncidentService
from tests.daemon_harness import cli
from tests.store_fixtures import finding, make_config, make_db

NOV = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
DEC = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def _store(tmp_path: Path) -> Path:
    config = make_config(tmp_path)
    db = make_db(config)
    service = IncidentService(config)
    with db.transaction() as session:
        a = service.record(session, [finding(NOV)], NOV).opened[0].ref
        b = (
            service.record(session, [finding(DEC, actor="omar_sysadmin", offset=200)], DEC)
            .opened[0]
            .ref
        )
        c = (
            service.record(session, [finding(DEC, actor="tom_helpdesk", offset=400)], DEC)
            .opened[0]
            .ref
        )
    with db.transaction() as session:
        service.transition(session, a, IncidentState.CONFIRMED, "dpo", "real", NOV)
        service.transition(session, a, IncidentState.NOTIFIED, "dpo", "form sent", NOV)
        Casework(config).comment(session, a, "account disabled", "dpo", NOV)
        service.transition(session, c, IncidentState.DISMISSED, "dpo", "test data", DEC)
    assert b
    db.dispose()
    return tmp_path / "breachwatch.yml"


def test_register_csv_for_a_period(tmp_path: Path) -> None:
    config = _store(tmp_path)
    result = cli(config, "register", "--from", "2026-11-01", "--to", "2026-11-30")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["ref"] for r in rows] == ["BW-2026-0001"]
    row = rows[0]
    assert row["state"] == "notified"
    assert row["authority_notice"].startswith("done")
    assert "account disabled" in row["remedial_action"]
    assert row["risk_band"] and row["facts"] and row["effects"]


def test_register_json_excludes_dismissed_unless_all(tmp_path: Path) -> None:
    config = _store(tmp_path)
    result = cli(
        config, "register", "--from", "2026-12-01", "--to", "2026-12-31", "--format", "json"
    )
    data = json.loads(result.stdout)
    assert data["register"] == "GDPR Art. 33(5)"
    assert [r["ref"] for r in data["breaches"]] == ["BW-2026-0002"]
    everything = json.loads(cli(config, "register", "--format", "json", "--all").stdout)
    assert len(everything["breaches"]) == 3
