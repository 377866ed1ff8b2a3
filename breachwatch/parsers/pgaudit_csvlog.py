"""PostgreSQL ``log_destination = 'csvlog'`` with pgaudit.

One record is one CSV row; a quoted field (the message, a multi-line statement in ``query``,
a DETAIL) keeps its line breaks (gotcha 1), so the framer holds lines until the quotes
balance. The AUDIT payload is CSV inside the ``message`` field (gotcha 2). Unlike stderr, a
denied statement's text is in the ``query`` field of the ERROR row itself.
"""

from __future__ import annotations

import csv

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, SourcePosition
from breachwatch.parsers.base import Line, ParseResult, Record
from breachwatch.parsers.pg_events import PgRecordInfo, TimeCache, known, record_events
from breachwatch.parsers.pg_prefix import load_zone

# Column positions of PostgreSQL 13-17 csvlog (13 has 24 columns; 14+ added leader_pid and
# query_id at the end, so the positions used here never moved).
_TIME, _USER, _DB, _PID, _FROM, _SESSION = 0, 1, 2, 3, 4, 5
_SEVERITY, _MESSAGE, _DETAIL, _QUERY, _APP = 11, 13, 14, 19, 22
_MIN_COLUMNS = 23
# A row with an unbalanced quote would swallow the rest of the file; past this many lines the
# record is given up (and quarantined) so that the lines after it are read again.
MAX_RECORD_LINES = 2000


def client_of(connection_from: str | None) -> str | None:
    """``host:port`` (IPv6 hosts hold colons too) or ``[local]`` → the host."""
    value = known(connection_from)
    if value is None or value == "[local]":
        return value
    host, sep, port = value.rpartition(":")
    return host if sep and port.isdigit() else value


class CsvlogFramer:
    """Emits a record as soon as its quotes balance: a row ends at the first newline outside
    quotes, so nothing needs to be held until the next record starts."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._held: list[Line] = []

    def push(self, line: Line) -> list[Record]:
        odd = line.text.count('"') % 2 == 1
        if not self._held:
            if not odd:
                return [Record(self._path, (line,))]
            self._held = [line]
            return []
        self._held.append(line)
        if odd or line.truncated or len(self._held) >= MAX_RECORD_LINES:
            return self.flush()
        return []

    def flush(self) -> list[Record]:
        if not self._held:
            return []
        record = Record(self._path, tuple(self._held))
        self._held = []
        return [record]

    def pending_offset(self) -> int | None:
        return self._held[0].offset if self._held else None

    def pending_line_no(self) -> int | None:
        return self._held[0].line_no if self._held else None


class PgauditCsvlogFormat:
    """``timezone`` is the server's log_timezone (the abbreviation in ``log_time`` picks the
    daylight-saving fold)."""

    def __init__(self, timezone: str = "UTC") -> None:
        self.name = "pgaudit_csvlog"
        self._time = TimeCache(load_zone(timezone))

    def new_framer(self, path: str) -> CsvlogFramer:
        return CsvlogFramer(path)

    def parse(self, record: Record, store: str) -> ParseResult:
        try:
            return self._parse(record, store)
        except ParseFailure as failure:
            return failure

    def _parse(self, record: Record, store: str) -> list[AccessEvent]:
        lines = record.lines
        text = lines[0].text if len(lines) == 1 else record.text
        try:
            row = next(csv.reader((text,), strict=True))
        except (csv.Error, StopIteration) as exc:
            raise ParseFailure("bad_csv", f"{exc}: {text[:120]}") from exc
        if len(row) < _MIN_COLUMNS:
            raise ParseFailure("bad_csv", f"{len(row)} columns: {text[:120]}")
        tags: tuple[str, ...] = ()
        if row[_PID]:
            tags = (f"pid:{row[_PID]}",)
        if any(line.truncated for line in lines):
            tags += ("truncated",)
        if any(line.decode_errors for line in lines):
            tags += ("decode_errors",)
        first = lines[0]
        info = PgRecordInfo(
            self._time(row[_TIME]),
            store,
            known(row[_USER]),
            known(row[_DB]),
            known(row[_APP]),
            client_of(row[_FROM]),
            row[_SESSION] or row[_PID] or None,
            SourcePosition(
                record.path, first.offset, first.line_no, lines[-1].end_offset - first.offset
            ),
            tags,
        )
        return record_events(
            info, row[_SEVERITY], row[_MESSAGE], row[_QUERY] or None, row[_DETAIL] or None
        )
