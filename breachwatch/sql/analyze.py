"""What a SQL statement touches and how narrowly, from pglast's parse tree. Pure and cached.

A :class:`StatementShape` is the parse reduced to what need-to-know checks ask: which tables,
which columns, which values pin down which columns (``id = 5155``, ``account_id = $1``,
``id IN (1, 2)``), and whether the rows leave the server (``COPY ... TO``). Statements pglast
cannot parse (MariaDB dialect, a statement cut off by a line bound) give kind ``unparsed``;
nothing here raises on input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, BoolExprType, SubLinkType

from breachwatch.sql.shape import normalise

ColKey = tuple[str | None, str]  # (qualifier as written: alias, table or schema.table; column)

# When a multi-statement string mixes kinds, the one that matters most for privacy wins.
_KIND_RANK = ("copy_to", "delete", "update", "insert", "copy_from", "ddl", "select", "other")
_AGGREGATES = frozenset({"count", "sum", "avg", "min", "max", "stddev", "variance", "bool_and"})
_OUTFILE_RE = re.compile(r"\bINTO\s+(?:OUT|DUMP)FILE\s+'([^']*)'", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Predicate:
    """Values that restrict one column: literals, and parameter numbers ($n)."""

    qualifier: str | None
    column: str
    values: tuple[str, ...] = ()
    params: tuple[int, ...] = ()
    subquery: bool = False  # ``col IN (SELECT ... WHERE ...)``: restricted, values unknown


@dataclass(frozen=True, slots=True)
class Relation:
    name: str  # as written: ``clients.accounts`` or ``accounts``
    alias: str | None = None


@dataclass(frozen=True, slots=True)
class StatementShape:
    kind: str  # select insert update delete copy_to copy_from ddl other unparsed
    tables: tuple[str, ...] = ()
    relations: tuple[Relation, ...] = ()
    columns: tuple[str, ...] = ()
    predicates: tuple[Predicate, ...] = ()
    equalities: tuple[tuple[ColKey, ColKey], ...] = ()  # ``b.account_id = a.id``
    copy_target: str | None = None  # 'stdout', 'stdin', 'program:<cmd>' or a file path
    limit: int | None = None
    aggregate_only: bool = False  # output rows are aggregates (count/sum/...), maybe grouped
    group_columns: tuple[str, ...] = ()  # what aggregated rows are grouped by
    insert_targets: tuple[str, ...] = ()
    statements: int = 0

    @property
    def is_export(self) -> bool:
        return self.kind == "copy_to" or (self.kind == "unparsed" and self.copy_target is not None)


_TEMPLATE_LIMIT = 4096
# normalised text -> its analysis; a dict cleared when full, as the texts come from the log.
_TEMPLATES: dict[str, StatementShape] = {}


@lru_cache(maxsize=4096)
def analyze(sql: str) -> StatementShape:
    """The shape of ``sql`` (all statements of a multi-statement string, merged).

    Statements that differ only in literals are parsed once: the normalised text
    (:mod:`breachwatch.sql.shape`) is analysed and the literals are bound back, which gives
    what :func:`analyze_exact` gives, for a look-up and a few tuples."""
    norm = normalise(sql)
    if norm is not None:
        bound = bind_literals(shape_template(norm.key), norm.base, norm.literals)
        if bound is not None:
            return bound
    return _analyze_text(sql)


@lru_cache(maxsize=4096)
def analyze_exact(sql: str) -> StatementShape:
    """The shape of ``sql`` parsed as it is, without the shape cache (the reference path)."""
    return _analyze_text(sql)


def shape_template(key: str) -> StatementShape:
    """The analysis of a normalised text, placeholders and all."""
    shape = _TEMPLATES.get(key)
    if shape is None:
        shape = _analyze_text(key)
        if len(_TEMPLATES) >= _TEMPLATE_LIMIT:
            _TEMPLATES.clear()
        _TEMPLATES[key] = shape
    return shape


def bind_literals(
    template: StatementShape, base: int, literals: tuple[str, ...]
) -> StatementShape | None:
    """``template`` with placeholders ``$base``... turned back into the literals they replaced;
    None when that cannot be known exactly (the caller then parses the exact text)."""
    if template.kind == "unparsed":
        return None  # the normalised text may fail where the exact one does not
    if not literals:
        return template
    predicates: list[Predicate] = []
    changed = False
    for p in template.predicates:
        if not p.params or max(p.params) < base:
            predicates.append(p)
            continue
        if p.values:
            # Verbatim and replaced literals on one column: their order in the exact
            # analysis (one tuple, in source order) is lost.
            return None
        changed = True
        predicates.append(
            Predicate(
                p.qualifier,
                p.column,
                tuple(literals[n - base] for n in p.params if n >= base),
                tuple(n for n in p.params if n < base),
                p.subquery,
            )
        )
    if not changed:
        return template
    # Bound predicates may now be equal, which the exact analysis would have merged.
    return replace(template, predicates=tuple(dict.fromkeys(predicates)))


def _analyze_text(sql: str) -> StatementShape:
    try:
        raws = parse_sql(sql)
        return _merge([_Collector(raw.stmt) for raw in raws])
    except Exception:  # pglast raises ParseError, and others on odd input; never propagate
        outfile = _OUTFILE_RE.search(sql)
        return StatementShape(kind="unparsed", copy_target=outfile.group(1) if outfile else None)


def _walk(root: Any) -> Iterator[ast.Node]:
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple | list):
            stack.extend(reversed(node))
        elif isinstance(node, ast.Node):
            yield node
            for name in _slots(type(node)):
                child = getattr(node, name, None)
                if isinstance(child, ast.Node | tuple | list):
                    stack.append(child)


_SLOTS: dict[type, tuple[str, ...]] = {}  # bounded by the number of pglast node classes


def _slots(cls: type) -> tuple[str, ...]:
    cached = _SLOTS.get(cls)
    if cached is not None:
        return cached
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        names.extend(n for n in getattr(klass, "__slots__", ()) if n != "ancestors")
    # reversed again by the stack, so children are visited in source order
    _SLOTS[cls] = result = tuple(reversed(names))
    return result


def _qualified(rv: ast.RangeVar) -> str:
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else str(rv.relname)


def _colkey(node: Any) -> ColKey | None:
    if isinstance(node, ast.TypeCast):
        node = node.arg
    if not isinstance(node, ast.ColumnRef):
        return None
    fields = node.fields or ()
    names = [str(f.sval) for f in fields if isinstance(f, ast.String)]
    if not names or len(names) != len(fields):
        return None
    return (".".join(names[:-1]) or None, names[-1])


def _value(node: Any) -> str | int | None:
    """A literal as text, a parameter as its number, None for anything else."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.ParamRef):
        return int(node.number or 0)
    if isinstance(node, ast.A_Const) and not node.isnull:
        val = node.val
        if isinstance(val, ast.Integer):
            return str(val.ival)
        if isinstance(val, ast.Float):
            return str(val.fval)
        if isinstance(val, ast.String):
            return str(val.sval)
    return None


def _predicate(key: ColKey, values: list[str | int | None]) -> Predicate | None:
    if not values or any(v is None for v in values):
        return None
    lits = tuple(v for v in values if isinstance(v, str))
    params = tuple(v for v in values if isinstance(v, int))
    return Predicate(key[0], key[1], lits, params)


def _restrictions(expr: Any) -> tuple[list[Predicate], list[tuple[ColKey, ColKey]]]:
    """Predicates that hold for every row of ``expr``'s scope (AND, and OR on one column)."""
    if isinstance(expr, ast.BoolExpr):
        parts = [_restrictions(arg) for arg in expr.args or ()]
        if expr.boolop == BoolExprType.AND_EXPR:
            return [p for ps, _ in parts for p in ps], [e for _, es in parts for e in es]
        if expr.boolop == BoolExprType.OR_EXPR and parts:
            # Only a column restricted in every branch stays restricted: a = 1 OR a = 2.
            common = set.intersection(*({(p.qualifier, p.column) for p in ps} for ps, _ in parts))
            merged: list[Predicate] = []
            for qual, col in sorted(common, key=str):
                same = [p for ps, _ in parts for p in ps if (p.qualifier, p.column) == (qual, col)]
                merged.append(
                    Predicate(
                        qual,
                        col,
                        tuple(v for p in same for v in p.values),
                        tuple(n for p in same for n in p.params),
                        any(p.subquery for p in same),
                    )
                )
            return merged, []
        return [], []
    if isinstance(expr, ast.SubLink) and expr.subLinkType == SubLinkType.ANY_SUBLINK:
        key = _colkey(expr.testexpr)
        inner = getattr(expr.subselect, "whereClause", None)
        if key is not None and inner is not None and _restrictions(inner)[0]:
            return [Predicate(key[0], key[1], subquery=True)], []
        return [], []
    if not isinstance(expr, ast.A_Expr):
        return [], []
    op = expr.name[-1].sval if expr.name and isinstance(expr.name[-1], ast.String) else None
    if op != "=":
        return [], []
    kind = expr.kind
    if kind == A_Expr_Kind.AEXPR_IN:
        key = _colkey(expr.lexpr)
        pred = _predicate(key, [_value(v) for v in expr.rexpr or ()]) if key else None
        return ([pred] if pred else []), []
    if kind not in (A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_OP_ANY):
        return [], []
    left, right = _colkey(expr.lexpr), _colkey(expr.rexpr)
    if left and right and kind == A_Expr_Kind.AEXPR_OP:
        return [], [(left, right)]
    for key, other in ((left, expr.rexpr), (right, expr.lexpr)):
        if key is not None:
            pred = _predicate(key, [_value(other)])
            return ([pred] if pred else []), []
    return [], []


def _limit(query: Any) -> int | None:
    count = getattr(query, "limitCount", None)
    value = _value(count)
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _is_aggregate(node: Any) -> bool:
    if not isinstance(node, ast.FuncCall) or node.over is not None:
        return False
    return getattr((node.funcname or (None,))[-1], "sval", None) in _AGGREGATES


def _grouping(query: Any) -> tuple[bool, tuple[str, ...]]:
    """Whether the output is aggregated, and the columns rows are grouped by (the non-aggregate
    outputs and the GROUP BY expressions): ``count(*) ... GROUP BY lang`` shows no person,
    ``GROUP BY account_id`` shows one per row."""
    if not isinstance(query, ast.SelectStmt) or not query.targetList:
        return False, ()
    values = [getattr(t, "val", None) for t in query.targetList]
    aggregates = [_is_aggregate(v) for v in values]
    if not any(aggregates) or (not query.groupClause and not all(aggregates)):
        return False, ()
    plain = [v for v, agg in zip(values, aggregates, strict=True) if not agg]
    refs = (n for n in _walk([plain, query.groupClause or ()]) if isinstance(n, ast.ColumnRef))
    names = (getattr((r.fields or (None,))[-1], "sval", None) for r in refs)
    return True, tuple(dict.fromkeys(n for n in names if isinstance(n, str)))


class _Collector:
    """Everything one parsed statement says, gathered in one walk."""

    def __init__(self, stmt: Any) -> None:
        self.kind, self.copy_target, query = _classify(stmt)
        self.limit = _limit(query)
        self.aggregate_only, self.group_columns = _grouping(query)
        self.relations: list[Relation] = []
        self.columns: list[str] = []
        self.predicates: list[Predicate] = []
        self.equalities: list[tuple[ColKey, ColKey]] = []
        self.ctes: set[str] = set()
        self.insert_targets: list[str] = []
        for node in _walk(stmt):
            self._visit(node)

    def _visit(self, node: ast.Node) -> None:
        if isinstance(node, ast.RangeVar):
            alias = node.alias.aliasname if node.alias is not None else None
            self.relations.append(Relation(_qualified(node), alias))
        elif isinstance(node, ast.ColumnRef):
            last = node.fields[-1] if node.fields else None
            self.columns.append("*" if isinstance(last, ast.A_Star) else getattr(last, "sval", ""))
        elif isinstance(node, ast.CommonTableExpr):
            self.ctes.add(str(node.ctename))
        elif isinstance(node, ast.JoinExpr) and node.quals is not None:
            self._restrict(node.quals)
        elif isinstance(node, ast.SelectStmt | ast.UpdateStmt | ast.DeleteStmt):
            if node.whereClause is not None:
                self._restrict(node.whereClause)
            if isinstance(node, ast.UpdateStmt):
                self.columns.extend(str(t.name) for t in node.targetList or () if t.name)
        elif isinstance(node, ast.InsertStmt):
            self._insert(node)

    def _restrict(self, expr: Any) -> None:
        preds, eqs = _restrictions(expr)
        self.predicates.extend(preds)
        self.equalities.extend(eqs)

    def _insert(self, node: ast.InsertStmt) -> None:
        if node.relation is None:
            return
        target = _qualified(node.relation)
        self.insert_targets.append(target)
        cols = [str(c.name) for c in node.cols or ()]
        self.columns.extend(cols)
        rows = getattr(node.selectStmt, "valuesLists", None) or ()
        for i, col in enumerate(cols):
            values = [_value(row[i]) if i < len(row) else None for row in rows]
            pred = _predicate((target, col), values)
            if pred is not None:
                self.predicates.append(pred)


def _classify(stmt: Any) -> tuple[str, str | None, Any]:
    """(kind, copy target, the query whose LIMIT counts) of one statement."""
    if isinstance(stmt, ast.PrepareStmt | ast.DeclareCursorStmt):
        kind, target, _ = _classify(stmt.query)
        return kind, target, stmt.query
    if isinstance(stmt, ast.CopyStmt):
        if stmt.is_program:
            target = f"program:{stmt.filename}"
        else:
            target = stmt.filename or ("stdin" if stmt.is_from else "stdout")
        return ("copy_from" if stmt.is_from else "copy_to"), target, stmt.query
    simple = {
        ast.SelectStmt: "select",
        ast.InsertStmt: "insert",
        ast.UpdateStmt: "update",
        ast.DeleteStmt: "delete",
        ast.TruncateStmt: "delete",
    }
    for cls, kind in simple.items():
        if isinstance(stmt, cls):
            return kind, None, stmt
    name = type(stmt).__name__
    if "Role" in name or "Grant" in name:
        return "other", None, None
    if name.startswith(("Create", "Alter", "Drop", "Rename", "Comment")) or name in (
        "IndexStmt",
        "ViewStmt",
    ):
        return "ddl", None, None
    return "other", None, None


def _merge(parts: list[_Collector]) -> StatementShape:
    if not parts:
        return StatementShape(kind="other")
    ctes = set().union(*(p.ctes for p in parts))
    relations = [r for p in parts for r in p.relations if r.name not in ctes]
    queries = [p for p in parts if p.kind not in ("ddl", "other")]
    limits = [p.limit for p in queries]
    return StatementShape(
        kind=min((p.kind for p in parts), key=_KIND_RANK.index),
        tables=tuple(dict.fromkeys(r.name for r in relations)),
        relations=tuple(dict.fromkeys(relations)),
        columns=tuple(dict.fromkeys(c for p in parts for c in p.columns if c)),
        predicates=tuple(dict.fromkeys(x for p in parts for x in p.predicates)),
        equalities=tuple(dict.fromkeys(e for p in parts for e in p.equalities)),
        copy_target=next((p.copy_target for p in parts if p.copy_target), None),
        limit=max(lim for lim in limits if lim is not None)
        if limits and None not in limits
        else None,
        aggregate_only=bool(queries) and all(p.aggregate_only for p in queries),
        group_columns=tuple(dict.fromkeys(c for p in parts for c in p.group_columns)),
        insert_targets=tuple(dict.fromkeys(t for p in parts for t in p.insert_targets)),
        statements=len(parts),
    )
