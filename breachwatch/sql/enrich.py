"""Adds what the statement text says to an event: subjects, columns, unbounded, export."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import lru_cache

from breachwatch.events import AccessEvent, Action
from breachwatch.sql.analyze import analyze
from breachwatch.sql.subjects import bind_parameters, is_unbounded, subject_refs

# Denied, login and DDL events carry statements too, but they read no rows.
_ROW_ACTIONS = frozenset({Action.READ, Action.EXPORT, Action.WRITE, Action.DELETE})

_Plan = tuple[tuple[tuple[str, ...], tuple[int, ...]], bool, bool, tuple[str, ...]]


class SqlEnricher:
    """Callable ``(event) -> event``.

    Everything that depends only on (statement, object) is computed once and cached, so the
    web shop's prepared statements, repeated a hundred thousand times with different
    parameters, cost a cache hit plus the parameter binding.
    """

    def __init__(
        self,
        subject_columns: Mapping[str, str],
        limit_bound: int = 100,
        identifying_columns: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._subject_columns = dict(subject_columns)
        self._limit_bound = limit_bound
        self._identifying = {k: tuple(v) for k, v in (identifying_columns or {}).items()}
        self._plan = lru_cache(maxsize=8192)(self._compute_plan)

    def _compute_plan(self, statement: str, object_name: str | None) -> _Plan:
        shape = analyze(statement)
        if object_name is None:
            return ((), ()), False, shape.is_export, shape.columns
        refs = subject_refs(shape, self._subject_columns, object_name)
        unbounded = is_unbounded(
            shape, self._subject_columns, object_name, self._limit_bound, self._identifying
        )
        return refs, unbounded, shape.is_export, shape.columns

    def __call__(self, event: AccessEvent) -> AccessEvent:
        if not event.statement:
            return event
        subjects = list(event.subjects)
        unbounded = event.unbounded
        export = False
        columns: tuple[str, ...] = ()
        for obj in event.objects or (None,):
            refs, obj_unbounded, export, columns = self._plan(event.statement, obj)
            subjects.extend(bind_parameters(refs, event.parameters))
            unbounded = unbounded or (obj_unbounded and event.action in _ROW_ACTIONS)
        action = Action.EXPORT if event.action is Action.READ and export else event.action
        return replace(
            event,
            action=action,
            subjects=tuple(dict.fromkeys(subjects)),
            columns=tuple(dict.fromkeys((*event.columns, *columns))),
            unbounded=unbounded,
        )
