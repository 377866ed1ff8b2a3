"""Incidents in the store: findings correlated into incidents, their risk assessment and
obligations, staff transitions with an append-only, hash-chained history. Callers pass the
session, so that what an ingest batch produced is committed together with the offsets that
produced it."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from breachwatch.config import DaemonConfig
from breachwatch.detection.findings import Finding, Severity
from breachwatch.errors import StateError
from breachwatch.incidents import chain, regimes
from breachwatch.incidents.lifecycle import (
    OPEN_STATES,
    REOPENABLE,
    IncidentState,
    check_transition,
)
from breachwatch.incidents.obligations import CUSTOMER_NOTICE, ObligationPlan
from breachwatch.incidents.severity import RiskInputs, assess, effective_band
from breachwatch.store import locks
from breachwatch.store.schema import (
    FindingRow,
    Incident,
    IncidentHistory,
    IncidentSubject,
    Obligation,
    OutboxMessage,
)

SYSTEM = "breachwatch"
# Rules whose findings mean the number of people reached is not known from the log
COUNT_UNKNOWN_RULES = frozenset({"anomaly.unbounded_read", "anomaly.export"})


@dataclass
class RecordResult:
    new_findings: list[Finding] = field(default_factory=list)
    opened: list[Incident] = field(default_factory=list)
    new_obligations: list[Obligation] = field(default_factory=list)


def record_history(
    session: Session, incident: Incident, at: datetime, by: str, action: str, **detail: object
) -> None:
    """The single way history is written: every row is chained (incidents/chain.py)."""
    chain.append(
        session,
        IncidentHistory(incident_id=incident.id, at=at, by=by, action=action, detail=dict(detail)),
    )


class IncidentService:
    def __init__(self, config: DaemonConfig) -> None:
        self._config = config
        self._window = config.incidents.correlation_window
        self._min = config.incidents.min_severity

    # ---- ingest side -------------------------------------------------------------------
    def record(self, session: Session, findings: list[Finding], now: datetime) -> RecordResult:
        result = RecordResult()
        if not findings:
            return result
        # Another process may record the same findings into the same store (PostgreSQL): the
        # actors' locks, taken before the open incident is looked up, make that lookup the
        # committed truth, so one cause never opens two incidents. The history chain's lock
        # is taken in the same sorted pass (one lock order for every writer: no deadlock).
        locks.xact_lock(session, *{locks.actor(f.actor) for f in findings}, locks.CHAIN)
        touched: dict[int, Incident] = {}
        members: dict[int, list[int]] = {}
        # One INSERT for the batch, and per actor and per incident one query for what the
        # store holds (open incidents, subjects), kept up to date in memory for the rest of
        # the batch: the locks above make this transaction their only writer. (A catch-up
        # after downtime records thousands of findings a batch; one round trip each made
        # the store the daemon's bottleneck.)
        stored = insert_findings(session, findings, now)
        open_by_actor: dict[str, list[Incident]] = {}
        subjects_of: dict[int, set[str]] = {}
        for finding in findings:
            row_id = stored.pop(finding.key, None)
            if row_id is None:
                continue  # already recorded (before a restart, by another process, or above)
            incident = self._open_incident_for(session, finding, open_by_actor)
            if incident is None and finding.severity.rank >= self._min.rank:
                incident = self._open(session, finding, now, result)
                open_by_actor[finding.actor].insert(0, incident)  # the newest first
            result.new_findings.append(finding)
            if incident is not None:
                members.setdefault(incident.id, []).append(row_id)
                self._attach(session, incident, finding, now, subjects_of)
                touched[incident.id] = incident
        for incident_id, row_ids in members.items():
            session.execute(
                update(FindingRow)
                .where(FindingRow.id.in_(row_ids))
                .values(incident_id=incident_id)
                .execution_options(synchronize_session=False)
            )
        session.flush()
        for incident in touched.values():
            result.new_obligations.extend(self.refresh(session, incident, now))
        return result

    def _open_incident_for(
        self, session: Session, finding: Finding, open_by_actor: dict[str, list[Incident]]
    ) -> Incident | None:
        """The newest open incident of the finding's actor whose last event is within the
        correlation window of the finding; ``open_by_actor`` holds each actor's open
        incidents, newest first, once read."""
        candidates = open_by_actor.get(finding.actor)
        if candidates is None:
            candidates = open_by_actor[finding.actor] = list(
                session.scalars(
                    select(Incident)
                    .where(
                        Incident.actor == finding.actor,
                        Incident.state.in_([s.value for s in OPEN_STATES]),
                    )
                    .order_by(Incident.id.desc())
                )
            )
        since = finding.time - self._window
        return next((i for i in candidates if i.last_event_at >= since), None)

    def _open(
        self, session: Session, finding: Finding, now: datetime, result: RecordResult
    ) -> Incident:
        incident = new_incident(session, f"{finding.actor}|{finding.key}", finding, now, now)
        record_history(
            session,
            incident,
            now,
            SYSTEM,
            "opened",
            rule=finding.rule,
            severity=finding.severity.value,
        )
        result.opened.append(incident)
        return incident

    def _attach(
        self,
        session: Session,
        incident: Incident,
        finding: Finding,
        now: datetime,
        subjects_of: dict[int, set[str]],
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
        if finding.subjects:
            known = subjects_of.get(incident.id)
            if known is None:
                known = subjects_of[incident.id] = known_subjects(session, incident)
            add_subjects(session, incident, finding.subjects, now, known)

    # ---- risk and obligations ----------------------------------------------------------
    def refresh(
        self, session: Session, incident: Incident, now: datetime, by: str = SYSTEM
    ) -> list[Obligation]:
        """Reassess the risk and add the obligations that now apply (none is removed
        automatically: dropping a legal duty is a staff decision, with a reason)."""
        self.reassess(session, incident, now, by)
        return self.sync_obligations(session, incident, now)

    def reassess(self, session: Session, incident: Incident, now: datetime, by: str) -> bool:
        session.flush()
        rules = tuple(
            session.scalars(select(FindingRow.rule).where(FindingRow.incident_id == incident.id))
        )
        previous: dict[str, Any] = dict(incident.risk_assessment or {})
        declared: dict[str, Any] = dict(previous.get("declared") or {})
        subjects = subject_count(session, incident.id)
        inputs = RiskInputs(
            categories=tuple(incident.categories),
            rules=rules,
            subjects=subjects,
            count_unknown=bool(set(rules) & COUNT_UNKNOWN_RULES),
            unintelligible=bool(declared.get("unintelligible")),
        )
        assessment = assess(inputs, self._config.incidents.risk)
        stored = {
            **assessment.to_json(),
            "inputs": {
                "categories": list(incident.categories),
                "rules": sorted(set(rules)),
                "findings": len(rules),
                "subjects": subjects,
            },
            "assessed_at": now.isoformat(),
        }
        if declared:
            stored["declared"] = declared
        if "override" in previous:
            stored["override"] = previous["override"]
        changed = bool(
            previous.get("score") != stored["score"]
            or previous.get("band") != stored["band"]
            or previous.get("dpc") != stored["dpc"]
            or previous.get("circumstances") != stored["circumstances"]
            or previous.get("flags") != stored["flags"]
        )
        incident.risk_assessment = stored
        incident.risk_score = assessment.score
        band = effective_band(stored)
        incident.risk_band = band.value if band else None
        if changed:
            record_history(
                session,
                incident,
                now,
                by,
                "risk_assessed",
                score=stored["score"],
                band=stored["band"],
                formula=stored["formula"],
                dpc=stored["dpc"],
                ei=stored["ei"],
                circumstances=stored["circumstances"],
                flags=stored["flags"],
            )
        return changed

    def facts(self, session: Session, incident: Incident) -> regimes.IncidentFacts:
        assessment = incident.risk_assessment or {}
        malicious = any(
            c["name"] == "malicious" and c["value"] > 0 for c in assessment.get("circumstances", [])
        )
        return regimes.IncidentFacts(
            categories=tuple(incident.categories),
            band=effective_band(assessment),
            special_categories=bool(assessment.get("flags", {}).get("special_categories")),
            malicious=malicious,
            has_subjects=subject_count(session, incident.id) > 0,
            severity=Severity(incident.severity),
            detected_at=incident.detected_at,
            aware_at=incident.aware_at,
        )

    def sync_obligations(
        self, session: Session, incident: Incident, now: datetime
    ) -> list[Obligation]:
        existing = set(
            session.scalars(select(Obligation.regime).where(Obligation.incident_id == incident.id))
        )
        facts = self.facts(session, incident)
        reasons = {d.regime: d.reason for d in regimes.decide(facts, self._config.obligations)}
        added = []
        for plan in regimes.plan(facts, self._config.obligations):
            if plan.regime not in existing:
                added.append(add_obligation(session, incident, plan, now, reasons[plan.regime]))
        return added

    # ---- staff side --------------------------------------------------------------------
    def transition(
        self, session: Session, ref: str, target: IncidentState, by: str, reason: str, now: datetime
    ) -> Incident:
        incident = get_incident(session, ref)
        current = IncidentState(incident.state)
        check_transition(current, target)
        if target is IncidentState.SUSPECTED and not reason.strip():
            raise StateError("reopening needs a reason")
        old = incident.state
        incident.state = target.value
        incident.updated_at = now
        record_history(
            session, incident, now, by, "state", old=old, new=target.value, reason=reason
        )
        if target is IncidentState.CONFIRMED and incident.aware_at is None:
            set_awareness(session, incident, now, "confirmed", now, by, self._config)
        if target is IncidentState.SUSPECTED and current in REOPENABLE:
            self._reopen(session, incident, now, by)
            return incident
        for obligation in session.scalars(
            select(Obligation).where(
                Obligation.incident_id == incident.id, Obligation.state == "open"
            )
        ):
            if target is IncidentState.DISMISSED:
                cancel_obligation(session, obligation, incident, now, by, "incident dismissed")
            elif target is IncidentState.NOTIFIED and obligation.regime == regimes.GDPR_ART33:
                mark_sent(session, obligation, incident, now, by, "complete", reason, self._config)
            elif target is IncidentState.CLOSED:
                cancel_obligation(session, obligation, incident, now, by, "incident closed")
        return incident

    def _reopen(self, session: Session, incident: Incident, now: datetime, by: str) -> None:
        """Obligations cancelled by the dismissal or closure run again on their original
        clock (possibly overdue already); notices cancelled with them are queued again."""
        for obligation in session.scalars(
            select(Obligation).where(
                Obligation.incident_id == incident.id, Obligation.state == "cancelled"
            )
        ):
            obligation.state, obligation.done_at = "open", None
            for message in session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.obligation_id == obligation.id,
                    OutboxMessage.state == "cancelled",
                )
            ):
                message.state, message.last_error, message.not_before = "queued", None, now
            record_history(
                session, incident, now, by, "obligation_reopened", regime=obligation.regime
            )
        self.refresh(session, incident, now, by)


# ---- shared building blocks (used by casework and the deadline keeper too) ---------------
def new_incident(
    session: Session,
    correlation_key: str,
    finding: Finding | FindingRow,
    detected_at: datetime,
    now: datetime,
) -> Incident:
    incident = Incident(
        ref=f"pending-{uuid.uuid4().hex[:20]}",  # unique: concurrent writers never collide
        correlation_key=fit_key(correlation_key),
        state=IncidentState.SUSPECTED.value,
        severity=Severity(finding.severity).value,
        actor=finding.actor,
        person=finding.person,
        store=finding.store,
        categories=sorted(finding.categories),
        detected_at=detected_at,
        aware_at=None,
        first_event_at=finding.time,
        last_event_at=finding.time,
        updated_at=now,
    )
    session.add(incident)
    session.flush()
    incident.ref = f"BW-{detected_at.year}-{incident.id:04d}"
    return incident


def known_subjects(session: Session, incident: Incident) -> set[str]:
    return set(
        session.scalars(
            select(IncidentSubject.subject).where(IncidentSubject.incident_id == incident.id)
        )
    )


def add_subjects(
    session: Session,
    incident: Incident,
    subjects: tuple[str, ...] | list[str],
    now: datetime,
    known: set[str] | None = None,
) -> None:
    """Add the subjects the incident does not have yet; ``known``: its subjects as the caller
    already read them (updated here), else they are read."""
    if known is None:
        known = known_subjects(session, incident)
    new = sorted(set(subjects) - known)
    known.update(new)
    for subject in new:
        session.add(IncidentSubject(incident_id=incident.id, subject=subject, first_seen_at=now))
    if not new:
        return
    # Customers found after every earlier notice went out are owed one too: a notice
    # obligation that was complete is open again until they have theirs.
    for obligation in session.scalars(
        select(Obligation).where(
            Obligation.incident_id == incident.id,
            Obligation.regime == CUSTOMER_NOTICE,
            Obligation.state == "done",
        )
    ):
        obligation.state, obligation.done_at = "open", None
        record_history(
            session,
            incident,
            now,
            SYSTEM,
            "obligation_reopened",
            regime=obligation.regime,
            new_subjects=len(new),
        )


def subject_count(session: Session, incident_id: int) -> int:
    session.flush()
    return int(
        session.scalar(
            select(func.count())
            .select_from(IncidentSubject)
            .where(IncidentSubject.incident_id == incident_id)
        )
        or 0
    )


def add_obligation(
    session: Session, incident: Incident, plan: ObligationPlan, now: datetime, reason: str
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
        clock_basis=regimes.CLOCK_BASIS.get(plan.regime),
        notes={"applies_because": reason},
    )
    session.add(obligation)
    session.flush()
    record_history(
        session,
        incident,
        now,
        SYSTEM,
        "obligation_scheduled",
        regime=plan.regime,
        clock_start=plan.clock_start.isoformat(),
        due_at=plan.due_at.isoformat(),
        because=reason,
    )
    return obligation


def set_awareness(
    session: Session,
    incident: Incident,
    aware_at: datetime,
    source: str,
    now: datetime,
    by: str,
    config: DaemonConfig,
) -> None:
    """Record awareness and recompute the deadlines that count from it."""
    incident.aware_at, incident.aware_source = aware_at, source
    record_history(
        session, incident, now, by, "awareness", aware_at=aware_at.isoformat(), source=source
    )
    for obligation in session.scalars(
        select(Obligation).where(Obligation.incident_id == incident.id, Obligation.state == "open")
    ):
        basis = obligation.clock_basis or regimes.CLOCK_BASIS.get(obligation.regime)
        if basis != regimes.AWARENESS:
            continue
        due = regimes.due_from(obligation.regime, aware_at, config.obligations)
        if (obligation.clock_start, obligation.due_at) == (aware_at, due):
            continue
        record_history(
            session,
            incident,
            now,
            by,
            "deadline_recomputed",
            regime=obligation.regime,
            old_due_at=obligation.due_at.isoformat(),
            due_at=due.isoformat(),
            clock_start=aware_at.isoformat(),
        )
        obligation.clock_start, obligation.due_at = aware_at, due
        obligation.reminders_sent = []
        if due > now:
            obligation.overdue_since = None


def mark_sent(
    session: Session,
    obligation: Obligation,
    incident: Incident,
    now: datetime,
    by: str,
    phase: str,
    reason: str,
    config: DaemonConfig,
    late_reason: str | None = None,
) -> Obligation | None:
    """A notice was given for this obligation. Late ones keep the reasons for the delay
    (GDPR Art. 33(1)); an initial 611 notice or a NIS2 notification starts the next one."""
    late = regimes.is_late(obligation.due_at, now)
    if late and not (late_reason or reason).strip():
        raise StateError(
            f"{obligation.regime} is past its deadline: record the reasons for the delay"
        )
    notes = dict(obligation.notes or {})
    notes.setdefault("phases", []).append({"phase": phase, "at": now.isoformat(), "by": by})
    if late:
        notes["late_reason"] = late_reason or reason
    obligation.notes = notes
    obligation.state, obligation.done_at = "done", now
    record_history(
        session,
        incident,
        now,
        by,
        "obligation_done",
        regime=obligation.regime,
        phase=phase,
        reason=reason,
        late=late,
        **({"late_reason": notes["late_reason"]} if late else {}),
    )
    plan = regimes.follow_up(obligation.regime, phase, now, config.obligations)
    if plan is None:
        return None
    exists = session.scalar(
        select(Obligation.id).where(
            Obligation.incident_id == incident.id, Obligation.regime == plan.regime
        )
    )
    if exists is not None:
        return None
    return add_obligation(session, incident, plan, now, f"follows {obligation.regime} ({phase})")


def cancel_obligation(
    session: Session,
    obligation: Obligation,
    incident: Incident,
    now: datetime,
    by: str,
    why: str,
    state: str = "cancelled",
) -> None:
    obligation.state = state
    obligation.done_at = now
    for message in session.scalars(
        select(OutboxMessage).where(
            OutboxMessage.obligation_id == obligation.id, OutboxMessage.state == "queued"
        )
    ):
        message.state = "cancelled"
        message.last_error = why
    record_history(
        session,
        incident,
        now,
        by,
        "obligation_cancelled" if state == "cancelled" else f"obligation_{state}",
        regime=obligation.regime,
        reason=why,
    )


def get_incident(session: Session, ref: str) -> Incident:
    query = select(Incident).where(Incident.ref == ref)
    if ref.isdigit():
        query = select(Incident).where(Incident.id == int(ref))
    incident = session.scalars(query).first()
    if incident is None:
        raise StateError(f"no incident {ref!r}")
    return incident


def fit_key(key: str, limit: int = 255) -> str:
    """A correlation key that fits its column (PostgreSQL enforces lengths): long ones are
    replaced by their SHA-256, which keeps them unique and deterministic."""
    if len(key) <= limit:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


# Rows per INSERT: 15 columns each stay far below SQLite's and PostgreSQL's bound-parameter
# limits (32,766 and 65,535).
_INSERT_ROWS = 500


def insert_findings(session: Session, findings: list[Finding], now: datetime) -> dict[str, int]:
    """INSERT … ON CONFLICT (key) DO NOTHING for each finding: key -> id of each row this
    call stored; a key already stored (by an earlier batch, or by another process meanwhile)
    is not stored again, and a key twice in ``findings`` is stored once."""
    dialect = session.get_bind().dialect.name
    by_key: dict[str, Finding] = {}
    for finding in findings:
        by_key.setdefault(finding.key, finding)  # a key's first finding, in their order
    first = list(by_key.values())
    stored: dict[str, int] = {}
    if dialect not in ("postgresql", "sqlite"):  # no ON CONFLICT: look first
        for finding in first:
            if (
                session.scalar(select(FindingRow.id).where(FindingRow.key == finding.key))
                is not None
            ):
                continue
            row = FindingRow(**finding_values(finding, now))
            session.add(row)
            session.flush()
            stored[finding.key] = row.id
        return stored
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # One statement, compiled once; SQLAlchemy sends the rows as multi-row INSERTs
    # ("insertmanyvalues") and gathers what each RETURNING gives.
    statement = (
        insert(FindingRow)
        .on_conflict_do_nothing(index_elements=[FindingRow.key])
        .returning(FindingRow.key, FindingRow.id)
    )
    for start in range(0, len(first), _INSERT_ROWS):
        rows = [finding_values(f, now) for f in first[start : start + _INSERT_ROWS]]
        stored.update((key, row_id) for key, row_id in session.execute(statement, rows))
    return stored


def finding_row(finding: Finding, incident: Incident | None, now: datetime) -> FindingRow:
    return FindingRow(incident_id=incident.id if incident else None, **finding_values(finding, now))


def finding_values(finding: Finding, now: datetime) -> dict[str, Any]:
    return dict(
        key=finding.key,
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
