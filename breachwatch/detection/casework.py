"""Cases: which person or team works on which customer, from when until when.

The ``ticket`` condition of a grant covers access to a customer's data only while a case of
that customer is open (``opened <= time < closed``) and assigned to the person, one of their
accounts, or their team. Cases come from a CSV/JSON file or an HTTP API (see
:mod:`breachwatch.detection.reference`); a case closed in the log itself (a write to a case
object that sets it closed, or a request on a closing route) is closed from that moment.
A lookup by a key whose value the log does not carry (a ``?`` placeholder of an executed
prepared statement) is bound to one customer the log does not name
(:meth:`Casework.pins_unlogged_key`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import PrivateAttr

from breachwatch.detection.policy_types import Model, Name, Source, ZoneName
from breachwatch.detection.reference import Rows, parse_time
from breachwatch.events import AccessEvent, Action
from breachwatch.sql.analyze import analyze


class CaseColumns(Model):
    case: Name = "case_id"
    subject: Name = "account_id"
    assignee: Name = "assignee"
    status: Name = "status"
    opened: Name = "opened_at"
    closed: Name = "closed_at"


class Casework(Model):
    source: Source
    columns: CaseColumns = CaseColumns()
    timezone: ZoneName = "Europe/Brussels"  # for times written without an offset
    closed_statuses: tuple[Name, ...] = ("closed", "resolved", "cancelled")
    # The case records themselves: reading one's work list needs no case; a write to them
    # that matches ``close_statement`` closes the case named by ``case_id_column``.
    objects: tuple[Name, ...] = ()
    case_id_column: Name = "case_id"
    close_statement: str = r"\bstatus\s*=\s*'(?:closed|resolved)'"
    # Web routes (the ``route:`` tag of web_access events) whose requests close the case
    # named by the ``<case_id_column>:`` placeholder tag.
    close_routes: tuple[Name, ...] = ("*/close",)

    _close_re: re.Pattern[str] = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        try:
            self._close_re = re.compile(self.close_statement, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"close_statement is not a regular expression: {exc}") from exc

    def named_cases(self, event: AccessEvent) -> tuple[str, ...]:
        """Case ids the statement selects by (``WHERE c.case_id = $1``): the customer is then
        the case's, even though the statement names no customer."""
        if not event.statement:
            return ()
        found: list[str] = []
        for predicate in analyze(event.statement).predicates:
            if predicate.column != self.case_id_column:
                continue
            found.extend(predicate.values)
            found.extend(
                event.parameters[n - 1] for n in predicate.params if 0 < n <= len(event.parameters)
            )
        return tuple(found)

    def pins_unlogged_key(self, event: AccessEvent, keys: frozenset[str]) -> bool:
        """Whether the statement selects one row by a key column (one of ``keys``, or the
        case id column) through a placeholder whose value the log does not record.

        MariaDB's server_audit logs an executed prepared statement with its ``?`` and without
        the values; pgaudit with ``log_parameter=off`` does the same with ``$1``. Such an
        access is bound to one customer or case; the log just does not say which, so the
        ticket condition cannot be judged (a search by name or a list has no such predicate
        and stays a finding).
        """
        statement = event.statement
        if not statement or ("?" not in statement and "$" not in statement):
            return False
        known = len(event.parameters)
        wanted = keys | {self.case_id_column}
        return any(
            p.column in wanted and not p.values and p.params and min(p.params) > known
            for p in analyze(positional(statement)).predicates
        )

    def is_case_object(self, obj: str) -> bool:
        return any(obj == p or fnmatchcase(obj, p) for p in self.objects)

    def closed_cases(self, event: AccessEvent) -> tuple[str, ...]:
        """Case ids this event closes (empty for nearly every event)."""
        if event.action is not Action.WRITE or not any(map(self.is_case_object, event.objects)):
            return ()
        tag = f"{self.case_id_column}:"
        route = next((t[6:] for t in event.tags if t.startswith("route:")), None)
        if route is not None and any(fnmatchcase(route, p) for p in self.close_routes):
            return tuple(t[len(tag) :] for t in event.tags if t.startswith(tag))
        statement = event.statement
        if not statement or not self._close_re.search(statement):
            return ()
        shape = analyze(statement)
        return tuple(
            v for p in shape.predicates if p.column == self.case_id_column for v in p.values
        )


# A quoted string, quoted identifier or comment (skipped), or a bare ``?`` placeholder.
_PLACEHOLDER_RE = re.compile(
    r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|/\*.*?\*/|--[^\n]*|(\?)", re.DOTALL
)


def positional(statement: str) -> str:
    """``?`` placeholders (MySQL/MariaDB, JDBC) numbered as ``$1, $2 ...``, so that the SQL
    analyser reads them as parameters; quoted text and comments are left alone."""
    if "?" not in statement:
        return statement
    count = 0

    def number(m: re.Match[str]) -> str:
        nonlocal count
        if m.group(1) is None:
            return m.group(0)
        count += 1
        return f"${count}"

    return _PLACEHOLDER_RE.sub(number, statement)


@dataclass(frozen=True, slots=True)
class Case:
    case_id: str
    subject: str
    assignee: str
    opened: datetime | None
    closed: datetime | None  # None: open (unless its status says closed)
    closed_status: bool


@dataclass(frozen=True, slots=True)
class CaseIndex:
    """Cases by subject, immutable; built once per (re)load."""

    by_subject: dict[str, tuple[Case, ...]] = field(default_factory=dict)
    by_case: dict[str, Case] = field(default_factory=dict)
    loaded: int = 0

    @classmethod
    def build(cls, config: Casework, tables: Sequence[Rows]) -> CaseIndex:
        zone = ZoneInfo(config.timezone)
        cols = config.columns
        closed_statuses = frozenset(s.lower() for s in config.closed_statuses)
        grouped: dict[str, list[Case]] = {}
        count = 0
        for rows in tables:
            for row in rows:
                subject = row.get(cols.subject, "").strip()
                if not subject:
                    continue
                case = Case(
                    case_id=row.get(cols.case, "").strip(),
                    subject=subject,
                    assignee=row.get(cols.assignee, "").strip(),
                    opened=parse_time(row.get(cols.opened, ""), zone),
                    closed=parse_time(row.get(cols.closed, ""), zone),
                    closed_status=row.get(cols.status, "").strip().lower() in closed_statuses,
                )
                grouped.setdefault(subject, []).append(case)
                count += 1
        by_case = {c.case_id: c for cases in grouped.values() for c in cases if c.case_id}
        return cls({k: tuple(v) for k, v in grouped.items()}, by_case, count)

    def open_case(
        self,
        subject: str,
        owners: frozenset[str],
        when: datetime,
        closed_in_log: dict[str, datetime],
    ) -> Case | None:
        """An open case of ``subject`` assigned to one of ``owners`` at ``when``."""
        for case in self.by_subject.get(subject, ()):
            if case.assignee not in owners:
                continue
            if case.opened is not None and when < case.opened:
                continue
            closed = case.closed
            logged = closed_in_log.get(case.case_id)
            if logged is not None and (closed is None or logged < closed):
                closed = logged
            if closed is None and case.closed_status:
                continue
            if closed is not None and when >= closed:
                continue
            return case
        return None

    def last_case(self, subject: str, owners: frozenset[str]) -> Case | None:
        cases = [c for c in self.by_subject.get(subject, ()) if c.assignee in owners]
        return cases[-1] if cases else None
