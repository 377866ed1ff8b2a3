"""The pgaudit stderr parser against the real workload logs and their ground truth."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action
from breachwatch.parsers.base import Line, Record
from breachwatch.parsers.pg_prefix import compile_prefix, load_zone, resolve_time
from breachwatch.parsers.pgaudit import PgauditStderrFormat, split_csv
from breachwatch.parsers.registry import FORMAT_NAMES, build_format

PREFIX = "%m [%p] %q%u@%d %a %h "


def read_lines(path: Path) -> list[Line]:
    lines: list[Line] = []
    offset = 0
    for no, raw in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        end = offset + len(raw)
        text = raw.rstrip(b"\n").decode("utf-8", "replace")
        lines.append(Line(text, offset, end, no))
        offset = end
    return lines


def frame(fmt: PgauditStderrFormat, lines: list[Line], path: str = "pg.log") -> list[Record]:
    framer = fmt.new_framer(path)
    records: list[Record] = []
    for line in lines:
        records.extend(framer.push(line))
    records.extend(framer.flush())
    return records


class Parsed:
    def __init__(self, path: Path) -> None:
        self.fmt = PgauditStderrFormat(PREFIX, "Europe/Berlin")
        self.lines = read_lines(path)
        self.records = frame(self.fmt, self.lines, str(path))
        self.failures: list[ParseFailure] = []
        self.events: list[AccessEvent] = []
        for record in self.records:
            result = self.fmt.parse(record, "pg-main")
            if isinstance(result, ParseFailure):
                self.failures.append(result)
            else:
                self.events.extend(result)
        self.starts = {r.line_no: r for r in self.records}

    def at(self, line_no: int) -> list[AccessEvent]:
        return [e for e in self.events if e.position.line == line_no]


@pytest.fixture(scope="module")
def dayshift(samples_dir: Path) -> Parsed:
    return Parsed(samples_dir / "pgaudit_workload_dayshift" / "postgresql.log")


@pytest.fixture(scope="module")
def realclock(samples_dir: Path) -> Parsed:
    return Parsed(samples_dir / "pgaudit_workload_realclock" / "postgresql.log")


def test_every_line_is_framed_exactly_once(dayshift: Parsed) -> None:
    assert len(dayshift.lines) == 2037
    expected_line, expected_offset = 1, 0
    for record in dayshift.records:
        numbers = [line.line_no for line in record.lines]
        assert numbers == list(range(expected_line, expected_line + len(numbers)))
        assert record.offset == expected_offset
        expected_line += len(numbers)
        expected_offset = record.end_offset
    assert expected_line == 2038
    assert expected_offset == dayshift.lines[-1].end_offset


def test_event_counts_by_action(dayshift: Parsed) -> None:
    assert dayshift.failures == []
    counts = Counter(e.action for e in dayshift.events)
    # 1787 AUDIT lines, 40 "connection authorized", 3 denied, 6 failed logins
    assert counts == {
        Action.READ: 1110,
        Action.WRITE: 667,
        Action.EXPORT: 7,
        Action.OTHER: 2,
        Action.DDL: 1,
        Action.LOGIN: 40,
        Action.DENIED: 3,
        Action.LOGIN_FAILED: 6,
    }


def test_multi_line_statement_is_one_event(dayshift: Parsed) -> None:
    record = dayshift.starts[515]
    assert [line.line_no for line in record.lines] == [515, 516, 517, 518, 519]
    (event,) = dayshift.at(515)
    assert event.action is Action.READ
    assert event.objects == ("clients.accounts",)
    assert event.actor == "paula_sales"
    assert event.statement is not None
    assert event.statement.startswith("SELECT a.full_name")
    assert "\n  FROM clients.accounts a\n  JOIN clients.marketing_optouts o" in event.statement
    assert event.statement.endswith("ORDER BY o.received_at DESC;")
    assert event.parameters == ()
    assert event.position.length == record.end_offset - record.offset
    (second,) = dayshift.at(520)
    assert second.objects == ("clients.marketing_optouts",)
    assert {"stmt:3", "substmt:1", "audit_type:SESSION"} <= second.tags


@pytest.mark.parametrize(
    ("line", "actor", "obj", "statement_start"),
    [
        (576, "paula_sales", "clients.accounts", "SELECT full_name, email, phone"),
        (585, "yasmine_helpdesk", "webmail.messages", "SELECT subject, body"),
        (1394, "paula_sales", "finance.bills", "SELECT account_id, sum(net_cents)"),
    ],
)
def test_permission_denied(
    dayshift: Parsed, line: int, actor: str, obj: str, statement_start: str
) -> None:
    assert [x.line_no for x in dayshift.starts[line].lines] == [line, line + 1]
    (event,) = dayshift.at(line)
    assert event.action is Action.DENIED
    assert event.actor == actor
    assert event.objects == (obj,)
    assert event.statement is not None and event.statement.startswith(statement_start)
    assert event.detail is not None and event.detail.startswith("permission denied for")
    assert event.command == "SELECT"


def test_failed_login(dayshift: Parsed) -> None:
    assert [x.line_no for x in dayshift.starts[50].lines] == [50, 51]
    (event,) = dayshift.at(50)
    assert event.action is Action.LOGIN_FAILED
    assert event.actor == "lena_accounts"
    assert event.time == datetime(2025, 6, 17, 6, 6, 4, 185000, tzinfo=UTC)
    assert event.client == "127.0.0.1"
    assert event.application is None
    assert event.session == "28576"
    brute = [e.actor for e in dayshift.events if e.action is Action.LOGIN_FAILED][1:]
    assert brute == ["webhost", "webhost", "sa", "postgres", "backup"]
    assert "role_missing" in dayshift.at(1720)[0].tags


def test_quoted_parameters_gotcha_3(dayshift: Parsed) -> None:
    (event,) = dayshift.at(165)
    assert event.action is Action.WRITE
    assert event.parameters == ('"Haus Seeblick", Seeweg 85, 18055 Rostock', "326")
    (login,) = dayshift.at(10)
    assert login.parameters == ("oskar.garcia1246@gmx.net",)


def test_prefix_fields_and_application_with_spaces(dayshift: Parsed) -> None:
    (event,) = dayshift.at(977)
    assert event.application == "DBeaver 24.1.0 - SQLEditor <Script-3.sql>"
    assert event.client == "::1"
    assert event.database == "webhostdb"
    assert {"audit_type:OBJECT", "stmt:2"} <= event.tags
    (login,) = dayshift.at(9)
    assert login.action is Action.LOGIN
    assert (login.actor, login.application, login.database) == ("svc_shop", "webshop", "webhostdb")
    assert dayshift.at(1) == []  # "starting PostgreSQL": not an access


def test_exports(dayshift: Parsed) -> None:
    server_file = dayshift.at(1045)[0]
    assert server_file.action is Action.EXPORT and "copy_to:file" in server_file.tags
    assert dayshift.at(1046)[0].action is Action.EXPORT  # READ,COPY substatement
    pg_dump = dayshift.at(1701)[0]
    assert pg_dump.action is Action.EXPORT and pg_dump.application == "pg_dump"
    assert dayshift.at(1694)[0].action is Action.READ  # pg_dump's set_config
    whole_table = dayshift.at(2025)[0]
    assert whole_table.action is Action.EXPORT and "copy_to:stdout" in whole_table.tags
    role = dayshift.at(1826)[0]
    assert (role.action, role.command, role.objects) == (Action.OTHER, "ALTER ROLE", ())


def test_ground_truth_lines(dayshift: Parsed, samples_dir: Path) -> None:
    truth = samples_dir / "pgaudit_workload_dayshift" / "ground_truth.jsonl"
    checked = 0
    for raw in truth.read_text().splitlines():
        entry = json.loads(raw)
        if entry["event"] not in ("audit", "error"):
            continue
        lines = entry["log_lines"]["postgresql.log"]
        starts = lines[:1] if entry["event"] == "error" else lines
        for line in starts:
            events = dayshift.at(line)
            assert events, (entry["id"], line)
            for event in events:
                assert event.actor == entry["actor"], entry["id"]
                assert set(event.objects) <= set(entry.get("objects") or event.objects)
                checked += 1
    assert checked == 33


def test_times_are_aware_and_in_utc(dayshift: Parsed, realclock: Parsed) -> None:
    assert all(e.time.tzinfo is not None for e in dayshift.events)
    first = min(e.time for e in dayshift.events)
    last = max(e.time for e in dayshift.events)
    assert first == datetime(2025, 6, 17, 6, 6, 0, 948000, tzinfo=UTC)  # 08:06:00.948 CEST
    assert last.date() == datetime(2025, 6, 18, tzinfo=UTC).date()
    assert realclock.failures == []
    # realclock was written in winter time: CET is UTC+1
    authorized = realclock.events[0]
    text = realclock.lines[authorized.position.line - 1].text
    local = datetime.strptime(text[:23], "%Y-%m-%d %H:%M:%S.%f")
    assert text[24:27] == "CET"
    assert authorized.time.replace(tzinfo=None) == local.replace(hour=local.hour - 1)


def test_resolve_time_uses_the_abbreviation_for_the_fold() -> None:
    berlin = load_zone("Europe/Berlin")
    summer = resolve_time("2025-10-26 02:30:00.000 CEST", berlin)
    winter = resolve_time("2025-10-26 02:30:00.000 CET", berlin)
    assert (winter - summer).total_seconds() == 3600
    assert resolve_time("2025-06-17 08:06:00.942 +02", berlin).hour == 6
    assert resolve_time("2025-06-17 08:06:00 UTC", berlin).hour == 8
    assert resolve_time("1750140360.5", berlin) == datetime(
        2025, 6, 17, 6, 6, 0, 500000, tzinfo=UTC
    )
    with pytest.raises(ParseFailure) as info:
        resolve_time("2025-06-17 08:06:00.942 EST", berlin)
    assert info.value.reason == "bad_time"


def test_other_prefixes() -> None:
    fmt = PgauditStderrFormat("%t [%p-%l] %q%c %r user=%u,db=%d,app=%a ", "UTC")
    text = (
        "2025-06-17 06:00:01 UTC [77-3] 6851.4d 10.0.0.5(50312) user=ann,db=shop,app=my app "
        "LOG:  AUDIT: SESSION,1,1,READ,SELECT,TABLE,public.t,SELECT 1,<not logged>"
    )
    records = frame(fmt, [Line(text, 0, len(text) + 1, 1)])
    result = fmt.parse(records[0], "s")
    assert not isinstance(result, ParseFailure)
    (event,) = result
    assert (event.actor, event.database, event.application, event.session) == (
        "ann",
        "shop",
        "my app",
        "6851.4d",
    )
    assert event.client == "10.0.0.5"
    assert "pid:77" in event.tags
    assert "parameters_not_logged" in event.tags
    with pytest.raises(ValueError, match="%Z"):
        compile_prefix("%m %Z ")


def test_pathological_line_is_fast() -> None:
    pattern = compile_prefix(PREFIX)
    head = "2025-06-17 08:06:00.942 CEST [1] a@b "
    for body in ("x " * 50_000, " x" * 50_000, "LOG: " * 20_000, "@" * 100_000):
        started = time.perf_counter()
        assert pattern.match(head + body) is None
        assert time.perf_counter() - started < 0.5


def test_framer_edge_cases() -> None:
    fmt = PgauditStderrFormat(PREFIX, "Europe/Berlin")
    framer = fmt.new_framer("x.log")
    texts = [
        "\torphan continuation",
        "2025-06-17 08:06:00.942 CEST [1] u@d psql [local] ERROR:  permission denied for table t",
        "2025-06-17 08:06:00.942 CEST [2] v@d psql [local] STATEMENT:  SELECT 2",
        "garbage",
    ]
    out: list[Record] = []
    offset = 0
    for no, text in enumerate(texts, start=1):
        out.extend(framer.push(Line(text, offset, offset + len(text) + 1, no)))
        offset += len(text) + 1
        if no == 2:
            assert framer.pending_line_no() == 2
    assert framer.pending_offset() is None  # garbage flushed everything
    assert [[x.line_no for x in r.lines] for r in out] == [[1], [2], [3], [4]]
    results = [fmt.parse(r, "s") for r in out]
    assert isinstance(results[0], ParseFailure) and results[0].reason == "bad_prefix"
    assert isinstance(results[3], ParseFailure)
    denied = results[1]
    assert isinstance(denied, list) and denied[0].statement is None  # STATEMENT of pid 2
    assert results[2] == []  # an orphaned STATEMENT line is not an access


def test_split_csv() -> None:
    assert split_csv('a,"b,""c""",') == (["a", 'b,"c"', ""], True)
    assert split_csv('a,"cut') == (["a", "cut"], False)


def test_registry() -> None:
    assert {"pgaudit_stderr", "pgaudit_csvlog", "pgaudit_jsonlog", "jsonl"} <= set(FORMAT_NAMES)
    fmt = build_format("pgaudit_stderr", {"log_line_prefix": PREFIX, "timezone": "Europe/Berlin"})
    assert fmt.name == "pgaudit_stderr"
    with pytest.raises(ValueError, match="jsonl"):
        build_format("csvlog", {})
    with pytest.raises(ValueError, match="prefix"):
        build_format("pgaudit_stderr", {"prefix": PREFIX})
    with pytest.raises(ValueError, match="time zone"):
        build_format("pgaudit_stderr", {"timezone": "Mars/Olympus"})
