"""Adds what the statement text says to an event: subjects, columns, unbounded, export."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from breachwatch.events import AccessEvent, Action
from breachwatch.sql.analyze import StatementShape, analyze_exact, shape_template
from breachwatch.sql.shape import Normalised, normalise
from breachwatch.sql.subjects import bind_parameters, is_unbounded, subject_refs

# Denied, login and DDL events carry statements too, but they read no rows.
_ROW_ACTIONS = frozenset({Action.READ, Action.EXPORT, Action.WRITE, Action.DELETE})
_NO_REFS: tuple[tuple[str, ...], tuple[int, ...]] = ((), ())
_PLAN_LIMIT = 8192

_Plan = tuple[tuple[tuple[str, ...], tuple[int, ...]], bool, bool, tuple[str, ...]]
# A plan of a statement shape: (literal subject ids kept verbatim in the shape, indexes of the
# replaced literals that are subject ids, parameter numbers, unbounded, export, columns).
_ShapePlan = tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...], bool, bool, tuple[str, ...]]


def rebuild(
    event: AccessEvent,
    action: Action,
    subjects: tuple[str, ...],
    columns: tuple[str, ...],
    unbounded: bool,
    person: str | None,
) -> AccessEvent:
    """``event`` with the enrichment fields set, in one construction (``dataclasses.replace``
    costs several times that, and this runs once per event)."""
    e = event
    return AccessEvent(
        e.time,
        e.store,
        e.actor,
        action,
        e.position,
        e.objects,
        subjects,
        columns,
        person,
        e.client,
        e.application,
        e.database,
        e.session,
        e.command,
        e.statement,
        e.parameters,
        unbounded,
        e.detail,
        e.tags,
    )


class SqlEnricher:
    """Callable ``(event) -> event``.

    Everything that depends only on (statement, object) is computed once and cached, so the
    web shop's prepared statements, repeated a hundred thousand times with different
    parameters, cost a cache hit plus the parameter binding. Statements that differ only in
    their literals (``WHERE id = 1048``, ``... 1049``) share one plan per statement shape
    (:mod:`breachwatch.sql.shape`), with the literals bound per text; the result is the exact
    text's.
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
        # (statement, object) -> plan; a dict, not lru_cache: this is looked up once per
        # event, and statement texts come from the log, so it is cleared when full.
        self._plans: dict[tuple[str, str | None], _Plan] = {}
        # (normalised statement, first placeholder, object) -> plan with literal positions,
        # None when the exact text must be analysed; bounded the same way.
        # ``use_shapes = False`` analyses every statement as it is (the reference path of
        # tests and benchmarks).
        self._shape_plans: dict[tuple[str, int, str | None], _ShapePlan | None] = {}
        self.use_shapes = True

    def _plan(self, statement: str, object_name: str | None) -> _Plan:
        key = (statement, object_name)
        plan = self._plans.get(key)
        if plan is None:
            norm = normalise(statement) if self.use_shapes else None
            if norm is not None:
                plan = self._bound_plan(norm, object_name)
            if plan is None:
                plan = self._compute_plan(analyze_exact(statement), object_name)
            if len(self._plans) >= _PLAN_LIMIT:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _bound_plan(self, norm: Normalised, object_name: str | None) -> _Plan | None:
        """The plan of the normalised statement with this statement's literals bound."""
        # The base is part of the key: ``id = $1`` is the shape of ``id = 5`` (placeholder 1)
        # and of ``id = $1`` itself (a parameter, no placeholders).
        key = (norm.key, norm.base, object_name)
        if key in self._shape_plans:
            shape_plan = self._shape_plans[key]
        else:
            shape_plan = self._compute_shape_plan(norm, object_name)
            if len(self._shape_plans) >= _PLAN_LIMIT:
                self._shape_plans.clear()
            self._shape_plans[key] = shape_plan
        if shape_plan is None:
            return None
        values, places, params, unbounded, export, columns = shape_plan
        if places:  # as subject_refs keeps them: in order, once each, no empty ones
            literals = norm.literals
            values = tuple(dict.fromkeys(v for v in (literals[i] for i in places) if v))
        refs = (values, params) if values or params else _NO_REFS
        return refs, unbounded, export, columns

    def _compute_shape_plan(self, norm: Normalised, object_name: str | None) -> _ShapePlan | None:
        shape = shape_template(norm.key)
        if shape.kind == "unparsed":
            return None  # the placeholders may be what does not parse
        (values, params), unbounded, export, columns = self._compute_plan(shape, object_name)
        places = tuple(n - norm.base for n in params if n >= norm.base)
        if places and values:
            # Subject ids both verbatim and replaced: their order in the exact analysis
            # (source order, one tuple) is not known here.
            return None
        real = tuple(n for n in params if n < norm.base)
        return values, places, real, unbounded, export, columns

    def _compute_plan(self, shape: StatementShape, object_name: str | None) -> _Plan:
        if object_name is None:
            return _NO_REFS, False, shape.is_export, shape.columns
        refs = subject_refs(shape, self._subject_columns, object_name)
        if refs == _NO_REFS:
            refs = _NO_REFS  # compared by identity below
        unbounded = is_unbounded(
            shape, self._subject_columns, object_name, self._limit_bound, self._identifying
        )
        return refs, unbounded, shape.is_export, shape.columns

    def __call__(self, event: AccessEvent) -> AccessEvent:
        return self.enrich(event, event.person)

    def sql_fields(
        self,
        action: Action,
        objects: tuple[str, ...],
        statement: str,
        parameters: tuple[str, ...],
    ) -> tuple[Action, tuple[str, ...], tuple[str, ...], bool]:
        """(action, subjects, columns, unbounded) that ``statement`` gives an event which has
        none of its own; parsers that build enriched events in one go call this directly."""
        row_action = action in _ROW_ACTIONS
        if len(objects) <= 1:  # the usual case: pgaudit writes one line per relation
            key = (statement, objects[0] if objects else None)
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plan(*key)
            refs, obj_unbounded, export, columns = plan
            if refs is _NO_REFS:
                found: tuple[str, ...] = ()
            elif not refs[0] and len(refs[1]) == 1:  # one parameter holds the subject
                n = refs[1][0]
                raw = parameters[n - 1] if 1 <= n <= len(parameters) else ""
                if raw[:1] == "{" and raw[-1:] == "}":
                    found = bind_parameters(refs, parameters)
                else:
                    found = (raw,) if raw else ()
            else:
                found = bind_parameters(refs, parameters)
            unbounded = obj_unbounded and row_action
        else:
            subjects: list[str] = []
            unbounded = False
            export, columns = False, ()
            for obj in objects:
                refs, obj_unbounded, export, columns = self._plan(statement, obj)
                subjects.extend(bind_parameters(refs, parameters))
                unbounded = unbounded or (obj_unbounded and row_action)
            found = tuple(subjects)
        if len(found) > 1:
            found = tuple(dict.fromkeys(found))
        if export and action is Action.READ:
            action = Action.EXPORT
        return action, found, columns, unbounded

    def enrich(self, event: AccessEvent, person: str | None) -> AccessEvent:
        """The enriched event, with ``person`` set too (the pipeline resolves it first, so
        that each event is rebuilt once, not once per enrichment step)."""
        statement = event.statement
        if not statement:
            if person == event.person:
                return event
            return rebuild(
                event, event.action, event.subjects, event.columns, event.unbounded, person
            )
        action, found, columns, unbounded = self.sql_fields(
            event.action, event.objects, statement, event.parameters
        )
        if event.subjects:
            found = tuple(dict.fromkeys((*event.subjects, *found)))
        if event.columns:
            columns = tuple(dict.fromkeys((*event.columns, *columns)))
        return rebuild(event, action, found, columns, event.unbounded or unbounded, person)


class EventEnricher:
    """A pipeline's enrichment (the actor's person, then what the SQL says) as one object, for
    parsers that build each event already enriched instead of building it twice."""

    __slots__ = ("person_of", "sql")

    def __init__(self, sql: SqlEnricher, person_of: Callable[[str], str | None]) -> None:
        self.sql = sql
        self.person_of = person_of  # the staff member an account belongs to, else None

    def enrich(self, event: AccessEvent) -> AccessEvent:
        """The general path: enrich an event built by a plain ``parse``."""
        person = self.person_of(event.actor)
        return self.sql.enrich(event, event.person if person is None else person)
