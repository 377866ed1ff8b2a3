"""The ``detection:`` section of the policy: baselines, behaviour, suppression, Sigma rules.

Kept apart from ``policy.py`` (which imports this module for its one optional field), so the
anomaly detectors can import the policy without a cycle::

    detection:
      baselines:
        window: 1d                  # tumbling windows aligned to local midnight
        timezone: Europe/Brussels
        learning_windows: 5         # no alert before the actor has this many windows of history
        floor_subjects: 20          # never alert at or below these counts
        floor_statements: 60
        ratio: 2.0                  # alert above ratio x the actor's usual quantile ...
        mad_k: 6.0                  # ... and above median + k x 1.4826 x MAD
        quantile: 0.99
        history: 60                 # windows kept per actor (oldest dropped)
        half_life: 30               # windows; older windows weigh less
        peer_history: 500           # windows kept per peer group (role)
        exempt_roles: [webshop]
        seed: {path: /etc/breachwatch/cases.csv, actor_column: assignee,
               subject_column: account_id, time_column: opened_at, before: 2025-06-17}
      behaviour:
        learning: 7d                # an actor's first week teaches, it does not alert
        learning_events: 50
        timezone: Europe/Brussels
        min_hour_share: 0.0         # share of events in an hour (±1) that still counts as "never"
        hour_learning_days: 5       # the hour histogram judges after this many active days
        denied_burst: {count: 5, window: 10m}
        brute_force: {names: 3, attempts: 6, window: 5m}
        exempt_roles: [webshop]
      suppression: {window: 1h}
      sigma_rules: [/etc/breachwatch/sigma/db.yml]
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
)

from breachwatch.detection.policy_types import duration_parser, duration_renderer

# The policy's own duration syntax (policy_types has no import of policy.py, so no cycle).
_duration = duration_parser("smhd")
_render = duration_renderer("smhd")


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("an IANA time zone such as Europe/Brussels") from exc
    return value


Span = Annotated[timedelta, BeforeValidator(_duration), PlainSerializer(_render, return_type=str)]
Zone = Annotated[str, AfterValidator(_zone)]
Name = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaselineSeed(_Model):
    """Reference data that stands for past windows (e.g. helpdesk cases per agent per day)."""

    path: Path
    actor_column: Name = "assignee"
    subject_column: Name = "account_id"
    time_column: Name = "opened_at"
    before: date | None = None  # rows at or after this local date are ignored


class BaselinePolicy(_Model):
    enabled: bool = True
    window: Span = timedelta(days=1)
    timezone: Zone = "Europe/Brussels"
    learning_windows: int = Field(default=5, ge=1)
    floor_subjects: int = Field(default=20, ge=0)
    floor_statements: int = Field(default=60, ge=0)
    ratio: float = Field(default=2.0, ge=1.0)
    mad_k: float = Field(default=6.0, ge=0.0)
    quantile: float = Field(default=0.99, gt=0.5, le=1.0)
    history: int = Field(default=60, ge=2, le=10_000)
    half_life: float = Field(default=30.0, gt=0.0)
    peer_history: int = Field(default=500, ge=2, le=100_000)
    max_actors: int = Field(default=10_000, ge=1)
    exempt_roles: tuple[Name, ...] = ()
    seed: BaselineSeed | None = None


class DeniedBurst(_Model):
    count: int = Field(default=5, ge=2)
    window: Span = timedelta(minutes=10)


class BruteForce(_Model):
    names: int = Field(default=3, ge=2)  # distinct account names from one address ...
    attempts: int = Field(default=6, ge=2)  # ... or this many failures from one address
    window: Span = timedelta(minutes=5)


class BehaviourPolicy(_Model):
    enabled: bool = True
    learning: Span = timedelta(days=7)
    learning_events: int = Field(default=50, ge=0)
    timezone: Zone = "Europe/Brussels"
    min_hour_share: float = Field(default=0.0, ge=0.0, lt=1.0)
    hour_learning_days: int = Field(default=5, ge=1)  # active days before hours judge
    max_known: int = Field(default=256, ge=8)  # objects / clients / apps remembered per actor
    max_actors: int = Field(default=10_000, ge=1)
    first_access: bool = True
    unusual_hours: bool = True
    new_client: bool = True
    denied_burst: DeniedBurst = DeniedBurst()
    brute_force: BruteForce = BruteForce()
    exempt_roles: tuple[Name, ...] = ()


class SuppressionPolicy(_Model):
    window: Span = timedelta(hours=1)
    max_keys: int = Field(default=50_000, ge=1)


class DetectionPolicy(_Model):
    baselines: BaselinePolicy = BaselinePolicy()
    behaviour: BehaviourPolicy = BehaviourPolicy()
    suppression: SuppressionPolicy = SuppressionPolicy()
    sigma_rules: tuple[Path, ...] = ()
