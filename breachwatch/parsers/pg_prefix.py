"""PostgreSQL ``log_line_prefix`` as one pre-compiled regex, and the prefix's time stamps.

The prefix cannot be split on whitespace: ``%a`` (application_name) may contain spaces
(``DBeaver 24.1.0 - SQLEditor <Script-3.sql>``). So the regex anchors on what always follows
the prefix, the severity token and its two spaces (``LOG:  ``). Every field except the free-text
ones (``%a``, ``%b``, ``%i``) excludes whitespace, and there is no nested quantifier, so a long
garbage line fails in linear time instead of backtracking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from breachwatch.errors import ParseFailure

SEVERITIES = (
    "LOG",
    "ERROR",
    "FATAL",
    "PANIC",
    "WARNING",
    "NOTICE",
    "INFO",
    "DEBUG",
    "STATEMENT",
    "DETAIL",
    "HINT",
    "CONTEXT",
    "QUERY",
    "LOCATION",
)
_SEVERITY = (
    r"(?P<severity>LOG|ERROR|FATAL|PANIC|WARNING|NOTICE|INFO|DEBUG[1-5]?"
    r"|STATEMENT|DETAIL|HINT|CONTEXT|QUERY|LOCATION):  (?P<message>.*)"
)

_TIMESTAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})? (?:[A-Za-z]{1,6}|[+-]\d\d(?::?\d\d)?)"
_FREE_TEXT = ".*?"  # lazy: stops at the first place where the rest of the prefix fits

# escape -> (group name or None, pattern); None patterns are the "no whitespace" default.
_ESCAPES: dict[str, tuple[str | None, str | None]] = {
    "m": ("time", _TIMESTAMP),
    "t": ("time", _TIMESTAMP),
    "n": ("time", r"\d+(?:\.\d{1,6})?"),
    "s": (None, _TIMESTAMP),
    "p": ("pid", r"\d+"),
    "P": (None, r"\d*"),
    "u": ("user", None),
    "d": ("db", None),
    "a": ("app", _FREE_TEXT),
    "h": ("host", None),
    "r": ("host", None),
    "c": ("session", r"[0-9a-f]+\.[0-9a-f]+"),
    "l": ("line", r"\d+"),
    "v": (None, None),
    "x": (None, r"\d+"),
    "e": (None, r"[0-9A-Z]{5}"),
    "i": (None, _FREE_TEXT),
    "b": (None, _FREE_TEXT),
    "Q": (None, r"-?\d+"),
}
_ESCAPE_RE = re.compile(r"%(-?\d+)?(.)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class PrefixFields:
    """The parts of one log line: prefix fields (None when absent) and the message."""

    time: str
    severity: str
    message: str
    pid: str | None = None
    user: str | None = None
    db: str | None = None
    app: str | None = None
    host: str | None = None
    session: str | None = None
    line: str | None = None


class PrefixPattern:
    """A compiled ``log_line_prefix``. Use :func:`compile_prefix`, which caches."""

    def __init__(self, log_line_prefix: str) -> None:
        self.source = log_line_prefix
        self.groups, body = _translate(log_line_prefix)
        if "time" not in self.groups:
            raise ValueError(f"log_line_prefix {log_line_prefix!r} has no time escape (%m, %t, %n)")
        self.regex = re.compile(body + _SEVERITY, re.DOTALL)

    def match(self, text: str) -> PrefixFields | None:
        m = self.regex.match(text)
        if m is None:
            return None
        g = m.groupdict()
        get = g.get
        return PrefixFields(
            g["time"],
            g["severity"],
            g["message"],
            get("pid"),
            get("user"),
            get("db"),
            get("app"),
            get("host"),
            get("session"),
            get("line"),
        )


def _translate(prefix: str) -> tuple[frozenset[str], str]:
    parts: list[str] = []
    groups: set[str] = set()
    optional_open = False
    pos = 0
    tokens = list(_ESCAPE_RE.finditer(prefix))
    for i, tok in enumerate(tokens):
        parts.append(re.escape(prefix[pos : tok.start()]))
        pos = tok.end()
        pad, esc = tok.group(1), tok.group(2)
        if esc == "%":
            parts.append("%")
            continue
        if esc == "q":
            if not optional_open:
                parts.append("(?:")
                optional_open = True
            continue
        if esc not in _ESCAPES:
            raise ValueError(f"log_line_prefix escape %{esc} is not supported")
        name, pattern = _ESCAPES[esc]
        if pattern is None:
            # The field ends where the following literal begins; it never holds whitespace.
            nxt = tokens[i + 1].start() if i + 1 < len(tokens) else len(prefix)
            follow = prefix[tok.end() : nxt][:1]
            pattern = rf"[^\s{re.escape(follow)}]*" if follow.strip() else r"\S*"
        if name is not None and name not in groups:
            groups.add(name)
            pattern = f"(?P<{name}>{pattern})"
        else:
            pattern = f"(?:{pattern})"
        parts.append(f" *{pattern} *" if pad else pattern)
    parts.append(re.escape(prefix[pos:]))
    if optional_open:
        parts.append(")?")
    return frozenset(groups), "".join(parts)


@lru_cache(maxsize=32)
def compile_prefix(log_line_prefix: str) -> PrefixPattern:
    """Compile (once per distinct prefix) a ``log_line_prefix``; ValueError when unusable."""
    return PrefixPattern(log_line_prefix)


@lru_cache(maxsize=64)
def load_zone(name: str) -> tzinfo:
    """The server's ``log_timezone`` by name; ValueError when the name is unknown."""
    if name.upper() in ("UTC", "GMT", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


_OFFSET_RE = re.compile(r"([+-])(\d\d):?(\d\d)?")


def resolve_time(text: str, zone: tzinfo) -> datetime:
    """Turn a prefix time (%m, %t or %n) into an aware datetime in UTC.

    The abbreviation picks the DST fold: ``02:30 CET`` and ``02:30 CEST`` on the night the
    clocks go back are different instants, and only the abbreviation tells them apart. The
    result is in UTC because Python compares and subtracts datetimes of one ZoneInfo as naive
    wall times, which would be an hour off across that night.
    """
    try:
        if " " not in text:  # %n: epoch seconds
            return datetime.fromtimestamp(float(text), UTC)
        stamp, _, frac = text.partition(".")
        micro = 0
        if frac:
            frac, _, abbrev = frac.partition(" ")
            micro = int(frac.ljust(6, "0"))
            stamp = f"{stamp} {abbrev}"
        return _resolve_second(stamp, zone) + timedelta(microseconds=micro)
    except ParseFailure:
        raise
    except (ValueError, OverflowError, OSError) as exc:
        raise ParseFailure("bad_time", text) from exc


@lru_cache(maxsize=4096)
def _resolve_second(stamp: str, zone: tzinfo) -> datetime:
    # Log lines arrive many per second: resolving the zone once per second is the hot path.
    day, clock, abbrev = stamp.split(" ")
    naive = datetime(
        int(day[0:4]),
        int(day[5:7]),
        int(day[8:10]),
        int(clock[0:2]),
        int(clock[3:5]),
        int(clock[6:8]),
    )
    if abbrev in ("UTC", "GMT", "Z", "UCT"):
        return naive.replace(tzinfo=UTC)
    offset = _OFFSET_RE.fullmatch(abbrev)
    if offset is not None:
        sign = -1 if offset.group(1) == "-" else 1
        delta = timedelta(hours=int(offset.group(2)), minutes=int(offset.group(3) or 0))
        return naive.replace(tzinfo=timezone(sign * delta)).astimezone(UTC)
    for fold in (0, 1):
        candidate = naive.replace(tzinfo=zone, fold=fold)
        if candidate.tzname() == abbrev:
            return candidate.astimezone(UTC)
    raise ParseFailure("bad_time", f"{stamp!r}: {abbrev} is not an abbreviation of {zone}")
