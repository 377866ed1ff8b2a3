"""Parsers and the SQL analyser never raise, whatever arrives: random text, bytes, and real
sample lines cut at random places."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from breachwatch.errors import ParseFailure
from breachwatch.parsers.base import Line, LogFormat
from breachwatch.parsers.jsonlines import JsonLinesFormat
from breachwatch.parsers.pgaudit import PgauditStderrFormat
from breachwatch.sql import SqlEnricher, analyze, is_unbounded, subject_ids


@pytest.fixture(scope="module")
def pg_lines(samples_dir: Path) -> list[str]:
    lines = (samples_dir / "pgaudit_workload_dayshift" / "postgresql.log").read_text().splitlines()
    return lines[::7] + [line for line in lines if line.startswith("\t")]


@pytest.fixture(scope="module")
def json_lines(samples_dir: Path) -> list[str]:
    return (
        (samples_dir / "pgaudit_workload_dayshift" / "postgresql.json")
        .read_text()
        .splitlines()[::7]
    )


FORMATS: list[LogFormat] = [
    PgauditStderrFormat("%m [%p] %q%u@%d %a %h ", "Europe/Berlin"),
    JsonLinesFormat({"time": "timestamp", "actor": "user", "action": "error_severity"}),
]
FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def cut(lines: list[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(lines), st.integers(0, 400), st.booleans()).map(
        lambda t: t[0][: t[1]] if t[2] else t[0][t[1] :]
    )


def texts(pg: list[str], js: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300).map(lambda b: b.decode("utf-8", "replace")),
        cut(pg),
        cut(js),
        st.sampled_from(pg),
    ).map(lambda s: s.replace("\n", " ").replace("\r", " "))


def run(fmt: LogFormat, lines: list[str]) -> None:
    framer = fmt.new_framer("fuzz.log")
    records = []
    offset = 0
    for no, text in enumerate(lines, start=1):
        size = len(text.encode("utf-8", "surrogatepass")) + 1
        line = Line(text, offset, offset + size, no, truncated=no % 5 == 0)
        offset += size
        records.extend(framer.push(line))
        pending = framer.pending_offset()
        assert pending is None or pending <= offset
    records.extend(framer.flush())
    assert framer.pending_offset() is None and framer.pending_line_no() is None
    covered = [line.line_no for record in records for line in record.lines]
    assert covered == list(range(1, len(lines) + 1))  # nothing lost, nothing twice
    enrich = SqlEnricher({"clients.accounts": "id", "finance.bills": "account_id"})
    for record in records:
        result = fmt.parse(record, "fuzz")
        assert isinstance(result, list | ParseFailure)
        if isinstance(result, list):
            for event in result:
                assert event.time.tzinfo is not None
                enrich(event)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@FUZZ
@given(data=st.data())
def test_formats_never_raise(
    fmt: LogFormat, pg_lines: list[str], json_lines: list[str], data: st.DataObject
) -> None:
    run(fmt, data.draw(st.lists(texts(pg_lines, json_lines), min_size=1, max_size=12)))


@FUZZ
@given(data=st.data())
def test_analyze_never_raises(pg_lines: list[str], data: st.DataObject) -> None:
    statements = [line.split("AUDIT: ", 1)[-1] for line in pg_lines]
    sql = data.draw(st.one_of(st.text(max_size=200), cut(statements)))
    shape = analyze(sql)
    assert shape.kind in {
        "select",
        "insert",
        "update",
        "delete",
        "copy_to",
        "copy_from",
        "ddl",
        "other",
        "unparsed",
    }
    columns = {"clients.accounts": "id"}
    assert isinstance(subject_ids(shape, columns, "clients.accounts", ("1",)), tuple)
    assert isinstance(is_unbounded(shape, columns, "accounts", 100), bool)


def test_real_log_lines_roundtrip(samples_dir: Path) -> None:
    path = samples_dir / "pgaudit_workload_dayshift" / "postgresql.log"
    run(FORMATS[0], path.read_text().splitlines())
