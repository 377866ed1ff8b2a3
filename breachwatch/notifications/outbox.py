"""Delivers queued notices from the durable outbox, exactly once.

States: queued → sending → sent | failed | cancelled; held while staff hold the notices. Each
message takes a token from its channel's bucket and is committed as `sending` before the channel
is called, `sent` after. `reconcile()` at start settles `sending` rows: the mail folder can tell
whether the key was delivered; SMTP and HTTP are sent again (same Message-ID / Idempotency-Key).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage

import structlog
from sqlalchemy import select, update

from breachwatch.clock import Clock
from breachwatch.config import NotificationsConfig
from breachwatch.errors import DeliveryError
from breachwatch.notifications.channels import Channel
from breachwatch.notifications.context import (
    ObligationView,
    compose_email,
    load_view,
    notice_counts,
)
from breachwatch.notifications.directories import Directory
from breachwatch.notifications.ratelimit import TokenBucket
from breachwatch.notifications.render import NoticeRenderer
from breachwatch.notifications.staff import build_staff_email, render_staff_notice, staff_kind
from breachwatch.store.database import Database
from breachwatch.store.schema import Obligation, OutboxMessage

log = structlog.get_logger("breachwatch.outbox")

Observer = Callable[[str, str], None]  # (channel, outcome) -> None, for metrics
NO_ADDRESS = "no usable address"


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    held: int = 0
    errors: list[str] = field(default_factory=list)


def backoff(
    attempts: int, rng: random.Random, base: timedelta = timedelta(seconds=30)
) -> timedelta:
    """Exponential with jitter: ``base`` (30 s), 2×, 4×, ... capped at one hour."""
    ceiling = min(base.total_seconds() * 2 ** max(attempts - 1, 0), 3600)
    return timedelta(seconds=rng.uniform(ceiling / 2, ceiling))


@dataclass(frozen=True, slots=True)
class _Due:
    id: int
    key: str
    obligation_id: int
    recipient_id: str
    message_id: str


class OutboxWorker:
    def __init__(
        self,
        db: Database,
        channel: Channel,
        directory: Directory,
        config: NotificationsConfig,
        clock: Clock,
        observe: Observer | None = None,
        pace: Callable[[float], None] = time.sleep,
        *,
        staff_channel: Channel | None = None,
        renderer: NoticeRenderer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._channel = channel
        self._staff_channel = staff_channel
        self._directory = directory
        self._config = config
        self._clock = clock
        self._observe = observe or (lambda _channel, _outcome: None)
        self._rng = rng or random.Random()
        self.bucket = TokenBucket(config.rate_per_second, config.burst, clock, pace)
        team = config.security_team
        staff_rate = team.webhook.rate_per_second if team and team.webhook else 5.0
        self.staff_bucket = TokenBucket(staff_rate, 1, clock, pace)
        self.renderer = renderer or NoticeRenderer()  # templates are loaded and checked once

    def _channel_for(self, key: str) -> Channel | None:
        return self._staff_channel if staff_kind(key) else self._channel

    def reconcile(self) -> int:
        """Settle messages a crash left in `sending`. Returns how many were found."""
        now = self._clock.now()
        with self._db.transaction() as session:
            # SKIP LOCKED: a notice another worker is sending right now holds its row lock
            # (PostgreSQL), so only the leftovers of a dead process are settled here.
            rows = list(
                session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.state == "sending")
                    .with_for_update(skip_locked=True)
                )
            )
            for row in rows:
                channel = self._channel_for(row.key)
                delivered = channel.was_delivered(row.key) if channel else None
                if delivered:
                    row.state, row.sent_at, row.receipt = "sent", now, "found after restart"
                    continue
                row.state = "queued"
                if delivered is None:
                    log.warning("notice_resend_after_crash", message_id=row.message_id)
        return len(rows)

    def deliver_due(
        self, limit: int | None = 500, progress: Callable[[int, int], None] | None = None
    ) -> DeliveryReport:
        report = DeliveryReport()
        with self._db.transaction() as session:
            session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.state == "held",
                    OutboxMessage.obligation_id.in_(
                        select(Obligation.id).where(Obligation.state == "cancelled")
                    ),
                )
                .values(state="cancelled", last_error="notices cancelled")
                .execution_options(synchronize_session=False)
            )
            query = (
                select(
                    OutboxMessage.id,
                    OutboxMessage.key,
                    OutboxMessage.obligation_id,
                    OutboxMessage.recipient_id,
                    OutboxMessage.message_id,
                )
                .where(
                    OutboxMessage.state == "queued",
                    OutboxMessage.not_before <= self._clock.now(),
                )
                .order_by(OutboxMessage.id)
            )
            due = [_Due(*row) for row in session.execute(query.limit(limit))]
        views: dict[int, ObligationView] = {}
        try:
            for done, item in enumerate(due, start=1):
                if item.obligation_id not in views:
                    with self._db.transaction() as session:
                        views[item.obligation_id] = load_view(
                            session, item.obligation_id, self._config
                        )
                self._deliver_one(item, views[item.obligation_id], report)
                if progress:
                    progress(done, len(due))
        finally:
            for channel in (self._channel, self._staff_channel):
                close = getattr(channel, "close", None)
                if callable(close):
                    close()  # e.g. the SMTP connection kept open for the run
        return report

    def _deliver_one(self, item: _Due, view: ObligationView, report: DeliveryReport) -> None:
        kind = staff_kind(item.key)
        if view.stopped or (view.held and kind is None):
            self._set_aside(item, view, report)
            return
        channel = self._staff_channel if kind else self._channel
        try:
            if channel is None:
                raise DeliveryError("no webhook configured for internal notices", transient=False)
            message = self._build(item, view, kind)
        except DeliveryError as exc:
            self._settle_failure(item, exc, report, channel.name if channel else "webhook")
            return
        (self.staff_bucket if kind else self.bucket).acquire()
        if not self._claim(item, channel.name):
            return  # held or cancelled meanwhile by staff, or taken by another worker
        # the attempt is committed before anything leaves the process
        failure: DeliveryError | None = None
        with self._db.transaction() as session:
            # The row stays locked while the channel is called (PostgreSQL), so that another
            # process's reconcile() does not take a notice in flight for a crashed one's.
            session.execute(
                select(OutboxMessage.id).where(OutboxMessage.id == item.id).with_for_update()
            )
            try:
                receipt = channel.deliver(message, item.key)
            except DeliveryError as exc:
                failure = exc
            else:
                session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == item.id)
                    .values(
                        state="sent", sent_at=self._clock.now(), receipt=receipt, last_error=None
                    )
                    .execution_options(synchronize_session=False)
                )
        if failure is not None:
            self._settle_failure(item, failure, report, channel.name)
            return
        report.sent += 1
        self._observe(channel.name, "sent")
        log.info("notice_sent", message_id=item.message_id, channel=channel.name)

    def _claim(self, item: _Due, channel: str) -> bool:
        """queued → sending, committed, by exactly one worker: `FOR UPDATE SKIP LOCKED` lets
        concurrent workers (other processes on PostgreSQL) pass over a row being claimed, and
        the state condition over one claimed already."""
        with self._db.transaction() as session:
            claimed = session.scalar(
                select(OutboxMessage.id)
                .where(OutboxMessage.id == item.id, OutboxMessage.state == "queued")
                .with_for_update(skip_locked=True)
            )
            if claimed is None:
                return False
            marked = session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == item.id, OutboxMessage.state == "queued")
                .values(state="sending", channel=channel, attempts=OutboxMessage.attempts + 1)
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(marked, "rowcount", 0))

    def _build(self, item: _Due, view: ObligationView, kind: str | None) -> EmailMessage:
        now = self._clock.now()
        try:
            if kind is not None:
                team = self._config.security_team
                if team is None:
                    raise DeliveryError("no security_team configured", transient=False)
                with self._db.transaction() as session:
                    counts = notice_counts(session, [item.obligation_id])
                rendered = render_staff_notice(
                    self.renderer,
                    view,
                    kind,
                    language=team.language,
                    organisation=self._config.organisation,
                    now=now,
                    notices=counts,
                )
                return build_staff_email(
                    rendered,
                    sender=self._config.sender,
                    team=team,
                    recipient_id=item.recipient_id,
                    kind=kind,
                    incident_ref=view.incident_ref,
                    message_id=item.message_id,
                    date=now,
                )
            customer = self._directory.get(item.recipient_id)
            if customer is None or not customer.deliverable:
                why = "not in the directory" if customer is None else "no usable e-mail address"
                raise DeliveryError(
                    f"{NO_ADDRESS}: customer {item.recipient_id} {why} (a task for staff)",
                    transient=False,
                )
            return compose_email(
                self.renderer,
                view,
                customer,
                sender=self._config.sender,
                message_id=item.message_id,
                now=now,
            )
        except ValueError as exc:  # a message that cannot be built: no retry will help
            raise DeliveryError(f"cannot build the message: {exc}", transient=False) from exc

    def _set_aside(self, item: _Due, view: ObligationView, report: DeliveryReport) -> None:
        with self._db.transaction() as session:
            row = session.get_one(OutboxMessage, item.id)
            if row.state != "queued":
                return
            if view.stopped:
                row.state, row.last_error = "cancelled", view.stopped
                report.cancelled += 1
            else:
                row.state, row.last_error = "held", f"held by staff: {view.hold_reason}"[:2000]
                report.held += 1

    def _settle_failure(
        self, item: _Due, exc: DeliveryError, report: DeliveryReport, channel: str
    ) -> None:
        now = self._clock.now()
        with self._db.transaction() as session:
            row = session.get_one(OutboxMessage, item.id)
            if row.state not in ("queued", "sending"):
                return
            if row.state == "queued":
                row.attempts += 1  # failed before the channel was called
            row.last_error = str(exc)[:2000]
            if exc.transient and row.attempts < self._config.max_attempts:
                row.state = "queued"
                row.not_before = now + backoff(row.attempts, self._rng, self._config.retry_base)
                report.retried += 1
                outcome = "retry"
            else:
                row.state = "failed"
                report.failed += 1
                outcome = "failed"
        report.errors.append(str(exc))
        self._observe(channel, outcome)
        log.warning("notice_not_sent", outcome=outcome, transient=exc.transient, error=str(exc))


def requeue(db: Database, clock: Clock, states: tuple[str, ...] = ("failed",)) -> int:
    """Staff fixed the cause (relay password, customer address): try those notices again."""
    now = clock.now()
    with db.transaction() as session:
        rows = list(session.scalars(select(OutboxMessage).where(OutboxMessage.state.in_(states))))
        for row in rows:
            row.state, row.not_before, row.attempts = "queued", now, 0
        return len(rows)
