"""The data-subject registry: Art. 18 restrictions, Art. 21 objections, Art. 17 erasures done,
contract ends. Each register is a table (file or HTTP) with its own column names::

    registry:
      timezone: Europe/Brussels             # for times written without an offset
      restrictions: {source: {file: restrictions.csv}, since: restricted_since, until: lifted_at}
      objections:   {source: {file: optouts.csv}, since: received_at}
      erasures:     {source: {file: erasures.csv}, since: completed_at}   # empty = not done
      contracts:    {source: {file: contracts.csv}, until: ends_on}       # empty = running

``where`` keeps only rows whose columns hold one of the listed values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import Field

from breachwatch.detection.policy_types import Model, Name, Source, ZoneName
from breachwatch.detection.reference import Rows, parse_time


class Register(Model):
    source: Source
    subject: Name = "account_id"
    since: Name | None = None
    until: Name | None = None
    where: dict[Name, tuple[str, ...]] = Field(default_factory=dict)


class Registry(Model):
    timezone: ZoneName = "Europe/Brussels"
    restrictions: Register | None = None
    objections: Register | None = None
    erasures: Register | None = None
    contracts: Register | None = None

    def registers(self) -> tuple[tuple[str, Register], ...]:
        named = (
            ("restrictions", self.restrictions),
            ("objections", self.objections),
            ("erasures", self.erasures),
            ("contracts", self.contracts),
        )
        return tuple((name, reg) for name, reg in named if reg is not None)


Span = tuple[datetime | None, datetime | None]
_NEVER: tuple[Span, ...] = ()


@dataclass(frozen=True, slots=True)
class SubjectRegistry:
    """Immutable: subject -> spans per register; a span is (since, until), None = open."""

    restrictions: dict[str, tuple[Span, ...]] = field(default_factory=dict)
    objections: dict[str, tuple[Span, ...]] = field(default_factory=dict)
    erasures: dict[str, tuple[Span, ...]] = field(default_factory=dict)
    contracts: dict[str, tuple[Span, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, config: Registry, tables: Sequence[Rows]) -> SubjectRegistry:
        zone = ZoneInfo(config.timezone)
        built: dict[str, dict[str, tuple[Span, ...]]] = {}
        for (name, register), rows in zip(config.registers(), tables, strict=True):
            spans: dict[str, list[Span]] = {}
            for row in rows:
                if any(row.get(col, "") not in ok for col, ok in register.where.items()):
                    continue
                subject = row.get(register.subject, "").strip()
                if not subject:
                    continue
                since = parse_time(row.get(register.since, ""), zone) if register.since else None
                until = parse_time(row.get(register.until, ""), zone) if register.until else None
                if name == "erasures" and register.since and since is None:
                    continue  # requested or approved, not done yet
                spans.setdefault(subject, []).append((since, until))
            built[name] = {k: tuple(v) for k, v in spans.items()}
        return cls(**built)

    @staticmethod
    def _active(spans: tuple[Span, ...], when: datetime) -> bool:
        return any(
            (since is None or since <= when) and (until is None or when < until)
            for since, until in spans
        )

    def restricted(self, subject: str, when: datetime) -> bool:
        return self._active(self.restrictions.get(subject, _NEVER), when)

    def objected(self, subject: str, when: datetime) -> bool:
        return self._active(self.objections.get(subject, _NEVER), when)

    def erased(self, subject: str, when: datetime) -> bool:
        return any(s is None or s <= when for s, _ in self.erasures.get(subject, _NEVER))

    def contract_ended(self, subject: str) -> datetime | None:
        """When the subject's last contract ended; None while one runs or none is known."""
        spans = self.contracts.get(subject)
        if not spans or any(until is None for _, until in spans):
            return None
        return max(until for _, until in spans if until is not None)
