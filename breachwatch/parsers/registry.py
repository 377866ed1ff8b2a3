"""Log formats by the name a source's config gives them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from breachwatch.parsers.base import LogFormat
from breachwatch.parsers.jsonlines import JsonLinesFormat
from breachwatch.parsers.more_formats import (
    AUDITD_OPTIONS,
    MARIADB_OPTIONS,
    WEB_OPTIONS,
    build_auditd,
    build_mariadb_audit,
    build_web_access,
)
from breachwatch.parsers.pgaudit import PgauditStderrFormat
from breachwatch.parsers.pgaudit_csvlog import PgauditCsvlogFormat
from breachwatch.parsers.pgaudit_jsonlog import PgauditJsonlogFormat

# PostgreSQL's own default log_line_prefix.
DEFAULT_PG_PREFIX = "%m [%p] "


def _text(options: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = options.get(key, default)
    if not isinstance(value, str) or not value:
        raise ValueError(f"option {key!r} must be a non-empty string")
    return value


def _str_map(options: Mapping[str, Any], key: str) -> dict[str, str] | None:
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"option {key!r} must map strings to strings")
    return dict(value)


def _pgaudit(options: Mapping[str, Any]) -> LogFormat:
    return PgauditStderrFormat(
        _text(options, "log_line_prefix", DEFAULT_PG_PREFIX), _text(options, "timezone", "UTC")
    )


def _pg_csvlog(options: Mapping[str, Any]) -> LogFormat:
    return PgauditCsvlogFormat(_text(options, "timezone", "UTC"))


def _pg_jsonlog(options: Mapping[str, Any]) -> LogFormat:
    return PgauditJsonlogFormat(_text(options, "timezone", "UTC"))


def _jsonl(options: Mapping[str, Any]) -> LogFormat:
    fields = _str_map(options, "fields")
    if fields is None:
        raise ValueError("option 'fields' is required (event field -> JSON key)")
    return JsonLinesFormat(
        fields, _str_map(options, "action_map"), _text(options, "timezone", "UTC")
    )


_BUILDERS: dict[str, tuple[frozenset[str], Callable[[Mapping[str, Any]], LogFormat]]] = {
    "pgaudit_stderr": (frozenset({"log_line_prefix", "timezone"}), _pgaudit),
    "pgaudit_csvlog": (frozenset({"timezone"}), _pg_csvlog),
    "pgaudit_jsonlog": (frozenset({"timezone"}), _pg_jsonlog),
    "jsonl": (frozenset({"fields", "action_map", "timezone"}), _jsonl),
    "mariadb_audit": (MARIADB_OPTIONS, build_mariadb_audit),
    "web_access": (WEB_OPTIONS, build_web_access),
    "auditd": (AUDITD_OPTIONS, build_auditd),
}
FORMAT_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_format(name: str, options: Mapping[str, Any]) -> LogFormat:
    """The format ``name`` configured with ``options``; ValueError names what is wrong
    (unknown format, unknown or ill-typed option, bad prefix or time zone)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown log format {name!r}; known: {', '.join(FORMAT_NAMES)}")
    allowed, build = _BUILDERS[name]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {name}; allowed: {sorted(allowed)}")
    return build(options)
