"""One JSON object per line, with a configured mapping of event fields to (dotted) keys."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.parsers.base import Line, ParseResult, Record
from breachwatch.parsers.pg_prefix import load_zone, resolve_time

_REQUIRED = ("time", "actor", "action")
_TEXT_FIELDS = ("client", "application", "database", "session", "command", "statement", "detail")
_LIST_FIELDS = {"object": "objects", "objects": "objects", "subject": "subjects"}
_LIST_FIELDS |= {"subjects": "subjects", "columns": "columns", "parameters": "parameters"}
FIELD_NAMES = frozenset((*_REQUIRED, *_TEXT_FIELDS, *_LIST_FIELDS))
_MISSING = object()


class LineFramer:
    """Every line is a record of its own; nothing is ever held back."""

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


def _lookup(doc: Mapping[str, Any], path: str) -> Any:
    # A key that itself contains dots ("user.name" as one key) wins over the nested path.
    if path in doc:
        return doc[path]
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _scalar(value: Any) -> str | None:
    if value is None or value is _MISSING or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    return text or None


def _strings(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(s for s in (_scalar(v) for v in items) if s is not None)


def _time(value: Any, zone: tzinfo) -> datetime:
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # Epoch seconds, or milliseconds for values past the year 5138.
            seconds = value / 1000 if abs(value) > 1e11 else value
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.strip())
            except ValueError:
                # PostgreSQL's jsonlog writes "2025-06-17 08:06:00.948 CEST"
                return resolve_time(value.strip(), zone)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=zone)
            return parsed.astimezone(UTC)
    except ParseFailure:
        raise
    except (ValueError, OverflowError, OSError) as exc:
        raise ParseFailure("bad_time", repr(value)[:80]) from exc
    raise ParseFailure("bad_time", repr(value)[:80])


class JsonLinesFormat:
    """``fields`` maps event fields (time, actor, action, object(s), subject(s), client,
    application, database, session, command, statement, detail, columns, parameters) to keys;
    ``action_map`` turns the source's verbs into :class:`Action` values."""

    def __init__(
        self,
        fields: Mapping[str, str],
        action_map: Mapping[str, str] | None = None,
        timezone: str = "UTC",
    ) -> None:
        unknown = sorted(set(fields) - FIELD_NAMES)
        if unknown:
            raise ValueError(f"unknown event fields {unknown}; known: {sorted(FIELD_NAMES)}")
        missing = [f for f in _REQUIRED if f not in fields]
        if missing:
            raise ValueError(f"fields must map {missing} to a JSON key")
        valid = {a.value for a in Action}
        bad = sorted(v for v in (action_map or {}).values() if v not in valid)
        if bad:
            raise ValueError(f"action_map values {bad} are not actions; known: {sorted(valid)}")
        self.name = "jsonl"
        self._fields = dict(fields)
        self._action_map = dict(action_map or {})
        self._zone = load_zone(timezone)

    def new_framer(self, path: str) -> LineFramer:
        return LineFramer(path)

    def parse(self, record: Record, store: str) -> ParseResult:
        text = record.text.strip()
        if not text:
            return []
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            return ParseFailure("bad_json", str(exc)[:120])
        if not isinstance(doc, dict):
            return ParseFailure("bad_json", f"expected an object, got {type(doc).__name__}")
        try:
            return [self._event(doc, record, store)]
        except ParseFailure as failure:
            return failure

    def _event(self, doc: dict[str, Any], record: Record, store: str) -> AccessEvent:
        values = {name: _lookup(doc, key) for name, key in self._fields.items()}
        for name in _REQUIRED:
            if _scalar(values[name]) is None:
                raise ParseFailure("missing_field", f"{name} ({self._fields[name]})")
        verb = str(_scalar(values["action"]))
        mapped = self._action_map.get(verb, verb)
        try:
            action = Action(mapped.lower())
        except ValueError as exc:
            raise ParseFailure("bad_action", verb[:80]) from exc
        lists: dict[str, tuple[str, ...]] = {}
        for name, target in _LIST_FIELDS.items():
            if name in values:
                lists[target] = lists.get(target, ()) + _strings(values[name])
        text = {name: _scalar(values[name]) for name in _TEXT_FIELDS if name in values}
        tags = {"decode_errors"} if record.lines[0].decode_errors else set()
        if record.lines[0].truncated:
            tags.add("truncated")
        return AccessEvent(
            time=_time(values["time"], self._zone),
            store=store,
            actor=str(_scalar(values["actor"])),
            action=action,
            position=SourcePosition(
                record.path, record.offset, record.line_no, record.end_offset - record.offset
            ),
            objects=lists.get("objects", ()),
            subjects=lists.get("subjects", ()),
            columns=lists.get("columns", ()),
            parameters=lists.get("parameters", ()),
            tags=frozenset(tags),
            client=text.get("client"),
            application=text.get("application"),
            database=text.get("database"),
            session=text.get("session"),
            command=text.get("command"),
            statement=text.get("statement"),
            detail=text.get("detail"),
        )
