"""The server_audit parser against what a running MariaDB writes right now.

Needs the server on 127.0.0.1:3306 (root without password) and the ``mariadb`` client. The test
installs the audit plugin if it is missing, logs into a private directory, creates a database
and two users, and puts everything back at the end (other tests use the same server).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from breachwatch.events import Action, SourcePosition
from breachwatch.parsers.mariadb_audit import MariaAuditFormat
from breachwatch.sql import SqlEnricher
from tests.conftest import skip_or_fail
from tests.parser_helpers import Parsed, assert_each_line_once

pytestmark = pytest.mark.slow
SERVER = ["-h", "127.0.0.1", "-P", "3306", "--protocol=TCP"]


def run_sql(
    sql: str, user: str = "root", password: str | None = None, db: str | None = None
) -> subprocess.CompletedProcess[str]:
    client = shutil.which("mariadb")
    assert client is not None
    args = [client, *SERVER, "-u", user, "-N", "-B"]
    if password is not None:
        args.append(f"--password={password}")
    if db is not None:
        args.append(db)
    return subprocess.run(args, input=sql, capture_output=True, text=True, timeout=60)


def root_sql(sql: str) -> str:
    done = run_sql(sql)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture()
def audit_log() -> Iterator[tuple[Path, str, timedelta]]:
    """Audit logging into a fresh file; yields (file, name suffix, server UTC offset)."""
    if shutil.which("mariadb") is None:
        skip_or_fail("the mariadb client is not installed")
    probe = run_sql("SELECT 1")
    if probe.returncode != 0:
        skip_or_fail(f"no MariaDB server on 127.0.0.1:3306: {probe.stderr.strip()}")
    installed = root_sql(
        "SELECT COUNT(*) FROM information_schema.plugins WHERE plugin_name = 'SERVER_AUDIT'"
    ).strip()
    before: dict[str, str] = {}
    if installed == "0":
        done = run_sql("INSTALL SONAME 'server_audit'")
        if done.returncode != 0 and "already installed" not in done.stderr:
            skip_or_fail(f"server_audit plugin cannot be installed: {done.stderr.strip()}")
    else:
        for row in root_sql("SHOW GLOBAL VARIABLES LIKE 'server_audit%'").splitlines():
            name, _, value = row.partition("\t")
            before[name] = value
    directory = Path(tempfile.mkdtemp(prefix="bw-mariadb-", dir="/tmp"))
    os.chmod(directory, 0o777)
    path = directory / "server_audit.log"
    suffix = secrets.token_hex(4)
    offset_text = root_sql("SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW())").strip()
    try:
        root_sql(
            f"SET GLOBAL server_audit_file_path = '{path}';"
            "SET GLOBAL server_audit_events = 'CONNECT,QUERY,TABLE';"
            "SET GLOBAL server_audit_output_type = 'file';"
            "SET GLOBAL server_audit_logging = ON;"
        )
        yield path, suffix, timedelta(seconds=int(offset_text))
    finally:
        run_sql("SET GLOBAL server_audit_logging = OFF")
        run_sql(
            f"DROP DATABASE IF EXISTS bw_test_{suffix};"
            f"DROP USER IF EXISTS 'bw_agent_{suffix}'@'%';"
            f"DROP USER IF EXISTS 'bw_sales_{suffix}'@'%';"
        )
        if installed == "0":
            run_sql("UNINSTALL SONAME 'server_audit'")
        else:
            restore = [
                f"SET GLOBAL {name} = '{before[name]}'"
                for name in ("server_audit_file_path", "server_audit_events")
                if name in before
            ]
            restore.append(f"SET GLOBAL server_audit_logging = {before['server_audit_logging']}")
            run_sql(";".join(restore))
        shutil.rmtree(directory, ignore_errors=True)


def test_real_server_audit_log(audit_log: tuple[Path, str, timedelta]) -> None:
    path, suffix, utc_offset = audit_log
    db, agent, sales = f"bw_test_{suffix}", f"bw_agent_{suffix}", f"bw_sales_{suffix}"
    password = secrets.token_hex(8)
    root_sql(
        f"CREATE DATABASE {db};"
        f"CREATE TABLE {db}.accounts (id INT PRIMARY KEY, full_name VARCHAR(80));"
        f"CREATE TABLE {db}.bills (bill_no INT PRIMARY KEY, account_id INT, iban VARCHAR(34));"
        f"INSERT INTO {db}.accounts VALUES (1001, 'Amélie Dubois'), (1002, 'Jan Peeters');"
        f"INSERT INTO {db}.bills VALUES (1, 1001, 'BE68539007547034');"
        f"CREATE USER '{agent}'@'%' IDENTIFIED BY '{password}';"
        f"CREATE USER '{sales}'@'%' IDENTIFIED BY '{password}';"
        f"GRANT SELECT ON {db}.* TO '{agent}'@'%';"
        f"GRANT SELECT ON {db}.accounts TO '{sales}'@'%';"
    )
    started = datetime.now(UTC)
    done = run_sql(f"SELECT full_name FROM {db}.accounts WHERE id = 1001;", agent, password, db)
    assert done.returncode == 0, done.stderr
    done = run_sql("SELECT iban FROM bills WHERE account_id = 1001;", agent, password, db)
    assert done.returncode == 0, done.stderr
    done = run_sql(f"SELECT iban FROM {db}.bills;", sales, password)
    assert "1142" in done.stderr
    done = run_sql("SELECT 1;", agent, "wrong-" + password)
    assert "1045" in done.stderr
    root_sql("SET GLOBAL server_audit_logging = OFF")

    fmt = MariaAuditFormat("UTC")
    parsed = Parsed(fmt, path, "mariadb")
    assert_each_line_once(parsed.records, len(parsed.lines))
    assert not parsed.failures
    mine = [e for e in parsed.events if e.actor in (agent, sales)]
    for event in mine:
        assert abs(event.time - utc_offset - started) < timedelta(minutes=5)
        assert event.client == "127.0.0.1"
        assert isinstance(event.position, SourcePosition)

    enrich = SqlEnricher({f"{db}.accounts": "id", f"{db}.bills": "account_id"})
    by_id = [enrich(e) for e in mine if e.action is Action.READ and "WHERE" in (e.statement or "")]
    by_id = [e for e in by_id if "1001" in (e.statement or "")]
    assert [(e.objects, e.subjects) for e in by_id] == [
        ((f"{db}.accounts",), ("1001",)),
        ((f"{db}.bills",), ("1001",)),  # "FROM bills", resolved through the TABLE event
    ]
    assert all(e.database == db for e in by_id)
    denied = [e for e in mine if e.action is Action.DENIED]
    assert [(e.actor, e.objects) for e in denied] == [(sales, (f"{db}.bills",))]
    assert "retcode:1142" in denied[0].tags
    failed = [e for e in mine if e.action is Action.LOGIN_FAILED]
    assert [(e.actor, "retcode:1045" in e.tags) for e in failed] == [(agent, True)]
    logins = [e for e in mine if e.action is Action.LOGIN]
    assert sorted(e.actor for e in logins) == sorted([agent, agent, sales])
