"""Statement shapes: a PostgreSQL statement with its literals replaced by placeholders.

``SELECT * FROM clients.accounts WHERE id = 1048`` and ``... id = 1049`` have one shape,
``SELECT * FROM clients.accounts WHERE id = $1``, and the literals ``("1048",)`` and
``("1049",)``. Analysing the shape once and binding the literals back gives what analysing each
text gives (:func:`breachwatch.sql.analyze.analyze`), for a dictionary look-up per text.

The normaliser is a small lexer, and conservative: a literal is replaced only where a
parameter parses to the same tree with a parameter in the literal's place (after ``=``, ``<>``,
``IN (``, ``VALUES (``, ``AND``, ...). Everything else stays verbatim in the shape text, so it is
part of the key: LIMIT/OFFSET/FETCH counts (the unbounded rule compares them to a bound),
``ORDER BY 1``/``GROUP BY 1``, type modifiers (``varchar(20)``), function arguments, typed
literals (``date '...'``), negative numbers (the parser folds ``-5`` into one constant, but not
``-$1``). Whatever the lexer is not sure of gives no shape at all, and the caller analyses the
exact text: comments, dollar quotes, E''/U&''/B''/X''/N'' strings, numbers glued to a name
(``1e``, ``0x1F``, ``1_000``), more than one statement, statements other than
SELECT/INSERT/UPDATE/DELETE/WITH (DDL, COPY, SET, ... take literals where no parameter may stand).
Statements that already carry ``$n`` parameters get placeholders numbered after the highest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WS = r"[ \t\n\r\f\v]"
_NAME = r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*"
# One token per match, after optional white space. A ``run`` is names, commas and dots in a
# row (``a.full_name, a.email FROM clients.accounts a WHERE a.id``): literals never occur
# inside one, and only its last item (``last``) decides what a following literal is, so one
# match stands for many tokens. ``other`` is anything the lexer does not know: no shape.
_TOKEN_RE = re.compile(
    rf"""{_WS}*(?:
       (?P<run>(?:(?P<last>{_NAME}|,|\.(?![0-9])){_WS}*)+)
      |(?P<str>'(?:[^']|'')*')
      |(?P<qid>"(?:[^"]|"")*")
      |(?P<param>\$[0-9]+)
      |(?P<num>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)
      |(?P<op>[-+*/<>=~!@#%^&|?]+)
      |(?P<punct>::|:=|[:()\[\];])
      |(?P<other>.)
      |(?P<end>\Z))""",
    re.VERBOSE | re.DOTALL,
)
_START_RE = re.compile(
    rf"{_WS}*(?:SELECT|INSERT|UPDATE|DELETE|WITH)(?![A-Za-z0-9_$\x80-\U0010ffff])", re.I
)
# From these on, to the end of the enclosing parenthesis, every literal stays verbatim; any
# BY (ORDER BY 1, GROUP BY 1, PARTITION BY) counts, which only keeps more.
_KEEP_RE = re.compile(r"\b(?:LIMIT|OFFSET|FETCH|BY)\b", re.I)
_NEXT_RE = re.compile(rf"{_WS}*(.?)", re.DOTALL)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_$0123456789")
# Characters that, right after a number, make it something else (1e, 0x1F, 1_000, 1.2.3, 5$).
_GLUED = _NAME_CHARS | {"."}
# After these a literal is a plain expression operand, as a parameter would be.
_VALUE_KEYWORDS = frozenset(
    {
        "SELECT", "WHERE", "AND", "OR", "NOT", "ON", "WHEN", "THEN", "ELSE", "BETWEEN", "IN",
        "LIKE", "ILIKE", "VALUES", "HAVING", "ANY", "ALL", "SOME", "EXISTS", "RETURNING",
    }
)  # fmt: skip
_COMPARISONS = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
_INT4_MAX = 2**31 - 1
_MAX_PARAM_DIGITS = 5


@dataclass(frozen=True, slots=True)
class Normalised:
    """``key``: the statement with placeholders ``$base``, ``$base+1``, ...; ``literals``: the
    replaced literals in that order, as the parser gives their values (``'it''s'`` -> ``it's``,
    ``007`` -> ``7``)."""

    key: str
    literals: tuple[str, ...]
    base: int


def _number_value(text: str) -> str:
    # pglast gives an integer that fits int4 as Integer (leading zeros gone), any other number
    # as Float with the text as written.
    if text.isdigit():
        value = int(text)
        if value <= _INT4_MAX:
            return str(value)
    return text


def normalise(sql: str) -> Normalised | None:
    """The shape of ``sql``, or None when the exact text must be analysed."""
    if _START_RE.match(sql) is None:
        return None
    pieces: list[str] = []
    literals: list[tuple[str, int]] = []  # (value, index of its placeholder piece)
    done = 0
    max_param = 0
    # One frame per open parenthesis: [operands are plain expressions, literals stay verbatim].
    frames: list[list[bool]] = [[True, False]]
    frame = frames[0]
    prev_kind, prev_text = "", ""
    for m in _TOKEN_RE.finditer(sql):
        kind = m.lastgroup
        if kind == "run":
            run = m.group("run")
            last = m.group("last")
            end = m.end()
            if end < len(sql) and sql[end] in "'\"" and run[-1] in _NAME_CHARS:
                return None  # E'..', B'..', X'..', N'..', date'..', name"x"
            upper = run.upper()  # substring tests first: the regex costs more than they do
            if ("BY" in upper or "LIMIT" in upper or "OFFSET" in upper or "FETCH" in upper) and (
                _KEEP_RE.search(run)
            ):
                frame[1] = True
            prev_kind, prev_text = ("punct" if last in ",." else "id"), last
            continue
        if kind == "str" or kind == "num":
            text = m.group(kind)
            start, end = m.span(kind)
            nxt = _NEXT_RE.match(sql, end).group(1)  # type: ignore[union-attr]
            if _glued(sql, end):
                return None  # 1e5, 0x1F; and 'a'0, whose placeholder would read $10
            if (
                not frame[1]
                and prev_kind != "str"  # 'a'\n'b' is one literal
                and nxt not in ("[", ".", "(", "'")  # ($1).x, $1[1] parse, 'a'.x does not
                and _value_context(prev_kind, prev_text, frame[0])
            ):
                pieces.append(sql[done:start])
                value = text[1:-1].replace("''", "'") if kind == "str" else _number_value(text)
                literals.append((value, len(pieces)))
                pieces.append("")
                done = end
        elif kind == "punct":
            text = m.group(kind)
            if text == "(" or text == "[":
                expr = (
                    _value_context(prev_kind, prev_text, frame[0])
                    if text == "("
                    else prev_kind == "id" and prev_text.upper() == "ARRAY"
                )
                frame = [expr, frame[1]]
                frames.append(frame)
            elif text == ")" or text == "]":
                if len(frames) == 1:
                    return None
                frames.pop()
                frame = frames[-1]
            elif text == ";" and sql[m.end() :].strip():
                return None  # several statements; a trailing ; is fine
        elif kind == "op":
            text = m.group(kind)
            if "--" in text or "/*" in text:
                return None  # a comment
            if text[-1] == "&" and sql[m.end() : m.end() + 1] in ("'", '"'):
                return None  # U&'...', U&"..."
        elif kind == "param":
            text = m.group(kind)
            end = m.end()
            if len(text) > _MAX_PARAM_DIGITS + 1 or _glued(sql, end):
                return None
            max_param = max(max_param, int(text[1:]))
        elif kind == "qid":
            text = m.group(kind)
        elif kind == "end":
            continue
        else:
            return None  # backticks, backslashes, a lone $ (dollar quote), an unclosed quote
        prev_kind, prev_text = kind or "", text
    if len(frames) != 1:
        return None
    base = max_param + 1
    if not literals:
        return Normalised(sql, (), base)
    for n, (_, at) in enumerate(literals):
        pieces[at] = f"${base + n}"
    pieces.append(sql[done:])
    return Normalised("".join(pieces), tuple(v for v, _ in literals), base)


def _glued(sql: str, end: int) -> bool:
    """Whether a name character or a dot follows right at ``end`` (1e, 0x1F, 1_000, 5é)."""
    return end < len(sql) and (sql[end] in _GLUED or sql[end] >= "\x80")


def _value_context(prev_kind: str, prev_text: str, in_expression: bool) -> bool:
    """Whether what follows the previous token is a plain expression operand."""
    if prev_kind == "op":
        return prev_text in _COMPARISONS
    if prev_kind == "punct":
        return prev_text in ("(", ",", "[") and in_expression
    if prev_kind == "id":
        return prev_text.upper() in _VALUE_KEYWORDS
    return False
