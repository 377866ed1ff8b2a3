"""PostgreSQL 15+ ``log_destination = 'jsonlog'`` with pgaudit.

One JSON object per line (line breaks inside values are written ``\\n``, gotcha 1), so every
line is a record. Empty keys are left out (gotcha 13): ``user`` and ``dbname`` are absent
before authentication, ``application_name`` when it is empty. The client is ``remote_host``
(``remote_port`` is a separate key); a denied statement's text is in ``statement``.
"""

from __future__ import annotations

import json
from typing import Any

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, SourcePosition
from breachwatch.parsers.base import Line, ParseResult, Record
from breachwatch.parsers.pg_events import PgRecordInfo, TimeCache, known, record_events
from breachwatch.parsers.pg_prefix import load_zone


class JsonlogFramer:
    """Each line is one record: nothing is ever held back."""

    def __init__(self, path: str) -> None:
        self._path = path

    def push(self, line: Line) -> list[Record]:
        return [Record(self._path, (line,))]

    def flush(self) -> list[Record]:
        return []

    def pending_offset(self) -> int | None:
        return None

    def pending_line_no(self) -> int | None:
        return None


def _text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


class PgauditJsonlogFormat:
    """``timezone`` is the server's log_timezone (for the abbreviation in ``timestamp``)."""

    def __init__(self, timezone: str = "UTC") -> None:
        self.name = "pgaudit_jsonlog"
        self._time = TimeCache(load_zone(timezone))

    def new_framer(self, path: str) -> JsonlogFramer:
        return JsonlogFramer(path)

    def parse(self, record: Record, store: str) -> ParseResult:
        try:
            return self._parse(record, store)
        except ParseFailure as failure:
            return failure

    def _parse(self, record: Record, store: str) -> list[AccessEvent]:
        line = record.lines[0]
        if not line.text.strip():
            return []
        try:
            obj = json.loads(line.text)
        except (ValueError, RecursionError) as exc:  # deep nesting: "[[[[…" in a cut line
            raise ParseFailure("bad_json", f"{exc}: {line.text[:120]}") from exc
        if not isinstance(obj, dict):
            raise ParseFailure("bad_json", f"not an object: {line.text[:120]}")
        stamp, severity, message = (
            obj.get("timestamp"),
            obj.get("error_severity"),
            obj.get("message"),
        )
        if not isinstance(stamp, str) or not isinstance(severity, str):
            raise ParseFailure("bad_json", f"no timestamp or error_severity: {line.text[:120]}")
        pid = _text(obj, "pid")
        tags: tuple[str, ...] = (f"pid:{pid}",) if pid else ()
        if line.truncated:
            tags += ("truncated",)
        if line.decode_errors:
            tags += ("decode_errors",)
        info = PgRecordInfo(
            self._time(stamp),
            store,
            known(_text(obj, "user")),
            known(_text(obj, "dbname")),
            known(_text(obj, "application_name")),
            known(_text(obj, "remote_host")),
            _text(obj, "session_id") or pid,
            SourcePosition(record.path, line.offset, line.line_no, line.end_offset - line.offset),
            tags,
        )
        return record_events(
            info,
            severity,
            message if isinstance(message, str) else "",
            _text(obj, "statement"),
            _text(obj, "detail"),
        )
