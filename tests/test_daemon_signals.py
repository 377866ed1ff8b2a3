"""The daemon as systemd sees it: a real process, a real $NOTIFY_SOCKET (AF_UNIX datagram
socket), real signals. READY / STATUS / WATCHDOG / RELOADING / STOPPING, SIGHUP reloads,
SIGTERM stops, and a second SIGTERM during a stuck shutdown forces the exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import (
    REPO,
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


def tom_reads(customer: int, stmt_id: int) -> str:
    return audit_read(
        f"2026-11-30 10:0{stmt_id}:00.000 CET",
        4300,
        "tom_helpdesk",
        stmt_id,
        "clients.accounts",
        f"SELECT full_name, phone FROM clients.accounts WHERE id = {customer};",
    )


class NotifySocket:
    """What systemd listens on: collects every datagram the daemon sends."""

    def __init__(self, directory: Path) -> None:
        path = directory / "notify.sock"
        if len(str(path)) > 100:  # sun_path is 108 bytes
            path = Path(tempfile.mkdtemp(prefix="bw-notify-")) / "notify.sock"
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._messages: list[list[str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._messages.append(data.decode().split("\n"))

    @property
    def messages(self) -> list[list[str]]:
        with self._lock:
            return list(self._messages)

    def assignments(self, key: str) -> list[str]:
        """Every value sent for ``key`` (e.g. "STATUS"), in order."""
        prefix = key + "="
        return [a.removeprefix(prefix) for m in self.messages for a in m if a.startswith(prefix)]

    def wait(
        self, key: str, value: str | None = None, count: int = 1, timeout: float = 15
    ) -> list[str]:
        def probe() -> list[str] | None:
            found = [v for v in self.assignments(key) if value is None or value in v]
            return found if len(found) >= count else None

        return wait_for(
            probe,
            timeout,
            f"{count}× {key}={value or '…'} on the notify socket (got {self.messages[-10:]})",
        )

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(2)
        self.path.unlink(missing_ok=True)


class NotifiedDaemon(DaemonProcess):
    """The harness's daemon, started with $NOTIFY_SOCKET (and optionally $WATCHDOG_USEC)."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str]) -> None:
        super().__init__(config, log_path)
        self.env = env

    def start(self) -> NotifiedDaemon:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("WATCHDOG_PID", None)
        if "WATCHDOG_USEC" not in self.env:
            env.pop("WATCHDOG_USEC", None)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "breachwatch.cli", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        wait_for(
            lambda: '"started"' in self.log_path.read_text() or None,
            30,
            f"daemon start (log: {self.log_path})",
            self,
        )
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path)
    yield listener
    listener.close()


def _start(
    tmp_path: Path,
    notify: NotifySocket,
    *,
    watchdog_usec: int | None = None,
    policy: Path | None = None,
    smtp_port: int | None = None,
    smtp_timeout: str | None = None,
) -> tuple[NotifiedDaemon, Path, int]:
    port = free_port()
    config = write_config(tmp_path, smtp_port=smtp_port, metrics_port=port)
    text = config.read_text()
    if policy is not None:
        text = text.replace(str(REPO / "config" / "policy.yml"), str(policy))
    if smtp_timeout is not None:
        text = text.replace("security: none", f"security: none\n    timeout: {smtp_timeout}")
    config.write_text(text)
    (tmp_path / "logs" / "postgresql.log").write_text("")
    env = {"NOTIFY_SOCKET": str(notify.path)}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return NotifiedDaemon(config, tmp_path / "daemon.out", env).start(), config, port


def test_ready_status_and_watchdog(tmp_path: Path, notify: NotifySocket) -> None:
    daemon, _config, _port = _start(tmp_path, notify, watchdog_usec=600_000)
    try:
        notify.wait("READY", "1")
        first = notify.wait("STATUS")[0]
        assert "events/s" in first and "0 open incidents" in first, first
        append(tmp_path / "logs" / "postgresql.log", VIOLATION)
        notify.wait("STATUS", "1 open incidents", timeout=20)
        # 0.6 s watchdog → a ping every 0.3 s while healthy
        notify.wait("WATCHDOG", "1", count=5, timeout=10)
    finally:
        assert daemon.stop() == 0


def test_no_watchdog_pings_unless_asked(tmp_path: Path, notify: NotifySocket) -> None:
    daemon, _config, _port = _start(tmp_path, notify)
    try:
        notify.wait("READY", "1")
        notify.wait("STATUS", count=2, timeout=10)  # the main loop ran for a while
        assert notify.assignments("WATCHDOG") == []
    finally:
        assert daemon.stop() == 0


def test_sighup_reloads_a_valid_policy_and_refuses_an_invalid_one(
    tmp_path: Path, notify: NotifySocket
) -> None:
    policy = tmp_path / "policy.yml"
    original = (REPO / "config" / "policy.yml").read_text()
    assert (
        "  - person: tom\n    accounts: [tom_helpdesk]\n    roles: [helpdesk]\n    status: active"
        in original
    )
    policy.write_text(original)
    daemon, config, port = _start(tmp_path, notify, policy=policy)
    log = tmp_path / "logs" / "postgresql.log"
    try:
        notify.wait("READY", "1")
        # tom (active helpdesk) may read customer records: nothing happens
        append(log, tom_reads(1002, 1))
        wait_for(
            lambda: metric_value(scrape(port), "breachwatch_events_total", source="pg-main") == 1,
            10,
            "tom's read",
            daemon,
        )
        assert cli_json(config, "incidents", "list") == []

        # a valid change: tom left the company
        left = original.replace(
            "accounts: [tom_helpdesk]\n    roles: [helpdesk]\n    status: active",
            "accounts: [tom_helpdesk]\n    roles: [helpdesk]\n    status: left",
        )
        policy.write_text(left)
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: '"event": "reloaded"' in daemon.log(), 10, "reload", daemon)
        notify.wait("RELOADING", "1")
        notify.wait("READY", "1", count=2)
        append(log, tom_reads(1002, 2))
        [incident] = wait_for(
            lambda: cli_json(config, "incidents", "list"),
            10,
            "an incident under the new policy",
            daemon,
        )
        assert incident["actor"] == "tom_helpdesk" and incident["subjects"] == 1

        # an invalid policy: refused, the previous one stays in force
        policy.write_text(left.replace("status: left", "status: gone"))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: '"event": "reload_refused"' in daemon.log(), 10, "refusal", daemon)
        [refusal] = [line for line in daemon.log().splitlines() if "reload_refused" in line]
        assert "status" in refusal  # says what is wrong
        notify.wait("READY", "1", count=3)
        metrics = scrape(port)
        assert metric_value(metrics, "breachwatch_config_reload_failures_total") == 1
        # still processing, still with the policy in which tom has left
        append(log, tom_reads(1003, 3))
        wait_for(
            lambda: [i for i in cli_json(config, "incidents", "list") if i["subjects"] == 2],
            10,
            "tom's next read, same incident",
            daemon,
        )
        assert daemon.alive()
    finally:
        assert daemon.stop() == 0
    assert daemon.log().count('"event": "reloaded"') == 1


def test_sigterm_sends_stopping_and_exits_0(tmp_path: Path, notify: NotifySocket) -> None:
    daemon, _config, _port = _start(tmp_path, notify)
    notify.wait("READY", "1")
    daemon.signal(signal.SIGTERM)
    assert daemon.proc is not None
    assert daemon.proc.wait(20) == 0
    notify.wait("STOPPING", "1", timeout=2)
    assert '"event": "stopped"' in daemon.log()


def test_second_sigterm_forces_exit_during_a_stuck_shutdown(
    tmp_path: Path, notify: NotifySocket
) -> None:
    # An SMTP "relay" that accepts the TCP connection and never greets: the delivery job hangs
    # for the SMTP timeout, and a clean shutdown waits for it.
    relay = socket.socket()
    relay.bind(("127.0.0.1", 0))
    relay.listen(5)
    try:
        daemon, config, _port = _start(
            tmp_path, notify, smtp_port=relay.getsockname()[1], smtp_timeout="60s"
        )
        append(tmp_path / "logs" / "postgresql.log", VIOLATION)
        wait_for(
            lambda: [n for n in cli_json(config, "notices") if n["state"] == "sending"],
            20,
            "the notice stuck in sending",
            daemon,
        )
        daemon.signal(signal.SIGTERM)
        notify.wait("STOPPING", "1", timeout=5)
        time.sleep(1.0)
        assert daemon.alive(), "the first SIGTERM waits for the running job"
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc is not None
        assert daemon.proc.wait(5) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 5
        assert '"event": "stopped"' not in daemon.log()
    finally:
        relay.close()
