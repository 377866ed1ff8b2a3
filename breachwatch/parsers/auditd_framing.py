"""Linux audit log records: reading one record, and grouping the records of one event.

Every record of an event carries the same ``msg=audit(EPOCH.ms:SERIAL)`` (gotcha 25). The kernel
ends a syscall event with PROCTITLE (then EOE, which auditd does not write to its log); events
of user space (USER_*, CRED_*, DAEMON_*, ...) are one record. Records of different events may
interleave, so the framer holds them per event id until the event is complete.
"""

from __future__ import annotations

import re

from breachwatch.parsers.base import Line, Record

_RECORD_RE = re.compile(
    r"(?:node=(?P<node>\S+) )?type=(?P<type>\S+) msg=audit\((?P<sec>\d+)\.(?P<ms>\d+):"
    r"(?P<serial>\d+)\):\s?"
)
# The lookbehind makes a key start only at a word boundary: without it, findall retries from
# every character of a long run of word characters, which is quadratic on a hostile line.
_FIELD_RE = re.compile(r'(?<![\w-])([A-Za-z_][\w-]*)=("[^"]*"|\S*)')
_ENDS = frozenset({"EOE", "PROCTITLE"})
_SINGLE_PREFIXES = ("USER_", "CRED_", "DAEMON_", "SERVICE_", "SYSTEM_", "ANOM_", "AVC_USER")
EVENT_TIMEOUT_S = 2  # auditd's end_of_event_timeout: a later event this much newer ends it
MAX_HELD_LINES = 10_000


class AuditRecord:
    """One line: its type, event id and fields (raw before the ``\\x1d``, translated after)."""

    __slots__ = ("enriched", "fields", "ms", "node", "sec", "serial", "type")

    def __init__(self, text: str) -> None:
        m = _RECORD_RE.match(text)
        if m is None:
            raise ValueError("not an audit record")
        self.type, self.node = m.group("type"), m.group("node")
        self.sec, self.ms, self.serial = m.group("sec"), m.group("ms"), m.group("serial")
        raw, _, translated = text[m.end() :].partition("\x1d")
        self.fields = _fields(raw)
        self.enriched = _fields(translated)

    @property
    def event_id(self) -> str:
        return f"{self.sec}.{self.ms}:{self.serial}"


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in _FIELD_RE.findall(text):
        out.setdefault(key, value)
    return out


def is_single(record_type: str) -> bool:
    return record_type.startswith(_SINGLE_PREFIXES)


class AuditdFramer:
    """Holds the records of each event until it is complete; see the module docstring."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._events: dict[str, tuple[int, list[Line]]] = {}  # event id -> (epoch s, lines)
        self._held = 0

    def _release(self, event_id: str) -> Record:
        _, lines = self._events.pop(event_id)
        self._held -= len(lines)
        return Record(self._path, tuple(lines))

    def push(self, line: Line) -> list[Record]:
        m = _RECORD_RE.match(line.text)
        if m is None:
            return [Record(self._path, (line,))]
        event_id = f"{m.group('sec')}.{m.group('ms')}:{m.group('serial')}"
        sec = int(m.group("sec")[:12])
        out: list[Record] = []
        while self._events:  # oldest first: events are held in the order they started
            eid, (started, _) = next(iter(self._events.items()))
            if sec - started <= EVENT_TIMEOUT_S or eid == event_id:
                break
            out.append(self._release(eid))
        record_type = m.group("type")
        held = self._events.get(event_id)
        if held is None and (is_single(record_type) or record_type in _ENDS):
            out.append(Record(self._path, (line,)))
            return out
        if held is None:
            held = self._events[event_id] = (sec, [])
        held[1].append(line)
        self._held += 1
        if record_type in _ENDS or is_single(record_type):
            out.append(self._release(event_id))
        while self._held > MAX_HELD_LINES:
            out.append(self._release(next(iter(self._events))))
        return out

    def flush(self) -> list[Record]:
        return [self._release(eid) for eid in list(self._events)]

    def pending_offset(self) -> int | None:
        return next(iter(self._events.values()))[1][0].offset if self._events else None

    def pending_line_no(self) -> int | None:
        return next(iter(self._events.values()))[1][0].line_no if self._events else None
