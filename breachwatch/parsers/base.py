"""The contract between the tailer and the parsers.

The tailer hands over complete :class:`Line` values of one file, in order. A :class:`LogFormat`
groups them into :class:`Record` values (a pgaudit statement may span many lines) and turns each
record into events. Framing is stateful (one framer per file); parsing a record is pure.

Offsets: a record is complete only when the next one starts, so the framer holds the latest
lines back. ``pending_offset()`` tells where the first line it still holds starts: that, not the
end of the last line read, is the position that may be committed as done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, fast_init


@fast_init
@dataclass(frozen=True, slots=True)
class Line:
    """One line of a file, without its newline."""

    text: str
    offset: int  # byte offset of the first byte
    end_offset: int  # byte offset just past the newline
    line_no: int  # 1-based
    truncated: bool = False  # longer than the configured bound and cut
    decode_errors: bool = False  # had bytes that were not UTF-8 (replaced with U+FFFD)


@fast_init
@dataclass(frozen=True, slots=True)
class Record:
    """One logical log record: one or more consecutive lines of one file."""

    path: str
    lines: tuple[Line, ...]

    @property
    def offset(self) -> int:
        return self.lines[0].offset

    @property
    def end_offset(self) -> int:
        return self.lines[-1].end_offset

    @property
    def line_no(self) -> int:
        return self.lines[0].line_no

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


# What parsing one record yields: events (often one; none for records that are not accesses,
# such as a checkpoint message), or a failure to be counted and quarantined.
ParseResult = list[AccessEvent] | ParseFailure


class Framer(Protocol):
    def push(self, line: Line) -> list[Record]:
        """Take the next line; return the records it completed (usually the previous one)."""
        ...

    def flush(self) -> list[Record]:
        """Return everything held back (the file has been idle, or is finished)."""
        ...

    def pending_offset(self) -> int | None:
        """Byte offset of the first line held back, or None when nothing is held."""
        ...

    def pending_line_no(self) -> int | None:
        """Line number of the first line held back, or None."""
        ...


class LogFormat(Protocol):
    """A log format: how to frame its lines, and how to read one record."""

    name: str

    def new_framer(self, path: str) -> Framer: ...

    def parse(self, record: Record, store: str) -> ParseResult: ...


_Found = TypeVar("_Found")


def parse_and_detect_each(
    parse: Callable[[Record], ParseResult],
    records: Iterable[Record],
    detect: Callable[[AccessEvent], list[_Found]],
    found: list[_Found],
    failures: list[tuple[Record, ParseFailure]],
) -> tuple[int, datetime | None]:
    """Each record parsed and its events passed to ``detect`` at once, in order: (events,
    newest event time); what ``detect`` returns is appended to ``found``, a record that does
    not parse to ``failures`` with its failure. The pipeline's loop over a batch."""
    events = 0
    newest: datetime | None = None
    for record in records:
        parsed = parse(record)
        if isinstance(parsed, ParseFailure):
            failures.append((record, parsed))
            continue
        for event in parsed:
            events += 1
            if newest is None or event.time > newest:
                newest = event.time
            more = detect(event)
            if more:
                found.extend(more)
    return events, newest


def push_lines(framer: Framer, lines: Sequence[Line]) -> list[Record]:
    """The records ``lines`` complete, in order: the framer's own ``push_many`` when it has one
    (one call per batch instead of one per line, the replay's and the tailer's hot path),
    else :meth:`Framer.push` line by line."""
    push_many = getattr(framer, "push_many", None)
    if push_many is not None:
        records: list[Record] = push_many(lines)
        return records
    out: list[Record] = []
    push = framer.push
    for line in lines:
        out.extend(push(line))
    return out
