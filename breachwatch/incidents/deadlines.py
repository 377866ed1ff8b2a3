"""Keeps the legal clock: awareness after the triage window, reminders, overdue marks and
the release of customer notices.

`tick(now)` re-reads the store and records what is due in one transaction, so running it
twice, late, or after a restart is harmless: the scheduler only decides *when* to call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from breachwatch.config import DaemonConfig
from breachwatch.incidents.lifecycle import IncidentState
from breachwatch.incidents.obligations import CUSTOMER_NOTICE, next_action_at, status_at
from breachwatch.incidents.regimes import assumed_awareness
from breachwatch.incidents.service import SYSTEM, record_history, set_awareness
from breachwatch.notifications.alerts import StaffAlerts, is_hold_active, staff_prefix
from breachwatch.notifications.staff import reminder_kind
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
    escalated: list[str] = field(default_factory=list)  # refs escalated to the second contact
    awareness: list[str] = field(default_factory=list)  # refs given awareness by the window
    clock_moved_back: float = 0.0  # seconds the clock went back since the previous tick


CLOCK_TOLERANCE = timedelta(seconds=1)


def message_key(obligation_id: int, subject: str) -> str:
    return f"ob{obligation_id}-{subject}"


class DeadlineKeeper:
    def __init__(self, db: Database, config: DaemonConfig, channel_name: str) -> None:
        self._db = db
        self._config = config
        self._fractions = config.obligations.reminders
        self._channel = channel_name
        self._domain = config.notifications.sender.rsplit("@", 1)[-1].strip(" >") or "localhost"
        self._alerts = StaffAlerts(config.notifications, self._domain)
        self._last_now: datetime | None = None

    def tick(self, now: datetime) -> TickReport:
        report = TickReport()
        if self._last_now is not None and now < self._last_now - CLOCK_TOLERANCE:
            # Deadlines are stored instants and every effect is recorded once, so a clock that
            # went back (NTP step, VM restore) neither repeats nor skips anything: it only
            # delays what falls due. Say so, loudly: clocks matter for legal deadlines.
            report.clock_moved_back = (self._last_now - now).total_seconds()
            log.error(
                "clock_moved_back",
                seconds=round(report.clock_moved_back, 3),
                previous=self._last_now.isoformat(),
                now=now.isoformat(),
            )
        self._last_now = now if self._last_now is None else max(self._last_now, now)
        with self._db.transaction() as session:
            self._triage(session, now, report)
            for obligation in session.scalars(select(Obligation).where(Obligation.state == "open")):
                incident = session.get_one(Incident, obligation.incident_id)
                self._check(session, obligation, incident, now, report)
        for ref in report.awareness:
            log.warning("awareness_assumed", incident=ref, reason="triage window ended")
        for ref, regime, fraction in report.reminders:
            log.warning("deadline_reminder", incident=ref, regime=regime, elapsed=fraction)
        for ref, regime in report.overdue:
            log.error("obligation_overdue", incident=ref, regime=regime)
        return report

    def _untriaged(self, session: Session) -> list[Incident]:
        return list(
            session.scalars(
                select(Incident).where(
                    Incident.state == IncidentState.SUSPECTED.value, Incident.aware_at.is_(None)
                )
            )
        )

    def _triage(self, session: Session, now: datetime, report: TickReport) -> None:
        """A suspected incident nobody confirmed or dismissed within the triage window gets
        its awareness time anyway: a forgotten incident cannot stop the GDPR clock."""
        cfg = self._config.incidents
        for incident in self._untriaged(session):
            ends, aware_at = assumed_awareness(
                incident.detected_at, cfg.triage_window, cfg.unconfirmed_awareness
            )
            if now >= ends:
                set_awareness(
                    session, incident, aware_at, "triage_window", now, SYSTEM, self._config
                )
                report.awareness.append(incident.ref)

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
            self._alerts.enqueue(session, obligation, incident, reminder_kind(fraction), now)
        if status.overdue and obligation.overdue_since is None:
            obligation.overdue_since = now
            record_history(
                session, incident, now, SYSTEM, "obligation_overdue", regime=obligation.regime
            )
            report.overdue.append((incident.ref, obligation.regime))
            self._alerts.enqueue(session, obligation, incident, "overdue", now)
        if (
            obligation.regime == CUSTOMER_NOTICE
            and IncidentState(incident.state) in _RELEASABLE
            and self._alerts.escalation_due(session, obligation, now, released)
            and self._alerts.escalate(session, obligation, incident, now)
        ):
            record_history(
                session, incident, now, SYSTEM, "notice_escalated", regime=obligation.regime
            )
            report.escalated.append(incident.ref)
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
                    OutboxMessage.obligation_id == obligation.id,
                    OutboxMessage.key.not_like(staff_prefix(obligation.id)),
                )
            )
        )
        state = "held" if is_hold_active(session, obligation.id) else "queued"
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
                    state=state,
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
                select(OutboxMessage.state).where(
                    OutboxMessage.obligation_id == obligation.id,
                    OutboxMessage.key.not_like(staff_prefix(obligation.id)),
                )
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
        cfg = self._config.incidents
        with self._db.transaction() as session:
            for incident in self._untriaged(session):
                ends, _ = assumed_awareness(
                    incident.detected_at, cfg.triage_window, cfg.unconfirmed_awareness
                )
                wakeups.append((f"triage-{incident.id}", ends))
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
