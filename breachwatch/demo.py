"""`breachwatch demo`: the real daemon on a scratch directory, fed with realistic pgaudit lines.

The demo writes its own config, policy and customer directory into the directory, starts
``breachwatch run`` as a child process, appends PostgreSQL + pgaudit lines at a steady pace
(helpdesk and web-shop reads that are fine, and three violations: a departed employee's account,
an export, a bulk read) and shows what the daemon makes of them, read from its store and its
/metrics endpoint. Nothing here is a test double: it is the daemon as it runs in production.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from sqlalchemy import func, select

from breachwatch.errors import BreachwatchError
from breachwatch.store.database import Database
from breachwatch.store.schema import FindingRow, Incident, OutboxMessage

__all__ = ["DemoSummary", "DemoWorld", "generate_activity", "run_demo"]

LOG_TZ = ZoneInfo("Europe/Brussels")
PREFIX = "%m [%p] %q%u@%d %a %h "

POLICY = """\
version: 1
staff:
  - {person: yasmine, accounts: [yasmine_helpdesk], roles: [helpdesk], status: active}
  - {person: tom, accounts: [tom_helpdesk], roles: [helpdesk], status: active}
  - {person: kevin, accounts: [kevin_helpdesk], roles: [helpdesk], status: left}
  - {person: omar, accounts: [omar_sysadmin], roles: [dba], status: active}
  - {person: paula, accounts: [paula_sales], roles: [marketing], status: active}
service_accounts:
  - {account: svc_shop, roles: [webshop]}
data_map:
  - {object: clients.accounts, categories: [identity, contact], subject_column: id,
     identifying_columns: [email]}
  - {object: finance.bills, categories: [billing], subject_column: account_id}
grants:
  - {role: helpdesk, objects: [clients.accounts], actions: [read, write]}
  - {role: helpdesk, objects: [finance.bills], actions: [read]}
  - {role: webshop, objects: [clients.accounts, finance.bills], actions: [read, write]}
  - {role: dba, objects: ["clients.*", "finance.*"], actions: [ddl]}
anomaly:
  distinct_subjects: {window: 10m, threshold: 50, exempt_roles: [webshop]}
  unbounded_reads: true
  limit_bound: 100
"""

CUSTOMERS = [
    ("1001", "Amélie Dubois", "fr"),
    ("1002", "Pieter Janssens", "nl"),
    ("1003", "Grace Hopper", "en"),
    ("1004", "Luc Peeters", "nl"),
    ("1005", "Sophie Lambert", "fr"),
    ("1006", "Jan De Smet", "nl"),
    ("1007", "Ada Lovelace", "en"),
    ("1008", "Marie Leclercq", "fr"),
]

TEXTS = {
    "nature": "A staff account accessed customer records without a business need.",
    "likely_consequences": "Your contact details may have been seen by an unauthorised person.",
    "measures_taken": "The account was suspended and the access is being investigated.",
    "measures_advised": "Be wary of unexpected messages that refer to your account.",
}


@dataclass(frozen=True, slots=True)
class DemoWorld:
    directory: Path
    config: Path
    log: Path
    mail_folder: Path
    daemon_log: Path
    metrics_port: int

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(directory: Path, metrics_port: int = 0, hold: str = "3s") -> DemoWorld:
    """Write config, policy and customer directory into ``directory`` (created 0700)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / "logs").mkdir(exist_ok=True)
    (directory / "policy.yml").write_text(POLICY, encoding="utf-8")
    rows = ["id,name,email,language"]
    for cid, name, lang in CUSTOMERS:
        email = name.lower().replace("é", "e").replace(" ", ".") + "@example.org"
        rows.append(f"{cid},{name},{email},{lang}")
    (directory / "customers.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    port = metrics_port or _free_port()
    config: dict[str, Any] = {
        "state_dir": "state",
        "policy": "policy.yml",
        "sources": [
            {
                "name": "pg-main",
                "path": "logs/postgresql.log",
                "format": "pgaudit_stderr",
                "options": {"log_line_prefix": PREFIX, "timezone": "Europe/Brussels"},
            }
        ],
        "obligations": {"hold": hold},
        "notifications": {
            "customers": "customers.csv",
            "sender": "Breachwatch demo DPO <dpo@hosting.example>",
            "organisation": "Example Hosting SA",
            "contact_name": "Data Protection Officer",
            "contact_email": "dpo@hosting.example",
            "texts": {"en": TEXTS},
        },
        "metrics": {"host": "127.0.0.1", "port": port},
        "poll_interval": "100ms",
        "flush_after": "200ms",
        "tick_interval": "500ms",
    }
    path = directory / "breachwatch.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    log = directory / "logs" / "postgresql.log"
    log.touch()
    return DemoWorld(
        directory=directory,
        config=path,
        log=log,
        mail_folder=directory / "state" / "mail" / "new",
        daemon_log=directory / "daemon.log",
        metrics_port=port,
    )


# ---- activity ------------------------------------------------------------------------------


def _stamp(now: datetime) -> str:
    local = now.astimezone(LOG_TZ)
    return f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d} {local.tzname()}"


def _audit(
    now: datetime,
    pid: int,
    user: str,
    app: str,
    host: str,
    stmt_id: int,
    command: str,
    table: str,
    sql: str,
) -> str:
    quoted = '"' + sql.replace('"', '""') + '"'
    return (
        f"{_stamp(now)} [{pid}] {user}@webhostdb {app} {host} LOG:  AUDIT: SESSION,"
        f"{stmt_id},1,READ,{command},TABLE,{table},{quoted},<none>\n"
    )


# (fraction of the run, label, user, command, sql)
VIOLATIONS: tuple[tuple[float, str, str, str, str], ...] = (
    (
        0.15,
        "departed account",
        "kevin_helpdesk",
        "SELECT",
        "SELECT full_name, email, phone FROM clients.accounts WHERE id = 1002;",
    ),
    (
        0.40,
        "export",
        "omar_sysadmin",
        "COPY",
        "COPY (SELECT id, full_name, email, phone FROM clients.accounts WHERE id IN "
        "(1003, 1005, 1007)) TO '/tmp/customers.csv' WITH CSV;",
    ),
    (
        0.65,
        "bulk read",
        "paula_sales",
        "SELECT",
        "SELECT id, full_name, email FROM clients.accounts;",
    ),
)


def generate_activity(rng: random.Random, now: datetime, stmt_id: int) -> tuple[str, str]:
    """One benign line: a helpdesk agent or the web shop at work. (label, line)."""
    customer = rng.choice(CUSTOMERS)[0]
    if rng.random() < 0.5:
        user = rng.choice(("yasmine_helpdesk", "tom_helpdesk"))
        table, sql = (
            "clients.accounts",
            (f"SELECT full_name, phone FROM clients.accounts WHERE id = {customer};"),
        )
        return (
            f"{user} reads customer {customer}",
            _audit(
                now, 4100 + stmt_id % 50, user, "psql", "10.0.0.7", stmt_id, "SELECT", table, sql
            ),
        )
    if rng.random() < 0.5:
        sql = f"SELECT bill_no, amount FROM finance.bills WHERE account_id = {customer};"
        table = "finance.bills"
    else:
        sql = "SELECT id, full_name FROM clients.accounts WHERE email = 'shopper@example.org';"
        table = "clients.accounts"
    return (
        "web shop " + table,
        _audit(now, 5200, "svc_shop", "shop", "10.0.0.8", stmt_id, "SELECT", table, sql),
    )


# ---- what the daemon made of it ------------------------------------------------------------


@dataclass
class DemoSummary:
    lines_written: int = 0
    events: float = 0.0
    findings: dict[str, int] = field(default_factory=dict)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    notices: list[dict[str, Any]] = field(default_factory=list)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    started: float = field(default_factory=time.monotonic)

    def as_json(self, world: DemoWorld) -> dict[str, Any]:
        return {
            "directory": str(world.directory),
            "config": str(world.config),
            "mail_folder": str(world.mail_folder),
            "daemon_log": str(world.daemon_log),
            "metrics_url": world.metrics_url,
            "lines_written": self.lines_written,
            "events": int(self.events),
            "findings": self.findings,
            "incidents": self.incidents,
            "notices": self.notices,
        }


def _scrape_events(url: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("breachwatch_events_total{")
    )


def observe(db: Database, world: DemoWorld, summary: DemoSummary) -> None:
    """Refresh ``summary`` from the daemon's store and metrics endpoint."""
    events = _scrape_events(world.metrics_url)
    if events is not None:
        summary.events = events
    with db.transaction() as session:
        summary.findings = {
            rule: n
            for rule, n in session.execute(
                select(FindingRow.rule, func.count()).group_by(FindingRow.rule)
            )
        }
        summary.incidents = [
            {"ref": ref, "state": state, "severity": severity, "actor": actor}
            for ref, state, severity, actor in session.execute(
                select(Incident.ref, Incident.state, Incident.severity, Incident.actor).order_by(
                    Incident.id
                )
            )
        ]
        summary.notices = [
            {
                "recipient": recipient,
                "state": state,
                "channel": channel,
                "not_before": not_before.isoformat(),
            }
            for recipient, state, channel, not_before in session.execute(
                select(
                    OutboxMessage.recipient_id,
                    OutboxMessage.state,
                    OutboxMessage.channel,
                    OutboxMessage.not_before,
                ).order_by(OutboxMessage.id)
            )
        ]


# ---- the run -------------------------------------------------------------------------------


def start_daemon(world: DemoWorld) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    with world.daemon_log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "breachwatch.cli", "run", "--config", str(world.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = world.daemon_log.read_text(errors="replace")[-2000:]
            raise BreachwatchError(f"the daemon exited at start:\n{tail}")
        if '"started"' in world.daemon_log.read_text(errors="replace"):
            return proc
        time.sleep(0.1)
    proc.kill()
    proc.wait(5)
    raise BreachwatchError(f"the daemon did not start within 30 s (log: {world.daemon_log})")


def stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


def feed(
    world: DemoWorld,
    duration: float,
    rate: float,
    seed: int | None,
    refresh: Callable[[DemoSummary], None],
    summary: DemoSummary,
) -> Iterator[None]:
    """Append lines for ``duration`` seconds at ``rate`` lines/s; yields after each line."""
    rng = random.Random(seed)
    pending = list(VIOLATIONS)
    stmt_id = 0
    start = time.monotonic()
    next_line = start
    with world.log.open("a", encoding="utf-8") as log:
        while (elapsed := time.monotonic() - start) < duration:
            stmt_id += 1
            now = datetime.now(LOG_TZ)
            if pending and elapsed >= pending[0][0] * duration:
                _, label, user, command, sql = pending.pop(0)
                line = _audit(
                    now,
                    6600 + stmt_id,
                    user,
                    "psql",
                    "10.0.0.66",
                    stmt_id,
                    command,
                    "clients.accounts",
                    sql,
                )
                label = f"[bold red]{label}[/]: {user}"
            else:
                label, line = generate_activity(rng, now, stmt_id)
            log.write(line)
            log.flush()
            summary.lines_written += 1
            summary.recent.append(label)
            refresh(summary)
            yield
            next_line += 1.0 / rate
            time.sleep(max(next_line - time.monotonic(), 0))


def run_demo(
    world: DemoWorld,
    duration: float,
    rate: float = 4.0,
    seed: int | None = None,
    settle: float = 6.0,
    on_tick: Callable[[DemoSummary], None] | None = None,
    linger: Callable[[DemoSummary], None] | None = None,
) -> DemoSummary:
    """Run the daemon, feed it for ``duration`` s, then give it ``settle`` s to release the
    notices that are due. ``linger`` runs while the daemon is still up (so its metrics endpoint
    can be looked at); the daemon is stopped before returning."""
    proc = start_daemon(world)
    db = Database(f"sqlite:///{world.directory / 'state' / 'breachwatch.db'}")
    summary = DemoSummary()
    last = 0.0

    def refresh(s: DemoSummary) -> None:
        nonlocal last
        if time.monotonic() - last >= 0.5:
            observe(db, world, s)
            last = time.monotonic()
        if on_tick is not None:
            on_tick(s)

    try:
        for _ in feed(world, duration, rate, seed, refresh, summary):
            if proc.poll() is not None:
                raise BreachwatchError(f"the daemon stopped (log: {world.daemon_log})")
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            observe(db, world, summary)
            if on_tick is not None:
                on_tick(summary)
            done = summary.notices and all(
                n["state"] in ("sent", "failed", "cancelled") for n in summary.notices
            )
            if done and summary.events >= summary.lines_written:
                break
            time.sleep(0.5)
        observe(db, world, summary)
        if linger is not None:
            linger(summary)
    finally:
        stop_daemon(proc)
        db.dispose()
    return summary


def tally(values: list[dict[str, Any]], key: str) -> dict[str, int]:
    return dict(Counter(str(v[key]) for v in values))
