"""What detectors produce."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TypeAlias

from breachwatch.events import AccessEvent, SourcePosition, fast_init


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3, Severity.CRITICAL: 4}


# fast_init: the unbounded-read detector alone builds one per bulk read (tens of thousands a
# day), and the generated frozen __init__ was most of that cost.
@fast_init
@dataclass(frozen=True, slots=True)
class Finding:
    """One rule or detector firing on one event (or a window of events)."""

    rule: str  # stable id, e.g. "ntk.outside_grants"
    severity: Severity
    time: datetime  # time of the (last) event that triggered it, timezone-aware
    actor: str
    store: str
    explanation: str  # one or two sentences a security officer can read
    controls: tuple[str, ...]  # e.g. ("ISO27001:2022 A.5.15", "GDPR Art. 5(1)(f)")
    evidence: tuple[SourcePosition, ...]
    person: str | None = None
    objects: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()  # data categories touched, from the data map

    @property
    def key(self) -> str:
        """Stable identity: the same rule on the same records is the same finding."""
        first = self.evidence[0] if self.evidence else None
        where = f"{first.file_id or first.path}@{first.offset}" if first else self.time.isoformat()
        return f"{self.rule}|{self.store}|{where}"


# A detector looks at one event (with whatever state it keeps) and says what it found;
# "nothing" is an empty list, never an exception.
Detector: TypeAlias = Callable[[AccessEvent], list[Finding]]
