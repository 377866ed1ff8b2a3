"""Keeps the legal clock: reminders, overdue marks and the release of customer notices.

`tick(now)` re-reads the store and records what is due in one transaction, so running it
twice, late, or after a restart is harmless: the scheduler only decides *when* to call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from breachwatch.config import DaemonConfig
from breachwatch.incidents.lifecycle import IncidentState
from breachwatch.incidents.obligations import CUSTOMER_NOTICE, next_action_at, status_at
from breachwatch.incidents.service import SYSTEM, record_history
from breachwatch.store.database import Database
from breachwatch.store.schema import Incident, IncidentSubject, Obligation, OutboxMessage

log = structlog.get_logger("breachwatch.deadlines")

# Customer notices go out only while the incident stands; a dismissed one cancels them.
_RELEASABLE = {IncidentState.SUSPECTED, IncidentState.CONFIRMED, IncidentState.NOTIFIED}


@dataclass
class TickReport:
    reminders: list[tuple[str, str, float]] = field(default_factory=list)  # ref, regime, frac
    overdue: list[tuple[str, str]] = field(default_factory=list)
    enqueued: int = 0
    completed: list[tuple[str, str]] = field(default_factory=list)


def message_key(obligation_id: int, subject: str) -> str:
    return f"ob{obligation_id}-{subject}"


class DeadlineKeeper:
    def __init__(self, db: Database, config: DaemonConfig, channel_name: str) -> None:
        self._db = db
        self._fractions = config.obligations.reminders
        self._channel = channel_name
        self._domain = config.notifications.sender.rsplit("@", 1)[-1].strip(" >") or "localhost"

    def tick(self, now: datetime) -> TickReport:
        report = TickReport()
        with self._db.transaction() as session:
            for obligation in session.scalars(select(Obligation).where(Obligation.state == "open")):
                incident = session.get_one(Incident, obligation.incident_id)
                self._check(session, obligation, incident, now, report)
        for ref, regime, fraction in report.reminders:
            log.warning("deadline_reminder", incident=ref, regime=regime, elapsed=fraction)
        for ref, regime in report.overdue:
            log.error("obligation_overdue", incident=ref, regime=regime)
        return report

    def _check(
        self,
        session: Session,
        obligation: Obligation,
        incident: Incident,
        now: datetime,
        report: TickReport,
    ) -> None:
        released = obligation.release_at is not None and now >= obligation.release_at
        status = status_at(
            clock_start=obligation.clock_start,
            due_at=obligation.due_at,
            release_at=obligation.release_at,
            released=False,
            reminders_sent=tuple(obligation.reminders_sent),
            fractions=self._fractions,
            now=now,
        )
        for fraction in status.reminders_due:
            obligation.reminders_sent = [*obligation.reminders_sent, fraction]
            record_history(
                session,
                incident,
                now,
                SYSTEM,
                "deadline_reminder",
                regime=obligation.regime,
                elapsed=fraction,
                due_at=obligation.due_at.isoformat(),
            )
            report.reminders.append((incident.ref, obligation.regime, fraction))
        if status.overdue and obligation.overdue_since is None:
            obligation.overdue_since = now
            record_history(
                session, incident, now, SYSTEM, "obligation_overdue", regime=obligation.regime
            )
            report.overdue.append((incident.ref, obligation.regime))
        if (
            obligation.regime == CUSTOMER_NOTICE
            and released
            and IncidentState(incident.state) in _RELEASABLE
        ):
            report.enqueued += self._enqueue(session, obligation, incident, now)
            self._complete_if_sent(session, obligation, incident, now, report)

    def _enqueue(
        self, session: Session, obligation: Obligation, incident: Incident, now: datetime
    ) -> int:
        queued = set(
            session.scalars(
                select(OutboxMessage.recipient_id).where(
                    OutboxMessage.obligation_id == obligation.id
                )
            )
        )
        subjects = session.scalars(
            select(IncidentSubject.subject)
            .where(IncidentSubject.incident_id == incident.id)
            .order_by(IncidentSubject.subject)
        )
        added = 0
        for subject in subjects:
            if subject in queued:
                continue
            key = message_key(obligation.id, subject)
            session.add(
                OutboxMessage(
                    key=key,
                    obligation_id=obligation.id,
                    recipient_id=subject,
                    channel=self._channel,
                    state="queued",
                    not_before=now,
                    attempts=0,
                    last_error=None,
                    message_id=f"<{key}.{incident.ref}@{self._domain}>",
                    receipt=None,
                    created_at=now,
                    sent_at=None,
                )
            )
            added += 1
        if added:
            record_history(
                session,
                incident,
                now,
                SYSTEM,
                "notices_queued",
                regime=obligation.regime,
                count=added,
            )
        return added

    def _complete_if_sent(
        self,
        session: Session,
        obligation: Obligation,
        incident: Incident,
        now: datetime,
        report: TickReport,
    ) -> None:
        session.flush()
        states = list(
            session.scalars(
                select(OutboxMessage.state).where(OutboxMessage.obligation_id == obligation.id)
            )
        )
        if states and all(state == "sent" for state in states):
            obligation.state, obligation.done_at = "done", now
            record_history(
                session,
                incident,
                now,
                SYSTEM,
                "obligation_done",
                regime=obligation.regime,
                notices=len(states),
            )
            report.completed.append((incident.ref, obligation.regime))

    def next_wakeups(self) -> list[tuple[str, datetime]]:
        """(job id, time) for every open obligation's next action: what the scheduler plans."""
        wakeups: list[tuple[str, datetime]] = []
        with self._db.transaction() as session:
            for obligation in session.scalars(select(Obligation).where(Obligation.state == "open")):
                released = obligation.release_at is None or bool(
                    session.scalar(
                        select(OutboxMessage.id)
                        .where(OutboxMessage.obligation_id == obligation.id)
                        .limit(1)
                    )
                )
                when = next_action_at(
                    clock_start=obligation.clock_start,
                    due_at=obligation.due_at,
                    release_at=obligation.release_at,
                    released=released,
                    reminders_sent=tuple(obligation.reminders_sent),
                    fractions=self._fractions,
                    overdue_recorded=obligation.overdue_since is not None,
                )
                if when is not None:
                    wakeups.append((f"obligation-{obligation.id}", when))
        return wakeups
