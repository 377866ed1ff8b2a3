"""MariaDB server_audit plugin log (``server_audit_output_type=file``).

``YYYYMMDD HH:MM:SS,host,user,client,conn_id,query_id,OP,db,object,retcode`` (gotcha 17). The
TABLE events of a statement (READ/WRITE/CREATE/ALTER/DROP/RENAME) come before its QUERY event,
with other connections interleaved (gotcha 18): the framer holds them per (conn_id, query_id)
and emits one record of the TABLE lines plus the QUERY line. Only the TABLE events name the
tables with their database (gotcha 19: ``FROM bills`` is ``finance.bills``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.parsers.base import Line, ParseResult, Record
from breachwatch.parsers.mariadb_sql import understand
from breachwatch.parsers.pg_prefix import load_zone

_HEAD_RE = re.compile(
    r"(?P<date>\d{8}) (?P<time>\d\d:\d\d:\d\d),(?P<host>[^,]*),(?P<user>[^,]*),"
    r"(?P<client>[^,]*),(?P<conn>\d+),(?P<qid>\d+),(?P<op>[A-Z_]+),(?P<db>[^,]*),"
)
TABLE_OPS = frozenset({"READ", "WRITE", "CREATE", "ALTER", "DROP", "RENAME"})
_DENIED = frozenset({"1142", "1143", "1044", "1227", "1370"})  # table, column, db, privilege
_KIND_ACTIONS = {
    "select": Action.READ,
    "insert": Action.WRITE,
    "update": Action.WRITE,
    "delete": Action.DELETE,
    "copy_to": Action.EXPORT,
    "copy_from": Action.WRITE,
    "ddl": Action.DDL,
}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "'": "'", "\\": "\\", "0": "\0"}
MAX_HELD_LINES = 10_000  # TABLE lines waiting for their QUERY, over all connections
# Statements that open tables without reading or changing a row. server_audit still writes a
# READ/WRITE TABLE event for each table they lock (mariadb-dump's ``LOCK TABLES `accounts`
# READ``), so the TABLE events alone would make them look like reads of the whole table.
NO_ROW_COMMANDS = frozenset({"LOCK", "UNLOCK", "FLUSH"})


class MariaAuditFramer:
    """Holds TABLE lines per (conn_id, query_id) until their QUERY line arrives.

    A connection runs one statement at a time, so a line of the same connection with another
    query id (or its DISCONNECT) releases a group whose QUERY never came, as does flush().
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._groups: dict[tuple[str, str], list[Line]] = {}  # insertion order = line order
        self._by_conn: dict[str, str] = {}
        self._held = 0

    def _release(self, key: tuple[str, str]) -> list[Record]:
        lines = self._groups.pop(key)
        self._held -= len(lines)
        if self._by_conn.get(key[0]) == key[1]:
            del self._by_conn[key[0]]
        return [Record(self._path, tuple(lines))]

    def push(self, line: Line) -> list[Record]:
        m = _HEAD_RE.match(line.text)
        if m is None:
            return [Record(self._path, (line,))]
        conn, qid, op = m.group("conn"), m.group("qid"), m.group("op")
        out: list[Record] = []
        other = self._by_conn.get(conn)
        if other is not None and other != qid:
            out.extend(self._release((conn, other)))
        key = (conn, qid)
        if op in TABLE_OPS:
            self._groups.setdefault(key, []).append(line)
            self._by_conn[conn] = qid
            self._held += 1
            while self._held > MAX_HELD_LINES:
                out.extend(self._release(next(iter(self._groups))))
            return out
        group = self._groups.pop(key, None)
        if group is None:
            out.append(Record(self._path, (line,)))
            return out
        self._held -= len(group)
        self._by_conn.pop(conn, None)
        out.append(Record(self._path, (*group, line)))
        return out

    def flush(self) -> list[Record]:
        out: list[Record] = []
        while self._groups:
            out.extend(self._release(next(iter(self._groups))))
        return out

    def pending_offset(self) -> int | None:
        return next(iter(self._groups.values()))[0].offset if self._groups else None

    def pending_line_no(self) -> int | None:
        return next(iter(self._groups.values()))[0].line_no if self._groups else None


def unquote(text: str) -> tuple[str, str | None, int]:
    """``'...'`` with server_audit's escapes, then ``,retcode``: (query, retcode or None when
    missing, length of the escaped text, or -1 when the line ends inside the quotes)."""
    parts: list[str] = []
    i, n = 1, len(text)
    while i < n:
        j = min((k for k in (text.find("'", i), text.find("\\", i)) if k >= 0), default=-1)
        if j < 0:
            break
        parts.append(text[i:j])
        if text[j] == "'":
            rest = text[j + 1 :]
            return "".join(parts), rest[1:] if rest.startswith(",") else None, j - 1
        if j + 1 < n:
            parts.append(_ESCAPES.get(text[j + 1], "\\" + text[j + 1]))
        i = j + 2
    parts.append(text[i:])
    return "".join(parts), None, -1


class _Entry:
    """One parsed line."""

    def __init__(self, line: Line, zone: tzinfo) -> None:
        m = _HEAD_RE.match(line.text)
        if m is None:
            raise ParseFailure("bad_line", line.text[:120])
        self.user, self.client, self.op = m.group("user"), m.group("client"), m.group("op")
        self.conn, self.qid, self.db = m.group("conn"), m.group("qid"), m.group("db")
        stamp = f"{m.group('date')} {m.group('time')}"
        try:
            local = datetime.strptime(stamp, "%Y%m%d %H:%M:%S")
        except ValueError as exc:
            raise ParseFailure("bad_time", stamp) from exc
        self.time = local.replace(tzinfo=zone).astimezone(UTC)
        rest = line.text[m.end() :]
        self.escaped: str | None = None  # the query as logged, escapes and all
        if rest.startswith("'"):
            self.object, retcode, length = unquote(rest)
            self.escaped = rest[1 : 1 + length] if length >= 0 else None
            self.retcode = retcode or ""
        else:
            head, comma, tail = rest.rpartition(",")
            self.object, self.retcode = (head, tail) if comma else (rest, "")

    def table(self) -> tuple[str, ...]:
        # RENAME writes ``old|db.new``
        names = [n for n in self.object.split("|") if n]
        return tuple(n if "." in n or not self.db else f"{self.db}.{n}" for n in names)


class MariaAuditFormat:
    """``timezone`` is the server's (server_audit writes local time); ``query_log_limit`` is
    ``server_audit_query_log_limit`` (a query that long was cut, tag ``truncated``)."""

    def __init__(self, timezone: str = "UTC", query_log_limit: int = 1024) -> None:
        self.name = "mariadb_audit"
        self._zone = load_zone(timezone)
        self._limit = query_log_limit

    def new_framer(self, path: str) -> MariaAuditFramer:
        return MariaAuditFramer(path)

    def parse(self, record: Record, store: str) -> ParseResult:
        try:
            entries = [_Entry(line, self._zone) for line in record.lines]
            return self._events(record, entries, store)
        except ParseFailure as failure:
            return failure

    def _events(self, record: Record, entries: list[_Entry], store: str) -> list[AccessEvent]:
        last = entries[-1]
        tables = [e for e in entries if e.op in TABLE_OPS]
        base = _Base(record, store, last)
        objects = tuple(dict.fromkeys(name for e in tables for name in e.table()))
        base.tags.update(f"table_op:{op.lower()}" for op in dict.fromkeys(e.op for e in tables))
        if last.op in TABLE_OPS:  # a group whose QUERY never came
            base.tags.add("query_missing")
            return [base.event(_table_action(tables), objects=objects)]
        failed = last.retcode not in ("", "0")
        if failed:
            base.tags.add(f"retcode:{last.retcode}")
        error = f"MariaDB error {last.retcode}" if failed else None
        if last.op in ("CONNECT", "CHANGEUSER"):
            return [base.event(Action.LOGIN_FAILED if failed else Action.LOGIN, detail=error)]
        if last.op == "FAILED_CONNECT":
            return [base.event(Action.LOGIN_FAILED, detail=error)]
        if not last.op.startswith("QUERY"):
            return []  # DISCONNECT, and whatever else the plugin may write
        sql = last.object
        # server_audit cuts the escaped text at the limit, without splitting an escape
        if last.escaped is None or len(last.escaped.encode("utf-8", "replace")) >= self._limit - 1:
            base.tags.add("truncated")
        shape = understand(sql)
        if not objects:  # no TABLE events (denied, mariadb-dump): the statement's own names
            db = last.db
            objects = tuple(
                dict.fromkeys(t if "." in t or not db else f"{db}.{t}" for t in shape.tables)
            )
        if last.retcode in _DENIED:
            action = Action.DENIED
        elif shape.export:
            action = Action.EXPORT
            base.tags.add("into_outfile")
        elif shape.command in NO_ROW_COMMANDS:
            action = Action.OTHER
        else:
            action = _KIND_ACTIONS.get(shape.kind) or _table_action(tables)
        return [
            base.event(action, objects=objects, statement=sql, command=shape.command, detail=error)
        ]


class _Base:
    """What every event of one record shares."""

    def __init__(self, record: Record, store: str, last: _Entry) -> None:
        self.record, self.store, self.last = record, store, last
        self.tags = {f"query_id:{last.qid}"} if last.qid != "0" else set()
        if any(line.truncated for line in record.lines):
            self.tags.add("truncated")
        if any(line.decode_errors for line in record.lines):
            self.tags.add("decode_errors")

    def event(
        self,
        action: Action,
        *,
        objects: tuple[str, ...] = (),
        statement: str | None = None,
        command: str | None = None,
        detail: str | None = None,
    ) -> AccessEvent:
        record, last = self.record, self.last
        return AccessEvent(
            time=last.time,
            store=self.store,
            actor=last.user,
            action=action,
            position=SourcePosition(
                record.path, record.offset, record.line_no, record.end_offset - record.offset
            ),
            objects=objects,
            client=last.client or None,
            database=last.db or None,
            session=last.conn,
            command=command,
            statement=statement,
            detail=detail,
            tags=frozenset(self.tags),
        )


def _table_action(tables: Sequence[_Entry]) -> Action:
    ops = {e.op for e in tables}
    if ops & {"CREATE", "ALTER", "DROP", "RENAME"}:
        return Action.DDL
    if "WRITE" in ops:
        return Action.WRITE
    return Action.READ if "READ" in ops else Action.OTHER
