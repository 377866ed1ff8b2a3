"""Named schedules: business hours in a time zone, with on-call exceptions.

::

    hours:
      business:
        timezone: Europe/Brussels            # default
        windows: [{days: [mon, tue, wed, thu, fri], start: "07:00", end: "19:00"}]
        on_call: [{person: tom, start: 2025-06-20T19:00, end: 2025-06-21T07:00}]

A grant with ``hours: business`` covers an access only inside a window (local time of the
schedule's zone, so daylight saving is the zone's business) or while the person is on call.
Change windows for privileged work are schedules too.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import Field, PrivateAttr, model_validator

from breachwatch.detection.policy_types import Model, Name, TimeOfDay, ZoneName


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


_INDEX = {day: i for i, day in enumerate(Weekday)}
WORKDAYS = (Weekday.MON, Weekday.TUE, Weekday.WED, Weekday.THU, Weekday.FRI)


class Window(Model):
    days: tuple[Weekday, ...] = Field(default=WORKDAYS, min_length=1)
    start: TimeOfDay
    end: TimeOfDay

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end <= self.start:
            raise ValueError("end must be after start (split a window that spans midnight)")
        return self


class OnCall(Model):
    person: Name
    start: datetime  # naive values are in the schedule's zone
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> OnCall:
        if (self.start.tzinfo is None) != (self.end.tzinfo is None) or self.end <= self.start:
            raise ValueError("end must be after start (both with or both without an offset)")
        return self


class Schedule(Model):
    timezone: ZoneName = "Europe/Brussels"
    windows: tuple[Window, ...] = Field(min_length=1)
    on_call: tuple[OnCall, ...] = ()

    _zone: ZoneInfo = PrivateAttr()
    _days: tuple[tuple[tuple[Any, Any], ...], ...] = PrivateAttr()
    _on_call: tuple[tuple[str, datetime, datetime], ...] = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        zone = ZoneInfo(self.timezone)
        self._zone = zone
        per_day: list[list[tuple[Any, Any]]] = [[] for _ in range(7)]
        for window in self.windows:
            for day in window.days:
                per_day[_INDEX[day]].append((window.start, window.end))
        self._days = tuple(tuple(spans) for spans in per_day)
        self._on_call = tuple(
            (
                o.person,
                o.start if o.start.tzinfo else o.start.replace(tzinfo=zone),
                o.end if o.end.tzinfo else o.end.replace(tzinfo=zone),
            )
            for o in self.on_call
        )

    def in_window(self, when: datetime) -> bool:
        local = when.astimezone(self._zone)
        clock = local.time()
        return any(start <= clock < end for start, end in self._days[local.weekday()])

    def allows(self, when: datetime, person: str | None) -> bool:
        """Inside a window, or ``person`` is on call at ``when``."""
        if self.in_window(when):
            return True
        return person is not None and any(
            who == person and start <= when < end for who, start, end in self._on_call
        )

    def local(self, when: datetime) -> datetime:
        return when.astimezone(self._zone)
