"""The C twins of the pgaudit hot path (``breachwatch/_speedups.c``) give exactly what their
Python definitions give.

Each C function is run next to its Python twin on the same input (hypothesis-made lines,
mutated AUDIT payloads, real server output) and every difference fails: the Line values of
a block, the framer's records and state, the parsed and enriched events (their ``repr``,
failures' reasons included), and a whole ``breachwatch scan``. Without the compiled module the
comparisons are skipped, except under CI, where the C path must run.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import itertools
import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from breachwatch.detection.policy import Policy, load_policy
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.parsers import pg_events
from breachwatch.parsers.base import Line, ParseResult, Record
from breachwatch.parsers.pg_events import split_csv
from breachwatch.parsers.pgaudit import (
    PgauditStderrFormat,
    PgStderrFramer,
    _MatchedRecord,
)
from breachwatch.pipeline import Pipeline
from breachwatch.sources import files
from breachwatch.speedups import builder, native
from breachwatch.sql.enrich import EventEnricher
from tests.conftest import REPO, SAMPLES, services_required
from tests.daemon_harness import write_config
from tests.test_parser_fastpath import HEADS, MESSAGES, PREFIXES, TIMES, _real_lines

NO_NATIVE = (
    "breachwatch._speedups is not built (or BREACHWATCH_PURE_PYTHON is set): no C to compare"
)
needs_native = pytest.mark.skipif(native is None, reason=NO_NATIVE)
STORE = "pg-main"
ZONE = "Europe/Berlin"  # the sample server's log_timezone
WORKLOAD = "pgaudit_workload_dayshift"


def test_the_c_module_is_built_and_used() -> None:
    """CI sets BREACHWATCH_REQUIRE_SERVICES=1: there the C path must be what runs (and what
    the other tests here compare), not silently the Python one."""
    if native is None:
        if services_required():
            pytest.fail(f"required under CI: {NO_NATIVE}")
        pytest.skip(NO_NATIVE)
    assert isinstance(files._LINE, native.Builder)
    fmt = PgauditStderrFormat(PREFIXES[0], ZONE)
    assert isinstance(fmt._lane, native.Lane)
    assert fmt.new_framer("pg.log")._lane is fmt._lane


# ---- Builder ------------------------------------------------------------------------------


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _examples() -> list[tuple[type, tuple[Any, ...]]]:
    """One value of each class the C side builds, every field set to a non-default."""
    position = SourcePosition("pg.log", 10, 2, 99, "8:1")
    line = Line("text é", 0, 8, 1, True, False)
    event = AccessEvent(
        datetime(2026, 11, 30, 9, 0, 1, tzinfo=UTC), STORE, "tom", Action.EXPORT, position,
        ("a.b",), ("1002",), ("email",), "Tom", "10.0.0.1", "psql", "db", "42", "COPY",
        "COPY a.b TO STDOUT", ("7", "{1,2}"), True, "detail", frozenset({"stmt:1", "x"}),
    )  # fmt: skip
    return [
        (Line, dataclasses.astuple(line)),
        (Record, ("pg.log", (line, line))),
        (SourcePosition, dataclasses.astuple(position)),
        (AccessEvent, tuple(getattr(event, name) for name in _names(AccessEvent))),
        (_MatchedRecord, ("pg.log", (line,), (None,))),
    ]


@needs_native
@pytest.mark.parametrize(("cls", "values"), _examples(), ids=[c.__name__ for c, _ in _examples()])
def test_builder_makes_what_the_constructor_makes(cls: type, values: tuple[Any, ...]) -> None:
    assert native is not None
    names = _names(cls)
    expected = cls(*values)
    for build in (native.Builder(cls, names), builder(cls)):
        built = build(*values)
        assert type(built) is cls
        assert built == expected and repr(built) == repr(expected)
        assert [getattr(built, n) for n in names] == [getattr(expected, n) for n in names]
        assert hash(built) == hash(expected)
        again = pickle.loads(pickle.dumps(built))
        assert again == expected and type(again) is cls
        assert gc.is_tracked(built) == gc.is_tracked(expected)
        for name in names:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(built, name, values[0])
        assert built == expected  # the refused assignments changed nothing


@needs_native
@settings(deadline=None, max_examples=60)
@given(
    text=st.text(max_size=20),
    offset=st.integers(0, 2**62),
    end=st.integers(0, 2**62),
    line_no=st.integers(0, 2**31),
    truncated=st.booleans(),
    bad=st.booleans(),
)
def test_built_lines_equal_constructed_ones(
    text: str, offset: int, end: int, line_no: int, truncated: bool, bad: bool
) -> None:
    values = (text, offset, end, line_no, truncated, bad)
    built, expected = files._LINE(*values), Line(*values)
    assert built == expected and repr(built) == repr(expected) and hash(built) == hash(expected)


@needs_native
def test_builder_refuses_bad_calls_and_classes() -> None:
    assert native is not None
    cls, values = _examples()[2]
    build = native.Builder(cls, _names(cls))
    with pytest.raises(TypeError):
        build(*values[:-1])
    with pytest.raises(TypeError):
        build(*values, "extra")
    with pytest.raises(TypeError):
        build()
    with pytest.raises(TypeError):
        build(*values[:-1], file_id=values[-1])

    @dataclasses.dataclass(frozen=True)
    class WithDict:  # instances have a __dict__: no fixed slots to store into
        a: int = 0

    with pytest.raises(TypeError):
        native.Builder(WithDict, ("a",))

    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        a: int

        @property
        def b(self) -> int:
            return self.a

    assert native.Builder(Slotted, ("a",))(5) == Slotted(5)
    with pytest.raises(TypeError):
        native.Builder(Slotted, ("a", "b"))  # b is no slot
    with pytest.raises(AttributeError):
        native.Builder(Slotted, ("c",))
    with pytest.raises(ValueError):
        native.Builder(Slotted, ("a",) * 33)
    with pytest.raises(TypeError):
        native.Builder("Slotted", ("a",))  # a name, not a class


@needs_native
def test_builder_and_lines_of_keep_reference_counts() -> None:
    """A value stored in a built instance is released with it (no leaked references)."""
    assert native is not None
    text = "".join(["unique ", "text"])  # not interned: its count is ours alone
    base = sys.getrefcount(text)
    built = [files._LINE(text, 0, 1, 1, False, False) for _ in range(100)]
    assert sys.getrefcount(text) == base + 100
    del built
    assert sys.getrefcount(text) == base
    raws = [b"a\r", b"\xff", "é".encode()] * 50
    counts = [sys.getrefcount(r) for r in raws]
    out = native.lines_of(raws, True, 0, 0, 1, files._LINE)
    del out
    assert [sys.getrefcount(r) for r in raws] == counts


# ---- lines of a block ---------------------------------------------------------------------

_FRAGMENTS = [
    b"a", b"LOG:  ", b" ", b"\r", b"\r", b"\t", b",", b'"', b"\x00", b"\xff", b"\xc3\xa9",
    b"\xc3", b"\xa9", "日".encode(), "😀".encode(), "😀".encode()[:3], b"\xed\xa0\x80",
]  # fmt: skip
_raw_lines = st.lists(st.lists(st.sampled_from(_FRAGMENTS), max_size=10).map(b"".join), max_size=25)


@needs_native
@settings(deadline=None, max_examples=400)
@given(
    raws=_raw_lines,
    has_cr=st.booleans(),
    offset=st.integers(0, 2**48),
    line_no=st.integers(0, 2**31),
    max_line_bytes=st.one_of(st.integers(0, 12), st.just(64 * 1024)),
)
def test_lines_of_equals_lines_py(
    raws: list[bytes], has_cr: bool, offset: int, line_no: int, max_line_bytes: int
) -> None:
    assert native is not None
    expected = files._lines_py(list(raws), has_cr, offset, line_no, max_line_bytes)
    got = native.lines_of(list(raws), has_cr, offset, line_no, max_line_bytes, files._LINE)
    assert got == expected
    assert repr(got) == repr(expected)  # True is not 1 here
    assert all(type(line) is Line for line in got[0])
    assert files._lines(list(raws), has_cr, offset, line_no, max_line_bytes) == expected


# ---- framing -------------------------------------------------------------------------------

# time, pid, what lies between the pid and the severity, severity, message
_PREFIXED = re.compile(r"^(\S+ \S+ \S+) \[(\d+)\](.*?) ([A-Z]+):  (.*)$", re.DOTALL)
_SEVERITIES = ["STATEMENT", "DETAIL", "HINT", "CONTEXT", "QUERY", "LOCATION", "ERROR", "LOG"]
_GARBAGE = "ab :[]@LOG0123é日\t-.,\"'"
_INSERTS = ["é", "日", "😀", "\t", ":  ", " ", "٣", "\x00", "[", "]"]


@functools.cache
def _workload_texts() -> tuple[str, ...]:
    return tuple(line.text for line in files.read_lines(SAMPLES / WORKLOAD / "postgresql.log"))


def _attached(previous: str, severity: str, other_backend: bool, message: str) -> str:
    """A line of the backend of ``previous`` (or of another one) with this severity."""
    m = _PREFIXED.match(previous)
    assert m is not None
    pid = int(m[2]) + (1 if other_backend else 0)
    return f"{m[1]} [{pid}]{m[3]} {severity}:  {message}"


def _line_texts(real: Sequence[str]) -> st.SearchStrategy[list[str]]:
    """Lines as a log may hold them: real ones, ones made to break the C side's shortcuts,
    and lines attached to the backend of the last prefixed line (or of another backend)."""
    reals = st.sampled_from(real)
    prefixed = st.sampled_from([t for t in real if _PREFIXED.match(t)])
    garbage = st.text(alphabet=_GARBAGE, max_size=40)
    other_backend = st.sampled_from([False, False, True])
    attached = st.tuples(st.sampled_from([*_SEVERITIES, "NOTALEVEL"]), other_backend, garbage)
    one = st.one_of(
        reals,
        reals,
        attached,
        garbage.map(lambda s: "\t" + s),
        garbage,
        st.just(""),
        st.builds(
            lambda t, i, c: t[:i] + c + t[i:], reals, st.integers(0, 150), st.sampled_from(_INSERTS)
        ),
        st.builds(lambda t, n: t[:n], reals, st.integers(0, 70)),
        st.builds(lambda t: "X" + t[1:], reals),  # a known head after a time that is none
        st.builds(
            lambda time, head, message: f"{time} {head}{message}",
            st.sampled_from(TIMES),
            st.sampled_from(HEADS),
            st.sampled_from(MESSAGES),
        ),
    ).map(lambda p: [p])
    # a prefixed line, then lines of its backend (or of another) and continuations
    group = st.tuples(
        prefixed,
        st.lists(st.one_of(attached, attached, garbage.map(lambda s: "\t" + s)), max_size=4),
    ).map(lambda g: [g[0], *g[1]])
    piece: st.SearchStrategy[list[str | tuple[str, bool, str]]] = st.one_of(one, group)

    def resolve(pieces: list[list[str | tuple[str, bool, str]]]) -> list[str]:
        out: list[str] = []
        previous = real[-1]
        for p in itertools.chain.from_iterable(pieces):
            if isinstance(p, tuple):
                out.append(_attached(previous, *p))
            else:
                out.append(p)
            if _PREFIXED.match(out[-1]) and not out[-1].startswith("\t"):
                previous = out[-1]
        return out

    return st.lists(piece, min_size=1, max_size=25).map(resolve)


def _as_lines(texts: Sequence[str], flags: Sequence[int] = ()) -> list[Line]:
    lines, offset = [], 0
    for i, text in enumerate(texts):
        end = offset + len(text.encode()) + 1
        flag = flags[i] if i < len(flags) else 0
        lines.append(Line(text, offset, end, i + 1, flag == 1, flag == 2))
        offset = end
    return lines


def _shape(records: list[Record]) -> list[tuple[Any, ...]]:
    return [(type(r), r.path, r.lines, getattr(r, "matches", None)) for r in records]


def _state(framer: PgStderrFramer) -> tuple[Any, ...]:
    return framer._held, framer._matches, framer._held_key, framer.pending_offset()


def _frame_both(fmt: PgauditStderrFormat, lines: list[Line], cuts: list[int]) -> list[Record]:
    """Frame ``lines`` in batches cut at ``cuts`` with the C lane and with _push_many_py,
    comparing records and held state after every batch; the C side's records."""
    c_side, py_side = fmt.new_framer("pg.log"), fmt.new_framer("pg.log")
    assert c_side._lane is not None
    py_side._lane = None
    records: list[Record] = []
    bounds = sorted({0, *cuts, len(lines)})
    for start, end in itertools.pairwise(bounds):
        batch = lines[start:end]
        got = c_side.push_many(batch)
        expected = py_side._push_many_py(batch)
        assert _shape(got) == _shape(expected), (start, end)
        assert _state(c_side) == _state(py_side), (start, end)
        records += got
    got, expected = c_side.flush(), py_side.flush()
    assert _shape(got) == _shape(expected)
    assert _state(c_side) == _state(py_side) == ([], [], None, None)
    return records + got


@needs_native
@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.data_too_large])
@given(data=st.data())
def test_push_many_frames_like_push_many_py(samples_dir: Path, data: st.DataObject) -> None:
    real = _workload_texts()
    texts = data.draw(_line_texts(real), label="texts")
    flags = data.draw(st.lists(st.sampled_from([0, 0, 0, 0, 1, 2]), max_size=len(texts)))
    lines = _as_lines(texts, flags)
    cuts = data.draw(st.lists(st.integers(0, len(lines)), max_size=6), label="cuts")
    # mostly the sample server's prefix, which the real lines have
    prefixes = [PREFIXES[0], PREFIXES[0], PREFIXES[0], *PREFIXES, "[%p] %m %q%u@%d %a %h "]
    prefix = data.draw(st.sampled_from(prefixes), label="prefix")
    fmt = PgauditStderrFormat(prefix, ZONE)
    records = _frame_both(fmt, lines, cuts)
    # what the records then parse to, with warm caches (the cold case is tested below)
    enricher = _enricher()
    _assert_same(
        [_parsed_c(fmt, r, enricher) for r in records],
        [_parsed_py(fmt, r, enricher) for r in records],
        records,
    )


@needs_native
def test_real_logs_frame_alike_in_any_batches(samples_dir: Path) -> None:
    lines = _real_lines(samples_dir)
    fmt = PgauditStderrFormat(PREFIXES[0], ZONE)
    step = 4099  # a prime: the cuts fall anywhere in records
    records = _frame_both(fmt, lines, list(range(step, len(lines), step)))
    assert len(records) > 40_000
    assert sum(len(r.lines) > 1 for r in records) > 50  # continuations and attached lines


# ---- parsing -------------------------------------------------------------------------------


@functools.cache
def _policy() -> Policy:
    return load_policy(REPO / "config" / "policy.yml")


@functools.cache
def _enricher() -> EventEnricher:
    """A pipeline's enricher whose caches live across the examples (warm)."""
    return Pipeline(_policy())._enricher


def _cold() -> EventEnricher:
    """A fresh enricher, with the statement caches the parsers share emptied: the next
    parse of a line is its first. (A new enricher object also empties the lane's cache of
    results for statements without parameters.)"""
    for cache in (pg_events._FAST, pg_events._TAGS, pg_events._TEMPLATES):
        cache.clear()
    return Pipeline(_policy())._enricher


def _outcome(parse: Callable[[], ParseResult]) -> str:
    try:
        return repr(parse())
    except Exception as error:  # the twins must fail alike too
        return f"raised {type(error).__name__}: {error}"


def _parsed_c(fmt: PgauditStderrFormat, record: Record, enricher: EventEnricher) -> str:
    assert fmt._lane is not None
    return _outcome(lambda: fmt.parse_enriched(record, STORE, enricher))


def _parsed_py(fmt: PgauditStderrFormat, record: Record, enricher: EventEnricher) -> str:
    return _outcome(lambda: fmt._parse_enriched_py(record, STORE, enricher))


def _assert_same(got: list[str], expected: list[str], records: Sequence[Record]) -> None:
    """Equal outcomes; else the first record where C and Python differ, shown in full."""
    assert len(got) == len(expected) == len(records)
    for c_side, py_side, record in zip(got, expected, records, strict=True):
        assert c_side == py_side, f"C and Python differ on {[ln.text for ln in record.lines]!r}"


def _assert_parse_alike(fmt: PgauditStderrFormat, records: Sequence[Record]) -> list[str]:
    """Each record parsed twice (cold caches, then warm) by C and by Python, each on caches
    of its own, then interleaved (each reads what the other left); the C outcomes."""
    sequence = [*records, *records]
    enricher = _cold()
    got = [_parsed_c(fmt, r, enricher) for r in sequence]
    enricher = _cold()
    expected = [_parsed_py(fmt, r, enricher) for r in sequence]
    _assert_same(got, expected, sequence)
    enricher = _cold()
    for record, outcome in zip(sequence, expected, strict=True):
        first_c = _parsed_c(fmt, record, enricher)
        then_py = _parsed_py(fmt, record, enricher)
        assert first_c == then_py == outcome, [ln.text for ln in record.lines]
    enricher = _cold()
    for record, outcome in zip(sequence, expected, strict=True):
        first_py = _parsed_py(fmt, record, enricher)
        then_c = _parsed_c(fmt, record, enricher)
        assert first_py == then_c == outcome, [ln.text for ln in record.lines]
    return got


class _CountingFormat(PgauditStderrFormat):
    """Counts the AUDIT lines the C side hands back to Python (the lane is made with this
    class's ``_audit_line_py``)."""

    def __init__(self, log_line_prefix: str, timezone: str) -> None:
        self.handed_back = 0
        super().__init__(log_line_prefix, timezone)

    def _audit_line_py(
        self, record: Record, store: str, enricher: EventEnricher | None
    ) -> AccessEvent | None:
        self.handed_back += 1
        return super()._audit_line_py(record, store, enricher)


@needs_native
def test_real_logs_parse_alike(samples_dir: Path) -> None:
    lines = _real_lines(samples_dir)
    fmt = _CountingFormat(PREFIXES[0], ZONE)
    framer = fmt.new_framer("pg.log")
    records = framer.push_many(lines) + framer.flush()
    sequence = [*records, *records]
    enricher = _cold()
    got = [_parsed_c(fmt, r, enricher) for r in sequence]
    handed_back = fmt.handed_back
    enricher = _cold()
    expected = [_parsed_py(fmt, r, enricher) for r in sequence]
    _assert_same(got, expected, sequence)
    # and interleaved: Python reads the caches the C side filled, record by record
    enricher = _cold()
    for record, outcome in zip(records, expected, strict=False):
        assert _parsed_c(fmt, record, enricher) == _parsed_py(fmt, record, enricher) == outcome

    audit_lines = sum(len(r.lines) == 1 and "LOG:  AUDIT: " in r.lines[0].text for r in sequence)
    assert audit_lines > 80_000
    # the C side built nearly all of them itself: its own code was compared, not Python's
    assert handed_back < audit_lines // 20, (handed_back, audit_lines)
    events = sum(o.startswith("[AccessEvent(") for o in got)
    assert events > 80_000 and any("subjects=('" in o for o in got)


# AUDIT payload fields: audit type, statement id, substatement id, class, command, object
# type, object name, statement, parameters
_IDS = ["1", "17", "007", "x", "1a", "", " 1", "-1", "٣", "¹", "99999999999999999999"]
_STATEMENTS = [
    "",
    "SELECT 1",
    "SELECT * FROM clients.accounts",
    "SELECT full_name FROM clients.accounts WHERE id = $1",
    "SELECT a.full_name, b.bill_no FROM clients.accounts a JOIN finance.bills b"
    " ON b.account_id = a.id WHERE a.id = $1 AND b.account_id = $2",
    "SELECT id FROM clients.accounts WHERE id = ANY($1)",
    "COPY clients.accounts TO STDOUT",
    "COPY (SELECT * FROM clients.accounts) TO '/tmp/x.csv'",
    "UPDATE clients.accounts SET email = $2 WHERE id = $1",
    "DELETE FROM helpdesk.cases WHERE case_id = 7",
    "SELECT \"full_name\", 'a,b' FROM clients.accounts WHERE id = 1002",
    "SELECT 'é' FROM clients.accounts WHERE id IN (1, 2, 3)",
]
_OBJECTS = ["", "clients.accounts", "finance.bills", "helpdesk.cases", "a,b", "x.y", "é.t"]
_VALUES = ["1002", "1226", "{1,2}", "{1002}", "", 'a"b', "x,y", "é", "<none>", "NULL", "{}"]
_STATEMENT_INSERTS = [",", '"', '""', "é", "日本", "\n", "\n\t", " $1", "'", " LIMIT 5", "\r"]


@functools.cache
def _audit_bases() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(line head up to "AUDIT: ", the nine fields) of the distinct real AUDIT records,
    statements over several lines included."""
    fmt = PgauditStderrFormat(PREFIXES[0], ZONE)
    framer = fmt.new_framer("pg.log")
    lines = list(files.read_lines(SAMPLES / WORKLOAD / "postgresql.log"))
    bases: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {}
    for record in framer.push_many(lines) + framer.flush():
        head, sep, payload = record.lines[0].text.partition("AUDIT: ")
        if not sep or any(not ln.text.startswith("\t") for ln in record.lines[1:]):
            continue
        payload = "\n".join([payload, *(ln.text[1:] for ln in record.lines[1:])])
        fields, complete = split_csv(payload)
        if complete and len(fields) == 9:
            bases.setdefault((*fields[3:8], fields[8][:1]), (head, tuple(fields)))
    return tuple(bases.values())


def _csv_field(value: str, quoting: str) -> str:
    """A field as pgaudit writes it ("needed"), always quoted, or never (broken CSV)."""
    if quoting == "never":
        return value
    if quoting == "always" or any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


@st.composite
def _audit_case(draw: st.DrawFn) -> tuple[str, int | None]:
    """(the text of one AUDIT record, newlines inside, where to cut it) from a real one."""
    head, base = draw(st.sampled_from(_audit_bases()))
    fields = list(base)

    def maybe(index: int, options: st.SearchStrategy[str]) -> None:
        if draw(st.integers(0, 3)) == 0:
            fields[index] = draw(options)

    maybe(0, st.sampled_from(["SESSION", "OBJECT", "SESS", ""]))
    maybe(1, st.one_of(st.sampled_from(_IDS), st.integers(0, 10**6).map(str)))
    maybe(2, st.sampled_from(_IDS))
    maybe(3, st.sampled_from(["READ", "WRITE", "DDL", "MISC", "ROLE", ""]))
    maybe(4, st.sampled_from(["SELECT", "COPY", "UPDATE", "DELETE", "CREATE TABLE", ""]))
    maybe(5, st.sampled_from(["TABLE", "VIEW", ""]))
    maybe(6, st.sampled_from(_OBJECTS))
    maybe(7, st.sampled_from(_STATEMENTS))
    if draw(st.integers(0, 3)) == 0:
        statement = fields[7]
        at = draw(st.integers(0, len(statement)))
        fields[7] = statement[:at] + draw(st.sampled_from(_STATEMENT_INSERTS)) + statement[at:]
    values = st.lists(st.sampled_from(_VALUES), min_size=1, max_size=3)
    maybe(
        8,
        st.one_of(
            st.sampled_from(["<none>", "<not logged>", "", "{1,2}"]),
            values.map(lambda vs: ",".join(_csv_field(v, "needed") for v in vs)),
        ),
    )
    quoting = draw(st.sampled_from(["needed", "needed", "needed", "always", "never"]))
    text = head + "AUDIT: " + ",".join(_csv_field(f, quoting) for f in fields)
    if draw(st.integers(0, 2)) == 0:
        m = _PREFIXED.match(head)
        assert m is not None
        severity = draw(st.sampled_from(["ERROR", "LOG"]))
        user = draw(st.sampled_from(["tōm@webhostdb", "[unknown]@[unknown]", "tom@webhostdb"]))
        text = f"{m[1]} [{m[2]}] {user} psql 127.0.0.1 {severity}:  " + text[len(head) :]
    cut = draw(st.one_of(st.none(), st.integers(len(head), len(text))))
    return text, cut


@needs_native
@settings(
    deadline=None,
    max_examples=500,
    suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow],
)
@given(
    cases=st.lists(_audit_case(), min_size=1, max_size=4),
    flags=st.lists(st.sampled_from([0, 0, 0, 0, 0, 1, 2]), max_size=8),
)
def test_mutated_audit_lines_parse_alike(
    samples_dir: Path, cases: list[tuple[str, int | None]], flags: list[int]
) -> None:
    texts: list[str] = []
    for text, cut in cases:
        text = text[:cut]
        # a newline inside the message continues on a line of its own, after a TAB
        texts += text.replace("\n", "\n\t").split("\n")
    fmt = PgauditStderrFormat(PREFIXES[0], ZONE)
    records = _frame_both(fmt, _as_lines(texts, flags), [])
    _assert_parse_alike(fmt, records)


@needs_native
def test_handed_back_cases_parse_alike() -> None:
    """The cases the C side hands to Python, one by one (hypothesis may not draw each)."""
    head = "2025-06-17 08:06:00.955 CEST [28540] svc_shop@webhostdb webshop 127.0.0.1 LOG:  "
    statement = '"SELECT full_name FROM clients.accounts WHERE id = $1"'
    start = "AUDIT: SESSION,1,1,READ,SELECT,TABLE,clients.accounts," + statement + ","
    texts = [
        head + start + "1002",
        head + start + "1003",  # the template is known now: the fast path
        head + start + "<none>",
        head + start + "<not logged>",
        head + start + '"{1002,1003}"',
        head + start + '"1002,""x"""',
        head + start + '"<none>"',
        head + start + "é",
        head + start.replace(",1,1,", ",x,1,") + "1002",
        head + start.replace(",1,1,", ",1,٣,") + "1002",
        head + start.replace("full_name", "fúll_name") + "1002",
        head + start[:-30],
        head + start + '"1002',
        head + "AUDIT: SESSION,2,1,READ,SELECT,TABLE,a.b,SELECT 1,<none>",
        head + "AUDIT: SESSION,2,1,READ,SELECT,TABLE,a.b,SELECT 1,<none>",
        head + 'AUDIT: OBJECT,3,1,READ,SELECT,TABLE,"a,b",SELECT 1,<none>',
        head + "AUDIT: SESSION,4,1,READ,SELECT,TABLE,clients.accounts,"
        '"SELECT a.id FROM clients.accounts a JOIN finance.bills b ON b.account_id = a.id'
        ' WHERE a.id = $1 AND b.account_id = $2","1002,1003"',
        head + "AUDIT: SESSION,5,1,READ,SELECT,TABLE,finance.bills,",
        head + "AUDIT: ",
        head.replace("LOG:", "ERROR:") + start + "1002",
    ]
    fmt = PgauditStderrFormat(PREFIXES[0], ZONE)
    lines = _as_lines([*texts, texts[0], texts[0]], [0] * len(texts) + [1, 2])
    records = _frame_both(fmt, lines, [5])
    outcomes = _assert_parse_alike(fmt, records)
    assert sum("ParseFailure" in o for o in outcomes) >= 2
    assert sum("subjects=('1002',)" in o for o in outcomes) >= 4


@needs_native
def test_lane_releases_what_it_takes(samples_dir: Path) -> None:
    """Framing and parsing with the lane keep no reference to their input after the records
    and events are dropped (a leak would grow the daemon without bound)."""
    path = "".join(["pg", ".log"])  # not interned: its count is ours alone
    store = "".join(["pg", "-main"])
    lines = list(files.read_lines(SAMPLES / WORKLOAD / "postgresql.log"))
    fmt = PgauditStderrFormat(PREFIXES[0], ZONE)
    enricher = _enricher()
    counts = sys.getrefcount(path), sys.getrefcount(store)
    for _ in range(2):
        framer = fmt.new_framer(path)
        records = framer.push_many(lines) + framer.flush()
        events = [fmt.parse_enriched(r, store, enricher) for r in records]
        assert sum(isinstance(e, list) and len(e) for e in events) > 1000
        del framer, records, events
        gc.collect()
        assert (sys.getrefcount(path), sys.getrefcount(store)) == counts


@needs_native
def test_session_prefix_lines_frame_and_parse_alike(samples_dir: Path) -> None:
    """A prefix with %c: backends are told apart by session id, and every event carries a
    pid:<n> tag from its line head (record tags the C side merges into the event's)."""
    texts = []
    for text in _workload_texts()[:800]:
        m = _PREFIXED.match(text)
        # backends whose pids agree modulo 7 share a session id here: the framer must relate
        # lines by session, not by pid
        session = f"6851f3a8.{int(m[2]) % 7:x}" if m else ""
        texts.append(text.replace("] ", f"] {session} ", 1) if m else text)
    fmt = PgauditStderrFormat("%m [%p] %c %q%u@%d %a %h ", ZONE)
    records = _frame_both(fmt, _as_lines(texts), [100, 101, 350])
    outcomes = _assert_parse_alike(fmt, records)
    assert sum("'pid:" in o for o in outcomes) > 1000


# ---- end to end ------------------------------------------------------------------------------


def _env(pure: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BREACHWATCH_PURE_PYTHON"}
    if pure:
        env["BREACHWATCH_PURE_PYTHON"] = "1"
    return env


@needs_native
def test_scan_finds_the_same_with_and_without_c(tmp_path: Path, samples_dir: Path) -> None:
    config = write_config(tmp_path, smtp_port=None)
    log = samples_dir / WORKLOAD / "postgresql.log"
    outputs = []
    for pure in (False, True):
        probe = subprocess.run(
            [sys.executable, "-c", "from breachwatch.speedups import native; print(native)"],
            capture_output=True, text=True, timeout=60, cwd=REPO, env=_env(pure),
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        assert (probe.stdout.strip() == "None") == pure, probe.stdout
        result = subprocess.run(
            [sys.executable, "-m", "breachwatch.cli", "scan", "--config", str(config),
             "--format", "pgaudit_stderr", "--json", "--no-progress", str(log)],
            capture_output=True, text=True, timeout=300, cwd=REPO, env=_env(pure),
        )  # fmt: skip
        assert result.returncode == 1, result.stderr  # 1: findings
        outputs.append(result.stdout.splitlines())
    assert outputs[0] == outputs[1]
    findings = [json.loads(line) for line in outputs[0]]
    assert len(findings) > 10 and all(f["rule"] and f["source"]["line"] for f in findings)
