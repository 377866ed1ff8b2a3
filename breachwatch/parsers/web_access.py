"""Web server access logs: nginx/Apache ``combined``, or nginx JSON lines (``json_fields``).

``$remote_user`` is the actor, also on 401 (the attempted name, gotcha 24: ``login_failed``) and
403 (``denied``). Configured routes turn the path into an object and a data subject; the Referer
path is kept as a tag (``referer:/panel/cases/8401``), because only there does the case that led
to a customer page show; the request's own path too (``path:``), so that a later request can be
related to the page it came from (routes with ``subject: referer``, detection/navigation.py).
Exports: a path containing one of ``export_paths``, or a query parameter from ``export_query``
(``?format=csv``, ``?export=1``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.parsers.base import ParseResult, Record
from breachwatch.parsers.jsonlines import LineFramer
from breachwatch.parsers.pg_prefix import load_zone
from breachwatch.parsers.web_routes import RouteTable, method_action, normalize_path

_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_COMBINED_RE = re.compile(
    r"(?P<addr>\S+) (?P<ident>\S+) (?P<user>[^\[]*?) \[(?P<time>[^\]]*)\] "
    rf"{_QUOTED} (?P<status>\d{{3}}) (?P<bytes>\S+)(?: {_QUOTED} {_QUOTED})?"
)
_REQUEST_RE = re.compile(r"([A-Za-z]+) (\S+)(?: (HTTP/[0-9.]+))?")
_ESCAPE_RE = re.compile(r"\\x([0-9A-Fa-f]{2})|\\(.)")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, 1)}
_CLF_TIME_RE = re.compile(r"(\d\d)/(\w{3})/(\d{4}):(\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
JSON_FIELDS = {
    "time": "time",
    "remote_addr": "remote_addr",
    "remote_user": "remote_user",
    "request": "request",
    "method": "request_method",
    "uri": "request_uri",
    "status": "status",
    "referer": "http_referer",
    "user_agent": "http_user_agent",
}
EXPORT_PATHS = ("export",)
EXPORT_QUERY = {
    "format": ("csv", "xlsx", "xls", "tsv", "ods", "zip"),
    "export": ("1", "true", "yes"),
}
_NONE = ("", "-")


def _unescape(text: str) -> str:
    """nginx writes ``\\x22``, Apache ``\\"``; bytes above 0x7f come as ``\\xHH`` too."""
    if "\\" not in text:
        return text
    out = bytearray()
    pos = 0
    for m in _ESCAPE_RE.finditer(text):
        out += text[pos : m.start()].encode("utf-8", "surrogatepass")
        out += bytes([int(m.group(1), 16)]) if m.group(1) else m.group(2).encode("utf-8", "replace")
        pos = m.end()
    out += text[pos:].encode("utf-8", "surrogatepass")
    return out.decode("utf-8", "replace")


def _split(url: str) -> tuple[str, str]:
    """(path, query) of a request target or Referer; never raises."""
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[" and other broken authorities
        rest = url.split("#", 1)[0]
        path, _, query = rest.partition("?")
        return path, query
    return parts.path, parts.query


def _time(text: str, zone: tzinfo) -> datetime:
    m = _CLF_TIME_RE.fullmatch(text.strip())
    try:
        if m is not None:
            day, mon, year, hh, mm, ss, sign, oh, om = m.groups()
            offset = timedelta(hours=int(oh), minutes=int(om)) * (-1 if sign == "-" else 1)
            local = datetime(int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss))
            return local.replace(tzinfo=timezone(offset)).astimezone(UTC)
        if re.fullmatch(r"\d{9,11}(?:\.\d+)?", text.strip()):  # $msec
            return datetime.fromtimestamp(float(text), UTC)
        parsed = datetime.fromisoformat(text.strip())
    except (KeyError, ValueError, OverflowError, OSError) as exc:
        raise ParseFailure("bad_time", text[:40]) from exc
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)).astimezone(UTC)


class WebAccessFormat:
    """``routes`` (see :mod:`web_routes`), ``json_fields`` (JSON lines; our name -> key, over
    :data:`JSON_FIELDS`), ``export_paths``, ``export_query``, ``timezone`` (for JSON times
    without an offset)."""

    def __init__(
        self,
        routes: Sequence[Any] = (),
        json_fields: Mapping[str, str] | None = None,
        export_paths: Sequence[str] = EXPORT_PATHS,
        export_query: Mapping[str, Sequence[str]] = EXPORT_QUERY,
        timezone: str = "UTC",
    ) -> None:
        self.name = "web_access"
        self._routes = RouteTable(routes)
        unknown = sorted(set(json_fields or {}) - set(JSON_FIELDS))
        if unknown:
            raise ValueError(f"json_fields: unknown fields {unknown}; known: {sorted(JSON_FIELDS)}")
        self._json = None if json_fields is None else {**JSON_FIELDS, **json_fields}
        self._export_paths = tuple(p.lower() for p in export_paths)
        self._export_query = {k: {v.lower() for v in vs} for k, vs in export_query.items()}
        self._zone = load_zone(timezone)

    def new_framer(self, path: str) -> LineFramer:
        return LineFramer(path)

    def parse(self, record: Record, store: str) -> ParseResult:
        text = record.text.strip()
        if not text:
            return []
        try:
            fields = self._json_fields(text) if self._json else self._combined(text)
            return self._events(fields, record, store)
        except ParseFailure as failure:
            return failure

    def _combined(self, text: str) -> dict[str, str]:
        m = _COMBINED_RE.match(text)
        if m is None:
            raise ParseFailure("bad_line", text[:120])
        addr, _, user, time, request, status, _, referer, agent = m.groups()
        return {
            "remote_addr": addr,
            "remote_user": _unescape(user),
            "time": time,
            "request": _unescape(request),
            "status": status,
            "referer": _unescape(referer or ""),
            "user_agent": _unescape(agent or ""),
        }

    def _json_fields(self, text: str) -> dict[str, str]:
        assert self._json is not None
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ParseFailure("bad_json", str(exc)[:120]) from exc
        if not isinstance(doc, dict):
            raise ParseFailure("bad_json", "expected an object")
        out: dict[str, str] = {}
        for name, key in self._json.items():
            value = doc.get(key)
            if value is not None and not isinstance(value, dict | list):
                out[name] = str(value)
        if "request" not in out and "method" in out and "uri" in out:
            out["request"] = f"{out['method']} {out['uri']}"
        for name in ("time", "request", "status"):
            if name not in out:
                raise ParseFailure("missing_field", f"{name} ({self._json[name]})")
        return out

    def _events(self, f: dict[str, str], record: Record, store: str) -> list[AccessEvent]:
        request = _REQUEST_RE.fullmatch(f["request"])
        if request is None:
            return []  # "-", a TLS handshake on the plain port: no request, no access
        method, target = request.group(1).upper(), request.group(2)
        if not f["status"].isdigit():
            raise ParseFailure("bad_status", f["status"][:20])
        status = int(f["status"])
        raw_path, raw_query = _split(target if target.startswith("/") else target.split("/", 3)[-1])
        path = normalize_path(raw_path)
        query = parse_qsl(raw_query, keep_blank_values=True, errors="replace")
        params = dict(query)
        match = self._routes.match(method, path, params)
        # path: the page, so that a later request whose Referer names it can be related to it
        tags = {f"status:{status}", f"route:{match.pattern}" if match else "route:none"}
        tags.add(f"path:{path}")
        if match is not None:
            tags.update(f"{name}:{value}" for name, value in match.placeholders)
            if match.from_referer:
                tags.add("subject:referer")  # detection/navigation.py
        referer = f.get("referer", "")
        if referer not in _NONE:
            page = normalize_path(_split(referer)[0])
            tags.add("referer:" + page)
            if match is not None and match.from_referer:
                tags.update(self._referer_tags(page, _split(referer)[1]))
        if record.lines[0].truncated:
            tags.add("truncated")
        if record.lines[0].decode_errors:
            tags.add("decode_errors")
        action = (match.action if match else None) or method_action(method)
        if status == 401:
            action = Action.LOGIN_FAILED
        elif status == 403:
            action = Action.DENIED
        elif 400 <= status < 500:
            action = Action.OTHER  # nothing was served (404, 405, 400 ...)
        elif action is Action.READ and self._is_export(path, query):
            action = Action.EXPORT
        user = f.get("remote_user", "")
        return [
            AccessEvent(
                time=_time(f["time"], self._zone),
                store=store,
                actor="" if user in _NONE else user,
                action=action,
                position=SourcePosition(
                    record.path, record.offset, record.line_no, record.end_offset - record.offset
                ),
                objects=(match.object if match else path,),
                subjects=(match.subject,) if match and match.subject else (),
                client=f.get("remote_addr") or None,
                application=None if f.get("user_agent", "") in _NONE else f["user_agent"],
                command=method,
                parameters=tuple(f"{k}={v}" for k, v in query),
                detail=f"HTTP {status} {method} {target}"[:500],
                tags=frozenset(tags),
            )
        ]

    def _referer_tags(self, page: str, query: str) -> set[str]:
        """What the route of the page a request came from names: ``referer_subject:N`` and
        ``referer_<placeholder>:V`` (``referer_case_id:8306``), for routes with
        ``subject: referer`` whose Referer page is not in the log itself."""
        match = self._routes.match("GET", page, dict(parse_qsl(query, errors="replace")))
        if match is None or match.from_referer:
            return set()
        tags = {f"referer_{name}:{value}" for name, value in match.placeholders}
        if match.subject:
            tags.add(f"referer_subject:{match.subject}")
        return tags

    def _is_export(self, path: str, query: list[tuple[str, str]]) -> bool:
        lower = path.lower()
        if any(word in lower for word in self._export_paths):
            return True
        return any(v.lower() in self._export_query.get(k, ()) for k, v in query)
