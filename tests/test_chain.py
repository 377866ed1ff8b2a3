"""The hash-chained incident history: tampering with the SQLite file directly is caught."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from breachwatch.config import DaemonConfig
from breachwatch.incidents import chain
from breachwatch.incidents.casework import Casework
from breachwatch.incidents.lifecycle import IncidentState
from breachwatch.incidents.service import IncidentService
from tests.daemon_harness import cli
from tests.store_fixtures import finding, make_config, make_db

T0 = datetime(2026, 10, 24, 23, 30, tzinfo=UTC)


def _store(tmp_path: Path) -> tuple[DaemonConfig, Path]:
    config = make_config(tmp_path)
    db = make_db(config)
    service = IncidentService(config)
    with db.transaction() as session:
        ref = service.record(session, [finding(T0)], T0).opened[0].ref
        service.record(session, [finding(T0, actor="omar_sysadmin", offset=500)], T0)
    with db.transaction() as session:
        Casework(config).comment(
            session, ref, "called the customer — «rappel»", "dpo", T0 + timedelta(minutes=5)
        )
        service.transition(
            session, ref, IncidentState.CONFIRMED, "dpo", "real", T0 + timedelta(hours=1)
        )
    db.dispose()
    return config, Path(config.db_url.removeprefix("sqlite:///"))


def _verify(config: DaemonConfig) -> chain.ChainReport:
    db = make_db(config)
    with db.transaction() as session:
        report = chain.verify_store(session)
    db.dispose()
    return report


def _sql(path: Path, statement: str, *params: object) -> None:
    con = sqlite3.connect(path)
    con.execute(statement, params)
    con.commit()
    con.close()


def _ids(path: Path) -> list[int]:
    con = sqlite3.connect(path)
    ids = [r[0] for r in con.execute("SELECT id FROM incident_history ORDER BY id")]
    con.close()
    return ids


def test_intact_chain_verifies_and_links_every_row(tmp_path: Path) -> None:
    config, path = _store(tmp_path)
    report = _verify(config)
    assert report.ok and report.rows == len(_ids(path)) > 5
    con = sqlite3.connect(path)
    rows = list(con.execute("SELECT prev_hash, hash FROM incident_history ORDER BY id"))
    con.close()
    assert rows[0][0] == chain.GENESIS
    assert all(rows[i][0] == rows[i - 1][1] for i in range(1, len(rows)))
    result = cli(tmp_path / "breachwatch.yml", "incidents", "verify", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True


def test_edited_detail_is_caught(tmp_path: Path) -> None:
    config, path = _store(tmp_path)
    target = _ids(path)[3]
    _sql(
        path,
        "UPDATE incident_history SET detail = ? WHERE id = ?",
        json.dumps({"reason": "nothing happened"}),
        target,
    )
    report = _verify(config)
    assert report.first_break is not None
    assert (report.first_break.row_id, report.first_break.kind) == (target, "edited")
    result = cli(tmp_path / "breachwatch.yml", "incidents", "verify")
    assert result.returncode == 1
    assert f"row {target}" in result.stdout


def test_edited_author_or_time_is_caught(tmp_path: Path) -> None:
    config, path = _store(tmp_path)
    target = _ids(path)[1]
    _sql(path, "UPDATE incident_history SET \"by\" = 'someone_else' WHERE id = ?", target)
    assert _verify(config).first_break == chain.ChainBreak(
        target, "edited", f"row {target}: content does not match its hash"
    )


def test_deleted_row_is_caught(tmp_path: Path) -> None:
    config, path = _store(tmp_path)
    ids = _ids(path)
    _sql(path, "DELETE FROM incident_history WHERE id = ?", ids[2])
    report = _verify(config)
    assert report.first_break is not None
    assert (report.first_break.row_id, report.first_break.kind) == (ids[3], "broken_link")


def test_deleted_newest_row_is_caught_by_the_head(tmp_path: Path) -> None:
    config, path = _store(tmp_path)
    _sql(path, "DELETE FROM incident_history WHERE id = ?", _ids(path)[-1])
    report = _verify(config)
    assert report.first_break is not None and report.first_break.kind == "truncated"


def test_reordered_rows_are_caught(tmp_path: Path) -> None:
    config, path = _store(tmp_path)
    a, b = _ids(path)[1:3]
    con = sqlite3.connect(path)
    con.execute("UPDATE incident_history SET id = -1 WHERE id = ?", (a,))
    con.execute("UPDATE incident_history SET id = ? WHERE id = ?", (a, b))
    con.execute("UPDATE incident_history SET id = ? WHERE id = -1", (b,))
    con.commit()
    con.close()
    report = _verify(config)
    assert report.first_break is not None and report.first_break.row_id == a


def test_chain_continues_across_sessions_and_processes(tmp_path: Path) -> None:
    config, _ = _store(tmp_path)
    result = cli(tmp_path / "breachwatch.yml", "incidents", "comment", "1", "--text", "later")
    assert result.returncode == 0, result.stderr
    assert _verify(config).ok
