"""Read-side views of the store as plain JSON-ready dicts: incidents, their findings,
obligations and history, the outbox and drafts. Shared by the command line (commands.py,
commands_incidents.py) and the HTTP API (api/routes.py), so both show the same data."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from breachwatch.config import DaemonConfig
from breachwatch.errors import StateError
from breachwatch.incidents import documents
from breachwatch.incidents.service import get_incident, subject_count
from breachwatch.store.schema import (
    FindingRow,
    Incident,
    IncidentHistory,
    Obligation,
    OutboxMessage,
)

# Outbox message states (store/schema.py OutboxMessage.state)
NOTICE_STATES = ("queued", "held", "sending", "sent", "failed", "cancelled")


def iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


def incident_json(incident: Incident, subjects: int) -> dict[str, Any]:
    return {
        "ref": incident.ref,
        "state": incident.state,
        "severity": incident.severity,
        "actor": incident.actor,
        "person": incident.person,
        "store": incident.store,
        "categories": incident.categories,
        "subjects": subjects,
        "detected_at": iso(incident.detected_at),
        "aware_at": iso(incident.aware_at),
        "first_event_at": iso(incident.first_event_at),
        "last_event_at": iso(incident.last_event_at),
        "aware_source": incident.aware_source,
        "risk_band": incident.risk_band,
        "risk_score": incident.risk_score,
        "assignee": incident.assignee,
    }


def incident_summary(session: Session, incident: Incident) -> dict[str, Any]:
    return incident_json(incident, subject_count(session, incident.id))


def list_incidents(session: Session, state: str | None = None) -> list[dict[str, Any]]:
    query = select(Incident).order_by(Incident.id)
    if state:
        query = query.where(Incident.state == state)
    return [incident_summary(session, i) for i in session.scalars(query)]


def obligation_json(o: Obligation, ref: str, now: datetime) -> dict[str, Any]:
    return {
        "incident": ref,
        "regime": o.regime,
        "recipient": o.recipient,
        "state": o.state,
        "clock_start": iso(o.clock_start),
        "due_at": iso(o.due_at),
        "release_at": iso(o.release_at),
        "overdue": o.state == "open" and now >= o.due_at,
        "seconds_left": round((o.due_at - now).total_seconds()),
        "reminders_sent": o.reminders_sent,
    }


def incident_detail(session: Session, ref: str, now: datetime) -> dict[str, Any]:
    """One incident with its findings, obligations and history (raises StateError if unknown)."""
    incident = get_incident(session, ref)
    data = incident_summary(session, incident)
    data["findings"] = [
        {
            "id": f.id,
            "rule": f.rule,
            "severity": f.severity,
            "time": iso(f.time),
            "objects": f.objects,
            "subjects": f.subjects,
            "explanation": f.explanation,
            "controls": f.controls,
            "evidence": f.evidence,
        }
        for f in session.scalars(
            select(FindingRow)
            .where(FindingRow.incident_id == incident.id)
            .order_by(FindingRow.time)
        )
    ]
    data["obligations"] = [
        obligation_json(o, incident.ref, now)
        for o in session.scalars(select(Obligation).where(Obligation.incident_id == incident.id))
    ]
    data["history"] = [
        {"at": iso(h.at), "by": h.by, "action": h.action, "detail": h.detail}
        for h in session.scalars(
            select(IncidentHistory)
            .where(IncidentHistory.incident_id == incident.id)
            .order_by(IncidentHistory.id)
        )
    ]
    return data


def list_obligations(
    session: Session, now: datetime, include_closed: bool = False
) -> list[dict[str, Any]]:
    query = select(Obligation, Incident.ref).join(Incident).order_by(Obligation.due_at)
    if not include_closed:
        query = query.where(Obligation.state == "open")
    return [obligation_json(o, ref, now) for o, ref in session.execute(query).all()]


def list_notices(session: Session, state: str | None = None) -> list[dict[str, Any]]:
    query = (
        select(OutboxMessage, Incident.ref)
        .join(Obligation, OutboxMessage.obligation_id == Obligation.id)
        .join(Incident)
        .order_by(OutboxMessage.id)
    )
    if state:
        query = query.where(OutboxMessage.state == state)
    return [
        {
            "incident": ref,
            "recipient": m.recipient_id,
            "channel": m.channel,
            "state": m.state,
            "attempts": m.attempts,
            "message_id": m.message_id,
            "sent_at": iso(m.sent_at),
            "error": m.last_error,
        }
        for m, ref in session.execute(query).all()
    ]


def draft_notice(
    session: Session, config: DaemonConfig, ref: str, regime: str, lang: str, now: datetime
) -> dict[str, Any]:
    """The authority notice draft of an incident under a regime (StateError if refused)."""
    incident = get_incident(session, ref)
    d = documents.dossier(session, incident, config)
    try:
        return documents.draft(d, regime, lang, now)
    except ValueError as exc:
        raise StateError(str(exc)) from exc
