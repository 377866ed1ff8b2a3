"""Which data subjects a statement names, and whether it reads a personal-data table wholesale.

``subject_columns`` maps ``schema.table`` to the column holding the customer id
(``clients.accounts`` -> ``id``, ``finance.bills`` -> ``account_id``). Values reach that column
directly (``b.account_id = $1``) or through join equalities (``b.account_id = a.id AND
a.id = 2745``), so the column's equivalence class is followed before values are collected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from breachwatch.sql.analyze import ColKey, Predicate, StatementShape


def _same_table(written: str, name: str) -> bool:
    written, name = written.lower(), name.lower()
    if "." in written and "." in name:
        return written == name
    return written.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]


def subject_column(subject_columns: Mapping[str, str], object_name: str) -> str | None:
    """The subject column configured for ``object_name``; unqualified names match by table
    name, and a match that is ambiguous between schemas gives None."""
    found = {col for key, col in subject_columns.items() if _same_table(key, object_name)}
    return found.pop() if len(found) == 1 else None


def _qualifiers(shape: StatementShape, object_name: str) -> frozenset[str] | None:
    """Names by which the statement may qualify the object's columns; None when the statement
    does not name the object (pgaudit reports the base table behind a view)."""
    quals: set[str] = set()
    for rel in shape.relations:
        if _same_table(rel.name, object_name):
            quals.update((rel.name, rel.name.rsplit(".", 1)[-1]))
            if rel.alias:
                quals.add(rel.alias)
    return frozenset(quals) if quals else None


@lru_cache(maxsize=8192)
def _closure(shape: StatementShape, object_name: str, column: str) -> frozenset[ColKey]:
    """Every column reference equal to the object's ``column`` through join equalities."""
    quals = _qualifiers(shape, object_name)
    if quals is None:
        return frozenset()
    reached: set[ColKey] = {(q, column) for q in quals} | {(None, column)}
    grew = True
    while grew:  # the edge list is short
        grew = False
        for left, right in shape.equalities:
            if (left in reached) != (right in reached):
                reached.update((left, right))
                grew = True
    return frozenset(reached)


def _matching(shape: StatementShape, object_name: str, column: str) -> tuple[Predicate, ...]:
    reached = _closure(shape, object_name, column)
    return tuple(p for p in shape.predicates if (p.qualifier, p.column) in reached)


def _param_values(raw: str) -> list[str]:
    # ``= ANY($1)`` binds an array literal: {1,2,3}
    if len(raw) >= 2 and raw[0] == "{" and raw[-1] == "}":
        return [v.strip().strip('"') for v in raw[1:-1].split(",") if v.strip()]
    return [raw]


def subject_refs(
    shape: StatementShape, subject_columns: Mapping[str, str], object_name: str
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Literal subject ids, and numbers of the parameters ($n) that hold more of them."""
    column = subject_column(subject_columns, object_name)
    if column is None:
        return (), ()
    preds = _matching(shape, object_name, column)
    values = tuple(dict.fromkeys(v for p in preds for v in p.values if v))
    return values, tuple(dict.fromkeys(n for p in preds for n in p.params))


def bind_parameters(
    refs: tuple[tuple[str, ...], tuple[int, ...]], parameters: Sequence[str]
) -> tuple[str, ...]:
    values, params = refs
    out = list(values)
    for n in params:
        if 1 <= n <= len(parameters):
            out.extend(_param_values(parameters[n - 1]))
    return tuple(dict.fromkeys(v for v in out if v))


def subject_ids(
    shape: StatementShape,
    subject_columns: Mapping[str, str],
    object_name: str,
    parameters: Sequence[str],
) -> tuple[str, ...]:
    """Subject ids the statement restricts ``object_name`` to, with $n taken from
    ``parameters`` (pgaudit's decoded parameter list). Empty when unknown."""
    return bind_parameters(subject_refs(shape, subject_columns, object_name), parameters)


def is_unbounded(
    shape: StatementShape,
    subject_columns: Mapping[str, str],
    object_name: str,
    limit_bound: int,
    identifying_columns: Mapping[str, Sequence[str]] | None = None,
) -> bool:
    """True for a statement on a personal-data table that is restricted neither to named
    subjects nor to at most ``limit_bound`` rows.

    ``identifying_columns`` adds, per table, columns that single out one subject as well as the
    subject column does (``clients.accounts``: ``email``, ``client_ref``). Aggregates that are
    not grouped by those columns, and unparsed statements, are never unbounded: nothing
    personal is shown, or nothing is known.
    """
    if shape.kind in ("unparsed", "ddl", "other"):
        return False
    column = subject_column(subject_columns, object_name)
    if column is None:
        return False
    if shape.limit is not None and shape.limit <= limit_bound:
        return False
    if _qualifiers(shape, object_name) is None:
        return not shape.predicates
    if shape.kind == "insert" and any(_same_table(t, object_name) for t in shape.insert_targets):
        return False
    extra: set[str] = set()
    for key, cols in (identifying_columns or {}).items():
        if _same_table(key, object_name):
            extra.update(cols)
    if shape.aggregate_only and not {column, *extra} & set(shape.group_columns):
        return False
    if any(_matching(shape, object_name, c) for c in (column, *sorted(extra))):
        return False
    # One join hop: cases c JOIN accounts a ON a.id = c.account_id WHERE c.case_id = $1
    # reads one account, because the joined table is pinned to one row.
    joined = {q for q, _ in _closure(shape, object_name, column) if q is not None}
    for rel in shape.relations:
        quals = {rel.name, rel.name.rsplit(".", 1)[-1], rel.alias}
        if _same_table(rel.name, object_name) or not quals & joined:
            continue
        own = [subject_column(subject_columns, rel.name)]
        own += [
            c
            for k, cs in (identifying_columns or {}).items()
            if _same_table(k, rel.name)
            for c in cs
        ]
        if any(_matching(shape, rel.name, c) for c in own if c):
            return False
    return True
