"""Every log format of the registry, fuzzed from a corpus of the real samples (proof suite).

Mutations: truncation at any byte, byte flips (and the invalid UTF-8 they make), splicing
lines of *other* formats into a log, huge fields (a 200 kB value inside a real line) and raw
random text. Each format must frame every line exactly once and ``parse`` must return events
or a ``ParseFailure`` — never raise. A second test runs every compiled regular expression of
``breachwatch/parsers/*.py`` against adversarial 100 kB inputs (long runs of the characters it
matches, with a non-matching tail) under a time budget, to catch catastrophic backtracking.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import breachwatch.parsers as parsers_pkg
from breachwatch.detection.policy import load_policy
from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent
from breachwatch.parsers.base import Line, LogFormat, ParseResult
from breachwatch.parsers.registry import FORMAT_NAMES, build_format
from breachwatch.pipeline import Pipeline
from tests.test_parser_web_access import ROUTES

PG_PREFIX = "%m [%p] %q%u@%d %a %h "
# format -> (options, sample files (dir, name) that hold it)
FORMATS: dict[str, tuple[dict[str, Any], list[tuple[str, str]]]] = {
    "pgaudit_stderr": (
        {"log_line_prefix": PG_PREFIX, "timezone": "Europe/Brussels"},
        [("pgaudit_workload_dayshift", "postgresql.log")],
    ),
    "pgaudit_csvlog": (
        {"timezone": "Europe/Brussels"},
        [("pgaudit_workload_dayshift", "postgresql.csv")],
    ),
    "pgaudit_jsonlog": (
        {"timezone": "Europe/Brussels"},
        [("pgaudit_workload_dayshift", "postgresql.json")],
    ),
    "jsonl": (
        {
            "fields": {
                "time": "timestamp",
                "actor": "user",
                "action": "command_tag",
                "objects": "detail.objects",
                "subjects": "detail.subjects",
                "statement": "message",
            },
            "action_map": {"SELECT": "read", "UPDATE": "write"},
        },
        [("pgaudit_workload_dayshift", "postgresql.json")],
    ),
    "mariadb_audit": (
        {"timezone": "Europe/Brussels", "query_log_limit": 1024},
        [("mariadb_audit_dayshift", "server_audit.log")],
    ),
    "web_access": ({"routes": ROUTES}, [("nginx_panel_dayshift", "access.log")]),
    "auditd": (
        {"uid_map": {"3001": "yasmine_helpdesk"}, "watches": {"db_backup": "/srv/backups"}},
        [("auditd_files", "audit.log")],
    ),
}
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def test_every_registered_format_is_fuzzed() -> None:
    assert set(FORMATS) == set(FORMAT_NAMES)


@pytest.fixture(scope="module")
def corpus(samples_dir: Path) -> dict[str, list[bytes]]:
    """Up to 400 real lines per format, spread over the file (continuations included)."""
    out: dict[str, list[bytes]] = {}
    for name, (_, files) in FORMATS.items():
        lines: list[bytes] = []
        for folder, file in files:
            raw = (samples_dir / folder / file).read_bytes().splitlines()
            step = max(1, len(raw) // 400)
            lines += raw[::step][:400]
        out[name] = lines
    return out


# ---- mutations ---------------------------------------------------------------------------


def _flip(line: bytes, positions: list[int], values: list[int]) -> bytes:
    data = bytearray(line)
    for pos, value in zip(positions, values, strict=False):
        if data:
            data[pos % len(data)] = value
    return bytes(data)


def mutated_lines(corpus: dict[str, list[bytes]], fmt: str) -> st.SearchStrategy[list[bytes]]:
    own = st.sampled_from(corpus[fmt])
    every = st.sampled_from([line for lines in corpus.values() for line in lines])
    one = st.one_of(
        own,  # unchanged, so that held records are completed and flushed
        st.tuples(own, st.integers(0, 2000)).map(lambda t: t[0][: t[1]]),  # truncated
        st.tuples(own, st.integers(0, 2000)).map(lambda t: t[0][t[1] :]),  # head cut off
        st.tuples(
            own, st.lists(st.integers(0, 4000), max_size=8), st.lists(st.integers(0, 255))
        ).map(lambda t: _flip(*t)),  # byte flips
        every,  # a line of another format spliced in
        st.tuples(own, every, st.integers(0, 500)).map(lambda t: t[0][: t[2]] + t[1]),
        st.tuples(own, st.integers(0, 2000), st.sampled_from(b"a,\"'\\{[ 0\t:=")).map(
            lambda t: t[0][: t[1]] + bytes([t[2]]) * 200_000 + t[0][t[1] :]  # huge field
        ),
        st.binary(max_size=300),
    )
    return st.lists(one, min_size=1, max_size=15)


def to_lines(raw_lines: list[bytes], max_bytes: int = 64 * 1024) -> list[Line]:
    """What the tailer makes of them: newlines split, over-long lines cut, bad UTF-8
    replaced and flagged."""
    out: list[Line] = []
    offset = 0
    for raw in b"\n".join(raw_lines).split(b"\n"):
        raw = raw.replace(b"\r", b"")
        cut = len(raw) > max_bytes
        body = raw[:max_bytes]
        try:
            text, bad = body.decode("utf-8"), False
        except UnicodeDecodeError:
            text, bad = body.decode("utf-8", "replace"), True
        end = offset + len(raw) + 1
        out.append(Line(text, offset, end, len(out) + 1, cut, bad))
        offset = end
    return out


def run_format(fmt: LogFormat, lines: list[Line]) -> None:
    framer = fmt.new_framer("fuzz.log")
    records = []
    for line in lines:
        records.extend(framer.push(line))
        pending = framer.pending_offset()
        assert pending is None or pending <= line.end_offset
    records.extend(framer.flush())
    assert framer.pending_offset() is None
    covered = sorted(li.line_no for record in records for li in record.lines)
    assert covered == [line.line_no for line in lines], "a line lost or framed twice"
    plain: list[ParseResult] = []
    for record in records:
        result = fmt.parse(record, "fuzz")  # must not raise
        plain.append(result)
        assert isinstance(result, list | ParseFailure), type(result)
        if isinstance(result, list):
            for event in result:
                assert isinstance(event, AccessEvent)
                assert event.time.tzinfo is not None
                assert event.actor is None or isinstance(event.actor, str)
    if hasattr(framer, "push_many"):
        # the batch path (in C when the twins are built) frames the same records
        batched = fmt.new_framer("fuzz.log")
        assert batched.push_many(lines) + batched.flush() == records  # type: ignore[attr-defined]
    if hasattr(fmt, "parse_and_detect"):
        # the pipeline's path: parsed already enriched (in C when built), then detected
        batch = _fuzz_pipeline().process(records, fmt, "fuzz")
        assert batch.events == sum(len(p) for p in plain if isinstance(p, list))
        failed = [
            (r, p.reason) for r, p in zip(records, plain, strict=True) if not isinstance(p, list)
        ]
        assert [(r, f.reason) for r, f in batch.failures] == failed


_PIPELINE: list[Pipeline] = []


def _fuzz_pipeline() -> Pipeline:
    if not _PIPELINE:
        root = Path(__file__).resolve().parents[1]
        _PIPELINE.append(Pipeline(load_policy(root / "config" / "policy.yml")))
    return _PIPELINE[0]


@pytest.mark.parametrize("name", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_mutated_real_lines_never_crash_a_parser(
    name: str, corpus: dict[str, list[bytes]], data: st.DataObject
) -> None:
    fmt = build_format(name, FORMATS[name][0])
    run_format(fmt, to_lines(data.draw(mutated_lines(corpus, name))))


@pytest.mark.parametrize("name", ["pgaudit_jsonlog", "jsonl"])
@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_deeply_nested_json_is_a_parse_failure(name: str, opening: bytes) -> None:
    """A line of nested brackets (the huge-field mutation with ``[`` or ``{``) makes the json
    decoder raise RecursionError, not ValueError; it is bad input like any other. Found by
    the fuzz test above, where the depth-dependent exception showed as hypothesis'
    FlakyStrategyDefinition instead of as the crash it was."""
    fmt = build_format(name, FORMATS[name][0])
    framer = fmt.new_framer("fuzz.log")
    (line,) = to_lines([opening * 70_000])  # deeper than any recursion limit, cut at 64 kB
    (record,) = framer.push(line) + framer.flush()
    failure = fmt.parse(record, "fuzz")
    assert isinstance(failure, ParseFailure) and failure.reason == "bad_json", failure


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_the_whole_real_sample_parses_without_a_crash(name: str, samples_dir: Path) -> None:
    fmt = build_format(name, FORMATS[name][0])
    for folder, file in FORMATS[name][1]:
        run_format(fmt, to_lines((samples_dir / folder / file).read_bytes().splitlines()))


# ---- catastrophic backtracking ------------------------------------------------------------

REDOS_BYTES = 100_000
REDOS_BUDGET_S = 1.0  # per pattern and input; a linear regex needs milliseconds


def compiled_patterns() -> list[tuple[str, re.Pattern[str]]]:
    """Every module-level compiled regex of breachwatch/parsers/*.py (and class attributes)."""
    found: list[tuple[str, re.Pattern[str]]] = []
    package = Path(parsers_pkg.__file__).parent
    for path in sorted(package.glob("*.py")):
        module = __import__(f"breachwatch.parsers.{path.stem}", fromlist=["_"])
        seen: set[int] = set()
        holders = [vars(module)] + [vars(v) for v in vars(module).values() if isinstance(v, type)]
        for namespace in holders:
            for attr, value in namespace.items():
                fresh = isinstance(value, re.Pattern) and id(value) not in seen
                if fresh and isinstance(value.pattern, str):
                    seen.add(id(value))
                    found.append((f"{path.stem}.{attr}", value))
    return found


def _calls_used(name: str, pattern: re.Pattern[str]) -> list[Any]:
    """The ways the parser really applies the pattern. An unanchored scan (search, findall,
    finditer, sub, split) is tried only where the code does one: on a pattern that is only
    ever matched at the start, `search` retrying from every position is not a code path."""
    module, attr = name.split(".", 1)
    source = (Path(parsers_pkg.__file__).parent / f"{module}.py").read_text()
    scans = ("search", "findall", "finditer", "sub", "subn", "split")
    calls: list[Any] = [pattern.match, pattern.fullmatch]
    if any(f"{attr}.{scan}(" in source for scan in scans) or f"{attr}," in source:
        calls += [pattern.search, pattern.findall]
    return calls


def _alphabet(pattern: str) -> list[str]:
    """Characters the pattern is likely to match in long runs."""
    chars = set(" \t,\"'[]():=/.-_@%a1Z\\{}<>")
    chars |= {c for c in pattern if (c.isprintable() and not c.isalnum()) or c in "aZ09"}
    return sorted(chars)


def adversarial_inputs(pattern: str) -> list[str]:
    out = []
    for char in _alphabet(pattern):
        out.append(char * REDOS_BYTES + "\x00")
        out.append(char * (REDOS_BYTES // 2) + "!" + char * (REDOS_BYTES // 2) + "\n\x00")
    out.append(("a " * (REDOS_BYTES // 2)) + "\x00")
    out.append(("a," * (REDOS_BYTES // 2)) + '"')
    out.append(('"a' * (REDOS_BYTES // 2)) + "\\")
    out.append(("1." * (REDOS_BYTES // 2)) + "x")
    out.append(("=a " * (REDOS_BYTES // 3)) + "'")
    return out


def test_patterns_are_found() -> None:
    names = [name for name, _ in compiled_patterns()]
    assert len(names) >= 10, names


@pytest.mark.parametrize("name_pattern", compiled_patterns(), ids=lambda np: np[0])
def test_no_parser_regex_backtracks_catastrophically(
    name_pattern: tuple[str, re.Pattern[str]],
) -> None:
    name, pattern = name_pattern
    worst = 0.0
    for text in adversarial_inputs(pattern.pattern):
        for call in _calls_used(name, pattern):
            started = time.perf_counter()
            call(text)
            elapsed = time.perf_counter() - started
            worst = max(worst, elapsed)
            assert elapsed < REDOS_BUDGET_S, (
                f"{name} ({pattern.pattern!r}) took {elapsed:.2f}s on {len(text)} chars of "
                f"{text[:20]!r}..."
            )
