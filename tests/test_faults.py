"""Faults the daemon must live through without losing or repeating anything (proof suite):
the SMTP relay down for the whole hold period, the SQLite store locked by another process,
the state directory's disk full, and the ticketing system's case API timing out. Real
processes, a real aiosmtpd, a real tmpfs, a real HTTP server that stops answering."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller

from tests.conftest import skip_or_fail
from tests.daemon_harness import (
    BENIGN,
    VIOLATION,
    DaemonProcess,
    append,
    audit_read,
    cli_json,
    free_port,
    metric_value,
    scrape,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

AMELIE = "amelie.dubois@example.org"


class _Collect:
    def __init__(self) -> None:
        self.rcpt: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.rcpt.extend(envelope.rcpt_tos)
        return "250 OK"


def _configure(
    tmp_path: Path,
    *,
    smtp_port: int | None = None,
    hold: str = "0s",
    notifications: dict[str, Any] | None = None,
) -> tuple[Path, int]:
    port = free_port()
    config = write_config(tmp_path, smtp_port=smtp_port, hold=hold, metrics_port=port)
    doc = yaml.safe_load(config.read_text())
    doc["notifications"].update(notifications or {})
    config.write_text(yaml.safe_dump(doc, allow_unicode=True))
    (tmp_path / "logs" / "postgresql.log").write_text("")
    return config, port


def _log_lines(daemon: DaemonProcess, event: str) -> list[str]:
    return [
        line for line in daemon.log_path.read_text().splitlines() if f'"event": "{event}"' in line
    ]


def test_smtp_down_for_the_whole_hold_then_back_delivers_once(tmp_path: Path) -> None:
    smtp_port = free_port()  # nothing listens there yet
    config, port = _configure(
        tmp_path,
        smtp_port=smtp_port,
        hold="1s",
        notifications={"retry_base": "300ms", "max_attempts": 30},
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.out").start()
    handler = _Collect()
    controller: Controller | None = None
    try:
        append(tmp_path / "logs" / "postgresql.log", BENIGN + VIOLATION)
        # the hold passes and the relay refuses connections: retried with backoff, not failed
        wait_for(
            lambda: (
                (metric_value(scrape(port), "breachwatch_notices_total", outcome="retry") or 0) >= 3
            ),
            30,
            "three retries",
            daemon,
        )
        [notice] = cli_json(config, "notices")
        assert notice["state"] == "queued"
        assert metric_value(scrape(port), "breachwatch_notices_total", outcome="failed") is None
        assert _log_lines(daemon, "notice_not_sent")

        controller = Controller(handler, hostname="127.0.0.1", port=smtp_port)
        controller.start()
        wait_for(lambda: handler.rcpt, 30, "delivery once the relay is back", daemon)
        wait_for(
            lambda: [n for n in cli_json(config, "notices") if n["state"] == "sent"],
            10,
            "the outbox to record the send",
            daemon,
        )
        wait_for(
            lambda: metric_value(scrape(port), "breachwatch_notices_total", outcome="sent"),
            5,
            "the sent counter",
            daemon,
        )
        assert metric_value(scrape(port), "breachwatch_notices_total", outcome="sent") == 1
    finally:
        assert daemon.stop() == 0
        if controller is not None:
            controller.stop()
    assert handler.rcpt == [AMELIE]  # once, after all those retries


_LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")  # a write transaction: every other writer is locked out
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def test_store_locked_by_another_process(tmp_path: Path) -> None:
    config, port = _configure(tmp_path)
    log = tmp_path / "logs" / "postgresql.log"
    daemon = DaemonProcess(config, tmp_path / "daemon.out").start()
    try:
        append(log, BENIGN)
        wait_for(
            lambda: metric_value(scrape(port), "breachwatch_events_total", source="pg-main") == 1,
            10,
            "the first event",
            daemon,
        )
        # longer than the store's 10 s busy timeout
        locker = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(tmp_path / "state" / "breachwatch.db"), "12"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
            append(log, VIOLATION + BENIGN.replace("10:00:01", "10:00:03"))
            wait_for(
                lambda: _log_lines(daemon, "store_write_failed"),
                20,
                "a clear error while the store is locked",
                daemon,
            )
            [line] = _log_lines(daemon, "store_write_failed")[:1]
            assert "database is locked" in line and '"level": "error"' in line
            assert daemon.alive()
        finally:
            assert locker.wait(30) == 0
            assert locker.stdout is not None
            locker.stdout.close()
        wait_for(lambda: cli_json(config, "incidents", "list"), 20, "recovery", daemon)
        wait_for(
            lambda: metric_value(scrape(port), "breachwatch_events_total", source="pg-main") == 3,
            10,
            "all events",
            daemon,
        )
        wait_for(
            lambda: [n for n in cli_json(config, "notices") if n["state"] == "sent"],
            10,
            "the notice",
            daemon,
        )
        metrics = scrape(port)
        assert metric_value(metrics, "breachwatch_findings_total", rule="ntk.departed_account") == 1
        assert metric_value(metrics, "breachwatch_incidents_opened_total") == 1
        assert daemon.alive()
    finally:
        assert daemon.stop() == 0
    assert len(cli_json(config, "incidents", "list")) == 1
    assert len(cli_json(config, "notices")) == 1


@contextlib.contextmanager
def _tmpfs(directory: Path, size: str) -> Iterator[Path]:
    directory.mkdir(mode=0o700)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        skip_or_fail(
            f"cannot mount a tmpfs for the disk-full test (needs root): {result.stderr.strip()}"
        )
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def _fill(path: Path) -> int:
    """Write until the file system says ENOSPC; returns the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as filler:
        chunk = b"\0" * 4096
        while True:
            try:
                written += filler.write(chunk) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return written


def test_disk_full_then_freed_recovers_without_loss(tmp_path: Path) -> None:
    garbage = [f"not a log line {n:04d} " + "x" * 3000 + "\n" for n in range(200)]
    with _tmpfs(tmp_path / "state", "2m"):
        config, port = _configure(tmp_path)
        daemon = DaemonProcess(config, tmp_path / "daemon.out").start()
        log = tmp_path / "logs" / "postgresql.log"
        filler = tmp_path / "state" / "filler"
        try:
            append(log, BENIGN)
            wait_for(
                lambda: (
                    metric_value(scrape(port), "breachwatch_events_total", source="pg-main") == 1
                ),
                10,
                "the first event",
                daemon,
            )
            assert _fill(filler) > 0
            # 600 KB of quarantine and an incident cannot be stored on a full disk
            append(log, "".join(garbage) + VIOLATION)
            wait_for(
                lambda: _log_lines(daemon, "store_write_failed"),
                20,
                "a clear error on the full disk",
                daemon,
            )
            [line] = _log_lines(daemon, "store_write_failed")[:1]
            assert "disk is full" in line and '"level": "error"' in line
            assert daemon.alive()

            filler.unlink()  # space freed
            wait_for(lambda: cli_json(config, "incidents", "list"), 20, "recovery", daemon)
            wait_for(
                lambda: [n for n in cli_json(config, "notices") if n["state"] == "sent"],
                20,
                "the notice in the mail folder",
                daemon,
            )
            metrics = scrape(port)
            assert metric_value(metrics, "breachwatch_quarantined_records") == len(garbage)
            assert metric_value(metrics, "breachwatch_events_total", source="pg-main") == 2
            assert (
                metric_value(metrics, "breachwatch_findings_total", rule="ntk.departed_account")
                == 1
            )
            assert len(list((tmp_path / "state" / "mail" / "new").glob("*.eml"))) == 1
        finally:
            assert daemon.stop() == 0
        assert len(cli_json(config, "incidents", "list")) == 1


# ---- the ticketing system's case API timing out ----------------------------------------------

CLIENT_TIMEOUT = 10.0  # HttpTable's read timeout (detection/reference.py)
CASE_POLICY = """version: 1
staff:
  - {person: yasmine, accounts: [yasmine_helpdesk], roles: [helpdesk]}
data_map:
  - {object: clients.accounts, categories: [identity], subject_column: id}
casework:
  source: {url: "URL", poll: 1s}
grants:
  - {role: helpdesk, objects: [clients.accounts], actions: [read], ticket: true}
"""


def _case(case_id: int, account: int) -> dict[str, object]:
    return {
        "case_id": case_id,
        "account_id": account,
        "assignee": "yasmine_helpdesk",
        "status": "open",
        "opened_at": "2026-11-01T09:00:00+01:00",
        "closed_at": None,
    }


class _CaseApi:
    """A ticketing system's case endpoint (JSON, with an ETag as real ones send). While
    ``hanging`` is set, a request is accepted and then not answered for longer than the
    client's timeout: the API is up but does not answer, the hard case (a refused connection
    fails at once)."""

    def __init__(self) -> None:
        self.cases = [_case(1, 100)]
        self.hanging = threading.Event()
        self.resumed = threading.Event()
        self.requests = 0
        self.hung_requests = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.requests += 1
                if api.hanging.is_set():
                    api.hung_requests += 1
                    api.resumed.wait(CLIENT_TIMEOUT + 5)
                body = json.dumps({"items": api.cases}).encode()
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                with contextlib.suppress(OSError):  # the client may have given up
                    if self.headers.get("If-None-Match") == etag:
                        self.send_response(304)
                        self.end_headers()
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/cases"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.resumed.set()
        self.server.shutdown()
        self.server.server_close()


def _yasmine_reads(account: int, n: int) -> str:
    return audit_read(
        f"2026-11-30 10:{n:02d}:00.000 CET",
        5100,
        "yasmine_helpdesk",
        n,
        "clients.accounts",
        f"SELECT full_name, email FROM clients.accounts WHERE id = {account};",
    )


def test_ticket_api_timing_out_keeps_last_cases_then_refreshes(tmp_path: Path) -> None:
    """Decision rule: while the case API does not answer, every access is judged against the
    last case table that loaded; nothing waits for the API (the refresh runs on its own thread)
    and no line is held back. A case opened upstream during the outage is not known yet, so an
    access to its customer in that time is a finding (judged on what was known, not re-judged
    later); once the API answers, the new table is swapped in for the lines that follow."""
    api = _CaseApi()
    try:
        (tmp_path / "policy.yml").write_text(CASE_POLICY.replace("URL", api.url))
        port = free_port()
        config = write_config(
            tmp_path,
            smtp_port=None,
            hold="1h",
            metrics_port=port,
            extra={"policy": str(tmp_path / "policy.yml")},
        )
        log = tmp_path / "logs" / "postgresql.log"
        log.write_text("")
        daemon = DaemonProcess(config, tmp_path / "daemon.out").start()
        lines = [0]

        def feed(*accounts: int) -> None:
            text = ""
            for account in accounts:
                lines[0] += 1
                text += _yasmine_reads(account, lines[0])
            lines[0] += 1  # a covered read (case 1, never closed) ends the last record
            append(log, text + _yasmine_reads(100, lines[0]))
            wait_for(
                lambda: (
                    metric_value(scrape(port), "breachwatch_events_total", source="pg-main")
                    == lines[0]
                ),
                20,
                f"{lines[0]} events",
                daemon,
            )

        def no_case() -> float:
            found = metric_value(
                scrape(port), "breachwatch_findings_total", rule="ntk.no_open_case"
            )
            return found or 0.0

        try:
            feed(100, 999)  # case 1 covers customer 100; nobody has a case for 999
            assert no_case() == 1

            api.cases = [_case(1, 100), _case(2, 200)]  # opened upstream ...
            api.hanging.set()  # ... while the API stops answering
            wait_for(
                lambda: _log_lines(daemon, "reference_failed"),
                3 * CLIENT_TIMEOUT,
                "a clear line when the API times out",
                daemon,
            )
            [line] = _log_lines(daemon, "reference_failed")
            assert '"level": "warning"' in line and api.url in line
            assert "timed out" in line and "last loaded data kept" in line
            metrics = scrape(port)
            assert metric_value(metrics, "breachwatch_reference_refresh_failures_total") == 1
            assert metric_value(metrics, "breachwatch_state_up") == 1

            # the outage goes on (the API still hangs); processing does not wait for it
            feed(100, 200, 999)  # 100: last known case; 200 and 999: no case known
            assert no_case() == 3
            assert not _log_lines(daemon, "reference_reloaded")  # judged during the outage

            api.hanging.clear()
            api.resumed.set()  # the API answers again, with case 2
            wait_for(
                lambda: _log_lines(daemon, "reference_reloaded"),
                3 * CLIENT_TIMEOUT,
                "the case table refreshed",
                daemon,
            )
            assert metric_value(scrape(port), "breachwatch_reference_reloads_total") == 1
            feed(100, 200)  # both covered now
            assert no_case() == 3
            metrics = scrape(port)
            # one failure episode, counted once however many polls timed out
            assert metric_value(metrics, "breachwatch_reference_refresh_failures_total") == 1
            assert metric_value(metrics, "breachwatch_findings_total", rule="ntk.no_open_case") == 3
        finally:
            assert daemon.stop() == 0
        assert api.hung_requests >= 1
        # nothing lost or doubled across the outage: one finding per uncovered read, by customer
        with contextlib.closing(sqlite3.connect(tmp_path / "state" / "breachwatch.db")) as db:
            rows = db.execute(
                "SELECT subjects FROM findings WHERE rule = 'ntk.no_open_case'"
            ).fetchall()
        assert sorted(s for (text,) in rows for s in json.loads(text)) == ["200", "999", "999"]
    finally:
        api.close()
