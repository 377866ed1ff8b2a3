"""URL routes of a web application: which object a request touches, for which data subject.

A route is ``{pattern: "/panel/clients/{customer_id:int}", object: "panel.clients"}`` with
optional ``action`` (default from the method: GET/HEAD read, POST/PUT/PATCH write, DELETE
delete), ``methods`` (the route applies only to these) and ``subject`` (the placeholder or query
parameter that names the data subject; default ``customer_id``; ``referer``: the page names
none itself and is about the customer of the page it was opened from, see
detection/navigation.py). Placeholders ``{name}`` match
one path segment, ``{name:int}`` digits, ``{name:path}`` the rest; ``*`` one segment, ``**``
anything. The first route that matches wins.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from breachwatch.events import Action

_TOKEN_RE = re.compile(r"\{([A-Za-z_]\w*)(?::(int|path|segment))?\}|\*\*|\*")
_KINDS = {None: "[^/]+", "segment": "[^/]+", "int": "[0-9]+", "path": ".+"}
_METHOD_ACTIONS = {
    "GET": Action.READ,
    "HEAD": Action.READ,
    "POST": Action.WRITE,
    "PUT": Action.WRITE,
    "PATCH": Action.WRITE,
    "DELETE": Action.DELETE,
}
_ROUTE_KEYS = frozenset({"pattern", "object", "action", "methods", "subject"})
REFERER = "referer"  # ``subject: referer``


def method_action(method: str) -> Action:
    return _METHOD_ACTIONS.get(method.upper(), Action.OTHER)


def normalize_path(raw: str) -> str:
    """The path as the server resolves it: percent-decoded, ``//`` merged, ``.``/``..``
    resolved, the trailing slash kept (``/panel/`` is not ``/panel``)."""
    path = unquote(raw, errors="replace") or "/"
    if not path.startswith("/"):
        path = "/" + path
    norm = posixpath.normpath(path)
    norm = "/" + norm.lstrip("/")  # normpath keeps a leading "//"
    if path.endswith("/") and norm != "/":
        norm += "/"
    return norm


@dataclass(frozen=True, slots=True)
class Match:
    object: str
    action: Action | None  # None: from the method
    subject: str | None
    placeholders: tuple[tuple[str, str], ...]  # the other placeholders, (name, value)
    pattern: str
    from_referer: bool = False  # ``subject: referer``


@dataclass(frozen=True, slots=True)
class Route:
    pattern: str
    regex: re.Pattern[str]
    object: str
    action: Action | None
    methods: frozenset[str] | None
    subject: str

    def match(self, method: str, path: str, query: Mapping[str, str]) -> Match | None:
        if self.methods is not None and method not in self.methods:
            return None
        m = self.regex.fullmatch(path)
        if m is None:
            return None
        values = {k: v for k, v in m.groupdict().items() if v is not None}
        if self.subject == REFERER:
            return Match(self.object, self.action, None, tuple(values.items()), self.pattern, True)
        subject = values.pop(self.subject, None) or query.get(self.subject) or None
        return Match(self.object, self.action, subject, tuple(values.items()), self.pattern)


def _compile(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    pos = 0
    for m in _TOKEN_RE.finditer(pattern):
        parts.append(re.escape(pattern[pos : m.start()]))
        token = m.group(0)
        if token == "**":
            parts.append(".*")
        elif token == "*":
            parts.append("[^/]+")
        else:
            parts.append(f"(?P<{m.group(1)}>{_KINDS[m.group(2)]})")
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    body = "".join(parts)
    return re.compile(body if body.endswith("/") else body + "/?")


def _route(index: int, spec: Any) -> Route:
    where = f"routes[{index}]"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a mapping with pattern and object")
    unknown = sorted(set(spec) - _ROUTE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(_ROUTE_KEYS)}")
    pattern, obj = spec.get("pattern"), spec.get("object")
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ValueError(f"{where}.pattern must be a path starting with '/'")
    if not isinstance(obj, str) or not obj:
        raise ValueError(f"{where}.object must be a non-empty string")
    action = spec.get("action")
    if action is not None:
        try:
            action = Action(str(action).lower())
        except ValueError as exc:
            known = sorted(a.value for a in Action)
            raise ValueError(f"{where}.action {action!r} is not one of {known}") from exc
    methods = spec.get("methods")
    if methods is not None:
        if not isinstance(methods, Sequence) or isinstance(methods, str) or not methods:
            raise ValueError(f"{where}.methods must be a list such as [POST]")
        methods = frozenset(str(m).upper() for m in methods)
    subject = spec.get("subject", "customer_id")
    if not isinstance(subject, str) or not subject:
        raise ValueError(f"{where}.subject must be a placeholder or query parameter name")
    try:
        regex = _compile(pattern)
    except re.error as exc:  # a placeholder name used twice
        raise ValueError(f"{where}.pattern {pattern!r}: {exc}") from exc
    return Route(pattern, regex, obj, action, methods, subject)


class RouteTable:
    """Routes in configured order; ``match`` gives the first that applies, or None."""

    def __init__(self, specs: Sequence[Any]) -> None:
        if isinstance(specs, str | bytes) or not isinstance(specs, Sequence):
            raise ValueError("option 'routes' must be a list of {pattern, object, ...}")
        self.routes = tuple(_route(i, spec) for i, spec in enumerate(specs))

    def match(self, method: str, path: str, query: Mapping[str, str]) -> Match | None:
        for route in self.routes:
            found = route.match(method, path, query)
            if found is not None:
                return found
        return None
