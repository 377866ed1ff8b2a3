"""Alert fatigue is a defect: one cause, one finding, with a count.

The incident side keys a finding by its first evidence, so a finding cannot be amended once
emitted. The :class:`Suppressor` therefore emits the FIRST finding of a (rule, actor, cause)
key and, within the suppression window, only counts further occurrences in its own state. It
emits again when the window has expired (the new finding says how many occurrences were
merged into the previous one) or when the severity rises (the graver reading must reach
people at once). State is bounded (oldest keys dropped) and JSON-serialisable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict

from breachwatch.detection.findings import Finding, Severity

Key = tuple[str, str, str]


@dataclass(slots=True)
class _Entry:
    first: datetime  # time of the emitted finding
    until: datetime  # window end; the next occurrence at or after it is emitted again
    severity: Severity
    merged: int = 0  # occurrences counted into the emitted finding since it was emitted
    emitted: int = 1  # findings emitted for this key so far


class _EntryState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rule: str
    actor: str
    cause: str
    first: AwareDatetime
    until: AwareDatetime
    severity: Severity
    merged: int
    emitted: int


class Suppressor:
    def __init__(self, window: timedelta, max_keys: int = 50_000) -> None:
        self.window = window
        self.max_keys = max_keys
        self._entries: dict[Key, _Entry] = {}

    def merged(self, rule: str, actor: str, cause: str) -> int:
        """How many occurrences were merged into the last finding of this key."""
        entry = self._entries.get((rule, actor, cause))
        return entry.merged if entry else 0

    def admit(
        self, finding: Finding, cause: str, *, window: timedelta | None = None
    ) -> Finding | None:
        """The finding to emit, or None when it only adds to an earlier one."""
        actor = finding.person or finding.actor
        key = (finding.rule, actor, cause)
        now = finding.time
        entry = self._entries.get(key)
        span = window or self.window
        if entry is not None and now < entry.until:
            if finding.severity.rank <= entry.severity.rank:
                entry.merged += 1
                return None
            note = (
                f" Severity rose from {entry.severity.value} to {finding.severity.value}; "
                f"{entry.merged + 1} occurrence(s) of this cause since "
                f"{entry.first:%Y-%m-%d %H:%M:%S %Z}."
            )
            entry.severity = finding.severity
            entry.merged = 0
            entry.emitted += 1
            return replace(finding, explanation=finding.explanation + note)
        if entry is not None:
            if entry.merged:
                note = (
                    f" Continues an earlier finding of {entry.first:%Y-%m-%d %H:%M:%S %Z}, "
                    f"into which {entry.merged} further occurrence(s) were merged."
                )
                finding = replace(finding, explanation=finding.explanation + note)
            del self._entries[key]
        self._entries[key] = _Entry(first=now, until=now + span, severity=finding.severity)
        if len(self._entries) > self.max_keys:
            del self._entries[next(iter(self._entries))]
        return finding

    def sweep(self, now: datetime) -> None:
        """Forget keys whose window ended long ago (their count is no longer news)."""
        for key in [k for k, e in self._entries.items() if e.until + self.window <= now]:
            del self._entries[key]

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            _EntryState(
                rule=k[0],
                actor=k[1],
                cause=k[2],
                first=e.first,
                until=e.until,
                severity=e.severity,
                merged=e.merged,
                emitted=e.emitted,
            ).model_dump(mode="json")
            for k, e in self._entries.items()
        ]

    def restore(self, data: Any) -> None:
        states = [_EntryState.model_validate(item) for item in data]
        self._entries = {
            (s.rule, s.actor, s.cause): _Entry(s.first, s.until, s.severity, s.merged, s.emitted)
            for s in states[-self.max_keys :]
        }
