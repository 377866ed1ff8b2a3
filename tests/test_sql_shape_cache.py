"""The statement-shape cache gives exactly what analysing each exact text gives.

Every statement of every PostgreSQL sample log goes through both paths (the shape cache, and
pglast on the exact text) and the enrichment of each (statement, object) must be equal; then the
cases the normaliser must be careful with, one by one.
"""

from __future__ import annotations

import ast
import gzip
import importlib
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from breachwatch.detection.policy import load_policy
from breachwatch.errors import ParseFailure
from breachwatch.events import Action
from breachwatch.parsers.base import Line
from breachwatch.parsers.registry import build_format
from breachwatch.sql import SqlEnricher, analyze
from breachwatch.sql.analyze import analyze_exact
from breachwatch.sql.shape import normalise
from tests.conftest import REPO

ZONE = {"timezone": "Europe/Berlin"}
FORMATS = (
    ("pgaudit_stderr", "postgresql.log", {**ZONE, "log_line_prefix": "%m [%p] %q%u@%d %a %h "}),
    ("pgaudit_csvlog", "postgresql.csv", ZONE),
    ("pgaudit_jsonlog", "postgresql.json", ZONE),
)
# The sample policy's subject columns, and more tables so that more predicates count.
EXTRA_SUBJECTS = {
    "webmail.accounts": "account_id",
    "finance.bills_archive": "account_id",
    "clients.contracts": "account_id",
    "helpdesk.cases": "account_id",
    "webmail.messages": "mailbox_id",
}
Item = tuple[Action, tuple[str, ...], str, tuple[str, ...]]  # action, objects, statement, params


def _lines(path: Path, limit: int | None) -> Iterator[Line]:
    opener = gzip.open if path.suffix == ".gz" else open
    offset = 0
    with opener(path, "rb") as stream:
        for no, raw in enumerate(itertools.islice(stream, limit), start=1):
            text = raw.rstrip(b"\n").decode("utf-8", "replace")
            yield Line(text, offset, offset + len(raw), no)
            offset += len(raw)


def _items(fmt_name: str, path: Path, options: dict[str, str], limit: int | None) -> set[Item]:
    fmt = build_format(fmt_name, options)
    framer = fmt.new_framer(str(path))
    records = [r for line in _lines(path, limit) for r in framer.push(line)] + framer.flush()
    items: set[Item] = set()
    for record in records:
        result = fmt.parse(record, "pg")
        if isinstance(result, ParseFailure):
            continue
        items.update(
            (e.action, e.objects, e.statement, e.parameters) for e in result if e.statement
        )
    return items


def _enrichers() -> tuple[SqlEnricher, SqlEnricher]:
    policy = load_policy(REPO / "config" / "policy.yml")
    subjects = {**policy.subject_columns(), **EXTRA_SUBJECTS}
    pair = [
        SqlEnricher(subjects, 100, identifying_columns=policy.identifying_columns())
        for _ in range(2)
    ]
    pair[1].use_shapes = False
    return pair[0], pair[1]


def _assert_same(items: set[Item] | list[Item]) -> SqlEnricher:
    shaped, exact = _enrichers()
    for action, objects, statement, params in sorted(items, key=repr):
        for objs in {objects, *((o,) for o in objects), ()}:
            got = shaped.sql_fields(action, objs, statement, params)
            want = exact.sql_fields(action, objs, statement, params)
            assert got == want, (statement, objs, params)
        assert analyze(statement) == analyze_exact(statement), statement
    return shaped


@pytest.mark.parametrize("sample", ["pgaudit_workload_dayshift", "pgaudit_workload_realclock"])
@pytest.mark.parametrize(("fmt_name", "file", "options"), FORMATS)
def test_every_sample_statement_enriches_as_the_exact_text(
    samples_dir: Path, sample: str, fmt_name: str, file: str, options: dict[str, str]
) -> None:
    items = _items(fmt_name, samples_dir / sample / file, options, None)
    shaped = _assert_same(items)
    statements = {i[2] for i in items}
    shapes = {n.key for n in map(normalise, statements) if n is not None}
    # the cache is really used: many texts, few shapes, most bound from a shape plan
    assert len(statements) > 500 and len(shapes) < len(statements) / 4
    assert sum(p is not None for p in shaped._shape_plans.values()) > 20


def test_first_50k_lines_of_the_large_log(samples_dir: Path) -> None:
    name, _, options = FORMATS[0]
    items = _items(name, samples_dir / "pgaudit_large" / "postgresql.log.gz", options, 50_000)
    assert len({i[2] for i in items}) > 1000
    _assert_same(items)


_SQL_START = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH|COPY|PREPARE|DECLARE)\b", re.I)


def _test_statements() -> set[str]:
    """SQL written in the test modules (string constants that start like a statement), and the
    statement part of the pgaudit lines written there."""
    found: set[str] = set()
    for module in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if "AUDIT: SESSION," in text or "AUDIT: OBJECT," in text:
                    for line in text.splitlines():
                        fields = line.partition("AUDIT: ")[2].split(",", 7)
                        if len(fields) == 8:
                            found.add(fields[7].rsplit(",", 1)[0].strip('"'))
                elif _SQL_START.match(text):
                    found.add(text)
    return found


def test_statements_of_the_test_modules() -> None:
    statements = _test_statements()
    assert len(statements) > 50
    objects = ("clients.accounts", "finance.bills", "webmail.accounts", "helpdesk.cases")
    _assert_same([(Action.READ, objects, sql, ("5", "{7,8}")) for sql in statements])


def test_the_shape_and_its_literals() -> None:
    norm = normalise("SELECT * FROM clients.accounts WHERE id = 1048 AND lang IN ('de', 'it''s')")
    assert norm is not None
    assert norm.key == "SELECT * FROM clients.accounts WHERE id = $1 AND lang IN ($2, $3)"
    assert norm.literals == ("1048", "de", "it's")
    other = normalise("SELECT * FROM clients.accounts WHERE id = 1049 AND lang IN ('nl', 'x')")
    assert other is not None and other.key == norm.key
    # the values as pglast gives them: int4 without leading zeros, other numbers as written
    values = normalise("SELECT 1 WHERE a = 007 AND b = 2147483648 AND c = 1.50 AND d = .5e3")
    assert values is not None and values.literals == ("1", "7", "2147483648", "1.50", ".5e3")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM t WHERE body = $$x$$",  # dollar quotes
        "SELECT * FROM t WHERE body = $q$x$q$",
        "SELECT * FROM t WHERE name = E'it\\'s'",  # escape string
        "SELECT * FROM t WHERE name = U&'d\\0061t'",
        "SELECT * FROM t WHERE bits = B'101' OR bits = X'1F'",
        "SELECT * FROM t WHERE name = N'x'",
        "SELECT * FROM t WHERE id = 5 -- the customer",  # comments
        "SELECT * FROM t /* why */ WHERE id = 5",
        "SELECT * FROM t WHERE id = 0x1F",  # numbers glued to names
        "SELECT * FROM t WHERE id = 1_000",
        "SELECT * FROM t WHERE id = 1e",
        "SELECT * FROM t WHERE id = 5a",
        "SELECT 1; SELECT * FROM t WHERE id = 5",  # several statements
        "CREATE TABLE t (name varchar(20) DEFAULT 'x')",  # DDL and others
        "COPY (SELECT * FROM t WHERE id = 5) TO STDOUT",
        "SET search_path = 'clients'",
        "SELECT * FROM `t` WHERE id = 5",  # MariaDB
        "SELECT * FROM t WHERE name = 'unclosed",
        "SELECT * FROM t WHERE (id = 5",
        "SELECT * FROM t WHERE id = 5)",
        "SELECT * FROM t WHERE id = $1x",
        # a string glued to a digit: its placeholder would read $10 (found by atheris)
        "SELECT id, email FROM accounts WHERE email = 'simon.esposito3282@proton.me'0",
        "SELECT * FROM t WHERE name = 'x'y",
    ],
)
def test_what_the_normaliser_is_not_sure_of_keeps_the_exact_path(sql: str) -> None:
    assert normalise(sql) is None
    _assert_same([(Action.READ, ("t",), sql, ())])


@pytest.mark.parametrize(
    ("sql", "verbatim"),
    [
        ("SELECT * FROM clients.accounts WHERE lang = 'de' LIMIT 10", "LIMIT 10"),
        ("SELECT * FROM clients.accounts WHERE lang = 'de' LIMIT (500)", "LIMIT (500)"),
        ("SELECT * FROM clients.accounts LIMIT CAST(10 AS int)", "CAST(10 AS int)"),
        ("SELECT * FROM clients.accounts OFFSET 5 ROWS FETCH FIRST 50 ROWS ONLY", "5 ROWS"),
        ("SELECT * FROM clients.accounts FETCH FIRST 500 ROWS ONLY", "500"),
        ("SELECT CAST(full_name AS varchar(20)) FROM clients.accounts WHERE id = 1", "(20)"),
        ("SELECT net::numeric(10,2) FROM finance.bills WHERE account_id = 1", "(10,2)"),
        ("SELECT account_id, count(*) FROM finance.bills GROUP BY 1 ORDER BY 2", "BY 1 ORDER BY 2"),
        ("SELECT lang, id FROM clients.accounts WHERE id > 5 ORDER BY 1, 2", "BY 1, 2"),
        ("SELECT * FROM clients.accounts WHERE id = -5", "-5"),
        ("SELECT * FROM clients.accounts WHERE id =- 5", "=- 5"),
        ("SELECT * FROM finance.bills WHERE issued_on > date '2024-01-01'", "date '2024-01-01'"),
        ("SELECT * FROM finance.bills WHERE issued_on > now() - interval '1 day'", "'1 day'"),
        ("SELECT * FROM clients.accounts WHERE id = abs(5)", "abs(5)"),
        ('SELECT * FROM clients.accounts t1 WHERE t1.id = 5 AND "x1" = 6', "t1.id = $1"),
    ],
)
def test_what_must_stay_literal_stays_in_the_key(sql: str, verbatim: str) -> None:
    norm = normalise(sql)
    assert norm is not None and verbatim in norm.key, norm
    _assert_same([(Action.READ, ("clients.accounts", "finance.bills"), sql, ())])


def test_limits_decide_unbounded_per_text() -> None:
    shaped, _ = _enrichers()
    fields = [
        shaped.sql_fields(Action.READ, ("clients.accounts",), sql, ())
        for sql in (
            "SELECT * FROM clients.accounts WHERE lang = 'de' LIMIT 10",
            "SELECT * FROM clients.accounts WHERE lang = 'nl' LIMIT 1000",
            "SELECT * FROM clients.accounts WHERE lang = 'nl' LIMIT (1000)",
            "SELECT * FROM clients.accounts WHERE lang = 'de' LIMIT (10)",
        )
    ]
    assert [f[3] for f in fields] == [False, True, True, False]


def test_a_parameter_and_the_literal_it_replaces_do_not_share_a_plan() -> None:
    literal = "SELECT * FROM finance.bills WHERE account_id = 5"
    param = "SELECT * FROM finance.bills WHERE account_id = $1"
    norm = normalise(literal)
    assert norm is not None and norm.key == param
    for order in ((literal, param), (param, literal)):
        shaped, _ = _enrichers()
        got = {s: shaped.sql_fields(Action.READ, ("finance.bills",), s, ("9",))[1] for s in order}
        assert got == {literal: ("5",), param: ("9",)}
        assert analyze(literal).predicates[0].values == ("5",)
        assert analyze(param).predicates[0].params == (1,)


def test_existing_parameters_are_numbered_around() -> None:
    sql = "SELECT * FROM finance.bills WHERE account_id = $2 OR account_id = 17 AND x = $1"
    norm = normalise(sql)
    assert norm is not None and norm.base == 3 and "account_id = $3" in norm.key
    _assert_same([(Action.READ, ("finance.bills",), sql, ("a", "4711"))])
    shaped, _ = _enrichers()
    assert shaped.sql_fields(Action.READ, ("finance.bills",), sql, ("a", "4711"))[1] == (
        "17",
        "4711",
    )


@pytest.mark.parametrize(
    "sql",
    [
        # literals and parameters on one column, in every order
        "SELECT 1 FROM clients.accounts WHERE id IN (4, $1, 5) OR id = 6",
        "SELECT 1 FROM clients.accounts WHERE id = 6 OR id IN ($1, 4, 4)",
        # a verbatim literal beside replaced ones on the subject column: exact path
        "SELECT 1 FROM clients.accounts WHERE id IN (-4, 5)",
        "SELECT 1 FROM clients.accounts WHERE id IN (5, -4)",
        "SELECT 1 FROM clients.accounts WHERE id = 5 OR id = CAST(4 AS int)",
        # the same value twice, and empty strings, which the exact path drops
        "SELECT 1 FROM clients.accounts WHERE id = 5 AND id = 5 OR id = 5",
        "SELECT 1 FROM clients.accounts WHERE id = '' OR id = '7'",
        # through a join, a subquery and a CTE
        "SELECT b.* FROM finance.bills b JOIN clients.accounts a ON a.id = b.account_id "
        "WHERE a.id = 2745 AND b.total > 10",
        "SELECT body FROM webmail.messages WHERE mailbox_id IN "
        "(SELECT id FROM webmail.accounts WHERE account_id = 5155)",
        "WITH m AS (SELECT id FROM webmail.accounts WHERE account_id = 5155 LIMIT 3) "
        "SELECT * FROM m WHERE id = 8",
        # writes
        "INSERT INTO clients.contracts (account_id, product) VALUES (12, 'x'), (13, 'y')",
        "INSERT INTO clients.contracts (account_id, product) VALUES ($1, 'x'), (13, $2)",
        "UPDATE clients.accounts SET lang = 'de' WHERE id = 99 RETURNING 1",
        "DELETE FROM finance.bills WHERE account_id = ANY('{1,2}')",
        "SELECT * FROM finance.bills WHERE account_id = '1'::int AND net <> 0",
        # adjacent strings are one literal; literals with indirection do not parse the same
        "SELECT * FROM clients.accounts WHERE full_name = 'a'\n'b'",
        "SELECT * FROM clients.accounts WHERE id = 'x'.y",
        "SELECT * FROM clients.accounts WHERE id = 5[1]",
        # backslashes are plain characters in a standard string
        "SELECT * FROM clients.accounts WHERE full_name = 'a\\'",
        # aggregates and ordering
        "SELECT lang, count(*) FROM clients.accounts WHERE id > 5 GROUP BY lang HAVING "
        "count(*) > 3",
        "SELECT * FROM clients.accounts WHERE id = 5 ORDER BY (SELECT 1 FROM finance.bills "
        "WHERE account_id = 6)",
        "SELECT * FROM clients.accounts WHERE id BETWEEN 5 AND 9 OR NOT id = 3",
        "SELECT * FROM clients.accounts WHERE like 'x'",
    ],
)
def test_tricky_statements_enrich_as_the_exact_text(sql: str) -> None:
    _assert_same(
        [(Action.READ, ("clients.accounts", "finance.bills", "webmail.accounts"), sql, ("9",))]
    )


def test_subject_ids_are_bound_per_text() -> None:
    shaped, _ = _enrichers()
    sql = "SELECT * FROM clients.accounts WHERE id IN ({}, {})"
    for a in range(50):
        fields = shaped.sql_fields(Action.READ, ("clients.accounts",), sql.format(a, a + 1000), ())
        assert fields[1] == (str(a), str(a + 1000)) and not fields[3]
    assert len(shaped._shape_plans) == 1


def test_the_caches_stay_bounded() -> None:
    analysis = importlib.import_module("breachwatch.sql.analyze")  # the package re-exports
    enrich = importlib.import_module("breachwatch.sql.enrich")  # a function as ``analyze``
    shaped, _ = _enrichers()
    for n in range(enrich._PLAN_LIMIT + 10):
        # each text its own shape (the table name differs), so both caches fill
        shaped.sql_fields(Action.READ, ("t",), f"SELECT * FROM t{n} WHERE id = {n}", ())
    assert len(shaped._shape_plans) <= enrich._PLAN_LIMIT
    assert len(shaped._plans) <= enrich._PLAN_LIMIT
    assert len(analysis._TEMPLATES) <= analysis._TEMPLATE_LIMIT


_LITERALS = st.one_of(
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(["007", "1.50", ".5e3", "2147483648", "0", "''", "'it''s'", "'a\\'"]),
    st.text(st.sampled_from("ab'% ,;-()$\n"), max_size=6).map(
        lambda t: "'" + t.replace("'", "''") + "'"
    ),
    st.sampled_from(
        ["date '2024-01-01'", "-5", "- 5", "CAST(4 AS int)", "$1", "$2", "NULL", "abs(3)"]
    ),
)
_TEMPLATES = [
    "SELECT * FROM clients.accounts WHERE id = {0}",
    "SELECT * FROM clients.accounts a WHERE a.id IN ({0}, {1}) OR a.id = {2}",
    "SELECT * FROM clients.accounts WHERE lang = {0} LIMIT {1}",
    "SELECT b.* FROM finance.bills b JOIN clients.accounts a ON a.id = b.account_id "
    "WHERE a.id = {0} AND b.net_cents > {1} ORDER BY {2}",
    "INSERT INTO finance.bills (account_id, net_cents) VALUES ({0}, {1}), ({2}, 3)",
    "UPDATE webmail.accounts SET last_login_ip = {0} WHERE account_id = ANY({1})",
    "DELETE FROM helpdesk.cases WHERE account_id = {0} AND status <> {1}::text",
    "SELECT count(*) FROM clients.accounts WHERE id BETWEEN {0} AND {1} GROUP BY {2}",
    "WITH m AS (SELECT id FROM webmail.accounts WHERE account_id = {0}) "
    "SELECT * FROM m WHERE id = {1} OFFSET {2}",
]


@given(
    st.sampled_from(_TEMPLATES),
    st.lists(_LITERALS, min_size=3, max_size=3),
)
@settings(max_examples=300, deadline=None, database=None)
def test_random_literals_enrich_as_the_exact_text(template: str, literals: list[str]) -> None:
    sql = template.format(*literals)
    objects = ("clients.accounts", "finance.bills", "webmail.accounts", "helpdesk.cases")
    _assert_same([(Action.READ, objects, sql, ("5", "{7,8}"))])
