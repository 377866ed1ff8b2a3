"""PostgreSQL stderr log with pgaudit: framing multi-line records, and records to events.

A record is a prefixed line, its TAB-indented continuation lines (gotcha 1), and the
``STATEMENT:``/``DETAIL:``/``HINT:``/``CONTEXT:`` lines the same backend writes right after an
error (gotcha 10: a denied statement is only visible that way). What a record means is decided
in :mod:`breachwatch.parsers.pg_events`, shared with the csvlog and jsonlog formats.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from breachwatch.detection.findings import Finding
from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action, SourcePosition, fast_init
from breachwatch.parsers import pg_events
from breachwatch.parsers.base import Line, ParseResult, Record, parse_and_detect_each
from breachwatch.parsers.pg_events import (
    PgRecordInfo,
    TimeCache,
    audit_payload_event,
    decode_parameters,
    known,
    record_events,
    split_csv,
)
from breachwatch.parsers.pg_prefix import _TIMESTAMP, PrefixPattern, compile_prefix, load_zone
from breachwatch.speedups import builder, native
from breachwatch.sql import enrich as sql_enrich
from breachwatch.sql.enrich import EventEnricher

__all__ = ["PgStderrFramer", "PgauditStderrFormat", "decode_parameters", "split_csv"]

_ATTACHED = frozenset({"STATEMENT", "DETAIL", "HINT", "CONTEXT", "QUERY", "LOCATION"})
_TIME_RE = re.compile(_TIMESTAMP)
_HEAD_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class _Head:
    """What the prefix of a line says apart from its time: a server writes a few hundred
    distinct ones (one per backend and severity), so they are worked out once and shared."""

    severity: str
    key: str | None  # session id, else pid: relates a backend's lines
    groups: dict[str, str]  # the prefix regex's groups other than time and message
    user: str | None
    database: str | None
    application: str | None
    client: str | None
    session: str | None
    tags: tuple[str, ...]  # pid:<n> when the prefix has both %c and %p


# One prefixed line: (head, time text, message)
_Prefixed = tuple[_Head, str, str]


def _make_head(groups: dict[str, str], key_group: str | None, pid_tag: bool) -> _Head:
    pid, session = groups.get("pid"), groups.get("session")
    client = known(groups.get("host"))
    if client and client.endswith(")") and "(" in client:  # %r is host(port)
        client = client[: client.rindex("(")]
    return _Head(
        groups["severity"],
        groups.get(key_group) if key_group else None,
        groups,
        known(groups.get("user")),
        known(groups.get("db")),
        known(groups.get("app")),
        client,
        session or pid,
        (f"pid:{pid}",) if pid_tag and pid and session else (),
    )


class _PrefixSplitter:
    """``text -> (head, time, message)`` or None when the line has no prefix.

    The regex is the definition; it runs once per distinct line head. When the prefix starts
    with ``%m`` or ``%t`` and a space, a line is cut at the end of its time stamp (the third
    space) and at its first ``":  "``; the part in between (``" [pid] user@db app host LOG:  "``)
    is looked up among the heads the regex has already matched. The regex decides that part
    alone: every field before the severity stops at a space or a literal of the prefix, and
    the message is ``.*``, so a line with the same time shape and the same head matches the
    same way. The time is checked with the prefix's own time pattern.
    """

    def __init__(self, pattern: PrefixPattern) -> None:
        self._match = pattern.regex.match
        self._key_group = next((g for g in ("session", "pid") if g in pattern.groups), None)
        self._pid_tag = {"pid", "session"} <= pattern.groups
        self._fast = pattern.source.startswith(("%m ", "%t "))
        self._time_ok = _TIME_RE.fullmatch
        self._heads: dict[str, _Head] = {}
        # the last time stamp the time pattern accepted: a busy server writes a dozen lines
        # per millisecond, so most lines repeat it and skip the pattern
        self._last_time = ""

    def __call__(self, text: str) -> _Prefixed | None:
        if self._fast:
            j = text.find(":  ")
            if j > 0:
                sp = text.find(" ", 11)  # the date is 10 characters and a space
                sp = text.find(" ", sp + 1) if sp > 0 else -1
                if 0 < sp < j:
                    head = self._heads.get(text[sp : j + 3])
                    if head is not None:
                        time = text[:sp]
                        if time == self._last_time:
                            return head, time, text[j + 3 :]
                        if self._time_ok(time) is not None:
                            self._last_time = time
                            return head, time, text[j + 3 :]
        m = self._match(text)
        if m is None:
            return None
        groups = m.groupdict()
        time, message = groups.pop("time"), groups.pop("message")
        head = _make_head(groups, self._key_group, self._pid_tag)
        if self._fast:
            # Remember the head only when the regex cut the line where the lookup will.
            start, end = m.end("time"), m.start("message")
            sp = text.find(" ", 11)
            if text.find(":  ") == end - 3 and sp > 0 and text.find(" ", sp + 1) == start:
                if len(self._heads) >= _HEAD_LIMIT:
                    self._heads.clear()  # new backends come and go: start afresh
                self._heads[text[start:end]] = head
        return head, time, message


@fast_init
@dataclass(frozen=True, slots=True)
class _MatchedRecord(Record):
    """A record with the prefix splits the framer already made (None for continuation
    lines), so that parsing does not split the prefix a second time."""

    matches: tuple[_Prefixed | None, ...] = ()


def _new_lane(audit_line_py: Any) -> Any:
    """The C twin of :meth:`PgStderrFramer._push_many_py`, of
    :meth:`PgauditStderrFormat._audit_line_py` (with an enricher) and of
    :meth:`PgauditStderrFormat._parse_and_detect_py`, or None without the C module."""
    if native is None:
        return None
    return native.Lane(
        builder(Record),
        builder(_MatchedRecord),
        _ATTACHED,
        Line,
        _Head,
        pg_events._FAST,
        pg_events._TAGS,
        pg_events._general_fields,
        decode_parameters,
        pg_events._event_tags,
        audit_line_py,
        builder(AccessEvent),
        builder(SourcePosition),
        sql_enrich._NO_REFS,
        sql_enrich._ROW_ACTIONS,
        Action.READ,
        Action.EXPORT,
    )


class PgStderrFramer:
    """Groups lines into records; holds the latest record until the next one starts."""

    def __init__(self, path: str, pattern: PrefixPattern, lane: Any = None) -> None:
        self._path = path
        self._split = _PrefixSplitter(pattern)
        self._lane = lane
        self._held: list[Line] = []
        self._matches: list[_Prefixed | None] = []
        self._held_key: str | None = None

    def push(self, line: Line) -> list[Record]:
        text = line.text
        if text.startswith("\t"):
            if self._held:
                self._held.append(line)
                self._matches.append(None)
                return []
            return [Record(self._path, (line,))]  # continuation of a record we never saw
        m = self._split(text)
        if m is None:
            out = self.flush()
            out.append(Record(self._path, (line,)))
            return out
        head = m[0]
        key = head.key
        if self._held and head.severity in _ATTACHED and key == self._held_key:
            self._held.append(line)
            self._matches.append(m)
            return []
        out = self.flush() if self._held else []
        self._held = [line]
        self._matches = [m]
        self._held_key = key
        return out

    def push_many(self, lines: Iterable[Line]) -> list[Record]:
        """:meth:`push` for many lines at once: the records they completed, in order."""
        if gc.isenabled():  # no cycles are made here; see Pipeline.process
            gc.disable()
            try:
                return self._push_many(lines)
            finally:
                gc.enable()
        return self._push_many(lines)

    def _push_many(self, lines: Iterable[Line]) -> list[Record]:
        lane = self._lane
        if lane is None:
            return self._push_many_py(lines)
        split = self._split
        out, self._held, self._matches, self._held_key, last_time = lane.push_many(
            lines if type(lines) is list else list(lines),
            self._path,
            split,
            split._heads,
            split._time_ok,
            split._fast,
            split._last_time,
            self._held,
            self._matches,
            self._held_key,
        )
        if last_time is not None:
            split._last_time = last_time
        records: list[Record] = out
        return records

    def _push_many_py(self, lines: Iterable[Line]) -> list[Record]:
        """:meth:`_push_many` in Python: the definition of what the C twin does."""
        out: list[Record] = []
        path = self._path
        split = self._split
        held, matches, held_key = self._held, self._matches, self._held_key
        for line in lines:
            text = line.text
            if text.startswith("\t"):
                if held:
                    held.append(line)
                    matches.append(None)
                else:
                    out.append(Record(path, (line,)))
                continue
            m = split(text)
            if m is None:
                if held:
                    out.append(_MatchedRecord(path, tuple(held), tuple(matches)))
                    held, matches, held_key = [], [], None
                out.append(Record(path, (line,)))
                continue
            head = m[0]
            key = head.key
            if held and head.severity in _ATTACHED and key == held_key:
                held.append(line)
                matches.append(m)
                continue
            if held:
                out.append(_MatchedRecord(path, tuple(held), tuple(matches)))
            held, matches, held_key = [line], [m], key
        self._held, self._matches, self._held_key = held, matches, held_key
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
        self._time_get = self._time.get  # a cache hit without a Python-level call
        self._split = _PrefixSplitter(self._pattern)
        self._lane = _new_lane(self._audit_line_py)

    def new_framer(self, path: str) -> PgStderrFramer:
        return PgStderrFramer(path, self._pattern, self._lane)

    def parse(self, record: Record, store: str) -> ParseResult:
        try:
            return self._parse(record, store)
        except ParseFailure as failure:
            return failure

    def _segments(self, record: Record) -> list[tuple[_Prefixed, str]]:
        """(prefix split, message with its continuation lines) per prefixed line."""
        lines = record.lines
        if isinstance(record, _MatchedRecord) and len(record.matches) == len(lines):
            matches = record.matches
        else:
            split = self._split
            matches = tuple(None if ln.text.startswith("\t") else split(ln.text) for ln in lines)
        if len(lines) == 1 and matches[0] is not None:  # the usual case: one line
            return [(matches[0], matches[0][2])]
        out: list[tuple[_Prefixed, list[str]]] = []
        for line, m in zip(lines, matches, strict=True):
            if m is not None:
                out.append((m, [m[2]]))
            elif out:
                out[-1][1].append(line.text.removeprefix("\t"))
            else:
                raise ParseFailure("bad_prefix", line.text[:120])
        return [(m, "\n".join(parts)) for m, parts in out]

    def parse_enriched(self, record: Record, store: str, enricher: EventEnricher) -> ParseResult:
        """:meth:`parse` with every event passed through ``enricher.enrich``; the usual record,
        one clean AUDIT line, is built once, already enriched, instead of twice."""
        return self._parse_enriched_with(
            self._audit_line_py if self._lane is None else self._audit_line_c,
            record,
            store,
            enricher,
        )

    def parse_and_detect(
        self,
        records: list[Record],
        store: str,
        enricher: EventEnricher,
        detect: Callable[[AccessEvent], list[Finding]],
        findings: list[Finding],
        failures: list[tuple[Record, ParseFailure]],
    ) -> tuple[int, datetime | None]:
        """Each record parsed (as :meth:`parse_enriched`) and its events passed to ``detect``
        at once, in order, while they are in the CPU's cache: (events, newest event time);
        findings and failures are appended to the lists given."""
        lane = self._lane
        if lane is None:
            return self._parse_and_detect_py(records, store, enricher, detect, findings, failures)
        result: tuple[int, datetime | None] = lane.run(
            records,
            store,
            enricher,
            self._time,
            self._time._cache,
            self._parse_enriched_py,
            detect,
            findings,
            failures,
        )
        return result

    def _parse_and_detect_py(
        self,
        records: list[Record],
        store: str,
        enricher: EventEnricher,
        detect: Callable[[AccessEvent], list[Finding]],
        findings: list[Finding],
        failures: list[tuple[Record, ParseFailure]],
    ) -> tuple[int, datetime | None]:
        """:meth:`parse_and_detect` in Python: the definition of what the C twin does."""
        return parse_and_detect_each(
            lambda record: self._parse_enriched_py(record, store, enricher),
            records,
            detect,
            findings,
            failures,
        )

    def _parse_enriched_py(
        self, record: Record, store: str, enricher: EventEnricher
    ) -> ParseResult:
        """:meth:`parse_enriched` in Python: the definition of what the C twin does."""
        return self._parse_enriched_with(self._audit_line_py, record, store, enricher)

    def _parse_enriched_with(
        self,
        audit_line: Callable[[Record, str, EventEnricher], AccessEvent | None],
        record: Record,
        store: str,
        enricher: EventEnricher,
    ) -> ParseResult:
        """The event of a clean AUDIT line from ``audit_line``, else the general parse of the
        record, each event enriched."""
        try:
            event = audit_line(record, store, enricher)
            if event is not None:
                return [event]
            events = self._general(record, store)
        except ParseFailure as failure:
            return failure
        enrich = enricher.enrich
        return [enrich(e) for e in events]

    def _audit_line_c(
        self, record: Record, store: str, enricher: EventEnricher
    ) -> AccessEvent | None:
        """:meth:`_audit_line_py` with an enricher, by the C twin."""
        event: AccessEvent | None = self._lane.audit_line(
            record, store, enricher, self._time, self._time._cache
        )
        return event

    def _audit_line_py(
        self, record: Record, store: str, enricher: EventEnricher | None
    ) -> AccessEvent | None:
        """The event of a record that is one clean, framed AUDIT line, without detours; None
        for every other record. (With an enricher, the C twin runs this when it has it.)"""
        if type(record) is not _MatchedRecord:
            return None
        lines = record.lines
        first = lines[0]
        if len(lines) != 1 or first.truncated or first.decode_errors:
            return None
        m = record.matches[0]
        if m is None:
            return None
        head, time, message = m
        if head.severity != "LOG" or not message.startswith("AUDIT: "):
            return None
        when = self._time_get(time)
        if when is None:
            when = self._time(time)
        offset = first.offset
        return audit_payload_event(
            message[7:],
            when,
            store,
            head.user,
            head.database,
            head.application,
            head.client,
            head.session,
            SourcePosition(record.path, offset, first.line_no, first.end_offset - offset),
            head.tags,
            enricher,
        )

    def _parse(self, record: Record, store: str) -> list[AccessEvent]:
        event = self._audit_line_py(record, store, None)
        if event is not None:
            return [event]
        return self._general(record, store)

    def _general(self, record: Record, store: str) -> list[AccessEvent]:
        lines = record.lines
        first = lines[0]
        segments = self._segments(record)
        (head, time, _), message = segments[0]
        extra = {m[0].severity: text for m, text in segments[1:]} if segments[1:] else {}
        tags = head.tags
        if len(lines) > 1 or first.truncated or first.decode_errors:
            if any(line.truncated for line in lines):
                tags += ("truncated",)
            if any(line.decode_errors for line in lines):
                tags += ("decode_errors",)
        info = PgRecordInfo(
            self._time(time),
            store,
            head.user,
            head.database,
            head.application,
            head.client,
            head.session,
            SourcePosition(
                record.path, first.offset, first.line_no, lines[-1].end_offset - first.offset
            ),
            tags,
        )
        return record_events(
            info, head.severity, message, extra.get("STATEMENT"), extra.get("DETAIL")
        )
