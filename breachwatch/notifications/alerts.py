"""Queues internal notices for the security team from the deadline keeper's tick, in the same
transaction as the reminder or overdue mark: one outbox row per (obligation, kind), so a tick
that runs twice or after a restart queues nothing twice."""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from breachwatch.config import NotificationsConfig
from breachwatch.notifications.staff import ESCALATION_CONTACT, SECURITY_TEAM, staff_key
from breachwatch.store.schema import Incident, NoticeHold, Obligation, OutboxMessage

log = structlog.get_logger("breachwatch.alerts")


def is_hold_active(session: Session, obligation_id: int) -> bool:
    hold = session.get(NoticeHold, obligation_id)
    return bool(hold and hold.held)


def staff_prefix(obligation_id: int) -> str:
    return f"ob{obligation_id}.staff.%"


class StaffAlerts:
    def __init__(self, config: NotificationsConfig, domain: str) -> None:
        self._team = config.security_team
        self._domain = domain
        self.enabled = bool(self._team and self._team.webhook)

    def enqueue(
        self,
        session: Session,
        obligation: Obligation,
        incident: Incident,
        kind: str,
        now: datetime,
        recipient: str = SECURITY_TEAM,
    ) -> bool:
        """Queue the internal notice ``kind`` once; False when it exists or is not configured."""
        if not self.enabled:
            return False
        key = staff_key(obligation.id, kind)
        if session.scalar(select(OutboxMessage.id).where(OutboxMessage.key == key)):
            return False
        session.add(
            OutboxMessage(
                key=key,
                obligation_id=obligation.id,
                recipient_id=recipient,
                channel="webhook",
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
        return True

    def escalation_due(
        self, session: Session, obligation: Obligation, now: datetime, released: bool
    ) -> bool:
        """The customer notice is held, or not released yet, within `escalate_within` of its
        deadline: the second contact must decide."""
        team = self._team
        if team is None or team.escalation_contact is None:
            return False
        if now < obligation.due_at - team.escalate_within:
            return False
        return is_hold_active(session, obligation.id) or not released

    def escalate(
        self, session: Session, obligation: Obligation, incident: Incident, now: datetime
    ) -> bool:
        """Queue the escalation once; True when this call queued it."""
        queued = self.enqueue(session, obligation, incident, "escalation", now, ESCALATION_CONTACT)
        if queued:
            log.error("notice_escalated", incident=incident.ref, regime=obligation.regime)
        return queued
