"""From a pgaudit line to a customer's breach e-mail, through the real daemon process, a real
SMTP server (aiosmtpd) and the real metrics endpoint."""

from __future__ import annotations

import re
import sqlite3
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.daemon_harness import (
    BENIGN,
    VIOLATION,
    DaemonProcess,
    append,
    cli_json,
    free_port,
    metric_value,
    scrape,
    wait_for,
    write_config,
)
from tests.smtp_server import start_smtp_server

pytestmark = pytest.mark.slow


def _incident_count(tmp_path: Path) -> int:
    db = tmp_path / "state" / "breachwatch.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM incidents").fetchone()[0])
        except sqlite3.OperationalError:  # schema not created yet
            return 0


def _messages_to(server_messages: list[EmailMessage], address: str) -> list[EmailMessage]:
    return [m for m in server_messages if address in str(m["To"])]


def test_pgaudit_line_to_customer_email(tmp_path: Path) -> None:
    smtp = start_smtp_server(tmp_path, require_starttls=False, auth=None)
    metrics_port = free_port()
    config = write_config(tmp_path, smtp_port=smtp.port, metrics_port=metrics_port)
    log = tmp_path / "logs" / "postgresql.log"
    log.write_text("")
    daemon = DaemonProcess(config, tmp_path / "daemon.out").start()
    try:
        append(log, BENIGN + "this is no log line\n" + VIOLATION)
        incidents = wait_for(
            lambda: cli_json(config, "incidents", "list"), 60, "an incident", daemon
        )
        assert len(incidents) == 1
        quarantined = cli_json(config, "quarantine")
        assert [(q["line"], q["reason"]) for q in quarantined] == [(2, "bad_prefix")]
        assert incidents[0]["actor"] == "kevin_helpdesk"
        assert incidents[0]["severity"] == "critical"
        assert incidents[0]["subjects"] == 1
        assert {o["regime"] for o in cli_json(config, "obligations", "--all")} == {
            "gdpr_art33",
            "gdpr_art34",
        }

        mail = wait_for(
            lambda: _messages_to(smtp.messages, "amelie.dubois@example.org"),
            60,
            "the breach e-mail",
            daemon,
        )
        assert len(mail) == 1
        message = mail[0]
        assert message["Content-Language"] == "fr"
        body = message.get_body(preferencelist=("plain",))
        assert body is not None
        text = body.get_content()
        assert "violation de données" in text.lower()
        assert incidents[0]["ref"] in text or incidents[0]["ref"] in str(message["Subject"])

        metrics = wait_for(lambda: scrape(metrics_port), 30, "metrics")
        assert (
            metric_value(
                metrics, "breachwatch_open_incidents", state="suspected", severity="critical"
            )
            == 1
        )
        assert (
            metric_value(metrics, "breachwatch_findings_total", rule="ntk.departed_account") or 0
        ) >= 1
        assert metric_value(metrics, "breachwatch_events_total", source="pg-main") == 2
        assert (
            metric_value(
                metrics, "breachwatch_parse_errors_total", source="pg-main", reason="bad_prefix"
            )
            == 1
        )
        labels = " ".join(re.findall(r"\{[^}]*\}", metrics))  # sample values may hold "1001"
        assert "kevin" not in labels and "1001" not in labels  # no personal data in labels
        sent = wait_for(
            lambda: metric_value(scrape(metrics_port), "breachwatch_notices_total", outcome="sent"),
            30,
            "sent counter",
        )
        assert sent == 1
    finally:
        assert daemon.stop() == 0
        smtp.stop()
    assert re.search(r'"event": "stopped"', (tmp_path / "daemon.out").read_text())


def test_kill_9_between_append_and_email_gives_one_incident_one_email(tmp_path: Path) -> None:
    smtp = start_smtp_server(tmp_path, require_starttls=False, auth=None)
    # a hold long enough that the kill lands before the notice is released
    config = write_config(tmp_path, smtp_port=smtp.port, hold="10s")
    log = tmp_path / "logs" / "postgresql.log"
    log.write_text("")
    daemon = DaemonProcess(config, tmp_path / "daemon.out").start()
    append(log, BENIGN + VIOLATION)
    # read the store directly: a CLI subprocess per poll is too slow on a loaded machine
    wait_for(lambda: _incident_count(tmp_path) or None, 60, "an incident", daemon)
    daemon.kill9()
    assert smtp.messages == []

    restarted = DaemonProcess(config, tmp_path / "daemon2.out").start()
    try:
        wait_for(
            lambda: _messages_to(smtp.messages, "amelie.dubois@example.org"),
            60,
            "the breach e-mail after restart",
            restarted,
        )
        # give a duplicate every chance to show up before counting
        wait_for(
            lambda: [n for n in cli_json(config, "notices") if n["state"] == "sent"],
            10,
            "the outbox to record the send",
            restarted,
        )
    finally:
        restarted.stop()
        smtp.stop()
    # the restart resumed after the committed offset: the line was not evaluated again
    assert "incident_opened" not in (tmp_path / "daemon2.out").read_text()
    assert len(cli_json(config, "incidents", "list")) == 1
    assert len(_messages_to(smtp.messages, "amelie.dubois@example.org")) == 1
    assert len(cli_json(config, "notices")) == 1
