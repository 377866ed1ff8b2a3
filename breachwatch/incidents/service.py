"""Incidents in the store: findings correlated into incidents, their obligations, staff
transitions with an append-only history. Callers pass the session, so that what an ingest
batch produced is committed together with the offsets that produced it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from breachwatch.config import DaemonConfig
from breachwatch.detection.findings import Finding, Severity
from breachwatch.errors import StateError
from breachwatch.incidents.lifecycle import OPEN_STATES, IncidentState, check_transition
from breachwatch.incidents.obligations import (
    CUSTOMER_NOTICE,
    GDPR_ART33,
    ObligationPlan,
    customer_notice_plan,
    plan_obligations,
)
from breachwatch.store.schema import (
    FindingRow,
    Incident,
    IncidentHistory,
    IncidentSubject,
    Obligation,
    OutboxMessage,
)

SYSTEM = "breachwatch"


@dataclass
class RecordResult:
    new_findings: list[Finding] = field(default_factory=list)
    opened: list[Incident] = field(default_factory=list)
    new_obligations: list[Obligation] = field(default_factory=list)


def record_history(
    session: Session, incident: Incident, at: datetime, by: str, action: str, **detail: object
) -> None:
    session.add(
        IncidentHistory(incident_id=incident.id, at=at, by=by, action=action, detail=dict(detail))
    )


class IncidentService:
    def __init__(self, config: DaemonConfig) -> None:
        self._config = config
        self._window = config.incidents.correlation_window
        self._min = config.incidents.min_severity

    # ---- ingest side -------------------------------------------------------------------
    def record(self, session: Session, findings: list[Finding], now: datetime) -> RecordResult:
        result = RecordResult()
        for finding in findings:
            if session.scalar(select(FindingRow.id).where(FindingRow.key == finding.key)):
                continue  # already recorded before a restart: nothing twice
            incident = self._open_incident_for(session, finding)
            if incident is None and finding.severity.rank >= self._min.rank:
                incident = self._open(session, finding, now, result)
            row = _finding_row(finding, incident, now)
            session.add(row)
            result.new_findings.append(finding)
            if incident is not None:
                self._attach(session, incident, finding, now, result)
        session.flush()
        return result

    def _open_incident_for(self, session: Session, finding: Finding) -> Incident | None:
        return session.scalars(
            select(Incident)
            .where(
                Incident.actor == finding.actor,
                Incident.state.in_([s.value for s in OPEN_STATES]),
                Incident.last_event_at >= finding.time - self._window,
            )
            .order_by(Incident.id.desc())
            .limit(1)
        ).first()

    def _open(
        self, session: Session, finding: Finding, now: datetime, result: RecordResult
    ) -> Incident:
        incident = Incident(
            ref="pending",
            correlation_key=f"{finding.actor}|{finding.key}",
            state=IncidentState.SUSPECTED.value,
            severity=finding.severity.value,
            actor=finding.actor,
            person=finding.person,
            store=finding.store,
            categories=sorted(finding.categories),
            detected_at=now,
            aware_at=None,
            first_event_at=finding.time,
            last_event_at=finding.time,
            updated_at=now,
        )
        session.add(incident)
        session.flush()
        incident.ref = f"BW-{now.year}-{incident.id:04d}"
        record_history(
            session,
            incident,
            now,
            SYSTEM,
            "opened",
            rule=finding.rule,
            severity=finding.severity.value,
        )
        for plan in plan_obligations(
            finding.severity, bool(finding.subjects), now, self._config.obligations
        ):
            result.new_obligations.append(self._add_obligation(session, incident, plan))
        result.opened.append(incident)
        return incident

    def _add_obligation(
        self, session: Session, incident: Incident, plan: ObligationPlan
    ) -> Obligation:
        obligation = Obligation(
            incident_id=incident.id,
            regime=plan.regime,
            recipient=plan.recipient,
            clock_start=plan.clock_start,
            due_at=plan.due_at,
            release_at=plan.release_at,
            state="open",
            reminders_sent=[],
            overdue_since=None,
            done_at=None,
        )
        session.add(obligation)
        session.flush()
        record_history(
            session,
            incident,
            plan.clock_start,
            SYSTEM,
            "obligation_scheduled",
            regime=plan.regime,
            due_at=plan.due_at.isoformat(),
        )
        return obligation

    def _attach(
        self,
        session: Session,
        incident: Incident,
        finding: Finding,
        now: datetime,
        result: RecordResult,
    ) -> None:
        incident.last_event_at = max(incident.last_event_at, finding.time)
        incident.first_event_at = min(incident.first_event_at, finding.time)
        incident.categories = sorted(set(incident.categories) | set(finding.categories))
        incident.updated_at = now
        if Severity(incident.severity).rank < finding.severity.rank:
            record_history(
                session,
                incident,
                now,
                SYSTEM,
                "severity_raised",
                old=incident.severity,
                new=finding.severity.value,
            )
            incident.severity = finding.severity.value
        known = set(
            session.scalars(
                select(IncidentSubject.subject).where(IncidentSubject.incident_id == incident.id)
            )
        )
        for subject in sorted(set(finding.subjects) - known):
            session.add(
                IncidentSubject(incident_id=incident.id, subject=subject, first_seen_at=now)
            )
        has_subjects = bool(known or finding.subjects)
        notify_from = self._config.obligations.notify_customers_from
        if has_subjects and Severity(incident.severity).rank >= notify_from.rank:
            exists = session.scalar(
                select(Obligation.id).where(
                    Obligation.incident_id == incident.id, Obligation.regime == CUSTOMER_NOTICE
                )
            )
            if exists is None:
                plan = customer_notice_plan(incident.detected_at, self._config.obligations)
                result.new_obligations.append(self._add_obligation(session, incident, plan))

    # ---- staff side --------------------------------------------------------------------
    def transition(
        self, session: Session, ref: str, target: IncidentState, by: str, reason: str, now: datetime
    ) -> Incident:
        incident = get_incident(session, ref)
        check_transition(IncidentState(incident.state), target)
        old = incident.state
        incident.state = target.value
        incident.updated_at = now
        if target is IncidentState.CONFIRMED and incident.aware_at is None:
            incident.aware_at = now
        record_history(
            session, incident, now, by, "state", old=old, new=target.value, reason=reason
        )
        for obligation in session.scalars(
            select(Obligation).where(
                Obligation.incident_id == incident.id, Obligation.state == "open"
            )
        ):
            if target is IncidentState.DISMISSED:
                self._cancel(session, obligation, incident, now, by, "incident dismissed")
            elif target is IncidentState.NOTIFIED and obligation.regime == GDPR_ART33:
                obligation.state, obligation.done_at = "done", now
                record_history(session, incident, now, by, "obligation_done", regime=GDPR_ART33)
            elif target is IncidentState.CLOSED:
                self._cancel(session, obligation, incident, now, by, "incident closed")
        return incident

    def _cancel(
        self,
        session: Session,
        obligation: Obligation,
        incident: Incident,
        now: datetime,
        by: str,
        why: str,
    ) -> None:
        obligation.state = "cancelled"
        obligation.done_at = now
        for message in session.scalars(
            select(OutboxMessage).where(
                OutboxMessage.obligation_id == obligation.id, OutboxMessage.state == "queued"
            )
        ):
            message.state = "cancelled"
            message.last_error = why
        record_history(
            session, incident, now, by, "obligation_cancelled", regime=obligation.regime, reason=why
        )


def get_incident(session: Session, ref: str) -> Incident:
    query = select(Incident).where(Incident.ref == ref)
    if ref.isdigit():
        query = select(Incident).where(Incident.id == int(ref))
    incident = session.scalars(query).first()
    if incident is None:
        raise StateError(f"no incident {ref!r}")
    return incident


def _finding_row(finding: Finding, incident: Incident | None, now: datetime) -> FindingRow:
    return FindingRow(
        key=finding.key,
        incident_id=incident.id if incident else None,
        rule=finding.rule,
        severity=finding.severity.value,
        time=finding.time,
        actor=finding.actor,
        person=finding.person,
        store=finding.store,
        objects=list(finding.objects),
        subjects=list(finding.subjects),
        categories=list(finding.categories),
        controls=list(finding.controls),
        evidence=[
            {"path": p.path, "offset": p.offset, "line": p.line, "length": p.length}
            for p in finding.evidence
        ],
        explanation=finding.explanation,
        recorded_at=now,
    )
