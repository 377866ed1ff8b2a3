"""A private PostgreSQL 15 + pgaudit writes stderr, csvlog and jsonlog of real psql sessions;
the three parsers must read the same accesses from the three files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action
from breachwatch.parsers.registry import build_format
from breachwatch.sql import SqlEnricher
from tests.conftest import skip_or_fail
from tests.test_parser_pgaudit import read_lines

pytestmark = pytest.mark.slow
PREFIX = "%m [%p] %q%u@%d %a %h "
FILES = {
    "pgaudit_stderr": ("postgresql.log", {"log_line_prefix": PREFIX}),
    "pgaudit_csvlog": ("postgresql.csv", {}),
    "pgaudit_jsonlog": ("postgresql.json", {}),
}
SETUP = """
CREATE SCHEMA clients; CREATE SCHEMA finance;
CREATE TABLE clients.accounts (id int PRIMARY KEY, full_name text, email text);
CREATE TABLE finance.bills (id serial PRIMARY KEY, account_id int, amount int);
INSERT INTO clients.accounts SELECT g, 'name ' || g, 'c' || g || '@example.org'
  FROM generate_series(1000, 1010) g;
INSERT INTO finance.bills (account_id, amount) SELECT g, g FROM generate_series(1000, 1010) g;
CREATE ROLE alice_helpdesk LOGIN PASSWORD 'alice-pw';
CREATE ROLE bob_finance LOGIN; CREATE ROLE carol_sales LOGIN;
GRANT USAGE ON SCHEMA clients, finance TO alice_helpdesk, bob_finance, carol_sales;
GRANT SELECT ON clients.accounts TO alice_helpdesk, bob_finance, carol_sales;
GRANT SELECT ON finance.bills TO alice_helpdesk, bob_finance;
"""
MULTI_LINE = """SELECT a.full_name, b.amount
  FROM clients.accounts a
  JOIN finance.bills b ON b.account_id = a.id
 WHERE a.id = 1002;"""


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and Path(f"/usr/lib/postgresql/15/bin/{name}").exists():
        found = f"/usr/lib/postgresql/15/bin/{name}"
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, root: Path, tools: dict[str, str]) -> None:
        self.root, self.tools = root, tools
        self.data, self.sock, self.port = root / "data", root / "sock", _free_port()
        self.logs = self.data / "log"

    def as_postgres(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], check=True, timeout=120, capture_output=True
        )

    def start(self) -> None:
        self.sock.mkdir()
        shutil.chown(self.sock, "postgres")
        self.as_postgres(
            self.tools["initdb"],
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "--no-instructions",
        )
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sock}'\n"
                "shared_preload_libraries = 'pgaudit'\n"
                "pgaudit.log = 'read,write,ddl,role'\npgaudit.log_parameter = on\n"
                "pgaudit.log_relation = on\npgaudit.log_catalog = off\n"
                "log_destination = 'stderr,csvlog,jsonlog'\nlogging_collector = on\n"
                "log_directory = 'log'\nlog_filename = 'postgresql.log'\n"
                f"log_line_prefix = '{PREFIX}'\nlog_connections = on\nlog_timezone = 'UTC'\n"
                "password_encryption = 'scram-sha-256'\n"
            )
        self.as_postgres(
            self.tools["pg_ctl"],
            "-D",
            str(self.data),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.root / "startup.log"),
            "start",
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.as_postgres(self.tools["pg_ctl"], "-D", str(self.data), "-w", "-m", "fast", "stop")

    def psql(
        self,
        user: str,
        sql: str,
        *,
        tcp: bool = False,
        password: str | None = None,
        check: bool = True,
        app: str = "psql",
    ) -> subprocess.CompletedProcess[str]:
        host = "127.0.0.1" if tcp else str(self.sock)
        env = {**os.environ, "PGAPPNAME": app, "PGCONNECT_TIMEOUT": "10"}
        if password is not None:
            env["PGPASSWORD"] = password
        return subprocess.run(
            [
                self.tools["psql"],
                "-X",
                "-h",
                host,
                "-p",
                str(self.port),
                "-U",
                user,
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )


@pytest.fixture(scope="session")
def pg_logs() -> Iterator[Path]:
    tools = {name: _tool(name) for name in ("initdb", "pg_ctl", "psql", "pg_config")}
    missing = [name for name, path in tools.items() if path is None]
    if missing or shutil.which("runuser") is None:
        skip_or_fail(f"PostgreSQL tools missing: {missing or ['runuser']}")
    libdir = subprocess.run(
        [str(tools["pg_config"]), "--pkglibdir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not (Path(libdir) / "pgaudit.so").exists():
        skip_or_fail("pgaudit is not installed (apt-get install postgresql-15-pgaudit)")
    root = Path(tempfile.mkdtemp(prefix="bw-pg-"))
    shutil.chown(root, "postgres")
    server = Server(root, {k: str(v) for k, v in tools.items()})
    try:
        server.start()
        server.psql("postgres", SETUP)
        server.psql(
            "alice_helpdesk", "SELECT full_name, email FROM clients.accounts WHERE id = 1001;"
        )
        server.psql("alice_helpdesk", MULTI_LINE)
        server.psql(
            "bob_finance",
            "PREPARE bills_of(int) AS SELECT amount FROM finance.bills "
            "WHERE account_id = $1; EXECUTE bills_of(1003);",
        )
        denied = server.psql(
            "carol_sales", "SELECT * FROM finance.bills WHERE account_id = 1004;", check=False
        )
        assert "permission denied" in denied.stderr
        failed = server.psql("alice_helpdesk", "SELECT 1", tcp=True, password="wrong", check=False)
        assert failed.returncode != 0 and "password authentication failed" in failed.stderr
        server.psql("bob_finance", "COPY (SELECT id, email FROM clients.accounts) TO STDOUT;")
        server.psql(
            "alice_helpdesk",
            "DO $$ BEGIN PERFORM full_name FROM clients.accounts WHERE id = 1005; END $$;",
            app="panel tool 2.1",
        )
        server.stop()  # the collector has written everything once the server is down
        yield server.logs
    finally:
        server.stop()
        if not os.environ.get("BW_KEEP_PG"):
            shutil.rmtree(root, ignore_errors=True)


def _parse(logs: Path, name: str) -> list[AccessEvent]:
    file, options = FILES[name]
    fmt = build_format(name, {**options, "timezone": "UTC"})
    enrich = SqlEnricher({"clients.accounts": "id", "finance.bills": "account_id"})
    framer = fmt.new_framer(str(logs / file))
    records = [r for line in read_lines(logs / file) for r in framer.push(line)]
    records.extend(framer.flush())
    events: list[AccessEvent] = []
    for record in records:
        result = fmt.parse(record, "pg")
        assert not isinstance(result, ParseFailure), (name, record.text, result)
        events.extend(enrich(e) for e in result)
    return [e for e in events if e.actor != "postgres"]


@pytest.fixture(scope="session")
def parsed(pg_logs: Path) -> dict[str, list[AccessEvent]]:
    return {name: _parse(pg_logs, name) for name in FILES}


def _one(events: list[AccessEvent], actor: str, action: Action, needle: str) -> AccessEvent:
    found = [
        e
        for e in events
        if e.actor == actor
        and e.action is action
        and e.objects
        and needle in (e.statement or e.detail or "")
    ]
    assert len(found) >= 1, (actor, action, needle, events)
    return found[0]


@pytest.mark.parametrize("name", list(FILES))
def test_events_of_each_format(parsed: dict[str, list[AccessEvent]], name: str) -> None:
    events = parsed[name]
    by_id = _one(events, "alice_helpdesk", Action.READ, "WHERE id = 1001")
    assert (by_id.objects, by_id.subjects, by_id.application) == (
        ("clients.accounts",),
        ("1001",),
        "psql",
    )
    multi = [e for e in events if e.statement == MULTI_LINE]
    assert {e.objects for e in multi} == {("clients.accounts",), ("finance.bills",)}
    assert all(e.subjects == ("1002",) and not e.unbounded for e in multi)
    prepared = _one(events, "bob_finance", Action.READ, "$1")
    assert (prepared.objects, prepared.parameters, prepared.subjects) == (
        ("finance.bills",),
        ("1003",),
        ("1003",),
    )
    denied = _one(events, "carol_sales", Action.DENIED, "account_id = 1004")
    assert denied.objects == ("finance.bills",) and denied.command == "SELECT"
    assert denied.detail is not None and denied.detail.startswith("permission denied for table")
    (failed,) = [e for e in events if e.action is Action.LOGIN_FAILED]
    assert (failed.actor, failed.client, failed.application) == (
        "alice_helpdesk",
        "127.0.0.1",
        None,
    )
    export = _one(events, "bob_finance", Action.EXPORT, "TO STDOUT")
    assert export.objects == ("clients.accounts",) and export.unbounded
    assert "copy_to:stdout" in export.tags
    inner = [e for e in events if e.application == "panel tool 2.1" and e.action is Action.READ]
    assert [e.objects for e in inner] == [("clients.accounts",)]
    assert inner[0].subjects == ("1005",)
    logins = {e.actor for e in events if e.action is Action.LOGIN}
    assert logins == {"alice_helpdesk", "bob_finance", "carol_sales"}


def test_three_formats_agree(parsed: dict[str, list[AccessEvent]]) -> None:
    def key(e: AccessEvent) -> tuple[object, ...]:
        return (
            e.time,
            e.actor,
            e.action,
            e.objects,
            e.subjects,
            e.statement,
            e.parameters,
            e.client,
            e.application,
            e.database,
            e.unbounded,
            e.command,
        )

    stderr, csv, json = ([key(e) for e in parsed[n]] for n in FILES)
    assert len(stderr) >= 12
    assert sorted(stderr, key=str) == sorted(csv, key=str) == sorted(json, key=str)
