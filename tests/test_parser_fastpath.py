"""The hot-path shortcuts give exactly what the general code gives (issue 3, speed).

Each shortcut (prefix heads cached per line shape, AUDIT statement templates, chunked file
reading, batched framing, events built once already enriched) is compared with the path it
short-cuts, on lines chosen to break it and on real server output.
"""

from __future__ import annotations

import gzip
import itertools
import random
from pathlib import Path

import pytest

from breachwatch.detection.policy import StaffMember, load_policy
from breachwatch.events import AccessEvent, SourcePosition
from breachwatch.parsers import pg_events
from breachwatch.parsers.base import Line, LogFormat, Record, push_lines
from breachwatch.parsers.pg_prefix import compile_prefix
from breachwatch.parsers.pgaudit import PgauditStderrFormat, _PrefixSplitter
from breachwatch.parsers.pgaudit_csvlog import PgauditCsvlogFormat
from breachwatch.pipeline import Pipeline
from breachwatch.sources import files

PREFIXES = ["%m [%p] %q%u@%d %a %h ", "%t [%p]: user=%u,db=%d,app=%a,client=%h ", "%m [%p] "]
TIMES = ["2026-11-30 02:08:36.476 CET", "2026-11-30 02:08:36 CEST", "2026-11-30 2:08:36.4 CET"]
HEADS = [
    "[4132] tom@webhostdb psql [local] LOG:  ",
    "[4132] tom@webhostdb DBeaver 24.1.0 - Main <webhostdb> 127.0.0.1 LOG:  ",
    "[4132] tom@webhostdb app:  with colons 10.0.0.1 LOG:  ",
    "[4132] tom@webhostdb  127.0.0.1 ERROR:  ",
    "[4132] LOG:  ",
    "[4132]: user=tom,db=webhostdb,app=psql,client=[local] LOG:  ",
    "[4132]: user=tom,db=w,app=a LOG:  b,client=c STATEMENT:  ",
    "[41x2] tom@webhostdb psql [local] LOG:  ",
    "[4132] tom@webhostdb psql [local] NOTALEVEL:  ",
]
MESSAGES = ["AUDIT: SESSION,1,1,READ,SELECT,TABLE,a.b,SELECT 1,<none>", "x:  LOG:  y", ""]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_prefix_heads_match_the_regex(prefix: str) -> None:
    regex = compile_prefix(prefix).regex
    split = _PrefixSplitter(compile_prefix(prefix))
    for _ in range(2):  # the second round hits the cached heads
        for time in TIMES:
            for head in HEADS:
                for message in MESSAGES:
                    text = f"{time} {head}{message}"
                    m = regex.match(text)
                    got = split(text)
                    if m is None:
                        assert got is None, text
                        continue
                    assert got is not None, text
                    groups = m.groupdict()
                    assert got[1] == groups.pop("time") and got[2] == groups.pop("message")
                    assert got[0].groups == groups, text


PAYLOADS = [
    "SESSION,1,1,READ,SELECT,TABLE,clients.accounts,SELECT * FROM clients.accounts,<none>",
    'SESSION,2,1,READ,SELECT,TABLE,clients.accounts,"SELECT a, b FROM clients.accounts",<none>',
    'SESSION,3,1,READ,SELECT,TABLE,finance.bills,"SELECT x FROM finance.bills WHERE id = $1",7',
    'SESSION,4,1,READ,SELECT,TABLE,finance.bills,"SELECT x FROM finance.bills WHERE id = $1","7,8"',
    'SESSION,5,1,READ,SELECT,TABLE,finance.bills,"SELECT x FROM finance.bills WHERE id = $1","7"',
    "SESSION,6,1,READ,SELECT,TABLE,finance.bills,SELECT 1,<not logged>",
    "SESSION,7,x,READ,SELECT,TABLE,finance.bills,SELECT 1,<none>",
    'SESSION,8,"1",READ,SELECT,TABLE,finance.bills,SELECT 1,<none>',
    'OBJECT,9,1,READ,SELECT,TABLE,"a,b",SELECT 1,<none>',
    "SESSION,10,1,WRITE,UPDATE,TABLE,helpdesk.cases,UPDATE helpdesk.cases SET a = 1,<none>",
    "SESSION,11,1,READ,COPY,TABLE,clients.accounts,COPY clients.accounts TO STDOUT,<none>",
    'SESSION,12,1,READ,SELECT,TABLE,x.y,"SELECT "","" FROM x.y",<none>',
    "SESSION,13,1,READ,SELECT,TABLE,x.y,SELECT 1",
    "SESSION,14,1,READ,SELECT,TABLE,x.y",
    'SESSION,15,1,READ,SELECT,TABLE,x.y,"SELECT 1',
    "SESSION,16,1,DDL,CREATE TABLE,,,CREATE TABLE t (a int),<none>",
    # quoted parameter fields: the fast path cuts at the last ',"', which may lie inside them
    'SESSION,17,1,WRITE,UPDATE,TABLE,w.a,"UPDATE w.a SET ip = $1 WHERE id = $2;","130,3768"',
    'SESSION,18,1,READ,SELECT,TABLE,finance.bills,"SELECT $1, $2","7,""a,""b"""',
    'SESSION,19,1,READ,SELECT,TABLE,finance.bills,"SELECT $1, $2",",""x"',
    'SESSION,20,1,READ,SELECT,TABLE,x.y,"SELECT ',
    ' FROM x.y","1,2"',
    'SESSION,21,1,READ,SELECT,TABLE,x.y,"SELECT 1","a"b"',
    'SESSION,22,1,READ,SELECT,TABLE,x.y,"SELECT 1",""',
]


def _event(payload: str) -> object:
    position = SourcePosition("x.log", 1, 1, 10)
    try:
        event = pg_events.audit_payload_event(
            payload,
            None,
            "pg",
            "tom",
            "db",
            "psql",
            None,
            "42",
            position,
            (),  # type: ignore[arg-type]
        )
    except pg_events.ParseFailure as failure:
        return ("failure", failure.reason)
    return event


def test_audit_templates_give_what_a_fresh_parse_gives() -> None:
    rnd = random.Random(3)
    variants = [p.replace(",1,", f",{n},", 1) for p in PAYLOADS for n in (1, 2, 17)]
    variants += [p.rsplit(",", 1)[0] + ",1048" for p in PAYLOADS if p.count(",") > 8]
    for _ in range(3):
        rnd.shuffle(variants)
        for payload in variants:
            cached = _event(payload)
            pg_events._TEMPLATES.clear()
            pg_events._TAGS.clear()
            saved = dict(pg_events._FAST)
            pg_events._FAST.clear()
            fresh = _event(payload)
            pg_events._FAST.update(saved)
            assert cached == fresh, payload


def _naive_lines(path: Path, max_line_bytes: int) -> list[Line]:
    """What read_lines did before it read in chunks: one line at a time."""
    out, offset = [], 0
    with files._open(path) as stream:
        for line_no, raw in enumerate(stream, start=1):
            end = offset + len(raw)
            body = raw[:-1] if raw.endswith(b"\n") else raw
            body = body[:-1] if body.endswith(b"\r") else body
            truncated = len(body) > max_line_bytes
            body = body[:max_line_bytes]
            try:
                text, bad = body.decode("utf-8"), False
            except UnicodeDecodeError:
                text, bad = body.decode("utf-8", errors="replace"), True
            out.append(Line(text, offset, end, line_no, truncated, bad))
            offset = end
    return out


def test_chunked_reading_gives_the_same_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rnd = random.Random(5)
    cases = [b"", b"\n", b"a", b"a\r\n", b"a\r", b"\r\n\r\n", b"x\xffy\nz\n", "é\nü\r\n".encode()]
    cases += [bytes(rnd.choice(b"ab\n\r\xff\xc3\xa9 ") for _ in range(60)) for _ in range(60)]
    for chunk in (1, 7, 1 << 20):
        monkeypatch.setattr(files, "_CHUNK", chunk)
        for i, data in enumerate(cases):
            for compress in (False, True):
                path = tmp_path / f"{i}-{chunk}{'.gz' if compress else ''}"
                path.write_bytes(gzip.compress(data) if compress else data)
                for bound in (3, 1024):
                    assert list(files.read_lines(path, bound)) == _naive_lines(path, bound)


def test_push_many_frames_like_push() -> None:
    fmt = PgauditStderrFormat(PREFIXES[0], "Europe/Berlin")
    texts = [
        f"{TIMES[0]} {HEADS[0]}AUDIT: SESSION,1,1,READ,SELECT,TABLE,a.b,SELECT 1,<none>",
        "\tcontinued",
        f"{TIMES[0]} [4132] tom@webhostdb psql [local] ERROR:  permission denied for table b",
        f"{TIMES[0]} [4132] tom@webhostdb psql [local] STATEMENT:  SELECT * FROM a.b",
        "garbage",
        "\torphan",
        f"{TIMES[1]} {HEADS[1]}connection authorized: user=tom database=webhostdb",
    ] * 3
    lines = [Line(t, i * 100, i * 100 + 99, i + 1) for i, t in enumerate(texts)]
    one = fmt.new_framer("x.log")
    expected = [r for line in lines for r in one.push(line)] + one.flush()
    many = fmt.new_framer("x.log")
    got = many.push_many(lines[:5]) + many.push_many(lines[5:]) + many.flush()
    assert [(r.lines, type(r)) for r in got] == [(r.lines, type(r)) for r in expected]
    for a, b in zip(got, expected, strict=True):
        plain = fmt.parse(Record(a.path, a.lines), "pg")  # parsed without the framer's work
        assert repr(fmt.parse(a, "pg")) == repr(fmt.parse(b, "pg")) == repr(plain)


def test_quoted_parameters_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    first = 'SESSION,1,1,WRITE,UPDATE,TABLE,w.a,"UPDATE w.a SET ip = $1 WHERE id = $2;","130,3768"'
    expected = _event(first.replace(",1,1,", ",2,1,").replace("130,3768", "22,2453"))
    _event(first)  # learns the template
    monkeypatch.setattr(pg_events, "_audit_fields", _must_not_run)
    monkeypatch.setattr(pg_events, "split_csv", _must_not_run)
    again = _event(first.replace(",1,1,", ",2,1,").replace("130,3768", "22,2453"))
    assert again == expected
    assert isinstance(again, AccessEvent) and again.parameters == ("22", "2453")


def _must_not_run(*args: object) -> None:
    raise AssertionError("the general AUDIT parse ran on a line the fast path knows")


def _real_lines(samples_dir: Path) -> list[Line]:
    """Real server output: the two workload logs and the start of the large one."""
    lines: list[Line] = []
    for name in ("pgaudit_workload_dayshift", "pgaudit_workload_realclock"):
        lines += files.read_lines(samples_dir / name / "postgresql.log")
    large = files.read_lines(samples_dir / "pgaudit_large" / "postgresql.log.gz")
    lines += itertools.islice(large, 40_000)
    return lines


class _Unremembering(dict):  # type: ignore[type-arg]
    def __setitem__(self, key: object, value: object) -> None:
        pass


def test_events_built_enriched_equal_parse_then_enrich_on_real_logs(
    samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline's path (framed records, caches warm, each event built once already
    enriched) against the general one (plain records, no caches, parse then enrich), event
    for event and field for field."""
    policy = load_policy(Path(__file__).resolve().parents[1] / "config" / "policy.yml")
    lines = _real_lines(samples_dir)
    fmt = PgauditStderrFormat(PREFIXES[0], "Europe/Berlin")
    fast = Pipeline(policy)
    framer = fmt.new_framer("pg.log")
    records = framer.push_many(lines) + framer.flush()
    got = [fmt.parse_enriched(r, "pg-main", fast._enricher) for r in records * 2]

    for name in ("_TEMPLATES", "_TAGS", "_FAST"):
        monkeypatch.setattr(pg_events, name, _Unremembering())
    slow = Pipeline(policy)
    slow._sql._plans = _Unremembering()
    expected: list[object] = []

    def enrich(event: AccessEvent) -> AccessEvent:  # as Pipeline.evaluate does it
        actor = slow._view.resolve_actor(event.actor)
        person = actor.person if isinstance(actor, StaffMember) else event.person
        return slow._sql.enrich(event, person)

    for record in records * 2:
        parsed = fmt.parse(Record(record.path, record.lines), "pg-main")
        if isinstance(parsed, list):
            expected.append([enrich(e) for e in parsed])
        else:
            expected.append(parsed)
    assert sum(isinstance(p, list) and len(p) for p in got) > 40_000  # real events compared
    assert [repr(p) for p in got] == [repr(p) for p in expected]
    # enrichment did something: subjects, columns, persons and unbounded reads are all there
    events = [e for p in got if isinstance(p, list) for e in p]
    assert any(e.subjects for e in events) and any(e.columns for e in events)
    assert any(e.person for e in events) and any(e.unbounded for e in events)


def test_pipeline_findings_equal_with_and_without_the_one_build_path(samples_dir: Path) -> None:
    class Plain:  # the format without parse_enriched: the pipeline parses, then enriches
        def __init__(self, fmt: PgauditStderrFormat) -> None:
            self.name, self.new_framer, self.parse = fmt.name, fmt.new_framer, fmt.parse

    policy = load_policy(Path(__file__).resolve().parents[1] / "config" / "policy.yml")
    lines = _real_lines(samples_dir)
    results = []
    for wrap in (False, True):
        fmt = PgauditStderrFormat(PREFIXES[0], "Europe/Berlin")
        framer = fmt.new_framer("pg.log")
        records = push_lines(framer, lines) + framer.flush()
        result = Pipeline(policy).process(records, Plain(fmt) if wrap else fmt, "pg-main")
        results.append((result.events, result.findings, [f.reason for _, f in result.failures]))
    assert results[0][1], "the sample logs give findings"
    assert results[0] == results[1]


def test_push_lines_frames_like_push(samples_dir: Path) -> None:
    """push_lines (what scan and the daemon's ingest call) with a framer that has push_many
    (pgaudit stderr) and with one that has not (csvlog), on real lines, batch cuts anywhere."""
    workload = samples_dir / "pgaudit_workload_dayshift"
    cases: list[tuple[LogFormat, list[Line]]] = [
        (PgauditStderrFormat(PREFIXES[0]), list(files.read_lines(workload / "postgresql.log"))),
        (PgauditCsvlogFormat(), list(files.read_lines(workload / "postgresql.csv"))),
    ]
    rnd = random.Random(7)
    for fmt, lines in cases:
        one = fmt.new_framer("x.log")
        expected = [r for line in lines for r in one.push(line)] + one.flush()
        batched = fmt.new_framer("x.log")
        cuts = sorted(rnd.sample(range(1, len(lines)), 20))
        got: list[Record] = []
        for start, end in zip([0, *cuts], [*cuts, len(lines)], strict=True):
            got += push_lines(batched, lines[start:end])
        got += batched.flush()
        assert len(expected) > 100
        assert [r.lines for r in got] == [r.lines for r in expected]
