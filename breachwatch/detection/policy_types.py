"""Small value types shared by the policy sections (durations, times of day, data sources)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

_UNIT_SECONDS = {"y": 365 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_EXAMPLES = {"s": '"90s"', "m": '"10m"', "h": '"2h"', "d": '"1d"', "y": '"2y" (365 days)'}


def duration_parser(units: str = "smhdy") -> Callable[[Any], Any]:
    """A pydantic BeforeValidator for "<whole number><unit>", positive, units from ``units``.
    A bare number is refused: "10" could mean seconds or minutes, and guessing wrong silently
    changes what is detected."""
    pattern = re.compile(rf"(\d+)\s*([{units}])")
    examples = [_EXAMPLES[u] for u in units]
    message = f"a positive duration such as {', '.join(examples[:-1])} or {examples[-1]}"

    def parse(value: Any) -> Any:
        if isinstance(value, timedelta):
            return value
        if isinstance(value, str) and (match := pattern.fullmatch(value.strip())):
            amount, unit = match.groups()
            if int(amount) > 0:
                try:
                    return timedelta(seconds=int(amount) * _UNIT_SECONDS[unit])
                except OverflowError:  # beyond timedelta's 999,999,999 days
                    raise ValueError(message) from None
        raise ValueError(message)

    return parse


def duration_renderer(units: str = "smhdy") -> Callable[[timedelta], str]:
    """The shortest exact rendering of a duration with the given units ("10m", "90s")."""
    sizes = [(u, _UNIT_SECONDS[u]) for u in "ydhm" if u in units]

    def render(value: timedelta) -> str:
        seconds = int(value.total_seconds())
        for unit, size in sizes:
            if seconds % size == 0:
                return f"{seconds // size}{unit}"
        return f"{seconds}s"

    return render


parse_duration = duration_parser()
render_duration = duration_renderer()


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"an IANA time zone such as Europe/Brussels (got {value!r})") from exc
    return value


def _time_of_day(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(r"\d{1,2}:\d{2}", value.strip()):
        hours, minutes = (int(p) for p in value.strip().split(":"))
        if hours == 24 and minutes == 0:
            return time.max
        if hours < 24 and minutes < 60:
            return time(hours, minutes)
    if isinstance(value, time):
        return value
    raise ValueError('a time of day such as "08:00" or "24:00"')


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(render_duration, return_type=str)
]
TimeOfDay = Annotated[
    time,
    BeforeValidator(_time_of_day),
    PlainSerializer(lambda t: "24:00" if t == time.max else t.strftime("%H:%M"), return_type=str),
]
ZoneName = Annotated[str, AfterValidator(_zone)]
Name = Annotated[str, Field(min_length=1)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(Model):
    """Where a reference table comes from: a CSV/JSON ``file`` (watched for changes; relative
    to the policy file) or an HTTP ``url`` polled every ``poll``."""

    file: Path | None = None
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    poll: Duration = timedelta(minutes=5)
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> Source:
        if (self.file is None) == (self.url is None):
            raise ValueError("give exactly one of file or url")
        return self
