"""The legal clock, as pure functions of (incident facts, config, now).

Regimes handled here: GDPR Art. 33 (authority, 72 h) and the notice to affected customers
(GDPR Art. 34 for data subjects / Art. 33(2) for hosting customers as controllers), released
after a hold during which staff can dismiss a false positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from breachwatch.config import ObligationsConfig
from breachwatch.detection.findings import Severity

GDPR_ART33 = "gdpr_art33"
CUSTOMER_NOTICE = "gdpr_art34"


@dataclass(frozen=True, slots=True)
class ObligationPlan:
    regime: str
    recipient: str
    clock_start: datetime
    due_at: datetime
    release_at: datetime | None  # when automatic delivery may start (None: staff sends it)


@dataclass(frozen=True, slots=True)
class ObligationStatus:
    """What an obligation needs now. Everything here is derived; nothing is stored twice."""

    reminders_due: tuple[float, ...]  # fractions reached and not yet reminded
    overdue: bool
    release_due: bool


def plan_obligations(
    severity: Severity, has_subjects: bool, detected_at: datetime, config: ObligationsConfig
) -> list[ObligationPlan]:
    plans = [
        ObligationPlan(
            regime=GDPR_ART33,
            recipient=config.authority_name,
            clock_start=detected_at,
            due_at=detected_at + config.authority_deadline,
            release_at=None,
        )
    ]
    if has_subjects and severity.rank >= config.notify_customers_from.rank:
        plans.append(customer_notice_plan(detected_at, config))
    return plans


def customer_notice_plan(detected_at: datetime, config: ObligationsConfig) -> ObligationPlan:
    return ObligationPlan(
        regime=CUSTOMER_NOTICE,
        recipient="affected customers",
        clock_start=detected_at,
        due_at=detected_at + config.customer_deadline,
        release_at=detected_at + config.hold,
    )


def reminder_times(
    clock_start: datetime, due_at: datetime, fractions: tuple[float, ...]
) -> list[tuple[float, datetime]]:
    window = due_at - clock_start
    return [(f, clock_start + window * f) for f in fractions]


def status_at(
    *,
    clock_start: datetime,
    due_at: datetime,
    release_at: datetime | None,
    released: bool,
    reminders_sent: tuple[float, ...],
    fractions: tuple[float, ...],
    now: datetime,
) -> ObligationStatus:
    reached = tuple(
        f
        for f, when in reminder_times(clock_start, due_at, fractions)
        if when <= now and f not in reminders_sent
    )
    return ObligationStatus(
        reminders_due=reached,
        overdue=now >= due_at,
        release_due=release_at is not None and not released and now >= release_at,
    )


def next_action_at(
    *,
    clock_start: datetime,
    due_at: datetime,
    release_at: datetime | None,
    released: bool,
    reminders_sent: tuple[float, ...],
    fractions: tuple[float, ...],
    overdue_recorded: bool,
) -> datetime | None:
    """When this obligation next needs attention, for the scheduler (None: nothing pending)."""
    times = [
        when
        for f, when in reminder_times(clock_start, due_at, fractions)
        if f not in reminders_sent
    ]
    if not overdue_recorded:
        times.append(due_at)
    if release_at is not None and not released:
        times.append(release_at)
    return min(times) if times else None


def time_left(due_at: datetime, now: datetime) -> timedelta:
    return due_at - now
