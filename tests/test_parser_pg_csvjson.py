"""csvlog and jsonlog of the same PostgreSQL run as the stderr log: the same events, and the
ground truth's csv record / json line numbers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from breachwatch.detection.policy import load_policy
from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action
from breachwatch.parsers.base import Line, LogFormat, Record
from breachwatch.parsers.pgaudit_csvlog import MAX_RECORD_LINES, client_of
from breachwatch.parsers.registry import build_format
from breachwatch.sql import SqlEnricher
from tests.conftest import REPO
from tests.test_parser_pgaudit import read_lines

ZONE = {"timezone": "Europe/Berlin"}
FORMATS = {
    "stderr": (
        "pgaudit_stderr",
        "postgresql.log",
        {**ZONE, "log_line_prefix": "%m [%p] %q%u@%d %a %h "},
    ),
    "csv": ("pgaudit_csvlog", "postgresql.csv", ZONE),
    "json": ("pgaudit_jsonlog", "postgresql.json", ZONE),
}


class Run:
    """One file parsed and enriched; ``by_record[n]`` are the events of the n-th record."""

    def __init__(self, kind: str, directory: Path) -> None:
        name, file, options = FORMATS[kind]
        self.fmt: LogFormat = build_format(name, options)
        policy = load_policy(REPO / "config" / "policy.yml")
        enrich = SqlEnricher(
            policy.subject_columns(),
            policy.anomaly.limit_bound,
            identifying_columns=policy.identifying_columns(),
        )
        framer = self.fmt.new_framer(str(directory / file))
        self.records: list[Record] = []
        for line in read_lines(directory / file):
            self.records.extend(framer.push(line))
        self.records.extend(framer.flush())
        self.failures: list[ParseFailure] = []
        self.by_record: list[list[AccessEvent]] = []
        for record in self.records:
            result = self.fmt.parse(record, "pg-main")
            if isinstance(result, ParseFailure):
                self.failures.append(result)
                result = []
            self.by_record.append([enrich(e) for e in result])
        self.events = [e for events in self.by_record for e in events]

    def record(self, number: int) -> list[AccessEvent]:
        return self.by_record[number - 1]

    def summary(self) -> Counter[tuple[object, ...]]:
        return Counter(
            (
                e.time,
                e.action,
                e.actor,
                e.objects,
                e.subjects,
                e.client,
                e.application,
                e.database,
                e.statement,
                e.parameters,
                e.command,
                e.unbounded,
                e.columns,
            )
            for e in self.events
        )


@pytest.fixture(scope="module")
def runs(samples_dir: Path) -> dict[str, Run]:
    directory = samples_dir / "pgaudit_workload_dayshift"
    return {kind: Run(kind, directory) for kind in FORMATS}


def test_framing_and_no_failures(runs: dict[str, Run]) -> None:
    for kind, run in runs.items():
        assert run.failures == [], kind
    csv = runs["csv"]
    assert sum(len(r.lines) for r in csv.records) == 2028  # every line in exactly one record
    assert len(csv.records) == len(runs["json"].records) == 1968
    multi = csv.records[486 - 1]  # paula's multi-line win-back query (gotcha 1)
    assert len(multi.lines) == 5
    (event,) = csv.record(486)
    assert event.statement is not None and "\n  FROM clients.accounts a\n" in event.statement


def test_same_events_as_stderr(runs: dict[str, Run]) -> None:
    stderr = runs["stderr"]
    assert Counter(e.action for e in stderr.events)[Action.READ] == 1110
    for kind in ("csv", "json"):
        run = runs[kind]
        assert Counter(e.action for e in run.events) == Counter(e.action for e in stderr.events)
        assert Counter(e.actor for e in run.events) == Counter(e.actor for e in stderr.events)
        assert Counter(e.objects for e in run.events) == Counter(e.objects for e in stderr.events)
        assert Counter(e.subjects for e in run.events) == Counter(e.subjects for e in stderr.events)
        assert run.summary() == stderr.summary(), kind
        # stderr appends the cursor position to the message ("... at character 40")
        details = {e.detail for e in run.events if e.action is Action.DENIED}
        assert "permission denied for schema finance" in details


def test_ground_truth_records(runs: dict[str, Run], samples_dir: Path) -> None:
    truth = samples_dir / "pgaudit_workload_dayshift" / "ground_truth.jsonl"
    checked = 0
    for raw in truth.read_text().splitlines():
        entry = json.loads(raw)
        for kind, key in (("csv", "postgresql.csv_record"), ("json", "postgresql.json")):
            numbers = entry["log_lines"][key]
            events = [e for n in numbers for e in runs[kind].record(n)]
            assert events, (entry["id"], kind)
            actors = {e.actor for e in events if e.action is not Action.LOGIN}
            if entry["event"] == "series":  # a brute-force burst tries several names
                assert entry["actor"] in actors, entry["id"]
            else:
                assert actors == {entry["actor"]}, entry["id"]
            if entry["event"] == "fatal":
                assert [e.action for e in events] == [Action.LOGIN_FAILED]
            elif entry["event"] == "error":
                assert [e.action for e in events] == [Action.DENIED]
            if entry["event"] in ("audit", "error") and entry.get("objects"):
                assert {o for e in events for o in e.objects} <= set(entry["objects"])
            checked += len(events)
    assert checked >= 2 * 26


def test_fields_of_csv_and_json(runs: dict[str, Run]) -> None:
    for kind in ("csv", "json"):
        run = runs[kind]
        (failed,) = run.record(50)
        assert (failed.action, failed.actor, failed.client) == (
            Action.LOGIN_FAILED,
            "lena_accounts",
            "127.0.0.1",
        )
        assert failed.session == "685105cc.6fa0" and "pid:28576" in failed.tags
        assert failed.application is None
        (denied,) = run.record(539)
        assert denied.objects == ("clients.accounts",) and denied.command == "SELECT"
        assert (
            denied.statement
            == "SELECT full_name, email, phone FROM clients.accounts WHERE lang = 'el';"
        )
        (dbeaver,) = run.record(938)
        assert dbeaver.application == "DBeaver 24.1.0 - SQLEditor <Script-3.sql>"
        assert dbeaver.client == "::1"
        brute = [e for e in run.events if e.action is Action.LOGIN_FAILED][1:]
        assert [e.actor for e in brute] == ["webhost", "webhost", "sa", "postgres", "backup"]
        assert "role_missing" in brute[0].tags  # DETAIL spans two lines in csvlog
        (shop,) = run.record(10)
        assert shop.parameters == ("oskar.garcia1246@gmx.net",)
    local = [e for e in runs["csv"].events if e.actor == "tom_helpdesk"]
    assert {e.client for e in local} == {"[local]"}


def test_client_of() -> None:
    assert client_of("127.0.0.1:33828") == "127.0.0.1"
    assert client_of("::1:40000") == "::1"
    assert client_of("[local]") == "[local]"
    assert client_of("") is None
    assert client_of("db.example") == "db.example"


def _lines(texts: list[str]) -> list[Line]:
    out, offset = [], 0
    for no, text in enumerate(texts, start=1):
        out.append(Line(text, offset, offset + len(text) + 1, no))
        offset += len(text) + 1
    return out


def test_csv_framer_holds_until_quotes_balance() -> None:
    fmt = build_format("pgaudit_csvlog", {})
    framer = fmt.new_framer("x.csv")
    head = '2025-06-17 08:06:00.942 UTC,"u","d",1,"[local]",6851.1,1,"SELECT",,3/1,0,LOG,00000,'
    tail = ',,,,,,,,,"psql","client backend",,0'
    lines = _lines([head + '"AUDIT: SESSION,1,1,READ,SELECT,TABLE,t.x,""SELECT', "  1"])
    lines += _lines(['  FROM t.x"",<none>"' + tail, head + '"unclosed'])
    assert framer.push(lines[0]) == [] and framer.pending_line_no() == 1
    assert framer.push(lines[1]) == []
    (record,) = framer.push(lines[2])
    assert framer.pending_offset() is None
    result = fmt.parse(record, "s")
    assert isinstance(result, list)
    (event,) = result
    assert event.statement == "SELECT\n  1\n  FROM t.x" and event.client == "[local]"
    # A quote that never closes is given up after MAX_RECORD_LINES, not held for ever.
    assert framer.push(lines[3]) == []
    out: list[Record] = []
    for line in _lines(["x"] * MAX_RECORD_LINES):
        out.extend(framer.push(line))
    assert [len(r.lines) for r in out] == [MAX_RECORD_LINES, 1]  # then framing resumes
    assert isinstance(fmt.parse(out[0], "s"), ParseFailure)
    assert framer.pending_offset() is None


def test_json_bad_lines_and_registry() -> None:
    fmt = build_format("pgaudit_jsonlog", {"timezone": "UTC"})
    records = [
        r
        for line in _lines(["{not json", "[1]", "", '{"message":"x"}'])
        for r in fmt.new_framer("j").push(line)
    ]
    results = [fmt.parse(r, "s") for r in records]
    assert [getattr(r, "reason", r) for r in results] == ["bad_json", "bad_json", [], "bad_json"]
    with pytest.raises(ValueError, match="unknown option"):
        build_format("pgaudit_csvlog", {"log_line_prefix": "%m "})
