"""Real NATS (a private nats-server per test), a scratch PostgreSQL database, and the
breachwatch processes of the scaled-out mode, for tests/test_distributed*.py and the
benchmark."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text

from tests.daemon_harness import free_port, write_config

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("BREACHWATCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
SAMPLES = REPO.parent / "shared" / "samples"
SAMPLE = SAMPLES / "pgaudit_workload_dayshift" / "postgresql.log"
# the other labelled logs: (sample directory, file, source name in the example config)
LABELLED = [
    ("pgaudit_workload_dayshift", "postgresql.csv", "pg-main-csv"),
    ("pgaudit_workload_dayshift", "postgresql.json", "pg-main-json"),
    ("mariadb_audit_dayshift", "server_audit.log", "mariadb"),
    ("nginx_panel_dayshift", "access.log", "panel"),
    ("auditd_files", "audit.log", "ops-files"),
]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def missing_services() -> str | None:
    if shutil.which("nats-server") is None:
        return "nats-server not installed"
    if not port_open(5432):
        return "PostgreSQL not reachable on 127.0.0.1:5432"
    try:
        import nats  # noqa: F401
    except ImportError:
        return "nats-py not installed"
    return None


class NatsServer:
    """`nats-server -js` on a free port with its own store directory; stop/start keep it."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.store.mkdir(parents=True, exist_ok=True)
        with (self.store.parent / "nats.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "nats-server",
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-sd",
                    str(self.store),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextmanager
def scratch_database() -> Iterator[str]:
    name = f"bw_dist_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{PG_ADMIN}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def distributed_config(
    tmp: Path,
    *,
    database_url: str,
    nats_url: str,
    partitions: int = 8,
    lease_ttl: str = "5s",
    extra: dict[str, Any] | None = None,
) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = write_config(
        tmp,
        smtp_port=None,
        hold="0s",
        extra={
            "database_url": database_url,
            "mode": "jetstream",
            "metrics": {"enabled": False},
            "stream": {
                "url": nats_url,
                "partitions": partitions,
                "lease_ttl": lease_ttl,
                "name": "BWTEST",
            },
            **(extra or {}),
        },
    )
    # The workers of one host share state_dir and its mail folder. MailFolderChannel creates
    # the folder with a check-then-mkdir, so of two workers starting at the same instant one
    # can fail with "a writable directory (File exists)" (notifications/mailfolder.py, reported
    # to its owner); made here, as an install step would, so the tests start them together.
    for sub in ("tmp", "new", "cur"):
        (tmp / "state" / "mail" / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def labelled_sources(tmp: Path, names: list[str]) -> dict[str, Any]:
    """Config keys for the labelled sample logs of LABELLED whose source is in ``names``,
    each its own source with the
    options of config/examples/webhost-breachwatch.yml, copied into ``tmp/logs`` (the
    reference daemon must read the very same files: finding keys name the file identity),
    and the example web-host policy with the pgaudit sample's exports."""
    import yaml

    from tests.webhost_policy import write_webhost_policy

    example = yaml.safe_load((REPO / "config" / "examples" / "webhost-breachwatch.yml").read_text())
    options = {s["name"]: s for s in example["sources"]}
    (tmp / "logs").mkdir(parents=True, exist_ok=True)
    sources = []
    for directory, name, source in LABELLED:
        if source not in names:
            continue
        target = tmp / "logs" / f"{source}-{name}"
        shutil.copyfile(SAMPLES / directory / name, target)
        sources.append({**options[source], "path": str(target)})
    policy = write_webhost_policy(tmp, SAMPLES / "pgaudit_workload_dayshift")
    return {"sources": sources, "policy": str(policy)}


def local_config(tmp: Path, log_path: Path, extra: dict[str, Any] | None = None) -> Path:
    """A single daemon (SQLite, local mode) on the same log file: the reference."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = write_config(
        tmp, smtp_port=None, hold="0s", extra={"metrics": {"enabled": False}, **(extra or {})}
    )
    import yaml

    config = yaml.safe_load(path.read_text())
    config["sources"][0]["path"] = str(log_path)
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


class Proc:
    """A breachwatch subprocess (`run` or `ship`) with its stderr in a file."""

    def __init__(self, config: Path, command: str, log: Path) -> None:
        self.config, self.command, self.log = config, command, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "breachwatch.cli",
                    self.command,
                    "--config",
                    str(self.config),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def append_gradually(source: Path, target: Path, chunks: int) -> Iterator[int]:
    """Append ``source`` to ``target`` in ``chunks`` pieces at line boundaries; yields the
    index of each piece after it is written (the caller sleeps, kills, restarts...)."""
    lines = source.read_bytes().splitlines(keepends=True)
    size = max(1, len(lines) // chunks)
    for i in range(chunks):
        part = lines[i * size : (i + 1) * size if i < chunks - 1 else len(lines)]
        with target.open("ab") as f:
            f.write(b"".join(part))
        yield i


def outcome(database_url: str) -> dict[str, Any]:
    """What must be equal between a single daemon and the scaled-out run."""
    import json

    from breachwatch.store.schema import (
        FindingRow,
        Incident,
        IncidentSubject,
        Obligation,
        OutboxMessage,
        QuarantinedRecord,
    )

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            findings = sorted(conn.scalars(select(FindingRow.key)))
            # the key names rule, source and record; what each finding says about whom
            finding_subjects = {
                str(key): json.dumps(subjects, sort_keys=True)
                for key, subjects in conn.execute(select(FindingRow.key, FindingRow.subjects))
            }
            incidents = {}
            for inc in conn.execute(select(Incident)).mappings():
                subjects = sorted(
                    conn.scalars(
                        select(IncidentSubject.subject).where(
                            IncidentSubject.incident_id == inc["id"]
                        )
                    )
                )
                keys = sorted(
                    conn.scalars(select(FindingRow.key).where(FindingRow.incident_id == inc["id"]))
                )
                incidents[inc["correlation_key"]] = (
                    inc["actor"],
                    inc["severity"],
                    inc["state"],
                    tuple(subjects),
                    tuple(keys),
                )
            notices = sorted(
                (str(corr), str(regime), str(recipient), str(state))
                for corr, regime, recipient, state in conn.execute(
                    select(
                        Incident.correlation_key,
                        Obligation.regime,
                        OutboxMessage.recipient_id,
                        OutboxMessage.state,
                    )
                    .join(Obligation, Obligation.id == OutboxMessage.obligation_id)
                    .join(Incident, Incident.id == Obligation.incident_id)
                )
            )
            # no unique key here: a record processed twice would be quarantined twice
            quarantined = sorted(
                (int(offset), str(reason))
                for offset, reason in conn.execute(
                    select(QuarantinedRecord.offset, QuarantinedRecord.reason)
                )
            )
    finally:
        engine.dispose()
    return {
        "findings": findings,
        "finding_subjects": finding_subjects,
        "incidents": incidents,
        "notices": notices,
        "quarantined": quarantined,
    }


def wait_until(check: Any, timeout: float, interval: float = 0.5, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or check}: last {last!r}")


def settled(database_url: str, want: dict[str, Any], stable_for: float = 2.0) -> Any:
    """A check for wait_until: the outcome equals ``want`` and stayed so for a while."""
    state: dict[str, Any] = {"since": None}

    def check() -> bool:
        got = outcome(database_url)
        if got != want:
            state["since"] = None
            return False
        state["since"] = state["since"] or time.monotonic()
        return time.monotonic() - state["since"] >= stable_for

    return check


def stream_messages(nats_url: str, stream: str = "BWTEST") -> int:
    """How many messages the JetStream stream holds: one per record when nothing was doubled."""
    import asyncio

    import nats

    async def count() -> int:
        nc = await nats.connect(nats_url, connect_timeout=5)
        try:
            info = await nc.jetstream().stream_info(stream)
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(count())


def framed_records(path: Path) -> int:
    """The number of records of a finished log file, framed as the daemon frames it."""
    from breachwatch.parsers.base import Line
    from breachwatch.parsers.registry import build_format
    from tests.daemon_harness import PREFIX

    fmt = build_format("pgaudit_stderr", {"log_line_prefix": PREFIX, "timezone": "Europe/Brussels"})
    framer = fmt.new_framer(str(path))
    count, offset = 0, 0
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1):
        text_ = raw.rstrip(b"\n").decode("utf-8", errors="replace")
        count += len(framer.push(Line(text_, offset, offset + len(raw), number)))
        offset += len(raw)
    return count + len(framer.flush())


class WebhookRecorder:
    """A real HTTP server standing in for the security team's webhook: records each POST
    (arrival time, JSON body) and answers 200."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[tuple[float, dict[str, Any]]] = []
        lock = threading.Lock()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    received.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def mail_files(state_dir: Path) -> list[Path]:
    folder = state_dir / "mail"
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.parent.name in {"new", "cur"})
