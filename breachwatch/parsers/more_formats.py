"""Builders of the non-PostgreSQL formats from a source's ``options`` (used by the registry).

Each refuses ill-typed options with a ValueError that names the option, so ``check-config``
points at the line to fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from breachwatch.parsers.auditd import AuditdFormat
from breachwatch.parsers.base import LogFormat
from breachwatch.parsers.mariadb_audit import MariaAuditFormat
from breachwatch.parsers.web_access import EXPORT_PATHS, EXPORT_QUERY, WebAccessFormat

MARIADB_OPTIONS = frozenset({"timezone", "query_log_limit"})
WEB_OPTIONS = frozenset({"routes", "json_fields", "export_paths", "export_query", "timezone"})
AUDITD_OPTIONS = frozenset({"uid_map", "watches"})


def _text(options: Mapping[str, Any], key: str, default: str) -> str:
    value = options.get(key, default)
    if not isinstance(value, str) or not value:
        raise ValueError(f"option {key!r} must be a non-empty string")
    return value


def _strings(options: Mapping[str, Any], key: str, default: Sequence[str]) -> tuple[str, ...]:
    value = options.get(key, default)
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"option {key!r} must be a list of strings")
    if not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"option {key!r} must be a list of non-empty strings")
    return tuple(value)


def _mapping(options: Mapping[str, Any], key: str, *, scalar_keys: bool = False) -> dict[str, str]:
    """A mapping of strings to strings; ``scalar_keys`` also takes numbers as keys (uids)."""
    value = options.get(key) or {}
    if not isinstance(value, Mapping):
        raise ValueError(f"option {key!r} must be a mapping")
    out: dict[str, str] = {}
    for k, v in value.items():
        key_ok = isinstance(k, str) or (scalar_keys and isinstance(k, int) and k >= 0)
        if not key_ok or isinstance(k, bool) or not isinstance(v, str) or not v:
            raise ValueError(f"option {key!r} must map names to non-empty strings (at {k!r})")
        out[str(k)] = v
    return out


def build_mariadb_audit(options: Mapping[str, Any]) -> LogFormat:
    limit = options.get("query_log_limit", 1024)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError("option 'query_log_limit' must be a positive integer (bytes)")
    return MariaAuditFormat(_text(options, "timezone", "UTC"), limit)


def build_web_access(options: Mapping[str, Any]) -> LogFormat:
    query = options.get("export_query", EXPORT_QUERY)
    if not isinstance(query, Mapping):
        raise ValueError("option 'export_query' must map query parameters to lists of values")
    export_query = {str(k): _strings(query, k, ()) for k in query}
    return WebAccessFormat(
        routes=options.get("routes", ()),
        json_fields=_mapping(options, "json_fields") if "json_fields" in options else None,
        export_paths=_strings(options, "export_paths", EXPORT_PATHS),
        export_query=export_query,
        timezone=_text(options, "timezone", "UTC"),
    )


def build_auditd(options: Mapping[str, Any]) -> LogFormat:
    return AuditdFormat(
        _mapping(options, "uid_map", scalar_keys=True), _mapping(options, "watches")
    )
