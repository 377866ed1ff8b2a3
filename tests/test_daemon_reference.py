"""The real daemon and the policy's own state: reference tables reloaded while it runs (and
after SIGHUP), and the conditions' state (cases closed in the log, per-grant subject windows)
carried over a kill -9 by the ingest transaction."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

from tests.casework import HELPDESK_POLICY, write_cases
from tests.daemon_harness import DaemonProcess, append, audit_read, pg_line, wait_for, write_config

CONDITION_RULES = ("ntk.no_open_case", "ntk.subject_limit")


def _setup(tmp: Path, cases: dict[int, int]) -> tuple[Path, Path]:
    (tmp / "policy.yml").write_text(HELPDESK_POLICY, encoding="utf-8")
    write_cases(tmp, cases)
    config = write_config(tmp, smtp_port=None, hold="1h", extra={"policy": str(tmp / "policy.yml")})
    log = tmp / "logs" / "postgresql.log"
    log.write_text("")
    return config, log


def _read(second: int, customer: int) -> str:
    return audit_read(
        f"2026-11-30 10:00:{second:02d}.000 CET",
        4200,
        "yasmine_helpdesk",
        second,
        "clients.accounts",
        f"SELECT full_name, email FROM clients.accounts WHERE id = {customer};",
    )


def _close(second: int, case: int) -> str:
    sql = f"UPDATE helpdesk.cases SET status = 'closed' WHERE case_id = {case};"
    return pg_line(
        f"2026-11-30 10:00:{second:02d}.000 CET",
        4200,
        "yasmine_helpdesk",
        f"LOG:  AUDIT: SESSION,{second},1,WRITE,UPDATE,TABLE,helpdesk.cases,{sql},<none>",
    )


def _findings(db: Path) -> list[tuple[str, int]]:
    """(rule, log line) of the conditions' findings the daemon recorded."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT rule, evidence FROM findings WHERE rule IN (?, ?)", CONDITION_RULES
        ).fetchall()
    return sorted((rule, json.loads(evidence)[0]["line"]) for rule, evidence in rows)


def _scan(config: Path, log: Path) -> list[tuple[str, int]]:
    """The same log, in one uninterrupted run."""
    from tests.daemon_harness import cli

    result = cli(config, "scan", "--json", "--no-progress", str(log))
    assert result.returncode in (0, 1), result.stderr
    found = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return sorted((f["rule"], f["source"]["line"]) for f in found if f["rule"] in CONDITION_RULES)


def test_reference_file_changed_under_the_running_daemon(tmp_path: Path) -> None:
    config, log = _setup(tmp_path, {11: 201})
    db = tmp_path / "state" / "breachwatch.db"
    out = tmp_path / "daemon.out"
    daemon = DaemonProcess(config, out).start()
    try:
        append(log, _read(1, 100))  # line 1: no case for customer 100 yet
        wait_for(lambda: _findings(db) == [("ntk.no_open_case", 1)] or None, 30, "finding", daemon)

        write_cases(tmp_path, {11: 201, 12: 100})  # the helpdesk opens a case for 100
        wait_for(lambda: out.read_text().count("reference_reloaded") >= 1 or None, 30, "reload")
        append(log, _read(2, 100) + _read(3, 999))  # line 2 is now case work; 3 is not
        wait_for(lambda: ("ntk.no_open_case", 3) in _findings(db) or None, 30, "line 3", daemon)
        assert _findings(db) == [("ntk.no_open_case", 1), ("ntk.no_open_case", 3)]

        # SIGHUP builds a new pipeline with new tables: the refresher follows them
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: '"reloaded"' in out.read_text() or None, 30, "SIGHUP reload", daemon)
        write_cases(tmp_path, {11: 201})  # case 12 withdrawn from the export
        wait_for(lambda: out.read_text().count("reference_reloaded") >= 2 or None, 30, "reload 2")
        append(log, _read(4, 100))
        wait_for(lambda: ("ntk.no_open_case", 4) in _findings(db) or None, 30, "line 4", daemon)
    finally:
        code = daemon.stop()
    assert code == 0
    text = out.read_text()
    assert '"stopped"' in text and "Traceback" not in text


def test_closed_cases_and_subject_windows_survive_kill_9(tmp_path: Path) -> None:
    cases = {1: 100, 11: 201, 12: 202, 13: 203, 14: 204}
    config, log = _setup(tmp_path, cases)
    db = tmp_path / "state" / "breachwatch.db"
    daemon = DaemonProcess(config, tmp_path / "d1.out").start()
    try:
        # 201, 202, 100 in their cases; case 1 closed in the log; 999 has no case (line 5)
        append(log, _read(1, 201) + _read(2, 202) + _read(3, 100) + _close(4, 1) + _read(5, 999))
        wait_for(lambda: _findings(db) == [("ntk.no_open_case", 5)] or None, 30, "line 5", daemon)
        daemon.kill9()  # the window holds 4 customers and case 1 is closed only in the log
    finally:
        daemon.stop()
    daemon = DaemonProcess(config, tmp_path / "d2.out").start()
    try:
        # 100 again (case closed at line 4), then the 5th and 6th distinct customers
        append(log, _read(6, 100) + _read(7, 203) + _read(8, 204))
        wait_for(lambda: len(_findings(db)) >= 3 or None, 30, "findings after restart", daemon)
        time.sleep(1.0)  # nothing more may come
    finally:
        assert daemon.stop() == 0
    expected = [("ntk.no_open_case", 5), ("ntk.no_open_case", 6), ("ntk.subject_limit", 8)]
    assert _findings(db) == expected
    assert _scan(config, log) == expected
