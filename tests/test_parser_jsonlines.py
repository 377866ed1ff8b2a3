"""The JSON-lines format, on PostgreSQL's jsonlog output and on hand-made records."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action
from breachwatch.parsers.base import Line, ParseResult, Record
from breachwatch.parsers.jsonlines import JsonLinesFormat
from breachwatch.parsers.registry import build_format

JSONLOG_FIELDS = {
    "time": "timestamp",
    "actor": "user",
    "action": "error_severity",
    "session": "session_id",
    "client": "remote_host",
    "application": "application_name",
    "database": "dbname",
    "detail": "message",
}
SEVERITY_ACTIONS = {"LOG": "other", "ERROR": "denied", "FATAL": "login_failed"}


def parse_one(fmt: JsonLinesFormat, text: str) -> ParseResult:
    framer = fmt.new_framer("x.jsonl")
    (record,) = framer.push(Line(text, 100, 100 + len(text.encode()) + 1, 7))
    assert framer.pending_offset() is None and framer.flush() == []
    return fmt.parse(record, "app")


def one_event(fmt: JsonLinesFormat, doc: object) -> AccessEvent:
    result = parse_one(fmt, json.dumps(doc))
    assert isinstance(result, list) and len(result) == 1, result
    return result[0]


def test_postgres_jsonlog(samples_dir: Path) -> None:
    path = samples_dir / "pgaudit_workload_dayshift" / "postgresql.json"
    fmt = JsonLinesFormat(JSONLOG_FIELDS, SEVERITY_ACTIONS, "Europe/Berlin")
    framer = fmt.new_framer(str(path))
    events: list[AccessEvent] = []
    failures: Counter[str] = Counter()
    offset = 0
    raw_lines = path.read_bytes().splitlines(keepends=True)
    for no, raw in enumerate(raw_lines, start=1):
        line = Line(raw.rstrip(b"\n").decode(), offset, offset + len(raw), no)
        offset += len(raw)
        for record in framer.push(line):
            result = fmt.parse(record, "pg-json")
            if isinstance(result, ParseFailure):
                failures[result.reason] += 1
            else:
                events.extend(result)
    # postmaster and "connection received" records have no user (jsonlog omits empty keys)
    no_user = sum(1 for raw in raw_lines if '"user":' not in raw.decode())
    assert failures == {"missing_field": no_user}
    assert len(events) + no_user == len(raw_lines) == 1968
    counts = Counter(e.action for e in events)
    assert counts[Action.LOGIN_FAILED] == 6
    assert counts[Action.DENIED] == 3
    failed = next(e for e in events if e.action is Action.LOGIN_FAILED)
    assert failed.actor == "lena_accounts"
    assert failed.time == datetime(2025, 6, 17, 6, 6, 4, 185000, tzinfo=UTC)
    assert failed.position.line == 50
    assert failed.session == "685105cc.6fa0"
    apps = {e.application for e in events}
    assert "DBeaver 24.1.0 - SQLEditor <Script-3.sql>" in apps


def test_dotted_paths_lists_and_action_map() -> None:
    fmt = JsonLinesFormat(
        {
            "time": "ts",
            "actor": "user.name",
            "action": "op",
            "objects": "target.tables",
            "subject": "customer",
            "client": "src.ip",
        },
        {"GET": "read", "EXPORT_CSV": "export"},
    )
    event = one_event(
        fmt,
        {
            "ts": "2025-06-17T08:06:00.942+02:00",
            "user": {"name": "yasmine"},
            "op": "EXPORT_CSV",
            "target": {"tables": ["clients.accounts", "finance.bills"]},
            "customer": 5155,
            "src": {"ip": "127.0.0.21"},
        },
    )
    assert event.action is Action.EXPORT
    assert event.actor == "yasmine"
    assert event.objects == ("clients.accounts", "finance.bills")
    assert event.subjects == ("5155",)
    assert event.client == "127.0.0.21"
    assert event.time == datetime(2025, 6, 17, 6, 6, 0, 942000, tzinfo=UTC)
    assert (event.position.offset, event.position.line) == (100, 7)
    assert one_event(fmt, {"ts": 1, "user.name": "literal key", "op": "GET"}).actor == "literal key"


def test_times() -> None:
    fmt = JsonLinesFormat({"time": "t", "actor": "a", "action": "x"}, timezone="Europe/Berlin")
    naive = one_event(fmt, {"t": "2025-06-17 08:00:00", "a": "u", "x": "read"})
    assert naive.time == datetime(2025, 6, 17, 6, 0, tzinfo=UTC)
    epoch_ms = one_event(fmt, {"t": 1750140000000, "a": "u", "x": "read"})
    assert epoch_ms.time == one_event(fmt, {"t": 1750140000, "a": "u", "x": "read"}).time
    bad = parse_one(fmt, json.dumps({"t": "yesterday", "a": "u", "x": "read"}))
    assert isinstance(bad, ParseFailure) and bad.reason == "bad_time"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"t": 1, "x": "read"}', "missing_field"),
        ('{"t": 1, "a": "", "x": "read"}', "missing_field"),
        ('{"t": 1, "a": "u", "x": "teleport"}', "bad_action"),
        ('{"t": 1, "a": "u", "x": "read"', "bad_json"),
        ("[1, 2]", "bad_json"),
        ("[" * 100_000, "bad_json"),
    ],
)
def test_failures(text: str, reason: str) -> None:
    fmt = JsonLinesFormat({"time": "t", "actor": "a", "action": "x"})
    result = parse_one(fmt, text)
    assert isinstance(result, ParseFailure) and result.reason == reason


def test_blank_line_is_no_event() -> None:
    fmt = JsonLinesFormat({"time": "t", "actor": "a", "action": "x"})
    assert fmt.parse(Record("x", (Line("   ", 0, 4, 1),)), "s") == []


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="actor"):
        JsonLinesFormat({"time": "t", "action": "x"})
    with pytest.raises(ValueError, match="colour"):
        JsonLinesFormat({"time": "t", "actor": "a", "action": "x", "colour": "c"})
    with pytest.raises(ValueError, match="teleport"):
        JsonLinesFormat({"time": "t", "actor": "a", "action": "x"}, {"T": "teleport"})
    fmt = build_format("jsonl", {"fields": {"time": "t", "actor": "a", "action": "x"}})
    assert fmt.name == "jsonl"
    with pytest.raises(ValueError, match="fields"):
        build_format("jsonl", {})
    with pytest.raises(ValueError, match="fields"):
        build_format("jsonl", {"fields": {"time": 1}})
