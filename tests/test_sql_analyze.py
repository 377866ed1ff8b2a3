"""SQL shapes, subject ids and unbounded reads, on statements taken from the sample logs."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.parsers.base import Line
from breachwatch.parsers.pgaudit import PgauditStderrFormat
from breachwatch.sql import SqlEnricher, analyze, is_unbounded, subject_ids

SUBJECTS = {
    "clients.accounts": "id",
    "webmail.accounts": "account_id",
    "finance.bills": "account_id",
    "finance.bills_archive": "account_id",
    "clients.contracts": "account_id",
    "helpdesk.cases": "account_id",
}


def ids(sql: str, obj: str, params: tuple[str, ...] = ()) -> tuple[str, ...]:
    return subject_ids(analyze(sql), SUBJECTS, obj, params)


def unbounded(sql: str, obj: str) -> bool:
    return is_unbounded(analyze(sql), SUBJECTS, obj, 100)


def test_shape_of_a_join() -> None:
    sql = (
        "SELECT a.client_ref, a.full_name, b.bill_no FROM clients.accounts a "
        "JOIN finance.bills b ON b.account_id = a.id WHERE a.id = 2745 "
        "ORDER BY b.issued_on DESC LIMIT 5;"
    )
    shape = analyze(sql)
    assert shape.kind == "select"
    assert shape.tables == ("clients.accounts", "finance.bills")
    assert {"client_ref", "full_name", "bill_no", "account_id", "id"} <= set(shape.columns)
    assert shape.limit == 5
    assert ids(sql, "clients.accounts") == ("2745",)
    assert ids(sql, "finance.bills") == ("2745",)  # through the join equality


def test_subjects_from_literals_params_and_in_lists() -> None:
    assert ids("SELECT * FROM clients.accounts WHERE id = 1735;", "clients.accounts") == ("1735",)
    update = "UPDATE webmail.accounts SET last_login_ip = $1 WHERE account_id = $2"
    assert ids(update, "webmail.accounts", ("198.51.100.142", "1246")) == ("1246",)
    assert ids(
        "SELECT 1 FROM clients.accounts WHERE id IN (4, 5) OR id = $1", "clients.accounts", ("6",)
    ) == (
        "4",
        "5",
        "6",
    )
    assert ids(
        "SELECT 1 FROM finance.bills WHERE account_id = ANY($1)", "finance.bills", ("{7,8}",)
    ) == (
        "7",
        "8",
    )
    insert = "INSERT INTO contracts (account_id, product) VALUES ($1, $2) RETURNING id"
    assert ids(insert, "clients.contracts", ("1246", "Domain .de")) == ("1246",)
    # the unqualified name is matched by its last part (search_path, gotcha 5)
    assert ids("SELECT * FROM accounts WHERE id = '42'::int", "clients.accounts") == ("42",)
    # a restriction in only one branch of an OR restricts nothing
    assert (
        ids("SELECT * FROM clients.accounts WHERE id = 1 OR lang = 'de'", "clients.accounts") == ()
    )
    cte = (
        "WITH m AS (SELECT id FROM webmail.accounts WHERE account_id = 5155) "
        "SELECT msg.body FROM webmail.messages msg JOIN m ON msg.mailbox_id = m.id"
    )
    assert analyze(cte).tables == ("webmail.messages", "webmail.accounts")
    assert ids(cte, "webmail.accounts") == ("5155",)


def test_unbounded() -> None:
    assert not unbounded("SELECT * FROM clients.accounts WHERE id = 5616;", "clients.accounts")
    assert unbounded(
        "SELECT full_name, email FROM clients.accounts WHERE lang IN ('en', 'nl');",
        "clients.accounts",
    )
    assert unbounded(
        "SELECT a.full_name FROM clients.accounts a JOIN clients.marketing_optouts o "
        "ON o.account_id = a.id WHERE o.channel IN ('email', 'all')",
        "clients.accounts",
    )
    assert not unbounded("SELECT * FROM clients.accounts LIMIT 10", "clients.accounts")
    assert unbounded("SELECT * FROM clients.accounts LIMIT 1000", "clients.accounts")
    assert not unbounded(
        "SELECT count(*) FROM clients.accounts; SELECT count(*) FROM finance.bills",
        "clients.accounts",
    )
    assert unbounded(
        "SELECT account_id, sum(net_cents) FROM finance.bills GROUP BY account_id", "finance.bills"
    )
    assert not unbounded(
        "SELECT lang, count(*) FROM clients.accounts GROUP BY lang", "clients.accounts"
    )
    yearly = "SELECT extract(year FROM issued_on), sum(net_cents) FROM finance.bills GROUP BY 1"
    assert not unbounded(yearly, "finance.bills")
    per_customer = (
        "SELECT account_id, sum(net_cents) FROM finance.bills WHERE account_id = 5 GROUP BY 1"
    )
    assert not unbounded(per_customer, "finance.bills")
    assert not unbounded("SELECT * FROM helpdesk.notes", "helpdesk.notes")  # no subject column
    assert not unbounded(
        "INSERT INTO clients.accounts (full_name) VALUES ('x')", "clients.accounts"
    )
    email = "SELECT id FROM accounts WHERE email = $1"
    assert unbounded(email, "clients.accounts")
    assert not is_unbounded(
        analyze(email), SUBJECTS, "clients.accounts", 100, {"clients.accounts": ["email"]}
    )
    case_view = (
        "PREPARE case_view(int) AS SELECT c.subject, a.full_name FROM helpdesk.cases c "
        "JOIN clients.accounts a ON a.id = c.account_id WHERE c.case_id = $1"
    )
    by_case = {"helpdesk.cases": ["case_id"]}
    assert not is_unbounded(analyze(case_view), SUBJECTS, "clients.accounts", 100, by_case)
    assert is_unbounded(analyze(case_view), SUBJECTS, "clients.accounts", 100)
    sub = (
        "SELECT body FROM webmail.messages WHERE mailbox_id IN "
        "(SELECT id FROM webmail.accounts WHERE account_id = 5155)"
    )
    assert not is_unbounded(
        analyze(sub), {"webmail.messages": "mailbox_id"}, "webmail.messages", 100
    )


def test_copy_to_is_an_export() -> None:
    server = analyze(
        "COPY (SELECT id, email FROM clients.accounts WHERE lang = 'de') "
        "TO '/var/lib/x.csv' WITH (FORMAT csv);"
    )
    assert (server.kind, server.copy_target, server.is_export) == (
        "copy_to",
        "/var/lib/x.csv",
        True,
    )
    assert server.tables == ("clients.accounts",)
    client = analyze(
        "COPY  ( SELECT b.iban FROM finance.bills b ) TO STDOUT WITH (FORMAT csv, HEADER)"
    )
    assert (client.kind, client.copy_target) == ("copy_to", "stdout")
    dump = analyze("COPY clients.accounts (id, email) TO stdout;")
    assert (dump.kind, dump.tables) == ("copy_to", ("clients.accounts",))
    assert unbounded("COPY clients.accounts (id, email) TO stdout;", "clients.accounts")
    assert analyze("COPY clients.accounts FROM STDIN").kind == "copy_from"
    assert (
        analyze("DECLARE c CURSOR FOR SELECT * FROM finance.bills WHERE account_id = $1").kind
        == "select"
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM `accounts` WHERE id = 5",  # MariaDB quoting
        "SELECT full_name FROM clients.accounts WHERE id =",  # cut off
        "",
        "\x00",
        "SELEC 1",
    ],
)
def test_unparsable_is_unparsed(sql: str) -> None:
    shape = analyze(sql)
    assert shape.kind in ("unparsed", "other")
    assert subject_ids(shape, SUBJECTS, "clients.accounts", ()) == ()
    assert not is_unbounded(shape, SUBJECTS, "clients.accounts", 100)
    outfile = analyze("SELECT * FROM `accounts` INTO OUTFILE '/tmp/a.csv'")
    assert (outfile.kind, outfile.copy_target, outfile.is_export) == (
        "unparsed",
        "/tmp/a.csv",
        True,
    )


def sample_events(path: Path) -> list[AccessEvent]:
    fmt = PgauditStderrFormat("%m [%p] %q%u@%d %a %h ", "Europe/Berlin")
    framer = fmt.new_framer(str(path))
    records = []
    offset = 0
    for no, raw in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        records += framer.push(Line(raw.rstrip(b"\n").decode(), offset, offset + len(raw), no))
        offset += len(raw)
    events: list[AccessEvent] = []
    for record in [*records, *framer.flush()]:
        result = fmt.parse(record, "pg")
        assert not isinstance(result, ParseFailure)
        events.extend(result)
    return events


def event(
    statement: str | None, objects: tuple[str, ...], params: tuple[str, ...] = ()
) -> AccessEvent:
    return AccessEvent(
        time=datetime(2025, 6, 17, tzinfo=UTC),
        store="pg",
        actor="tom",
        action=Action.READ,
        position=SourcePosition("x", 0, 1),
        objects=objects,
        subjects=("99",),
        statement=statement,
        parameters=params,
    )


def test_enricher() -> None:
    enrich = SqlEnricher(SUBJECTS)
    plain = event(None, ("clients.accounts",))
    assert enrich(plain) is plain
    out = enrich(
        event(
            "SELECT email FROM finance.bills WHERE account_id = $1", ("finance.bills",), ("5989",)
        )
    )
    assert out.subjects == ("99", "5989")
    assert out.columns == ("email", "account_id")
    assert not out.unbounded
    export = enrich(event("COPY finance.bills TO STDOUT WITH (FORMAT csv);", ("finance.bills",)))
    assert export.action is Action.EXPORT and export.unbounded


def test_enricher_on_the_sample_log(samples_dir: Path) -> None:
    events = sample_events(samples_dir / "pgaudit_workload_dayshift" / "postgresql.log")
    enrich = SqlEnricher(
        SUBJECTS, identifying_columns={"clients.accounts": ["email", "client_ref"]}
    )
    started = time.perf_counter()
    enriched = {e.position.line: enrich(e) for e in events}
    assert time.perf_counter() - started < 5
    assert all(analyze(e.statement).kind != "unparsed" for e in events if e.statement)
    assert enriched[1005].subjects == ("2745",)  # PG-12, the erased customer
    assert enriched[976].action is Action.WRITE
    assert enriched[556].unbounded  # PG-05 campaign list without filter
    assert enriched[1335].unbounded  # PG-16 all business customers
    assert enriched[2013].unbounded  # PG-24 all bills at night
    assert not enriched[10].unbounded  # web-shop login by e-mail
    assert enriched[574].subjects == ("5155",)  # PG-06
