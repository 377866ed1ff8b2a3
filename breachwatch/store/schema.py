"""Tables of the store. The store is the truth: offsets, findings, incidents, obligations
and the outbox live here, written in the same transactions, so a restart resumes exactly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 1


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC, always returns aware datetimes (SQLite keeps no zone of its own)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    file_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    dev: Mapped[int] = mapped_column(BigInteger)
    inode: Mapped[int] = mapped_column(BigInteger)
    fp_len: Mapped[int] = mapped_column(Integer)
    fp_hash: Mapped[str] = mapped_column(String(64))
    offset: Mapped[int] = mapped_column(BigInteger)
    line_no: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class QuarantinedRecord(Base):
    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    offset: Mapped[int] = mapped_column(BigInteger)
    line_no: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)  # the record, cut at a bound
    at: Mapped[datetime]
    __table_args__ = (UniqueConstraint("path", "offset", "source", name="uq_quarantine_pos"),)


class DetectorState(Base):
    __tablename__ = "detector_state"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[dict[str, Any]]


class Incident(Base):
    __tablename__ = "incidents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(32), unique=True)  # public reference, BW-2026-0001
    correlation_key: Mapped[str] = mapped_column(String(255), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(255))
    person: Mapped[str | None] = mapped_column(String(255))
    store: Mapped[str] = mapped_column(String(64))
    categories: Mapped[list[Any]]
    detected_at: Mapped[datetime]  # when breachwatch opened it
    aware_at: Mapped[datetime | None]  # when staff confirmed it (GDPR "awareness")
    first_event_at: Mapped[datetime]
    last_event_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # How awareness was set: "confirmed" (staff) or "triage_window" (no decision in time)
    aware_source: Mapped[str | None] = mapped_column(String(32), default=None)
    # ENISA (2013) risk: score, band and every factor with its reason; staff overrides inside
    risk_score: Mapped[float | None] = mapped_column(default=None)
    risk_band: Mapped[str | None] = mapped_column(String(16), default=None)
    risk_assessment: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    assignee: Mapped[str | None] = mapped_column(String(128), default=None)
    merged_into: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"), default=None)


class IncidentSubject(Base):
    __tablename__ = "incident_subjects"
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), primary_key=True)
    subject: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_seen_at: Mapped[datetime]


class IncidentHistory(Base):
    """Append-only: who changed what and when."""

    __tablename__ = "incident_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    at: Mapped[datetime]
    by: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]]
    # One hash chain over the whole table, ordered by id (breachwatch/incidents/chain.py)
    prev_hash: Mapped[str] = mapped_column(String(64), default="")
    hash: Mapped[str] = mapped_column(String(64), default="")


class FindingRow(Base):
    __tablename__ = "findings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(512), unique=True)
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"), index=True)
    rule: Mapped[str] = mapped_column(String(64), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    time: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(255))
    person: Mapped[str | None] = mapped_column(String(255))
    store: Mapped[str] = mapped_column(String(64))
    objects: Mapped[list[Any]]
    subjects: Mapped[list[Any]]
    categories: Mapped[list[Any]]
    controls: Mapped[list[Any]]
    evidence: Mapped[list[Any]]
    explanation: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime]


class Obligation(Base):
    __tablename__ = "obligations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    regime: Mapped[str] = mapped_column(String(32))  # gdpr_art33, gdpr_art34
    recipient: Mapped[str] = mapped_column(String(255))  # authority name / "affected customers"
    clock_start: Mapped[datetime]
    due_at: Mapped[datetime]
    release_at: Mapped[datetime | None]  # customer notices: end of the hold
    state: Mapped[str] = mapped_column(String(16), index=True)  # open, done, cancelled
    reminders_sent: Mapped[list[Any]]
    overdue_since: Mapped[datetime | None]
    done_at: Mapped[datetime | None]
    # "awareness" or "detection" (incidents/regimes.py): what a recomputation starts from
    clock_basis: Mapped[str | None] = mapped_column(String(16), default=None)
    # phase sent, late reasons, Art. 34(3) exemption … recorded by staff (free-form facts)
    notes: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    __table_args__ = (UniqueConstraint("incident_id", "regime", name="uq_obligation_regime"),)


class OutboxMessage(Base):
    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)  # idempotency key
    obligation_id: Mapped[int] = mapped_column(ForeignKey("obligations.id"), index=True)
    recipient_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(32))
    # queued, held (staff hold), sending, sent, failed, cancelled
    state: Mapped[str] = mapped_column(String(16), index=True)
    not_before: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(255))
    receipt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_outbox_due", "state", "not_before"),)


class NoticeHold(Base):
    """Staff decisions on the customer notices of one obligation (`breachwatch notify`): a
    hold keeps them from going out until approved; an approval releases them early. A table
    of its own, so that a store from before it gains it through create_all."""

    __tablename__ = "notice_holds"
    obligation_id: Mapped[int] = mapped_column(ForeignKey("obligations.id"), primary_key=True)
    held: Mapped[bool]
    reason: Mapped[str | None] = mapped_column(Text)
    by: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime]
    approved_at: Mapped[datetime | None]
    approved_by: Mapped[str | None] = mapped_column(String(128))
