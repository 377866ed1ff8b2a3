"""Delivers queued notices from the durable outbox, exactly once.

Each message is marked `sending` (attempt recorded, committed) before the channel is called,
and `sent` after. A crash in between leaves a `sending` row; `reconcile()` at start asks the
channel whether the key was delivered (the mail folder can tell; SMTP cannot, and is retried
with the same Message-ID so the receiving side can recognise a duplicate).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from breachwatch.clock import Clock
from breachwatch.config import NotificationsConfig
from breachwatch.errors import DeliveryError
from breachwatch.notifications.channels import Channel
from breachwatch.notifications.directory import CustomerDirectory
from breachwatch.notifications.render import (
    NoticeContext,
    NoticeRenderer,
    build_email,
    render_customer_notice,
)
from breachwatch.store.database import Database
from breachwatch.store.schema import FindingRow, Incident, Obligation, OutboxMessage

log = structlog.get_logger("breachwatch.outbox")

Observer = Callable[[str, str], None]  # (channel, outcome) -> None, for metrics


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    errors: list[str] = field(default_factory=list)


def backoff(attempts: int, rng: random.Random) -> timedelta:
    """Exponential with full jitter: 30 s, 1 min, 2 min, ... capped at one hour."""
    ceiling = min(30 * 2 ** max(attempts - 1, 0), 3600)
    return timedelta(seconds=rng.uniform(ceiling / 2, ceiling))


class OutboxWorker:
    def __init__(
        self,
        db: Database,
        channel: Channel,
        directory: CustomerDirectory,
        config: NotificationsConfig,
        clock: Clock,
        observe: Observer | None = None,
        pace: Callable[[float], None] = time.sleep,
    ) -> None:
        self._db = db
        self._channel = channel
        self._directory = directory
        self._config = config
        self._clock = clock
        self._observe = observe or (lambda _channel, _outcome: None)
        self._pace = pace
        self._interval = 1.0 / config.rate_per_second
        self._rng = random.Random()
        self._renderer = NoticeRenderer()  # templates are loaded and checked once, at start

    def reconcile(self) -> int:
        """Settle messages a crash left in `sending`. Returns how many were found."""
        now = self._clock.now()
        with self._db.transaction() as session:
            rows = list(
                session.scalars(select(OutboxMessage).where(OutboxMessage.state == "sending"))
            )
            for row in rows:
                delivered = self._channel.was_delivered(row.key)
                if delivered:
                    row.state, row.sent_at, row.receipt = "sent", now, "found after restart"
                else:
                    row.state = "queued"
                    if delivered is None:
                        log.warning(
                            "notice_resend_after_crash",
                            message_id=row.message_id,
                            channel=row.channel,
                        )
        return len(rows)

    def deliver_due(
        self, limit: int = 500, progress: Callable[[int, int], None] | None = None
    ) -> DeliveryReport:
        report = DeliveryReport()
        with self._db.transaction() as session:
            due = list(
                session.scalars(
                    select(OutboxMessage.id)
                    .where(
                        OutboxMessage.state == "queued",
                        OutboxMessage.not_before <= self._clock.now(),
                    )
                    .order_by(OutboxMessage.id)
                    .limit(limit)
                )
            )
        for done, message_id in enumerate(due, start=1):
            self._deliver_one(message_id, report)
            if progress:
                progress(done, len(due))
            if done < len(due):
                self._pace(self._interval)
        return report

    def _deliver_one(self, row_id: int, report: DeliveryReport) -> None:
        now = self._clock.now()
        with self._db.transaction() as session:
            row = session.get_one(OutboxMessage, row_id)
            if row.state != "queued":
                return
            obligation = session.get_one(Obligation, row.obligation_id)
            incident = session.get_one(Incident, obligation.incident_id)
            if incident.state in ("dismissed", "closed") or obligation.state == "cancelled":
                row.state, row.last_error = "cancelled", f"incident {incident.state}"
                return
            categories = self._categories_for(session, incident, row.recipient_id)
            contexts = self._contexts(incident, categories)
            row.state = "sending"
            row.attempts += 1
        # the attempt is committed before anything leaves the process
        customer = self._directory.get(row.recipient_id)
        try:
            if customer is None or not customer.deliverable:
                raise DeliveryError(
                    "customer has no usable e-mail address in the directory (a task for staff)",
                    transient=False,
                )
            context = contexts.get(customer.language, contexts["en"])
            rendered = render_customer_notice(customer, context, self._renderer)
            message = build_email(rendered, self._config.sender, customer, row.message_id, date=now)
        except ValueError as exc:  # a message that cannot be built: no retry will help
            self._settle_failure(
                row_id, DeliveryError(f"cannot build the message: {exc}", transient=False), report
            )
            return
        try:
            receipt = self._channel.deliver(message, row.key)
        except DeliveryError as exc:
            self._settle_failure(row_id, exc, report)
            return
        with self._db.transaction() as session:
            row = session.get_one(OutboxMessage, row_id)
            row.state, row.sent_at, row.receipt, row.last_error = "sent", now, receipt, None
        report.sent += 1
        self._observe(self._channel.name, "sent")
        log.info("notice_sent", message_id=row.message_id, channel=self._channel.name)

    def _settle_failure(self, row_id: int, exc: DeliveryError, report: DeliveryReport) -> None:
        now = self._clock.now()
        with self._db.transaction() as session:
            row = session.get_one(OutboxMessage, row_id)
            row.last_error = str(exc)[:2000]
            if exc.transient and row.attempts < self._config.max_attempts:
                row.state = "queued"
                row.not_before = now + backoff(row.attempts, self._rng)
                report.retried += 1
                outcome = "retry"
            else:
                row.state = "failed"
                report.failed += 1
                outcome = "failed"
        report.errors.append(str(exc))
        self._observe(self._channel.name, outcome)
        log.warning("notice_not_sent", outcome=outcome, transient=exc.transient, error=str(exc))

    @staticmethod
    def _categories_for(session: Session, incident: Incident, subject: str) -> tuple[str, ...]:
        """Only the categories of this recipient's own data, where the findings tell."""
        categories: set[str] = set()
        for subjects, cats in session.execute(
            select(FindingRow.subjects, FindingRow.categories).where(
                FindingRow.incident_id == incident.id
            )
        ):
            if subject in subjects:
                categories.update(cats)
        return tuple(sorted(categories or set(incident.categories)))

    def _contexts(
        self, incident: Incident, categories: tuple[str, ...]
    ) -> dict[str, NoticeContext]:
        texts = self._config.texts
        return {
            language: NoticeContext(
                incident_ref=incident.ref,
                nature=text.nature,
                categories=categories,
                detected_at=incident.detected_at,
                likely_consequences=text.likely_consequences,
                measures_taken=text.measures_taken,
                measures_advised=text.measures_advised,
                contact_name=self._config.contact_name,
                contact_email=self._config.contact_email,
                contact_phone=self._config.contact_phone,
                organisation=self._config.organisation,
            )
            for language, text in texts.items()
        }


def requeue(db: Database, clock: Clock, states: tuple[str, ...] = ("failed",)) -> int:
    """Staff fixed the cause (relay password, customer address): try those notices again."""
    now = clock.now()
    with db.transaction() as session:
        rows = list(session.scalars(select(OutboxMessage).where(OutboxMessage.state.in_(states))))
        for row in rows:
            row.state, row.not_before, row.attempts = "queued", now, 0
        return len(rows)
