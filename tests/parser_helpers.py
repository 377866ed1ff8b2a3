"""Reading a real log file into lines, framing and parsing it: shared by the parser tests of
the MariaDB, web access and auditd formats."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent
from breachwatch.parsers.base import Line, LogFormat, Record


def read_lines(path: Path) -> list[Line]:
    lines: list[Line] = []
    offset = 0
    for no, raw in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        end = offset + len(raw)
        text = raw.rstrip(b"\n").decode("utf-8", "replace")
        lines.append(Line(text, offset, end, no))
        offset = end
    return lines


def text_lines(texts: list[str], truncate_every: int = 0) -> list[Line]:
    lines: list[Line] = []
    offset = 0
    for no, text in enumerate(texts, start=1):
        size = len(text.encode("utf-8", "surrogatepass")) + 1
        cut = bool(truncate_every) and no % truncate_every == 0
        lines.append(Line(text, offset, offset + size, no, truncated=cut))
        offset += size
    return lines


def frame(fmt: LogFormat, lines: list[Line], path: str = "test.log") -> list[Record]:
    """All records, checking the framer contract on the way: pending_offset() is the offset of
    the first line not emitted yet, and nothing is held after flush()."""
    framer = fmt.new_framer(path)
    records: list[Record] = []
    emitted: set[int] = set()
    first = 0  # index of the first line not emitted yet
    for i, line in enumerate(lines):
        out = framer.push(line)
        records.extend(out)
        emitted.update(li.line_no for r in out for li in r.lines)
        while first <= i and lines[first].line_no in emitted:
            first += 1
        # every line not emitted is held, and the first of them is what may not be committed
        if first <= i:
            assert framer.pending_offset() == lines[first].offset
            assert framer.pending_line_no() == lines[first].line_no
        else:
            assert framer.pending_offset() is None
    records.extend(framer.flush())
    assert framer.pending_offset() is None and framer.pending_line_no() is None
    return records


def assert_each_line_once(records: list[Record], count: int) -> None:
    seen = Counter(line.line_no for record in records for line in record.lines)
    assert sorted(seen) == list(range(1, count + 1)), "a line was lost"
    assert max(seen.values()) == 1, "a line was framed twice"


class Parsed:
    """A sample file framed and parsed; events indexed by the line of their record's start."""

    def __init__(self, fmt: LogFormat, path: Path, store: str = "test") -> None:
        self.lines = read_lines(path)
        self.records = frame(fmt, self.lines, str(path))
        self.failures: list[tuple[Record, ParseFailure]] = []
        self.events: list[AccessEvent] = []
        self.record_of: dict[int, Record] = {}
        for record in self.records:
            for line in record.lines:
                self.record_of[line.line_no] = record
            result = fmt.parse(record, store)
            if isinstance(result, ParseFailure):
                self.failures.append((record, result))
            else:
                self.events.extend(result)

    def at(self, line_no: int) -> list[AccessEvent]:
        start = self.record_of[line_no].line_no
        return [e for e in self.events if e.position.line == start]
