"""Staff decisions on an incident's customer notices: hold, approve (release now), cancel, and
the status of their delivery. Each change is one transaction with its incident-history entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from breachwatch.errors import StateError
from breachwatch.incidents.obligations import CUSTOMER_NOTICE
from breachwatch.incidents.service import get_incident, record_history
from breachwatch.notifications.alerts import staff_prefix
from breachwatch.notifications.context import notice_counts
from breachwatch.store.database import Database
from breachwatch.store.schema import Incident, NoticeHold, Obligation, OutboxMessage

STATES = ("queued", "held", "sending", "sent", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class Change:
    ref: str
    action: str
    notices: int  # outbox rows the change moved


def customer_obligation(session: Session, incident: Incident) -> Obligation:
    obligation = session.scalars(
        select(Obligation).where(
            Obligation.incident_id == incident.id, Obligation.regime == CUSTOMER_NOTICE
        )
    ).first()
    if obligation is None:
        raise StateError(f"incident {incident.ref} has no customer notices")
    return obligation


def _open_obligation(session: Session, ref: str, verb: str) -> tuple[Incident, Obligation]:
    incident = get_incident(session, ref)
    obligation = customer_obligation(session, incident)
    if obligation.state != "open":
        raise StateError(
            f"cannot {verb} the notices of {incident.ref}: they are {obligation.state}"
        )
    if incident.state in ("dismissed", "closed"):
        raise StateError(f"cannot {verb} the notices of {incident.ref}: it is {incident.state}")
    return incident, obligation


def _move(
    session: Session,
    obligation: Obligation,
    old: str,
    new: str,
    note: str | None,
    **extra: object,
) -> int:
    values: dict[str, object] = {"state": new, **extra}
    if note is not None:
        values["last_error"] = note[:2000]
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.obligation_id == obligation.id,
            OutboxMessage.state == old,
            OutboxMessage.key.not_like(staff_prefix(obligation.id)),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def hold(db: Database, ref: str, by: str, reason: str, now: datetime) -> Change:
    """Keep queued and not-yet-released notices from going out until approved."""
    with db.transaction() as session:
        incident, obligation = _open_obligation(session, ref, "hold")
        row = session.get(NoticeHold, obligation.id)
        if row is None:
            row = NoticeHold(obligation_id=obligation.id, approved_at=None, approved_by=None)
            session.add(row)
        row.held, row.reason, row.by, row.at = True, reason, by, now
        moved = _move(session, obligation, "queued", "held", f"held by staff: {reason}")
        record_history(session, incident, now, by, "notices_held", reason=reason, notices=moved)
        return Change(incident.ref, "held", moved)


def approve(db: Database, ref: str, by: str, reason: str, now: datetime) -> Change:
    """Lift a hold and release now, before the hold time expires."""
    with db.transaction() as session:
        incident, obligation = _open_obligation(session, ref, "approve")
        row = session.get(NoticeHold, obligation.id)
        if row is None:
            row = NoticeHold(obligation_id=obligation.id, reason=None, by=by, at=now)
            session.add(row)
        row.held, row.approved_at, row.approved_by = False, now, by
        if obligation.release_at is None or obligation.release_at > now:
            obligation.release_at = now
        moved = _move(session, obligation, "held", "queued", None, not_before=now, last_error=None)
        record_history(session, incident, now, by, "notices_approved", reason=reason, notices=moved)
        return Change(incident.ref, "approved", moved)


def cancel(db: Database, ref: str, by: str, reason: str, now: datetime) -> Change:
    """No customer notice of this incident goes out any more (sent ones stay sent)."""
    with db.transaction() as session:
        incident, obligation = _open_obligation(session, ref, "cancel")
        obligation.state, obligation.done_at = "cancelled", now
        moved = sum(
            _move(session, obligation, state, "cancelled", f"cancelled by staff: {reason}")
            for state in ("queued", "held")
        )
        record_history(
            session, incident, now, by, "notices_cancelled", reason=reason, notices=moved
        )
        return Change(incident.ref, "cancelled", moved)


@dataclass(frozen=True, slots=True)
class Status:
    ref: str
    obligation_state: str
    held: bool
    release_at: datetime | None
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("sent", "failed", "cancelled"))

    @property
    def pending(self) -> int:
        return self.counts.get("queued", 0) + self.counts.get("sending", 0)


def status(db: Database, ref: str | None) -> list[Status]:
    """Customer-notice delivery per incident (all incidents with customer notices if None)."""
    with db.transaction() as session:
        query = (
            select(Obligation, Incident.ref)
            .join(Incident, Obligation.incident_id == Incident.id)
            .where(Obligation.regime == CUSTOMER_NOTICE)
            .order_by(Obligation.id)
        )
        if ref is not None:
            query = query.where(Incident.id == get_incident(session, ref).id)
        result = []
        for obligation, incident_ref in session.execute(query):
            hold_row = session.get(NoticeHold, obligation.id)
            counts = notice_counts(session, [obligation.id])
            staff = session.scalars(
                select(OutboxMessage.state).where(
                    OutboxMessage.key.like(staff_prefix(obligation.id))
                )
            )
            for state in staff:  # internal notices are not customer notices
                counts[state] -= 1
            result.append(
                Status(
                    ref=incident_ref,
                    obligation_state=obligation.state,
                    held=bool(hold_row and hold_row.held),
                    release_at=obligation.release_at,
                    counts={s: n for s, n in counts.items() if n},
                )
            )
        return result
