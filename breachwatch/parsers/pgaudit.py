"""PostgreSQL stderr log with pgaudit: framing multi-line records, and records to events.

A record is a prefixed line, its TAB-indented continuation lines (gotcha 1), and the
``STATEMENT:``/``DETAIL:``/``HINT:``/``CONTEXT:`` lines the same backend writes right after an
error (gotcha 10: a denied statement is only visible that way).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import tzinfo

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.parsers.base import Line, ParseResult, Record
from breachwatch.parsers.pg_prefix import (
    PrefixFields,
    PrefixPattern,
    compile_prefix,
    load_zone,
    resolve_time,
)
from breachwatch.sql.analyze import analyze

_ATTACHED = frozenset({"STATEMENT", "DETAIL", "HINT", "CONTEXT", "QUERY", "LOCATION"})
_UNKNOWN = "[unknown]"
_DENIED_RE = re.compile(
    r"permission denied for (?P<kind>table|view|materialized view|foreign table|sequence|schema"
    r"|relation|function|procedure|database|column|large object) (?P<name>\S+)"
)
_FAILED_RE = re.compile(
    r'(?P<method>[\w-]+) authentication failed for user "(?P<user>[^"]*)"'
    r"|no pg_hba\.conf entry for (?:replication connection from )?"
    r'host "[^"]*", user "(?P<u2>[^"]*)"'
    r'|pg_hba\.conf rejects (?:replication )?connection for host "[^"]*", user "(?P<u3>[^"]*)"'
    r'|role "(?P<u4>[^"]*)" (?:does not exist|is not permitted to log in)'
)
_AUTHORIZED_RE = re.compile(
    r"(?:replication )?connection authorized: user=(?P<user>\S+)(?: database=(?P<db>\S+))?"
    r"(?: application_name=(?P<app>.*?))?(?: (?:SSL|GSS) .*)?$"
)
_COPY_TO_RE = re.compile(
    r'\s*COPY\s+(?:\(|(?:"[^"]*"|[\w$]+)(?:\s*\.\s*(?:"[^"]*"|[\w$]+))?\s*(?:\([^)]*\)\s*)?TO\s)',
    re.IGNORECASE,
)
_COPY_TARGET_RE = re.compile(r"\bTO\s+(STDOUT\b|PROGRAM\b|')", re.IGNORECASE)
_COPY_TAGS = {"STDOUT": "copy_to:stdout", "PROGRAM": "copy_to:program"}


def split_csv(text: str) -> tuple[list[str], bool]:
    """One CSV row as pgaudit writes it (quoted only when needed, quotes doubled); the flag is
    False when the row is malformed or cut off, and what was read is still returned.

    Hand-written because the csv module rejects bare line breaks and cut-off rows.
    """
    fields: list[str] = []
    n, i = len(text), 0
    while True:
        if i < n and text[i] == '"':
            parts: list[str] = []
            j = i + 1
            while True:
                k = text.find('"', j)
                if k < 0:
                    fields.append("".join((*parts, text[j:])))
                    return fields, False
                parts.append(text[j:k])
                if text.startswith('"', k + 1):
                    parts.append('"')
                    j = k + 2
                else:
                    i = k + 1
                    break
            fields.append("".join(parts))
            if i >= n:
                return fields, True
            if text[i] != ",":
                return fields, False
            i += 1
        else:
            k = text.find(",", i)
            if k < 0:
                fields.append(text[i:])
                return fields, True
            fields.append(text[i:k])
            i = k + 1


def decode_parameters(field: str) -> tuple[tuple[str, ...], bool]:
    """pgaudit's parameter field, already unquoted once: ``<none>``, ``<not logged>``, or a
    CSV row of the values (gotcha 3). The flag says whether parameters were logged."""
    if field == "<none>":
        return (), True
    if field == "<not logged>":
        return (), False
    values, _ = split_csv(field)
    return tuple(values), True


class PgStderrFramer:
    """Groups lines into records; holds the latest record until the next one starts."""

    def __init__(self, path: str, pattern: PrefixPattern) -> None:
        self._path = path
        self._regex = pattern.regex
        # Lines of one backend relate by session id, else pid; without either, adjacency.
        self._key_group = next((g for g in ("session", "pid") if g in pattern.groups), None)
        self._held: list[Line] = []
        self._held_key: str | None = None

    def push(self, line: Line) -> list[Record]:
        if line.text.startswith("\t"):
            if self._held:
                self._held.append(line)
                return []
            return [Record(self._path, (line,))]  # continuation of a record we never saw
        m = self._regex.match(line.text)
        if m is None:
            out = self.flush()
            out.append(Record(self._path, (line,)))
            return out
        key = m.group(self._key_group) if self._key_group else None
        if m.group("severity") in _ATTACHED and self._held and key == self._held_key:
            self._held.append(line)
            return []
        out = self.flush()
        self._held = [line]
        self._held_key = key
        return out

    def flush(self) -> list[Record]:
        if not self._held:
            return []
        record = Record(self._path, tuple(self._held))
        self._held = []
        self._held_key = None
        return [record]

    def pending_offset(self) -> int | None:
        return self._held[0].offset if self._held else None

    def pending_line_no(self) -> int | None:
        return self._held[0].line_no if self._held else None


def _known(value: str | None) -> str | None:
    return None if value in (None, "", _UNKNOWN) else value


class PgauditStderrFormat:
    """``log_destination = 'stderr'`` with pgaudit; ``timezone`` is the server's log_timezone."""

    def __init__(self, log_line_prefix: str, timezone: str = "UTC") -> None:
        self.name = "pgaudit_stderr"
        self._pattern = compile_prefix(log_line_prefix)
        self._zone = load_zone(timezone)

    def new_framer(self, path: str) -> PgStderrFramer:
        return PgStderrFramer(path, self._pattern)

    def parse(self, record: Record, store: str) -> ParseResult:
        try:
            return self._parse(record, store)
        except ParseFailure as failure:
            return failure

    def _segments(self, lines: Iterable[Line]) -> list[tuple[PrefixFields, str]]:
        out: list[tuple[PrefixFields, list[str]]] = []
        for line in lines:
            fields = None if line.text.startswith("\t") else self._pattern.match(line.text)
            if fields is not None:
                out.append((fields, [fields.message]))
            elif out:
                out[-1][1].append(line.text.removeprefix("\t"))
            else:
                raise ParseFailure("bad_prefix", line.text[:120])
        return [(fields, "\n".join(parts)) for fields, parts in out]

    def _parse(self, record: Record, store: str) -> list[AccessEvent]:
        segments = self._segments(record.lines)
        head, message = segments[0]
        extra = {fields.severity: text for fields, text in segments[1:]}
        tags = {"pid:" + head.pid} if head.pid and head.session else set()
        if any(line.truncated for line in record.lines):
            tags.add("truncated")
        if any(line.decode_errors for line in record.lines):
            tags.add("decode_errors")
        base = _Base(record, store, head, tags, self._zone)
        if head.severity == "LOG":
            if message.startswith("AUDIT: "):
                return [_audit_event(base, message[7:])]
            authorized = _AUTHORIZED_RE.match(message)
            if authorized is not None:
                return [_login_event(base, authorized)]
        elif head.severity == "ERROR" and message.startswith("permission denied"):
            return [_denied_event(base, message, extra.get("STATEMENT"))]
        elif head.severity == "FATAL":
            failed = _FAILED_RE.search(message)
            if failed is not None:
                return [_failed_event(base, message, failed, extra.get("DETAIL"))]
        return []


class _Base:
    """What every event of one record shares; handlers override the defaults first."""

    def __init__(
        self, record: Record, store: str, head: PrefixFields, tags: set[str], zone: tzinfo
    ) -> None:
        self.time = resolve_time(head.time, zone)
        self.store = store
        self.head = head
        self.tags = tags
        client = _known(head.host)
        if client and client.endswith(")") and "(" in client:  # %r is host(port)
            client = client[: client.rindex("(")]
        self.client = client
        self.application = _known(head.app)
        self.database = _known(head.db)
        self.position = SourcePosition(
            record.path, record.offset, record.line_no, record.end_offset - record.offset
        )

    def event(
        self,
        actor: str | None,
        action: Action,
        *,
        objects: tuple[str, ...] = (),
        command: str | None = None,
        statement: str | None = None,
        parameters: tuple[str, ...] = (),
        detail: str | None = None,
    ) -> AccessEvent:
        return AccessEvent(
            time=self.time,
            store=self.store,
            actor=actor or "",
            action=action,
            position=self.position,
            objects=objects,
            client=self.client,
            application=self.application,
            database=self.database,
            session=self.head.session or self.head.pid,
            command=command,
            statement=statement,
            parameters=parameters,
            detail=detail,
            tags=frozenset(self.tags),
        )


def _audit_event(base: _Base, payload: str) -> AccessEvent:
    fields, complete = split_csv(payload)
    if not complete and "truncated" not in base.tags:
        raise ParseFailure("bad_audit_csv", payload[:120])
    if len(fields) < 7 or fields[0] not in ("SESSION", "OBJECT") or not fields[1].isdigit():
        raise ParseFailure("bad_audit_csv", payload[:120])
    audit_type, stmt_id, substmt_id, cls, command, object_type, object_name = fields[:7]
    statement = fields[7] if len(fields) > 7 else ""
    params, logged = decode_parameters(fields[8]) if len(fields) > 8 else ((), True)
    base.tags.update(
        (f"audit_type:{audit_type}", f"stmt:{stmt_id}", f"substmt:{substmt_id}", f"class:{cls}")
    )
    if object_type:
        base.tags.add(f"object_type:{object_type}")
    if not logged:
        base.tags.add("parameters_not_logged")
    action = _audit_action(cls, command, statement, base.tags)
    return base.event(
        _known(base.head.user),
        action,
        objects=(object_name,) if object_name else (),
        command=command or None,
        statement=statement or None,
        parameters=params,
    )


def _audit_action(cls: str, command: str, statement: str, tags: set[str]) -> Action:
    if cls == "READ":
        # \copy arrives as COPY ... TO STDOUT, logged READ,SELECT plus READ,COPY (gotcha 6);
        # pg_dump reads tables with COPY ... TO stdout, or a _pg_dump_cursor with --inserts.
        if _COPY_TO_RE.match(statement) or command == "COPY":
            targets = _COPY_TARGET_RE.findall(statement)
            target = targets[-1].upper() if targets else "'"
            tags.add(_COPY_TAGS.get(target, "copy_to:file"))
            return Action.EXPORT
        if "_pg_dump_cursor" in statement:
            return Action.EXPORT
        return Action.READ
    if cls == "WRITE":
        return (
            Action.DELETE if command in ("DELETE", "TRUNCATE TABLE", "TRUNCATE") else Action.WRITE
        )
    if cls == "DDL":
        return Action.DDL
    return Action.OTHER


def _login_event(base: _Base, m: re.Match[str]) -> AccessEvent:
    base.database = m.group("db") or base.database
    base.application = m.group("app") or None
    return base.event(m.group("user"), Action.LOGIN)


def _denied_event(base: _Base, message: str, statement: str | None) -> AccessEvent:
    objects: tuple[str, ...] = ()
    m = _DENIED_RE.match(message)
    if m is not None:
        kind, name = m.group("kind"), m.group("name")
        base.tags.add(f"denied_for:{kind}")
        objects = (name,)
        tables = analyze(statement).tables if statement else ()
        if kind == "schema":
            inside = tuple(t for t in tables if t.lower().startswith(name.lower() + "."))
            objects = inside or objects
        elif "." not in name:
            qualified = {t for t in tables if "." in t and t.rsplit(".", 1)[1] == name}
            if len(qualified) == 1:  # two schemas' tables of that name: leave it unqualified
                objects = (qualified.pop(),)
    command = statement.split(None, 1)[0].upper() if statement and statement.strip() else None
    return base.event(
        _known(base.head.user),
        Action.DENIED,
        objects=objects,
        statement=statement,
        command=command,
        detail=message,
    )


def _failed_event(base: _Base, message: str, m: re.Match[str], detail: str | None) -> AccessEvent:
    user = m.group("user") or m.group("u2") or m.group("u3") or m.group("u4") or ""
    if m.group("method"):
        base.tags.add(f"auth_method:{m.group('method').lower()}")
    if detail and " does not exist" in detail:
        base.tags.add("role_missing")
    base.application = None  # %a is [unknown] before authentication
    return base.event(
        user,
        Action.LOGIN_FAILED,
        detail=f"{message} (DETAIL: {detail})" if detail else message,
    )
