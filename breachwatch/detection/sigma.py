"""Sigma rules on AccessEvents: a small, hand-written evaluator.

Supported (https://sigmahq.io/docs/basics/rules.html):

- ``detection`` with named selections: a map is an AND of its fields, a list of maps an OR,
  a list of plain values is a keyword search (statement, detail, objects, actor); a list of
  values for one field is an OR, or an AND with ``|all``. Modifiers ``contains``,
  ``startswith``, ``endswith``, ``re``, ``all``. Plain values compare case-insensitively,
  with ``*`` and ``?`` wildcards; ``null`` matches an absent field.
- ``condition``: ``and``, ``or``, ``not``, parentheses, ``1 of sel*``, ``all of sel*``,
  ``1 of them``, ``all of them`` (a list of conditions is an OR).
- correlation rules ``event_count`` and ``value_count`` with ``rules``, ``group-by``,
  ``timespan`` and ``condition`` (``gte``/``gt``/``eq``; ``field`` for value_count). Rules
  referenced by a correlation emit nothing themselves unless the correlation has
  ``generate: true``.

Fields are AccessEvent fields: ``actor`` (alias ``user``), ``person``, ``action``, ``object``
/ ``objects``, ``client`` (alias ``src_ip``), ``application`` (alias ``application_name``),
``database``, ``statement`` (alias ``query``), ``store``, ``subjects``, ``tags``,
``command``, ``detail``, ``session``, ``columns``. Multi-valued fields match when any value
does. ``logsource`` is kept for information and does not filter: one breachwatch source
name per rule is not something Sigma can express.

Each match is a Finding ``sigma.<id>`` with the rule's ``level`` as severity (informational
-> low) and its ``tags`` (``attack.t1078`` ...) as controls.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from breachwatch.detection.anomaly_policy import _duration
from breachwatch.detection.findings import Finding, Severity
from breachwatch.detection.suppression import Suppressor
from breachwatch.events import AccessEvent, SourcePosition


class SigmaError(ValueError):
    """A rule file that cannot be used; the message names file and rule."""


_Values = Callable[[AccessEvent], tuple[str, ...]]


def _one(value: object) -> tuple[str, ...]:
    return () if value is None else (str(value),)


FIELDS: dict[str, _Values] = {
    "actor": lambda e: (e.actor,),
    "person": lambda e: _one(e.person),
    "action": lambda e: (e.action.value,),
    "object": lambda e: e.objects,
    "objects": lambda e: e.objects,
    "client": lambda e: _one(e.client),
    "application": lambda e: _one(e.application),
    "database": lambda e: _one(e.database),
    "statement": lambda e: _one(e.statement),
    "store": lambda e: (e.store,),
    "subjects": lambda e: e.subjects,
    "tags": lambda e: tuple(sorted(e.tags)),
    "command": lambda e: _one(e.command),
    "detail": lambda e: _one(e.detail),
    "session": lambda e: _one(e.session),
    "columns": lambda e: e.columns,
}
ALIASES = {
    "user": "actor",
    "username": "actor",
    "src_ip": "client",
    "clientip": "client",
    "application_name": "application",
    "query": "statement",
    "table": "object",
}
LEVELS = {
    "informational": Severity.LOW,
    "low": Severity.LOW,
    "medium": Severity.MEDIUM,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
}
_KEYWORD_FIELDS = ("statement", "detail", "objects", "actor")
_MODIFIERS = frozenset({"contains", "startswith", "endswith", "re", "all"})

Matcher = Callable[[AccessEvent], bool]


def _field(name: str) -> _Values:
    key = ALIASES.get(name.lower(), name.lower())
    try:
        return FIELDS[key]
    except KeyError:
        known = ", ".join(sorted(FIELDS))
        raise SigmaError(f"unknown field {name!r} (fields: {known})") from None


def _pattern(value: object, modifiers: set[str]) -> re.Pattern[str]:
    if isinstance(value, bool):
        value = str(value).lower()
    text = str(value)
    if "re" in modifiers:
        try:
            return re.compile(text)
        except re.error as exc:
            raise SigmaError(f"invalid regular expression {text!r}: {exc}") from None
    # Sigma wildcards: * and ?, with \ escaping them.
    body = ""
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in "*?\\":
            body += re.escape(text[i + 1])
            i += 2
            continue
        body += ".*" if char == "*" else "." if char == "?" else re.escape(char)
        i += 1
    if "contains" in modifiers:
        body = f".*{body}.*"
    elif "startswith" in modifiers:
        body = f"{body}.*"
    elif "endswith" in modifiers:
        body = f".*{body}"
    return re.compile(body, re.IGNORECASE | re.DOTALL)


def _value_check(values_of: _Values, value: object, modifiers: set[str], regex: bool) -> Matcher:
    if value is None:
        return lambda e: not any(values_of(e))
    pattern = _pattern(value, modifiers)
    if regex:
        return lambda e: any(pattern.search(v) for v in values_of(e))
    return lambda e: any(pattern.fullmatch(v) for v in values_of(e))


def _field_matcher(spec: str, expected: object) -> Matcher:
    name, *mods = spec.split("|")
    modifiers = set(mods)
    unknown = modifiers - _MODIFIERS
    if unknown:
        raise SigmaError(f"unsupported modifier(s) {sorted(unknown)} in {spec!r}")
    values_of = _field(name)
    wanted = expected if isinstance(expected, list) else [expected]
    if not wanted:
        raise SigmaError(f"{spec!r}: an empty list matches nothing")
    if any(isinstance(v, dict | list) for v in wanted):
        raise SigmaError(f"{spec!r}: values must be scalars")
    regex = "re" in modifiers
    checks = [_value_check(values_of, value, modifiers, regex) for value in wanted]
    if "all" in modifiers:
        return lambda e: all(check(e) for check in checks)
    return lambda e: any(check(e) for check in checks)


def _selection(body: object) -> Matcher:
    if isinstance(body, dict):
        parts = [_field_matcher(str(k), v) for k, v in body.items()]
        return lambda e: all(p(e) for p in parts)
    if isinstance(body, list) and body and all(isinstance(i, dict) for i in body):
        alternatives = [_selection(item) for item in body]
        return lambda e: any(a(e) for a in alternatives)
    if isinstance(body, list | str | int) and body != []:
        keywords = body if isinstance(body, list) else [body]
        patterns = [_pattern(k, {"contains"}) for k in keywords]
        getters = [FIELDS[f] for f in _KEYWORD_FIELDS]
        return lambda e: any(p.fullmatch(v) for g in getters for v in g(e) for p in patterns)
    raise SigmaError("a selection is a map, a list of maps or a list of keywords")


# ---- conditions --------------------------------------------------------------------------
_TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z0-9_*\-.]+)")


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise SigmaError(f"cannot read the condition at {text[pos:]!r}")
        tokens.append(match.group(1))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens


class _Condition:
    """Recursive descent over: or > and > not > atom."""

    def __init__(self, text: str, names: Sequence[str]) -> None:
        self.tokens = _tokens(text)
        self.names = list(names)
        self.pos = 0
        self.used: set[str] = set()

    def parse(self) -> Callable[[Callable[[str], bool]], bool]:
        if not self.tokens:
            raise SigmaError("empty condition")
        node = self._or()
        if self.pos != len(self.tokens):
            raise SigmaError(f"unexpected {self.tokens[self.pos]!r} in the condition")
        return node

    def _peek(self) -> str | None:
        return self.tokens[self.pos].lower() if self.pos < len(self.tokens) else None

    def _take(self) -> str:
        if self.pos >= len(self.tokens):
            raise SigmaError("the condition ends too early")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def _or(self) -> Callable[[Callable[[str], bool]], bool]:
        parts = [self._and()]
        while self._peek() == "or":
            self._take()
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        return lambda hit: any(p(hit) for p in parts)

    def _and(self) -> Callable[[Callable[[str], bool]], bool]:
        parts = [self._not()]
        while self._peek() == "and":
            self._take()
            parts.append(self._not())
        if len(parts) == 1:
            return parts[0]
        return lambda hit: all(p(hit) for p in parts)

    def _not(self) -> Callable[[Callable[[str], bool]], bool]:
        if self._peek() == "not":
            self._take()
            inner = self._not()
            return lambda hit: not inner(hit)
        return self._atom()

    def _atom(self) -> Callable[[Callable[[str], bool]], bool]:
        token = self._take()
        low = token.lower()
        if token == "(":
            inner = self._or()
            if self._take() != ")":
                raise SigmaError("missing ')' in the condition")
            return inner
        if low in {"1", "any", "all"} and self._peek() == "of":
            self._take()
            target = self._take()
            if target.lower() == "them":
                chosen = [n for n in self.names if not n.startswith("_")]
            else:
                chosen = [n for n in self.names if fnmatchcase(n, target)]
            if not chosen:
                raise SigmaError(f"{token} of {target}: no selection matches")
            self.used.update(chosen)
            if low == "all":
                return lambda hit: all(hit(n) for n in chosen)
            return lambda hit: any(hit(n) for n in chosen)
        if token in {")", "and", "or", "of"}:
            raise SigmaError(f"unexpected {token!r} in the condition")
        if token not in self.names:
            raise SigmaError(f"the condition names {token!r}, which is not a selection")
        self.used.add(token)
        return lambda hit: hit(token)


# ---- rules -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SigmaRule:
    id: str
    name: str | None
    title: str
    level: Severity
    tags: tuple[str, ...]
    description: str
    logsource: dict[str, str]
    source: str
    match: Matcher = field(repr=False, compare=False)

    @property
    def rule_id(self) -> str:
        return f"sigma.{self.id}"


@dataclass(frozen=True)
class SigmaCorrelation:
    id: str
    name: str | None
    title: str
    level: Severity
    tags: tuple[str, ...]
    kind: str  # event_count | value_count
    rules: tuple[str, ...]  # ids of the base rules
    group_by: tuple[str, ...]
    timespan: timedelta
    op: str  # gte | gt | eq
    threshold: int
    value_field: str | None
    generate: bool
    source: str

    @property
    def rule_id(self) -> str:
        return f"sigma.{self.id}"


@dataclass
class SigmaRuleSet:
    rules: list[SigmaRule] = field(default_factory=list)
    correlations: list[SigmaCorrelation] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rules) + len(self.correlations)


def _meta(
    doc: dict[str, Any], where: str
) -> tuple[str, str | None, str, Severity, tuple[str, ...]]:
    rule_id = doc.get("id") or doc.get("name")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise SigmaError(f"{where}: a rule needs an id (or a name)")
    title = str(doc.get("title") or rule_id)
    level = str(doc.get("level") or "medium").lower()
    if level not in LEVELS:
        raise SigmaError(f"{where}: level {level!r} is not one of {', '.join(LEVELS)}")
    tags = doc.get("tags") or []
    if not isinstance(tags, list):
        raise SigmaError(f"{where}: tags must be a list")
    name = doc.get("name")
    return rule_id.strip(), str(name) if name else None, title, LEVELS[level], tuple(map(str, tags))


def _rule(doc: dict[str, Any], where: str) -> SigmaRule:
    rule_id, name, title, level, tags = _meta(doc, where)
    detection = doc.get("detection")
    if not isinstance(detection, dict) or "condition" not in detection:
        raise SigmaError(f"{where} ({rule_id}): detection with a condition is required")
    try:
        selections = {
            str(k): _selection(v)
            for k, v in detection.items()
            if k not in {"condition", "timeframe"}
        }
        raw = detection["condition"]
        conditions = raw if isinstance(raw, list) else [raw]
        compiled = [_Condition(str(c), list(selections)).parse() for c in conditions]
    except SigmaError as exc:
        raise SigmaError(f"{where} ({rule_id}): {exc}") from None

    def match(event: AccessEvent) -> bool:
        memo: dict[str, bool] = {}

        def hit(name: str) -> bool:
            found = memo.get(name)
            if found is None:
                found = memo[name] = selections[name](event)
            return found

        return any(c(hit) for c in compiled)

    logsource = doc.get("logsource") or {}
    return SigmaRule(
        rule_id,
        name,
        title,
        level,
        tags,
        str(doc.get("description") or "").strip(),
        {str(k): str(v) for k, v in logsource.items()} if isinstance(logsource, dict) else {},
        where,
        match,
    )


def _correlation(doc: dict[str, Any], where: str) -> SigmaCorrelation:
    rule_id, name, title, level, tags = _meta(doc, where)
    body = doc["correlation"]
    if not isinstance(body, dict):
        raise SigmaError(f"{where} ({rule_id}): correlation must be a map")
    kind = body.get("type")
    if kind not in {"event_count", "value_count"}:
        raise SigmaError(
            f"{where} ({rule_id}): correlation type must be event_count or value_count"
        )
    rules = body.get("rules")
    rules = [rules] if isinstance(rules, str) else rules
    if not isinstance(rules, list) or not rules:
        raise SigmaError(f"{where} ({rule_id}): correlation.rules lists the base rules")
    group_by = body.get("group-by") or []
    group_by = [group_by] if isinstance(group_by, str) else group_by
    for g in group_by:
        _field(str(g))
    try:
        timespan = _duration(str(body.get("timespan", "")))
    except ValueError:
        raise SigmaError(f"{where} ({rule_id}): timespan such as 5m or 1h is required") from None
    condition = body.get("condition")
    if not isinstance(condition, dict):
        raise SigmaError(f"{where} ({rule_id}): condition such as {{gte: 5}} is required")
    ops = [op for op in ("gte", "gt", "eq") if op in condition]
    if len(ops) != 1 or set(condition) - {"gte", "gt", "eq", "field"}:
        raise SigmaError(f"{where} ({rule_id}): condition takes one of gte, gt, eq (and field)")
    threshold = condition[ops[0]]
    if not isinstance(threshold, int) or threshold < 1:
        raise SigmaError(f"{where} ({rule_id}): the condition's count is a positive integer")
    value_field = condition.get("field")
    if kind == "value_count":
        if not isinstance(value_field, str):
            raise SigmaError(f"{where} ({rule_id}): value_count needs condition.field")
        _field(value_field)
    return SigmaCorrelation(
        rule_id,
        name,
        title,
        level,
        tags,
        kind,
        tuple(str(r) for r in rules),
        tuple(str(g) for g in group_by),
        timespan,
        ops[0],
        threshold,
        value_field if kind == "value_count" else None,
        bool(body.get("generate", False)),
        where,
    )


def parse_sigma(text: str, source: str = "<sigma>", *, resolve: bool = True) -> SigmaRuleSet:
    """Rules and correlations of one YAML text (several documents allowed); with
    ``resolve``, correlations must refer to rules of this text."""
    result = SigmaRuleSet()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SigmaError(f"{source}: not valid YAML ({exc})") from None
    for index, doc in enumerate(docs):
        where = f"{source} document {index + 1}"
        if not isinstance(doc, dict):
            raise SigmaError(f"{where}: a Sigma rule is a map")
        if "correlation" in doc:
            result.correlations.append(_correlation(doc, where))
        else:
            result.rules.append(_rule(doc, where))
    return _resolve(result) if resolve else result


def load_sigma(paths: Iterable[Path]) -> SigmaRuleSet:
    """All rules of these files; references of correlations are resolved and checked."""
    result = SigmaRuleSet()
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SigmaError(f"{path}: cannot read the file ({exc})") from None
        found = parse_sigma(text, str(path), resolve=False)
        result.rules += found.rules
        result.correlations += found.correlations
    return _resolve(result)


def _resolve(result: SigmaRuleSet) -> SigmaRuleSet:
    """Unique ids; correlations refer to their base rules by id afterwards."""
    seen: dict[str, str] = {}
    items: list[tuple[str, str]] = [(r.id, r.source) for r in result.rules]
    items += [(c.id, c.source) for c in result.correlations]
    for rule_id, source in items:
        if rule_id in seen:
            raise SigmaError(f"{source}: rule id {rule_id!r} already used in {seen[rule_id]}")
        seen[rule_id] = source
    by_ref = {r.id: r.id for r in result.rules} | {r.name: r.id for r in result.rules if r.name}
    resolved = []
    for corr in result.correlations:
        missing = [r for r in corr.rules if r not in by_ref]
        if missing:
            raise SigmaError(f"{corr.source} ({corr.id}): unknown base rule(s) {missing}")
        resolved.append(replace(corr, rules=tuple(by_ref[r] for r in corr.rules)))
    result.correlations = resolved
    return result


# ---- evaluation --------------------------------------------------------------------------
@dataclass(slots=True)
class _Group:
    hits: deque[tuple[datetime, str | None, SourcePosition]] = field(default_factory=deque)


class SigmaDetector:
    """Findings of Sigma rules and correlations. Correlation windows are held in memory
    (bounded); after a restart a correlation starts counting afresh."""

    MAX_GROUPS = 10_000
    MAX_HITS = 10_000

    def __init__(self, rules: SigmaRuleSet, suppressor: Suppressor | None = None) -> None:
        self.rules = rules
        self._suppressor = suppressor or Suppressor(timedelta(hours=1))
        referenced = {r for c in rules.correlations for r in c.rules}
        generating = {r for c in rules.correlations if c.generate for r in c.rules}
        self._emit_base = {
            r.id for r in rules.rules if r.id not in referenced or r.id in generating
        }
        self._by_base: dict[str, list[SigmaCorrelation]] = {}
        for corr in rules.correlations:
            for base in corr.rules:
                self._by_base.setdefault(base, []).append(corr)
        self._groups: dict[tuple[str, tuple[str, ...]], _Group] = {}

    def __call__(self, event: AccessEvent) -> list[Finding]:
        found: list[Finding] = []
        for rule in self.rules.rules:
            if not rule.match(event):
                continue
            if rule.id in self._emit_base:
                found += self._base_finding(rule, event)
            for corr in self._by_base.get(rule.id, ()):
                found += self._correlate(corr, event)
        return found

    def _base_finding(self, rule: SigmaRule, event: AccessEvent) -> list[Finding]:
        what = f" {rule.description}" if rule.description else ""
        text = (
            f"Sigma rule {rule.title!r} ({rule.id}) matched {event.action.value} by "
            f"{event.actor} on {', '.join(event.objects) or event.store}.{what}"
        )
        finding = Finding(
            rule=rule.rule_id,
            severity=rule.level,
            time=event.time,
            actor=event.actor,
            store=event.store,
            explanation=text,
            controls=rule.tags,
            evidence=(event.position,),
            person=event.person,
            objects=event.objects,
            subjects=event.subjects,
        )
        return [finding]

    def _correlate(self, corr: SigmaCorrelation, event: AccessEvent) -> list[Finding]:
        key_values = tuple(",".join(_field(g)(event)) for g in corr.group_by)
        key = (corr.id, key_values)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
            if len(self._groups) > self.MAX_GROUPS:
                del self._groups[next(iter(self._groups))]
        value = None
        if corr.value_field is not None:
            value = ",".join(_field(corr.value_field)(event)) or None
        group.hits.append((event.time, value, event.position))
        horizon = event.time - corr.timespan
        while group.hits and group.hits[0][0] <= horizon:
            group.hits.popleft()
        while len(group.hits) > self.MAX_HITS:
            group.hits.popleft()
        if corr.kind == "event_count":
            measured = len(group.hits)
            unit = "events"
        else:
            measured = len({v for _, v, _ in group.hits if v is not None})
            unit = f"distinct {corr.value_field} values"
        passed = {
            "gte": measured >= corr.threshold,
            "gt": measured > corr.threshold,
            "eq": measured == corr.threshold,
        }[corr.op]
        if not passed:
            return []
        grouping = ", ".join(f"{g}={v}" for g, v in zip(corr.group_by, key_values, strict=True))
        actor = event.actor
        if "actor" not in [ALIASES.get(g.lower(), g.lower()) for g in corr.group_by]:
            actor = f"group:{grouping}" if grouping else "sigma"
        text = (
            f"Sigma correlation {corr.title!r} ({corr.id}): {measured} {unit} of "
            f"{', '.join(corr.rules)} within {int(corr.timespan.total_seconds())} s"
            f"{' for ' + grouping if grouping else ''} (condition {corr.op} {corr.threshold})."
        )
        finding = Finding(
            rule=corr.rule_id,
            severity=corr.level,
            time=event.time,
            actor=actor,
            store=event.store,
            explanation=text,
            controls=corr.tags,
            evidence=(event.position, *(p for _, _, p in group.hits if p != event.position)),
        )
        admitted = self._suppressor.admit(finding, "|".join(key_values), window=corr.timespan)
        return [admitted] if admitted is not None else []
