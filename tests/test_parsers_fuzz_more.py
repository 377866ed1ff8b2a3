"""The MariaDB, web access and auditd formats never raise, and their framers lose or repeat no
line, whatever arrives: random text, random bytes, real sample lines cut at random places and
real lines shuffled (TABLE events without their QUERY, audit records out of order)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from breachwatch.errors import ParseFailure
from breachwatch.parsers.auditd import AuditdFormat
from breachwatch.parsers.base import LogFormat
from breachwatch.parsers.mariadb_audit import MariaAuditFormat
from breachwatch.parsers.web_access import WebAccessFormat
from breachwatch.sql import SqlEnricher
from tests.parser_helpers import assert_each_line_once, frame, text_lines
from tests.test_parser_web_access import ROUTES

SOURCES = {
    "mariadb_audit": ("mariadb_audit_dayshift", "server_audit.log"),
    "web_access": ("nginx_panel_dayshift", "access.log"),
    "auditd": ("auditd_files", "audit.log"),
}
FORMATS: dict[str, LogFormat] = {
    "mariadb_audit": MariaAuditFormat("Europe/Berlin"),
    "web_access": WebAccessFormat(ROUTES),
    "auditd": AuditdFormat({"3001": "yasmine_helpdesk"}, {"db_backup": "/srv/backups"}),
}
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
ENRICH = SqlEnricher({"clients.accounts": "id", "finance.bills": "account_id"})


@pytest.fixture(scope="module")
def sample_lines(samples_dir: Path) -> dict[str, list[str]]:
    out = {}
    for name, (directory, file) in SOURCES.items():
        text = (samples_dir / directory / file).read_bytes().decode("utf-8", "replace")
        out[name] = text.splitlines()
    return out


def cut(lines: list[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(lines), st.integers(0, 600), st.booleans()).map(
        lambda t: t[0][: t[1]] if t[2] else t[0][t[1] :]
    )


def texts(lines: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300).map(lambda b: b.decode("utf-8", "replace")),
        cut(lines),
        st.sampled_from(lines),
        st.sampled_from(lines).map(lambda s: s.replace("'", "\\")),
    ).map(lambda s: s.replace("\n", " ").replace("\r", " "))


def run(fmt: LogFormat, texts_: list[str]) -> None:
    lines = text_lines(texts_, truncate_every=5)
    records = frame(fmt, lines, "fuzz.log")  # checks pending_offset() on every push
    assert_each_line_once(records, len(lines))
    for record in records:
        result = fmt.parse(record, "fuzz")
        assert isinstance(result, list | ParseFailure)
        if isinstance(result, list):
            for event in result:
                assert event.time.tzinfo is not None
                assert event.position.offset == record.offset
                ENRICH(event)


@pytest.mark.parametrize("name", list(FORMATS))
@FUZZ
@given(data=st.data())
def test_formats_never_raise_and_lose_nothing(
    name: str, sample_lines: dict[str, list[str]], data: st.DataObject
) -> None:
    drawn = data.draw(st.lists(texts(sample_lines[name]), min_size=1, max_size=20))
    run(FORMATS[name], drawn)


@pytest.mark.parametrize("name", list(FORMATS))
@FUZZ
@given(data=st.data())
def test_real_lines_in_any_order(
    name: str, sample_lines: dict[str, list[str]], data: st.DataObject
) -> None:
    start = data.draw(st.integers(0, len(sample_lines[name]) - 40))
    window = sample_lines[name][start : start + 40]
    run(FORMATS[name], data.draw(st.permutations(window)))


@pytest.mark.parametrize("name", list(FORMATS))
def test_whole_sample_roundtrip(name: str, sample_lines: dict[str, list[str]]) -> None:
    run(FORMATS[name], sample_lines[name])
