"""PostgreSQL log records → AccessEvents, shared by the stderr, csvlog and jsonlog formats.

The three destinations carry the same record (time, user, database, application, client,
session, severity, message, detail, statement); only the framing differs. Each format fills a
:class:`PgRecordInfo` and calls :func:`record_events`, so an AUDIT line, a denied statement, a
failed or a successful login become the same event whichever file it was read from.

This is the hot path of the daemon (one call per log line), hence the hand-written CSV fast
path, the per-statement caches and the single construction of each event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from functools import lru_cache

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.parsers.pg_prefix import resolve_time
from breachwatch.sql.analyze import analyze
from breachwatch.sql.enrich import EventEnricher

UNKNOWN = "[unknown]"
_DENIED_RE = re.compile(
    r"permission denied for (?P<kind>table|view|materialized view|foreign table|sequence|schema"
    r"|relation|function|procedure|database|column|large object) (?P<name>\S+)"
)
_FAILED_RE = re.compile(
    # (?<![\w-]): a method name starts at a word boundary, so search() stays linear
    r'(?<![\w-])(?P<method>[\w-]+) authentication failed for user "(?P<user>[^"]*)"'
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
_DELETES = frozenset({"DELETE", "TRUNCATE TABLE", "TRUNCATE"})
_TIME_CACHE_LIMIT = 8192


def known(value: str | None) -> str | None:
    """None for the placeholders PostgreSQL writes before authentication, and for ''."""
    return None if not value or value == UNKNOWN else value


@dataclass(slots=True)
class PgRecordInfo:
    """What every event of one record shares; the handlers adjust it before building."""

    time: datetime
    store: str
    user: str | None
    database: str | None
    application: str | None
    client: str | None
    session: str | None
    position: SourcePosition
    tags: tuple[str, ...] = ()

    def event(
        self,
        actor: str | None,
        action: Action,
        objects: tuple[str, ...] = (),
        command: str | None = None,
        statement: str | None = None,
        parameters: tuple[str, ...] = (),
        detail: str | None = None,
        tags: tuple[str, ...] = (),
    ) -> AccessEvent:
        return AccessEvent(
            self.time,
            self.store,
            actor or "",
            action,
            self.position,
            objects,
            (),
            (),
            None,
            self.client,
            self.application,
            self.database,
            self.session,
            command,
            statement,
            parameters,
            False,
            detail,
            frozenset((*self.tags, *tags)),
        )


class TimeCache:
    """Log times as aware UTC datetimes, cached by their text: a busy server writes hundreds
    of lines per millisecond stamp, and resolving the zone is the costly part."""

    def __init__(self, zone: tzinfo) -> None:
        self._zone = zone
        self._cache: dict[str, datetime] = {}
        self.get = self._cache.get  # the cached time or None (the cache is cleared, not replaced)

    def __call__(self, text: str) -> datetime:
        found = self._cache.get(text)
        if found is None:
            found = resolve_time(text, self._zone)
            if len(self._cache) >= _TIME_CACHE_LIMIT:
                self._cache.clear()  # times move forward: old stamps do not come back
            self._cache[text] = found
        return found


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


def _audit_fields(payload: str) -> list[str] | None:
    """Fast path for the usual AUDIT payload: seven plain fields, then the statement (quoted
    when it holds a comma, quote or newline) and the parameter field. None: use split_csv."""
    parts = payload.split(",", 7)
    if len(parts) < 8 or '"' in payload[: len(payload) - len(parts[7])]:
        return None
    rest = parts.pop()
    if not rest.startswith('"'):
        statement, sep, params = rest.partition(",")
        parts.append(statement)
    else:
        end = rest.find('"', 1)
        while end >= 0 and rest.startswith('"', end + 1):
            end = rest.find('"', end + 2)
        if end < 0:
            return None  # cut off: split_csv tells
        parts.append(rest[1:end].replace('""', '"'))
        sep, params = rest[end + 1 : end + 2], rest[end + 2 :]
        if sep not in (",", ""):
            return None
    if sep:
        if params.startswith('"'):
            if len(params) < 2 or not params.endswith('"'):
                return None
            params = params[1:-1].replace('""', '"')
        parts.append(params)
    return parts


def decode_parameters(field: str) -> tuple[tuple[str, ...], bool]:
    """pgaudit's parameter field, already unquoted once: ``<none>``, ``<not logged>``, or a
    CSV row of the values (gotcha 3). The flag says whether parameters were logged."""
    if field == "<none>":
        return (), True
    if field == "<not logged>":
        return (), False
    if '"' not in field:  # no quoting: a plain split gives what split_csv would
        return tuple(field.split(",")), True
    values, _ = split_csv(field)
    return tuple(values), True


@lru_cache(maxsize=8192)
def _audit_plan(cls: str, command: str, statement: str) -> tuple[Action, tuple[str, ...]]:
    """Action and extra tags; depends on the statement text only, so the web shop's prepared
    statements are classified once."""
    if cls == "READ":
        # \copy arrives as COPY ... TO STDOUT, logged READ,SELECT plus READ,COPY (gotcha 6);
        # pg_dump reads tables with COPY ... TO stdout, or a _pg_dump_cursor with --inserts.
        if _COPY_TO_RE.match(statement) or command == "COPY":
            targets = _COPY_TARGET_RE.findall(statement)
            target = targets[-1].upper() if targets else "'"
            return Action.EXPORT, (_COPY_TAGS.get(target, "copy_to:file"),)
        if "_pg_dump_cursor" in statement:
            return Action.EXPORT, ()
        return Action.READ, ()
    if cls == "WRITE":
        return (Action.DELETE if command in _DELETES else Action.WRITE), ()
    if cls == "DDL":
        return Action.DDL, ()
    return Action.OTHER, ()


# What an AUDIT line's fields other than the statement/substatement ids and the parameters
# decide: (action, objects, command, statement, tags). A repeated statement costs one lookup.
_Template = tuple[Action, tuple[str, ...], str | None, str | None, tuple[str, ...]]
_TEMPLATES: dict[tuple[str, str, str, str, str, str], _Template] = {}
# (template tags, stmt id, substmt id, parameters logged, record tags) -> the event's tags
_TAGS: dict[tuple[tuple[str, ...], str, str, bool, tuple[str, ...]], frozenset[str]] = {}
_TEMPLATE_LIMIT = 8192
# (audit type, the payload from the class to the end of the statement) -> template
_FAST: dict[tuple[str, str], _Template] = {}


def _template(
    audit_type: str, cls: str, command: str, object_type: str, object_name: str, statement: str
) -> _Template:
    key = (audit_type, cls, command, object_type, object_name, statement)
    found = _TEMPLATES.get(key)
    if found is None:
        action, extra = _audit_plan(cls, command, statement)
        tags = ("audit_type:" + audit_type, "class:" + cls, *extra)
        if object_type:
            tags += ("object_type:" + object_type,)
        found = (
            action,
            (object_name,) if object_name else (),
            command or None,
            statement or None,
            tags,
        )
        if len(_TEMPLATES) >= _TEMPLATE_LIMIT:
            _TEMPLATES.clear()  # statement texts come from the log: keep the cache bounded
        _TEMPLATES[key] = found
    return found


def _last_field(raw: str) -> str | None:
    """The parameter field as the fast path cut it, unquoted as :func:`_audit_fields` does;
    None when it is not one whole CSV field (the general path then decides)."""
    if '"' not in raw:
        return raw
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        inner = raw[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return None


def audit_payload_event(
    payload: str,
    time: datetime,
    store: str,
    user: str | None,
    database: str | None,
    application: str | None,
    client: str | None,
    session: str | None,
    position: SourcePosition,
    record_tags: tuple[str, ...],
    enricher: EventEnricher | None = None,
) -> AccessEvent:
    """The event of one AUDIT payload (what follows ``AUDIT: ``), built in one construction;
    with ``enricher``, already enriched (what ``enricher.enrich`` of the plain event gives)."""
    # Fast path: the payload cut at its first three commas and where its last field starts
    # (the last comma, or the last ',"' when that field is quoted: parameters with a comma
    # such as "130,3768"). The part from the class to the end of the statement is looked up
    # among those already parsed, which also tells that the statement ended at that cut;
    # the parameters follow it.
    i1 = payload.find(",")
    i2 = payload.find(",", i1 + 1)
    i3 = payload.find(",", i2 + 1)
    k = payload.rfind(',"') if payload.endswith('"') else payload.rfind(",")
    tpl = None
    if 0 < i1 < i2 < i3 < k:
        tpl = _FAST.get((payload[:i1], payload[i3 + 1 : k]))
        if tpl is not None:
            stmt_id, substmt_id = payload[i1 + 1 : i2], payload[i2 + 1 : i3]
            last = payload[k + 1 :]
            raw = last if last == "<none>" else _last_field(last)
            if raw is None or not stmt_id.isdigit() or not substmt_id.isdigit():
                tpl = None
            elif raw == "<none>":  # most statements: no parameters, nothing to decode
                params: tuple[str, ...] = ()
                logged = True
            else:
                params, logged = decode_parameters(raw)
    if tpl is None:
        tpl, stmt_id, substmt_id, params, logged = _general_fields(
            payload, record_tags, i1, i2, i3, k
        )
    # Built here rather than in a helper: this runs once per log line.
    action, objects, command_or_none, statement_or_none, base_tags = tpl
    tag_key = (base_tags, stmt_id, substmt_id, logged, record_tags)
    tags = _TAGS.get(tag_key)
    if tags is None:
        tags = _event_tags(tag_key)
    actor = user or ""
    if enricher is None:
        return AccessEvent(
            time, store, actor, action, position, objects, (), (), None, client, application,
            database, session, command_or_none, statement_or_none, params, False, None, tags,
        )  # fmt: skip
    # Enriched in the same construction: what the general path's second build would set.
    subjects: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    unbounded = False
    if statement_or_none:
        action, subjects, columns, unbounded = enricher.sql.sql_fields(
            action, objects, statement_or_none, params
        )
    return AccessEvent(
        time, store, actor, action, position, objects, subjects, columns,
        enricher.person_of(actor), client, application, database, session, command_or_none,
        statement_or_none, params, unbounded, None, tags,
    )  # fmt: skip


def _event_tags(key: tuple[tuple[str, ...], str, str, bool, tuple[str, ...]]) -> frozenset[str]:
    """The tags of an event from (template tags, stmt id, substmt id, parameters logged,
    record tags), remembered in ``_TAGS``."""
    base_tags, stmt_id, substmt_id, logged, record_tags = key
    tags = frozenset(
        (
            *record_tags,
            *base_tags,
            "stmt:" + stmt_id,
            "substmt:" + substmt_id,
            *(() if logged else ("parameters_not_logged",)),
        )
    )
    if len(_TAGS) >= _TEMPLATE_LIMIT:
        _TAGS.clear()
    _TAGS[key] = tags
    return tags


def _general_fields(
    payload: str, record_tags: tuple[str, ...], i1: int, i2: int, i3: int, k: int
) -> tuple[_Template, str, str, tuple[str, ...], bool]:
    """(template, statement id, substatement id, parameters, parameters logged) of a payload
    the fast path does not know, read field by field; teaches the fast path its template."""
    fields = _audit_fields(payload)
    plain = fields is not None
    if fields is None:
        fields, complete = split_csv(payload)
        if not complete and "truncated" not in record_tags:
            raise ParseFailure("bad_audit_csv", payload[:120])
    n = len(fields)
    if n < 7 or fields[0] not in ("SESSION", "OBJECT") or not fields[1].isdigit():
        raise ParseFailure("bad_audit_csv", payload[:120])
    audit_type, stmt_id, substmt_id, cls, command, object_type, object_name = fields[:7]
    statement = fields[7] if n > 7 else ""
    params, logged = decode_parameters(fields[8]) if n > 8 else ((), True)
    tpl = _template(audit_type, cls, command, object_type, object_name, statement)
    if (
        plain
        and k > i3 > 0
        and n == 9
        and _last_field(payload[k + 1 :]) == fields[8]
        and payload[:i1] == audit_type
        and payload[i1 + 1 : i2] == stmt_id
        and payload[i2 + 1 : i3] == substmt_id
    ):
        # The statement ended at the fast path's cut and the fields before it were cut where
        # the fast path cuts them: the part in between stands for this template from now on.
        if len(_FAST) >= _TEMPLATE_LIMIT:
            _FAST.clear()
        _FAST[(audit_type, payload[i3 + 1 : k])] = tpl
    return tpl, stmt_id, substmt_id, params, logged


def audit_event(info: PgRecordInfo, payload: str) -> AccessEvent:
    return audit_payload_event(
        payload,
        info.time,
        info.store,
        info.user,
        info.database,
        info.application,
        info.client,
        info.session,
        info.position,
        info.tags,
    )


def _login_event(info: PgRecordInfo, m: re.Match[str]) -> AccessEvent:
    info.database = m.group("db") or info.database
    info.application = m.group("app") or None
    return info.event(m.group("user"), Action.LOGIN)


def _denied_event(info: PgRecordInfo, message: str, statement: str | None) -> AccessEvent:
    objects: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    m = _DENIED_RE.match(message)
    if m is not None:
        kind, name = m.group("kind"), m.group("name")
        tags = (f"denied_for:{kind}",)
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
    return info.event(info.user, Action.DENIED, objects, command, statement, (), message, tags)


def _failed_event(
    info: PgRecordInfo, message: str, m: re.Match[str], detail: str | None
) -> AccessEvent:
    user = m.group("user") or m.group("u2") or m.group("u3") or m.group("u4") or ""
    tags: tuple[str, ...] = ()
    if m.group("method"):
        tags += (f"auth_method:{m.group('method').lower()}",)
    if detail and " does not exist" in detail:
        tags += ("role_missing",)
    info.application = None  # %a is [unknown] before authentication
    text = f"{message} (DETAIL: {detail})" if detail else message
    return info.event(user, Action.LOGIN_FAILED, detail=text, tags=tags)


def record_events(
    info: PgRecordInfo, severity: str, message: str, statement: str | None, detail: str | None
) -> list[AccessEvent]:
    """The events one record stands for: none for records that are not accesses."""
    if severity == "LOG":
        if message.startswith("AUDIT: "):
            return [audit_event(info, message[7:])]
        authorized = _AUTHORIZED_RE.match(message)
        if authorized is not None:
            return [_login_event(info, authorized)]
    elif severity == "ERROR":
        if message.startswith("permission denied"):
            return [_denied_event(info, message, statement)]
    elif severity == "FATAL":
        failed = _FAILED_RE.search(message)
        if failed is not None:
            return [_failed_event(info, message, failed, detail)]
    return []
