"""PostgreSQL stderr log with pgaudit: framing multi-line records, and records to events.

A record is a prefixed line, its TAB-indented continuation lines (gotcha 1), and the
``STATEMENT:``/``DETAIL:``/``HINT:``/``CONTEXT:`` lines the same backend writes right after an
error (gotcha 10: a denied statement is only visible that way). What a record means is decided
in :mod:`breachwatch.parsers.pg_events`, shared with the csvlog and jsonlog formats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, SourcePosition, fast_init
from breachwatch.parsers.base import Line, ParseResult, Record
from breachwatch.parsers.pg_events import (
    PgRecordInfo,
    TimeCache,
    decode_parameters,
    known,
    record_events,
    split_csv,
)
from breachwatch.parsers.pg_prefix import PrefixPattern, compile_prefix, load_zone

__all__ = ["PgStderrFramer", "PgauditStderrFormat", "decode_parameters", "split_csv"]

_ATTACHED = frozenset({"STATEMENT", "DETAIL", "HINT", "CONTEXT", "QUERY", "LOCATION"})


@fast_init
@dataclass(frozen=True, slots=True)
class _MatchedRecord(Record):
    """A record with the prefix matches the framer already made (None for continuation
    lines), so that parsing does not run the prefix regex a second time."""

    matches: tuple[re.Match[str] | None, ...] = ()


class PgStderrFramer:
    """Groups lines into records; holds the latest record until the next one starts."""

    def __init__(self, path: str, pattern: PrefixPattern) -> None:
        self._path = path
        self._match = pattern.regex.match
        # Lines of one backend relate by session id, else pid; without either, adjacency.
        self._key_group = next((g for g in ("session", "pid") if g in pattern.groups), None)
        self._held: list[Line] = []
        self._matches: list[re.Match[str] | None] = []
        self._held_key: str | None = None

    def push(self, line: Line) -> list[Record]:
        text = line.text
        if text.startswith("\t"):
            if self._held:
                self._held.append(line)
                self._matches.append(None)
                return []
            return [Record(self._path, (line,))]  # continuation of a record we never saw
        m = self._match(text)
        if m is None:
            out = self.flush()
            out.append(Record(self._path, (line,)))
            return out
        key = m.group(self._key_group) if self._key_group else None
        if self._held and m.group("severity") in _ATTACHED and key == self._held_key:
            self._held.append(line)
            self._matches.append(m)
            return []
        out = self.flush() if self._held else []
        self._held = [line]
        self._matches = [m]
        self._held_key = key
        return out

    def flush(self) -> list[Record]:
        if not self._held:
            return []
        record = _MatchedRecord(self._path, tuple(self._held), tuple(self._matches))
        self._held = []
        self._matches = []
        self._held_key = None
        return [record]

    def pending_offset(self) -> int | None:
        return self._held[0].offset if self._held else None

    def pending_line_no(self) -> int | None:
        return self._held[0].line_no if self._held else None


class PgauditStderrFormat:
    """``log_destination = 'stderr'`` with pgaudit; ``timezone`` is the server's log_timezone."""

    def __init__(self, log_line_prefix: str, timezone: str = "UTC") -> None:
        self.name = "pgaudit_stderr"
        self._pattern = compile_prefix(log_line_prefix)
        self._time = TimeCache(load_zone(timezone))
        self._pid_tag = {"pid", "session"} <= self._pattern.groups

    def new_framer(self, path: str) -> PgStderrFramer:
        return PgStderrFramer(path, self._pattern)

    def parse(self, record: Record, store: str) -> ParseResult:
        try:
            return self._parse(record, store)
        except ParseFailure as failure:
            return failure

    def _segments(self, record: Record) -> list[tuple[re.Match[str], str]]:
        """(prefix match, message with its continuation lines) per prefixed line."""
        lines = record.lines
        if isinstance(record, _MatchedRecord) and len(record.matches) == len(lines):
            matches = record.matches
        else:
            match = self._pattern.regex.match
            matches = tuple(None if ln.text.startswith("\t") else match(ln.text) for ln in lines)
        if len(lines) == 1 and matches[0] is not None:  # the usual case: one line
            return [(matches[0], matches[0].group("message"))]
        out: list[tuple[re.Match[str], list[str]]] = []
        for line, m in zip(lines, matches, strict=True):
            if m is not None:
                out.append((m, [m.group("message")]))
            elif out:
                out[-1][1].append(line.text.removeprefix("\t"))
            else:
                raise ParseFailure("bad_prefix", line.text[:120])
        return [(m, "\n".join(parts)) for m, parts in out]

    def _parse(self, record: Record, store: str) -> list[AccessEvent]:
        segments = self._segments(record)
        head, message = segments[0]
        extra = {m.group("severity"): text for m, text in segments[1:]} if segments[1:] else {}
        g = head.groupdict()
        pid, session = g.get("pid"), g.get("session")
        tags: tuple[str, ...] = (f"pid:{pid}",) if self._pid_tag and pid and session else ()
        lines = record.lines
        if len(lines) > 1 or lines[0].truncated or lines[0].decode_errors:
            if any(line.truncated for line in lines):
                tags += ("truncated",)
            if any(line.decode_errors for line in lines):
                tags += ("decode_errors",)
        client = known(g.get("host"))
        if client and client.endswith(")") and "(" in client:  # %r is host(port)
            client = client[: client.rindex("(")]
        first = lines[0]
        info = PgRecordInfo(
            self._time(g["time"]),
            store,
            known(g.get("user")),
            known(g.get("db")),
            known(g.get("app")),
            client,
            session or pid,
            SourcePosition(
                record.path, first.offset, first.line_no, lines[-1].end_offset - first.offset
            ),
            tags,
        )
        return record_events(
            info, g["severity"], message, extra.get("STATEMENT"), extra.get("DETAIL")
        )
