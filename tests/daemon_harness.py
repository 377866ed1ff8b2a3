"""Runs the real daemon in a subprocess on a temporary directory, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[1]
PREFIX = "%m [%p] %q%u@%d %a %h "
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_line(
    when: str, pid: int, user: str, message: str, app: str = "psql", host: str = "127.0.0.1"
) -> str:
    """A stderr log line as PostgreSQL writes it with the prefix above."""
    return f"{when} [{pid}] {user}@webhostdb {app} {host} {message}\n"


def audit_read(
    when: str, pid: int, user: str, stmt_id: int, table: str, sql: str, app: str | None = None
) -> str:
    """A pgaudit READ line; service accounts connect through their application, people psql."""
    quoted = '"' + sql.replace('"', '""') + '"' if any(c in sql for c in ',"\n') else sql
    if app is None:
        app = "webshop" if user.startswith("svc_") else "psql"
    return pg_line(
        when,
        pid,
        user,
        f"LOG:  AUDIT: SESSION,{stmt_id},1,READ,SELECT,TABLE,{table},{quoted},<none>",
        app=app,
    )


def write_config(
    tmp: Path,
    *,
    smtp_port: int | None,
    hold: str = "0s",
    metrics_port: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    shipped = yaml.safe_load((REPO / "config" / "breachwatch.yml").read_text())
    config: dict[str, Any] = dict(shipped)
    config["state_dir"] = str(tmp / "state")
    config["policy"] = str(REPO / "config" / "policy.yml")
    config["sources"] = [
        {
            "name": "pg-main",
            "path": str(tmp / "logs" / "postgresql.log"),
            "format": "pgaudit_stderr",
            "options": {"log_line_prefix": PREFIX, "timezone": "Europe/Brussels"},
        }
    ]
    config["obligations"] = {**shipped["obligations"], "hold": hold}
    notifications = dict(shipped["notifications"])
    notifications["customers"] = str(REPO / "config" / "customers.csv")
    if smtp_port is not None:
        notifications["smtp"] = {"host": "127.0.0.1", "port": smtp_port, "security": "none"}
    config["notifications"] = notifications
    config["metrics"] = {"host": "127.0.0.1", "port": metrics_port or free_port()}
    config["tick_interval"] = "300ms"
    config["poll_interval"] = "100ms"
    config["flush_after"] = "200ms"
    config.update(extra or {})
    (tmp / "logs").mkdir(exist_ok=True)
    path = tmp / "breachwatch.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "breachwatch.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def cli_json(config: Path, *args: str) -> list[dict[str, Any]]:
    result = cli(config, *args, "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


class DaemonProcess:
    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
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

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def wait_for(
    probe: Callable[[], T | None], timeout: float, what: str, daemon: DaemonProcess | None = None
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        if daemon is not None and not daemon.alive():
            raise AssertionError(
                f"daemon exited while waiting for {what}:\n{daemon.log_path.read_text()[-4000:]}"
            )
        time.sleep(0.1)
    log = daemon.log_path.read_text()[-4000:] if daemon else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{log}")


def scrape(port: int) -> str:
    """The daemon's metrics endpoint, as Prometheus reads it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def append(path: Path, text: str) -> None:
    """Append as a log writer does: one write, flushed."""
    with path.open("a", encoding="utf-8") as log:
        log.write(text)
        log.flush()


# A web-shop lookup (benign) and kevin, who left the company, reading customer 1001
# (French-speaking in config/customers.csv): the breach every end-to-end test starts from.
BENIGN = audit_read(
    "2026-11-30 10:00:01.000 CET",
    4100,
    "svc_shop",
    1,
    "clients.accounts",
    "SELECT id, full_name FROM accounts WHERE email = 'x@example.org'",
)
VIOLATION = audit_read(
    "2026-11-30 10:00:02.000 CET",
    4242,
    "kevin_helpdesk",
    1,
    "clients.accounts",
    "SELECT full_name, email, phone FROM clients.accounts WHERE id = 1001;",
)
