"""The API's endpoints, independent of the HTTP transport (server.py): a request in, a JSON
response out. Every handler calls the same functions as the command line (IncidentService,
Casework, incidents/views.py, incidents/chain.py); nothing here decides a state change.

Errors are JSON ``{"error": code, "message": text[, "field": name]}``: 400 bad input (the
field named), 401 no or wrong token, 404 unknown path, incident or regime, 405 wrong method,
409 a change refused by the incident rules (the StateError message), 503 store unavailable.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from breachwatch import __version__
from breachwatch.clock import Clock
from breachwatch.config import DaemonConfig
from breachwatch.errors import StateError
from breachwatch.incidents import chain, documents, views
from breachwatch.incidents.casework import Casework
from breachwatch.incidents.lifecycle import IncidentState
from breachwatch.incidents.service import IncidentService, get_incident
from breachwatch.incidents.severity import RiskBand
from breachwatch.store.database import Database

# Target states a transition may name; `merged` is the merge command's business.
TRANSITIONS: dict[str, IncidentState] = {
    s.value: s
    for s in (
        IncidentState.CONFIRMED,
        IncidentState.DISMISSED,
        IncidentState.NOTIFIED,
        IncidentState.CLOSED,
        IncidentState.SUSPECTED,
    )
}
PUBLIC_PATHS = frozenset({"/v1/health"})  # everything else needs the bearer token
MAX_TEXT = 10_000  # characters of a reason or comment
MAX_NAME = 128  # characters of an assignee (Incident.assignee)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def response(self) -> Response:
        body: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return Response(self.status, body, headers=self.headers)


@dataclass
class Response:
    status: int
    body: dict[str, Any] | str
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body, ensure_ascii=False, default=str).encode("utf-8")


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string, not yet percent-decoded
    query: dict[str, list[str]]
    body: bytes
    principal: str | None  # None only on public paths


Handler = Callable[["Routes", Request, list[str]], Response]


def bad(field: str, message: str) -> ApiError:
    return ApiError(400, "bad_request", message, field)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


# ---- input helpers -----------------------------------------------------------------------
def _json_object(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    try:
        value = json.loads(request.body.decode("utf-8")) if request.body.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad("body", f"a JSON object (UTF-8): {exc}") from exc
    if not isinstance(value, dict):
        raise bad("body", f"a JSON object with {', '.join(allowed)}")
    for key in value:
        if key not in allowed:
            raise bad(str(key), f"unknown field (allowed: {', '.join(allowed)})")
    return value


def _text(body: dict[str, Any], name: str, limit: int = MAX_TEXT) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise bad(name, f"{name}: a non-empty string")
    if len(value) > limit:
        raise bad(name, f"{name}: at most {limit} characters")
    return value


def _query(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, items in request.query.items():
        if key not in allowed:
            raise bad(key, f"unknown query parameter (allowed: {', '.join(allowed) or 'none'})")
        if len(items) != 1:
            raise bad(key, f"{key}: given once")
        values[key] = items[0]
    return values


def _choice(values: dict[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    value = values.get(name)
    if value is None or value == "":
        return None
    if value not in choices:
        raise bad(name, f"{name}: one of {', '.join(choices)}")
    return value


def _known(session: Session, ref: str) -> None:
    try:
        get_incident(session, ref)
    except StateError as exc:
        raise not_found(str(exc)) from exc


# ---- the routes --------------------------------------------------------------------------
class Routes:
    """Dispatches requests; thread-safe (one store transaction per request, and changes made
    through the API one at a time so that history rows are chained in order)."""

    def __init__(self, config: DaemonConfig, db: Database, clock: Clock) -> None:
        self._config = config
        self._db = db
        self._clock = clock
        self._service = IncidentService(config)
        self._casework = Casework(config)
        self._write = threading.Lock()

    @staticmethod
    def needs_auth(path: str) -> bool:
        return path not in PUBLIC_PATHS

    def dispatch(self, request: Request) -> Response:
        allowed: list[str] = []
        for method, pattern, handler in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            params = [unquote(g) for g in match.groups()]
            try:
                return handler(self, request, params)
            except SQLAlchemyError as exc:
                raise ApiError(
                    503,
                    "store_unavailable",
                    "the store cannot be used right now; retry",
                    headers={"Retry-After": "2"},
                ) from exc
        if allowed:
            raise ApiError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here (allowed: {', '.join(allowed)})",
                headers={"Allow": ", ".join(allowed)},
            )
        raise not_found(f"no endpoint {request.path}")

    # ---- reading ---------------------------------------------------------------------
    def health(self, request: Request, _p: list[str]) -> Response:
        _query(request, ())
        try:
            self._db.schema_version()
        except SQLAlchemyError:
            return Response(503, {"status": "degraded", "store": "unreadable"})
        return Response(200, {"status": "ok", "store": "ok", "version": __version__})

    def list_incidents(self, request: Request, _p: list[str]) -> Response:
        q = _query(request, ("state",))
        state = _choice(q, "state", tuple(s.value for s in IncidentState))
        with self._db.transaction() as session:
            return Response(200, {"incidents": views.list_incidents(session, state)})

    def show_incident(self, _request: Request, p: list[str]) -> Response:
        _query(_request, ())
        with self._db.transaction() as session:
            _known(session, p[0])
            return Response(200, views.incident_detail(session, p[0], self._clock.now()))

    def obligations(self, request: Request, _p: list[str]) -> Response:
        q = _query(request, ("all",))
        flag = _choice(q, "all", ("true", "false", "1", "0"))
        with self._db.transaction() as session:
            items = views.list_obligations(
                session, self._clock.now(), include_closed=flag in ("true", "1")
            )
        return Response(200, {"obligations": items})

    def notices(self, request: Request, _p: list[str]) -> Response:
        q = _query(request, ("state",))
        state = _choice(q, "state", views.NOTICE_STATES)
        with self._db.transaction() as session:
            return Response(200, {"notices": views.list_notices(session, state)})

    def draft(self, request: Request, p: list[str]) -> Response:
        ref, regime = p
        q = _query(request, ("lang", "format"))
        lang = _choice(q, "lang", documents.LANGS) or "fr"
        fmt = _choice(q, "format", ("json", "md")) or "json"
        if regime not in documents.DRAFT_REGIMES:
            raise not_found(
                f"no draft for {regime!r} (drafts: {', '.join(documents.DRAFT_REGIMES)})"
            )
        with self._db.transaction() as session:
            _known(session, ref)
            doc = views.draft_notice(session, self._config, ref, regime, lang, self._clock.now())
        if fmt == "md":
            return Response(200, documents.draft_markdown(doc), "text/markdown; charset=utf-8")
        return Response(200, doc)

    def verify(self, request: Request, _p: list[str]) -> Response:
        _query(request, ())
        with self._db.transaction() as session:
            report = chain.verify_store(session)
        return Response(200, report.to_json())

    # ---- changing (recorded in the history as done by the token's principal) ---------
    def _change(self, ref: str, change: Callable[[Session, str], None], status: int) -> Response:
        with self._write, self._db.transaction() as session:
            _known(session, ref)
            try:
                change(session, ref)
            except StateError as exc:
                raise ApiError(409, "conflict", str(exc)) from exc
            incident = get_incident(session, ref)
            return Response(status, {"incident": views.incident_summary(session, incident)})

    def transition(self, request: Request, p: list[str]) -> Response:
        _query(request, ())
        body = _json_object(request, ("to", "reason"))
        to = body.get("to")
        if not isinstance(to, str) or to not in TRANSITIONS:
            raise bad("to", f"to: one of {', '.join(TRANSITIONS)}")
        reason = _text(body, "reason")
        by = _principal(request)

        def change(session: Session, ref: str) -> None:
            self._service.transition(session, ref, TRANSITIONS[to], by, reason, self._clock.now())

        return self._change(p[0], change, 200)

    def comment(self, request: Request, p: list[str]) -> Response:
        _query(request, ())
        text = _text(_json_object(request, ("text",)), "text")
        by = _principal(request)

        def change(session: Session, ref: str) -> None:
            self._casework.comment(session, ref, text, by, self._clock.now())

        return self._change(p[0], change, 201)

    def assignment(self, request: Request, p: list[str]) -> Response:
        _query(request, ())
        to = _text(_json_object(request, ("to",)), "to", MAX_NAME)
        by = _principal(request)

        def change(session: Session, ref: str) -> None:
            self._casework.assign(session, ref, to, by, self._clock.now())

        return self._change(p[0], change, 200)

    def merge(self, request: Request, p: list[str]) -> Response:
        _query(request, ())
        body = _json_object(request, ("other", "reason"))
        other, reason, by = (
            _text(body, "other", MAX_NAME),
            _text(body, "reason"),
            _principal(request),
        )

        def change(session: Session, ref: str) -> None:
            self._casework.merge(session, ref, other, by, reason, self._clock.now())

        return self._change(p[0], change, 200)

    def split(self, request: Request, p: list[str]) -> Response:
        _query(request, ())
        body = _json_object(request, ("finding", "reason"))
        finding = body.get("finding")
        if not isinstance(finding, int) or isinstance(finding, bool):
            raise bad("finding", "finding: the numeric id shown in the incident's findings")
        reason, by = _text(body, "reason"), _principal(request)
        created: list[str] = []

        def change(session: Session, ref: str) -> None:
            new = self._casework.split(session, ref, finding, by, reason, self._clock.now())
            created.append(new.ref)

        response = self._change(p[0], change, 201)
        assert isinstance(response.body, dict)  # _change always answers with JSON
        return Response(response.status, {**response.body, "split_off": created[0]})

    def risk(self, request: Request, p: list[str]) -> Response:
        _query(request, ())
        body = _json_object(request, ("band", "unintelligible", "reason"))
        band = body.get("band")
        if band is not None and band not in {b.value for b in RiskBand}:
            raise bad("band", f"band: one of {', '.join(b.value for b in RiskBand)}")
        unintelligible = body.get("unintelligible")
        if unintelligible is not None and not isinstance(unintelligible, bool):
            raise bad("unintelligible", "unintelligible: true or false")
        reason, by = _text(body, "reason"), _principal(request)

        def change(session: Session, ref: str) -> None:
            self._casework.override_risk(
                session,
                ref,
                RiskBand(band) if band else None,
                unintelligible,
                by,
                reason,
                self._clock.now(),
            )

        return self._change(p[0], change, 200)

    def notice_given(self, request: Request, p: list[str]) -> Response:
        _query(request, ())
        body = _json_object(request, ("regime", "phase", "reason", "late_reason"))
        regime, phase = _text(body, "regime", MAX_NAME), _text(body, "phase", MAX_NAME)
        reason, by = _text(body, "reason"), _principal(request)
        late = body.get("late_reason")
        if late is not None and not isinstance(late, str):
            raise bad("late_reason", "late_reason: text")

        def change(session: Session, ref: str) -> None:
            self._casework.notice_given(
                session, ref, regime, phase, by, reason, self._clock.now(), late_reason=late
            )

        return self._change(p[0], change, 201)

    def exemption(self, request: Request, p: list[str]) -> Response:
        _query(request, ())
        body = _json_object(request, ("regime", "ground", "reason"))
        regime, ground = _text(body, "regime", MAX_NAME), _text(body, "ground", MAX_NAME)
        reason, by = _text(body, "reason"), _principal(request)

        def change(session: Session, ref: str) -> None:
            self._casework.exempt(session, ref, regime, ground, by, reason, self._clock.now())

        return self._change(p[0], change, 201)


def _principal(request: Request) -> str:
    if request.principal is None:  # a public path never changes anything
        raise ApiError(401, "unauthorized", "a valid bearer token is required")
    return request.principal


_SEG = r"([^/]+)"
_ROUTES: tuple[tuple[str, re.Pattern[str], Handler], ...] = tuple(
    (method, re.compile(pattern), handler)
    for method, pattern, handler in (
        ("GET", r"/v1/health", Routes.health),
        ("GET", r"/v1/incidents", Routes.list_incidents),
        ("GET", rf"/v1/incidents/{_SEG}", Routes.show_incident),
        ("POST", rf"/v1/incidents/{_SEG}/transitions", Routes.transition),
        ("POST", rf"/v1/incidents/{_SEG}/comments", Routes.comment),
        ("POST", rf"/v1/incidents/{_SEG}/assignment", Routes.assignment),
        ("POST", rf"/v1/incidents/{_SEG}/merge", Routes.merge),
        ("POST", rf"/v1/incidents/{_SEG}/split", Routes.split),
        ("POST", rf"/v1/incidents/{_SEG}/risk", Routes.risk),
        ("POST", rf"/v1/incidents/{_SEG}/notices-given", Routes.notice_given),
        ("POST", rf"/v1/incidents/{_SEG}/exemptions", Routes.exemption),
        ("GET", rf"/v1/incidents/{_SEG}/drafts/{_SEG}", Routes.draft),
        ("GET", r"/v1/obligations", Routes.obligations),
        ("GET", r"/v1/notices", Routes.notices),
        ("GET", r"/v1/verify", Routes.verify),
    )
)
