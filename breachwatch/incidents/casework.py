"""Staff case work on incidents: assignment, comments, merge, split-off, risk overrides,
notices given per regime and recorded exemptions. Every change goes into the chained history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from breachwatch.config import DaemonConfig
from breachwatch.errors import StateError
from breachwatch.incidents import regimes
from breachwatch.incidents.lifecycle import OPEN_STATES, IncidentState, check_transition
from breachwatch.incidents.service import (
    IncidentService,
    add_subjects,
    cancel_obligation,
    get_incident,
    mark_sent,
    new_incident,
    record_history,
    set_awareness,
)
from breachwatch.incidents.severity import RiskBand, effective_band, with_override
from breachwatch.store.schema import FindingRow, Incident, IncidentSubject, Obligation

# Art. 33 "unless unlikely to result in a risk"; Art. 34(3)(a)-(c)
EXEMPTIONS: dict[str, tuple[str, ...]] = {
    regimes.GDPR_ART33: ("risk_unlikely",),
    regimes.GDPR_ART34: ("unintelligible", "measures_removed_risk", "disproportionate_effort"),
}
PHASES = ("initial", "complete", "final")


def _open_incident(session: Session, ref: str) -> Incident:
    incident = get_incident(session, ref)
    if IncidentState(incident.state) not in OPEN_STATES:
        raise StateError(f"{incident.ref} is {incident.state}; reopen it first")
    return incident


class Casework:
    def __init__(self, config: DaemonConfig) -> None:
        self._config = config
        self._service = IncidentService(config)

    def assign(self, session: Session, ref: str, to: str, by: str, now: datetime) -> Incident:
        incident = get_incident(session, ref)
        old, incident.assignee, incident.updated_at = incident.assignee, to, now
        record_history(session, incident, now, by, "assigned", old=old, new=to)
        return incident

    def comment(self, session: Session, ref: str, text: str, by: str, now: datetime) -> Incident:
        if not text.strip():
            raise StateError("an empty comment")
        incident = get_incident(session, ref)
        record_history(session, incident, now, by, "comment", text=text)
        return incident

    def merge(
        self, session: Session, into_ref: str, other_ref: str, by: str, reason: str, now: datetime
    ) -> Incident:
        """Fold `other` into `into`: findings, subjects and categories move; `other` becomes
        merged (final) and its open obligations are cancelled in favour of `into`'s."""
        target = _open_incident(session, into_ref)
        other = _open_incident(session, other_ref)
        if target.id == other.id:
            raise StateError("cannot merge an incident into itself")
        check_transition(IncidentState(other.state), IncidentState.MERGED)
        moved = list(session.scalars(select(FindingRow).where(FindingRow.incident_id == other.id)))
        for row in moved:
            row.incident_id = target.id
        subjects = list(
            session.scalars(
                select(IncidentSubject.subject).where(IncidentSubject.incident_id == other.id)
            )
        )
        add_subjects(session, target, subjects, now)
        target.categories = sorted(set(target.categories) | set(other.categories))
        target.first_event_at = min(target.first_event_at, other.first_event_at)
        target.last_event_at = max(target.last_event_at, other.last_event_at)
        # The earlier detection and awareness win: merging never buys time on the clock.
        if other.detected_at < target.detected_at:
            target.detected_at = other.detected_at
        if other.aware_at is not None and (
            target.aware_at is None or other.aware_at < target.aware_at
        ):
            source = f"{other.aware_source or 'confirmed'} (from {other.ref})"
            set_awareness(session, target, other.aware_at, source, now, by, self._config)
        target.updated_at = now
        old_state = other.state
        other.state, other.merged_into, other.updated_at = (
            IncidentState.MERGED.value,
            target.id,
            now,
        )
        for obligation in session.scalars(
            select(Obligation).where(Obligation.incident_id == other.id, Obligation.state == "open")
        ):
            cancel_obligation(session, obligation, other, now, by, f"merged into {target.ref}")
        record_history(
            session,
            other,
            now,
            by,
            "state",
            old=old_state,
            new="merged",
            into=target.ref,
            reason=reason,
        )
        record_history(
            session,
            target,
            now,
            by,
            "merged",
            source=other.ref,
            findings=len(moved),
            subjects=len(subjects),
            reason=reason,
        )
        self._service.refresh(session, target, now, by)
        return target

    def split(
        self, session: Session, ref: str, finding_id: int, by: str, reason: str, now: datetime
    ) -> Incident:
        """Move one finding into a new incident (same detection and awareness times, so the
        legal clock of the split-off part does not restart)."""
        source = _open_incident(session, ref)
        row = session.get(FindingRow, finding_id)
        if row is None or row.incident_id != source.id:
            raise StateError(f"finding {finding_id} is not part of {source.ref}")
        remaining = list(
            session.scalars(
                select(FindingRow).where(
                    FindingRow.incident_id == source.id, FindingRow.id != finding_id
                )
            )
        )
        if not remaining:
            raise StateError(f"{source.ref} has only this finding; nothing to split off")
        part = new_incident(session, f"split|{row.key}", row, source.detected_at, now)
        part.aware_at, part.aware_source = source.aware_at, source.aware_source
        row.incident_id = part.id
        add_subjects(session, part, row.subjects, now)
        # The source keeps the subjects and categories of its remaining findings only.
        keep_subjects = {s for f in remaining for s in f.subjects}
        for subject in session.scalars(
            select(IncidentSubject).where(IncidentSubject.incident_id == source.id)
        ):
            if subject.subject not in keep_subjects:
                session.delete(subject)
        source.categories = sorted({c for f in remaining for c in f.categories})
        source.first_event_at = min(f.time for f in remaining)
        source.last_event_at = max(f.time for f in remaining)
        source.updated_at = now
        record_history(
            session,
            part,
            now,
            by,
            "opened",
            split_from=source.ref,
            finding=finding_id,
            reason=reason,
        )
        record_history(
            session, source, now, by, "split", finding=finding_id, into=part.ref, reason=reason
        )
        self._service.refresh(session, source, now, by)
        self._service.refresh(session, part, now, by)
        return part

    def override_risk(
        self,
        session: Session,
        ref: str,
        band: RiskBand | None,
        unintelligible: bool | None,
        by: str,
        reason: str,
        now: datetime,
    ) -> Incident:
        """Staff set the band and/or declare the data unintelligible, always with a reason."""
        if not reason.strip():
            raise StateError("a justification is required (--reason)")
        incident = get_incident(session, ref)
        assessment: dict[str, Any] = dict(incident.risk_assessment or {})
        if unintelligible is not None:
            declared = dict(assessment.get("declared") or {})
            declared["unintelligible"] = unintelligible
            assessment["declared"] = declared
            incident.risk_assessment = assessment
            record_history(
                session,
                incident,
                now,
                by,
                "risk_declared",
                unintelligible=unintelligible,
                reason=reason,
            )
            self._service.reassess(session, incident, now, by)
            assessment = dict(incident.risk_assessment or {})
        if band is not None:
            old = effective_band(assessment)
            assessment = with_override(assessment, band, by, now, reason)
            incident.risk_assessment = assessment
            incident.risk_band = band.value
            record_history(
                session,
                incident,
                now,
                by,
                "risk_overridden",
                old=old.value if old else None,
                new=band.value,
                computed=assessment.get("band"),
                reason=reason,
            )
        incident.updated_at = now
        if IncidentState(incident.state) in OPEN_STATES:
            self._service.sync_obligations(session, incident, now)
        return incident

    def notice_given(
        self,
        session: Session,
        ref: str,
        regime: str,
        phase: str,
        by: str,
        reason: str,
        now: datetime,
        late_reason: str | None = None,
    ) -> Obligation:
        incident = get_incident(session, ref)
        obligation = _obligation(session, incident, regime)
        if phase not in PHASES:
            raise StateError(f"phase is one of {', '.join(PHASES)}")
        mark_sent(session, obligation, incident, now, by, phase, reason, self._config, late_reason)
        return obligation

    def exempt(
        self,
        session: Session,
        ref: str,
        regime: str,
        ground: str,
        by: str,
        reason: str,
        now: datetime,
    ) -> Obligation:
        grounds = EXEMPTIONS.get(regime)
        if grounds is None or ground not in grounds:
            allowed = "; ".join(f"{r}: {', '.join(g)}" for r, g in EXEMPTIONS.items())
            raise StateError(f"no exemption {ground!r} for {regime} (allowed: {allowed})")
        if not reason.strip():
            raise StateError("an exemption needs the reasons (--reason)")
        incident = get_incident(session, ref)
        obligation = _obligation(session, incident, regime)
        notes = dict(obligation.notes or {})
        notes["exemption"] = {"ground": ground, "reason": reason, "by": by, "at": now.isoformat()}
        if ground == "disproportionate_effort":
            notes["exemption"]["requires"] = "a public communication (Art. 34(3)(c))"
        obligation.notes = notes
        cancel_obligation(session, obligation, incident, now, by, reason, state="exempt")
        record_history(
            session, incident, now, by, "exemption", regime=regime, ground=ground, reason=reason
        )
        return obligation


def _obligation(session: Session, incident: Incident, regime: str) -> Obligation:
    obligation = session.scalars(
        select(Obligation).where(Obligation.incident_id == incident.id, Obligation.regime == regime)
    ).first()
    if obligation is None:
        raise StateError(f"{incident.ref} has no {regime} obligation")
    if obligation.state != "open":
        raise StateError(f"{incident.ref}: {regime} is already {obligation.state}")
    return obligation
