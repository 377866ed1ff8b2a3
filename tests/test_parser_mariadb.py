"""The MariaDB server_audit parser against the real day-shift log and its ground truth."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from breachwatch.events import Action
from breachwatch.parsers.base import Record
from breachwatch.parsers.mariadb_audit import MariaAuditFormat, unquote
from breachwatch.parsers.registry import FORMAT_NAMES, build_format
from breachwatch.sql import SqlEnricher
from tests.parser_helpers import Parsed, assert_each_line_once, frame, text_lines

FMT = MariaAuditFormat("Europe/Berlin")
HEAD = "20250617 09:48:10,vm,paula_sales,127.0.0.1,28"


@pytest.fixture(scope="module")
def day(samples_dir: Path) -> Parsed:
    return Parsed(FMT, samples_dir / "mariadb_audit_dayshift" / "server_audit.log", "mdb")


@pytest.fixture(scope="module")
def truth(samples_dir: Path) -> list[dict[str, Any]]:
    path = samples_dir / "mariadb_audit_dayshift" / "ground_truth.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_line_is_consumed_exactly_once(day: Parsed) -> None:
    assert len(day.lines) == 3655
    assert_each_line_once(day.records, len(day.lines))
    assert not day.failures
    # every TABLE group found its QUERY: records are TABLE lines + one QUERY line, same ids
    for record in day.records:
        ids = {tuple(line.text.split(",")[4:6]) for line in record.lines}
        assert len(ids) == 1, record
        ops = [line.text.split(",")[6] for line in record.lines]
        assert all(op in {"READ", "WRITE", "ALTER"} for op in ops[:-1]), ops


def _expected_action(stmt: dict[str, Any]) -> Action:
    if stmt["operation"] == "FAILED_CONNECT":
        return Action.LOGIN_FAILED
    if stmt["operation"] == "CONNECT":
        return Action.LOGIN
    if stmt["retcode"] in ("1142", "1143"):
        return Action.DENIED
    if "INTO OUTFILE" in stmt["query"]:
        return Action.EXPORT
    return Action.WRITE if "WRITE" in stmt["table_ops"] else Action.READ


def test_ground_truth_events(day: Parsed, truth: list[dict[str, Any]]) -> None:
    checked = 0
    for entry in truth:
        statements = entry.get("statements") or [entry]
        actors = set(entry.get("actors") or [entry["actor"]])
        for stmt in statements:
            first = stmt["lines"][0]
            events = day.at(first)
            assert len(events) == 1, (entry["id"], first)
            event = events[0]
            assert event.actor in actors, (entry["id"], event.actor)
            assert event.action is _expected_action(stmt), (entry["id"], first, event.action)
            assert event.session == str(stmt["connection_id"])
            assert event.client == entry["client"]
            local = datetime.strptime(stmt["log_time"], "%Y%m%d %H:%M:%S")
            assert event.time == local.replace(tzinfo=ZoneInfo("Europe/Berlin")).astimezone(UTC)
            if stmt["tables"]:
                assert set(event.objects) == set(stmt["tables"]), (entry["id"], event.objects)
            if stmt["operation"] == "QUERY":
                record = day.record_of[first]
                assert [line.line_no for line in record.lines] == stmt["lines"]
                assert event.statement == stmt["query"]
            checked += 1
    assert checked == 25 - 4 + 75 + 4 + 2 + 5


def test_unqualified_names_resolved_through_table_events(day: Parsed) -> None:
    # MDB-25: lena's "SELECT * FROM bills" with default database finance
    (event,) = day.at(3646)
    assert event.statement == "SELECT * FROM bills"
    assert event.objects == ("finance.bills",)
    assert event.database == "finance"
    # MDB-03: FROM accounts a JOIN marketing_optouts o, lines 891-893
    (event,) = day.at(891)
    assert set(event.objects) == {"clients.accounts", "clients.marketing_optouts"}


def test_denied_and_dump_statements_use_the_statement_names(day: Parsed) -> None:
    (denied,) = day.at(1005)  # 1142, no TABLE event
    assert denied.action is Action.DENIED and "retcode:1142" in denied.tags
    assert set(denied.objects) == {"webmail.messages", "webmail.accounts"}
    (dump,) = day.at(3069)  # mariadb-dump: backticks, no TABLE event, default db clients
    assert dump.objects == ("clients.accounts",)
    assert dump.action is Action.READ and dump.command == "SELECT"


def test_locks_read_no_rows(day: Parsed) -> None:
    # mariadb-dump's LOCK TABLES gets a READ TABLE event, but no row is read: its SELECT is
    # the read (3069 above)
    (lock,) = day.at(3057)
    assert lock.statement == "LOCK TABLES `accounts` READ /*!32311 LOCAL */"
    assert lock.action is Action.OTHER and lock.objects == ("clients.accounts",)
    assert all(e.action is Action.OTHER for e in day.events if e.command in ("LOCK", "UNLOCK"))


def test_enricher_finds_subjects_in_mariadb_statements(day: Parsed) -> None:
    enrich = SqlEnricher({"clients.accounts": "id", "finance.bills": "account_id"})
    (event,) = day.at(1745)  # UPDATE bills ... AND account_id = 1878
    assert enrich(event).subjects == ("1878",)
    (event,) = day.at(3646)
    assert enrich(event).unbounded


def test_unquote_escapes_and_truncation() -> None:
    assert unquote(r"'it\'s a \\ back\nslash\t',0") == ("it's a \\ back\nslash\t", "0", 24)
    assert unquote("'cut off") == ("cut off", None, -1)
    assert unquote("'ends in \\") == ("ends in ", None, -1)
    # what the real server wrote for a long query: the escaped text is cut at 1024 bytes
    long = "SELECT \\'" + "x" * 1010 + "\\\\\\'y"
    assert len(long) == 1024
    short = "SELECT \\'" + "x" * 1000 + "\\'"
    lines = text_lines(
        [
            f"{HEAD},9,QUERY,clients,'{long}',0",
            f"{HEAD},9,QUERY,x,'abc",
            f"{HEAD},9,QUERY,clients,'{short}',0",
        ]
    )
    events = [e for r in frame(FMT, lines) for e in FMT.parse(r, "mdb")]  # type: ignore[union-attr]
    assert ["truncated" in e.tags for e in events] == [True, True, False]
    assert events[0].statement == "SELECT '" + "x" * 1010 + "\\'y"


def _records(texts: list[str]) -> list[Record]:
    records = frame(FMT, text_lines(texts))
    assert_each_line_once(records, len(texts))
    return records


def test_interleaved_groups_orphans_and_flush() -> None:
    records = _records(
        [
            f"{HEAD},10,READ,finance,bills,",
            "20250617 09:48:10,vm,tom,localhost,29,11,READ,clients,accounts,",
            "20250617 09:48:10,vm,tom,localhost,29,11,QUERY,helpdesk,'SELECT 1 FROM accounts',0",
            f"{HEAD},10,QUERY,clients,'SELECT * FROM bills',0",
            f"{HEAD},12,WRITE,clients,accounts,",
            f"{HEAD},13,READ,clients,contracts,",  # same connection, next query: 12 is orphaned
            "garbage that is no audit line",
            "20250617 09:48:11,vm,tom,localhost,29,14,DROP,clients,old,",  # flushed at the end
        ]
    )
    assert [[line.line_no for line in r.lines] for r in records] == [
        [2, 3],
        [1, 4],
        [5],
        [7],
        [6],
        [8],
    ]
    results = [FMT.parse(r, "mdb") for r in records]
    assert [e.objects for e in results[1]] == [("finance.bills",)]  # type: ignore[union-attr]
    orphan = results[2][0]  # type: ignore[index]
    assert orphan.action is Action.WRITE and "query_missing" in orphan.tags
    assert results[5][0].action is Action.DDL  # type: ignore[index]
    assert not isinstance(results[3], list) and results[3].reason == "bad_line"


def test_registry_builds_the_format() -> None:
    assert "mariadb_audit" in FORMAT_NAMES
    fmt = build_format("mariadb_audit", {"timezone": "Europe/Berlin", "query_log_limit": 2048})
    assert fmt.name == "mariadb_audit"
    with pytest.raises(ValueError):
        build_format("mariadb_audit", {"timezone": "Mars/Olympus"})
    with pytest.raises(ValueError):
        build_format("mariadb_audit", {"query_log_limit": "big"})


def test_hostile_line_is_fast() -> None:
    hostile = [
        f"{HEAD},9,QUERY,clients,'" + "\\" * 100_000,
        f"{HEAD},9,QUERY,clients,'" + "/*" * 50_000 + "',0",
        "2" * 8 + " 00:00:00," + ",".join(["a"] * 50_000),
        f"{HEAD},9,QUERY,clients,'SELECT " + "(" * 50_000 + "',0",
    ]
    for text in hostile:
        start = time.perf_counter()
        for record in frame(FMT, text_lines([text])):
            FMT.parse(record, "mdb")
        assert time.perf_counter() - start < 0.5, text[:60]
