from collections.abc import Callable
from typing import Any

class Builder:
    def __init__(self, cls: type, names: tuple[str, ...]) -> None: ...
    def __call__(self, *values: Any) -> Any: ...

class Lane:
    def __init__(
        self,
        record_builder: Builder,
        matched_builder: Builder,
        attached: frozenset[str],
        line_type: type,
        head_type: type,
        fast: dict[Any, Any],
        tags: dict[Any, Any],
        general_fields: Callable[..., Any],
        decode_parameters: Callable[..., Any],
        event_tags: Callable[..., Any],
        audit_line_py: Callable[..., Any],
        event_builder: Builder,
        position_builder: Builder,
        no_refs: object,
        row_actions: frozenset[Any],
        action_read: object,
        action_export: object,
    ) -> None: ...
    def push_many(
        self,
        lines: list[Any],
        path: str,
        split: Callable[[str], Any],
        heads: dict[str, Any],
        time_ok: Callable[[str], Any],
        fast: bool,
        last_time: str | None,
        held: list[Any],
        matches: list[Any],
        held_key: str | None,
    ) -> tuple[list[Any], list[Any], list[Any], str | None, str | None]: ...
    def run(
        self,
        records: list[Any],
        store: str,
        enricher: Any,
        time_cache: Callable[[str], Any],
        time_dict: dict[str, Any],
        parse_rest: Callable[..., Any],
        detect: Callable[[Any], list[Any]],
        findings: list[Any],
        failures: list[tuple[Any, Any]],
    ) -> tuple[int, Any]: ...
    def audit_line(
        self,
        record: Any,
        store: str,
        enricher: Any,
        time_cache: Callable[[str], Any],
        time_dict: dict[str, Any],
    ) -> Any: ...

def lines_of(
    raws: list[bytes],
    has_cr: bool,
    offset: int,
    line_no: int,
    max_line_bytes: int,
    line_builder: Builder,
) -> tuple[list[Any], int, int]: ...
