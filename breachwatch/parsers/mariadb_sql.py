"""What a MariaDB statement is (kind, tables), for the server_audit parser. Pure and cached.

pglast (PostgreSQL's parser) reads most of what staff type; MariaDB-only syntax (backticks,
``/*!40001 ... */``, ``LIMIT 0, 10``, ``SHOW``) falls back to sqlglot's MySQL dialect; what
neither understands (a statement cut at the log limit) falls back to its first keyword.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp

from breachwatch.sql.analyze import analyze

_OUTFILE_RE = re.compile(r"\bINTO\s+(?:OUT|DUMP)FILE\b", re.IGNORECASE)
_COMMENT_RE = re.compile(r"\s*(?:/\*.*?\*/\s*|--[^\n]*\n\s*|#[^\n]*\n\s*)*", re.DOTALL)
_WORD_RE = re.compile(r"[A-Za-z]+")
_KEYWORD_KINDS = {
    "SELECT": "select",
    "WITH": "select",
    "TABLE": "select",
    "INSERT": "insert",
    "REPLACE": "insert",
    "LOAD": "insert",
    "UPDATE": "update",
    "DELETE": "delete",
    "TRUNCATE": "delete",
    "CREATE": "ddl",
    "ALTER": "ddl",
    "DROP": "ddl",
    "RENAME": "ddl",
}
_GLOT_KINDS: tuple[tuple[type[Any], str], ...] = (
    (exp.Insert, "insert"),
    (exp.Update, "update"),
    (exp.Delete, "delete"),
    (exp.TruncateTable, "delete"),
    (exp.Create, "ddl"),
    (exp.Drop, "ddl"),
    (exp.Alter, "ddl"),
    (exp.Query, "select"),
)
# Longer statements get the first-keyword reading only: both parsers can be quadratic on hostile
# text (nested "/*" comments). server_audit cuts queries at 1024 bytes unless told otherwise.
MAX_PARSED = 4096
_RANK = ("copy_to", "delete", "update", "insert", "copy_from", "ddl", "select", "other")

logging.getLogger("sqlglot").setLevel(logging.ERROR)  # it warns about unsupported syntax


@dataclass(frozen=True, slots=True)
class MariaStatement:
    kind: str  # select insert update delete ddl other unparsed (as in sql.analyze)
    tables: tuple[str, ...] = ()  # as written: ``finance.bills`` or ``bills``
    export: bool = False  # INTO OUTFILE / DUMPFILE: the rows leave as a file on the server
    command: str | None = None  # the first keyword, upper case


def command_of(sql: str) -> str | None:
    """The statement's first keyword after leading comments (``SELECT``, ``SHOW``, ...)."""
    start = _COMMENT_RE.match(sql)
    word = _WORD_RE.match(sql, start.end() if start else 0)
    return word.group(0).upper() if word else None


def _glot(sql: str) -> tuple[str, tuple[str, ...]] | None:
    try:
        trees = [t for t in sqlglot.parse(sql, read="mysql") if t is not None]
    except Exception:  # sqlglot raises ParseError/TokenError, and others on odd input
        return None
    if not trees:
        return None
    kinds: list[str] = []
    tables: dict[str, None] = {}
    for tree in trees:
        kinds.append(next((k for cls, k in _GLOT_KINDS if isinstance(tree, cls)), "other"))
        ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
        for table in tree.find_all(exp.Table):
            name = table.name
            if not name or (not table.db and name in ctes):
                continue
            tables[f"{table.db}.{name}" if table.db else name] = None
    return min(kinds, key=_RANK.index), tuple(tables)


@lru_cache(maxsize=4096)
def understand(sql: str) -> MariaStatement:
    """Kind and tables of ``sql``; never raises."""
    command = command_of(sql)
    export = _OUTFILE_RE.search(sql) is not None
    if len(sql) > MAX_PARSED:
        return MariaStatement(_KEYWORD_KINDS.get(command or "", "unparsed"), (), export, command)
    shape = analyze(sql)
    if shape.kind != "unparsed":
        return MariaStatement(shape.kind, shape.tables, export, command)
    glot = _glot(sql)
    if glot is not None and (glot[0] != "other" or command not in _KEYWORD_KINDS):
        return MariaStatement(glot[0], glot[1], export, command)
    kind = _KEYWORD_KINDS.get(command or "", "unparsed" if command else "other")
    return MariaStatement(kind, (), export, command)
