"""What the outbox needs to know about one obligation, read once per delivery run: the incident
facts, the staff hold, each recipient's own data categories, and the texts per language.

The same code serves delivery and `breachwatch notify preview`, so a preview shows exactly
what will be sent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from breachwatch.config import NotificationsConfig
from breachwatch.notifications.directory import Customer
from breachwatch.notifications.render import (
    NoticeContext,
    NoticeRenderer,
    RenderedNotice,
    build_email,
)
from breachwatch.store.schema import (
    FindingRow,
    Incident,
    IncidentSubject,
    NoticeHold,
    Obligation,
    OutboxMessage,
)

# an incident in one of these states sends nothing more
STOPPED_INCIDENT_STATES = frozenset({"dismissed", "closed"})


@dataclass
class ObligationView:
    obligation_id: int
    regime: str
    recipient: str
    obligation_state: str
    due_at: datetime
    release_at: datetime | None
    incident_id: int
    incident_ref: str
    incident_state: str
    severity: str
    held: bool
    hold_reason: str
    contexts: dict[str, NoticeContext]  # per language, categories: the incident's
    categories_by_subject: dict[str, tuple[str, ...]] = field(default_factory=dict)
    subject_count: int = 0

    @property
    def stopped(self) -> str | None:
        """Why nothing may be sent any more, or None."""
        if self.incident_state in STOPPED_INCIDENT_STATES:
            return f"incident {self.incident_state}"
        if self.obligation_state == "cancelled":
            return "notices cancelled"
        return None

    def context_for(self, subject: str, language: str) -> NoticeContext:
        """The context in ``language`` (English when staff wrote no text in it), with only
        the categories of this recipient's own data where the findings tell."""
        base = self.contexts.get(language) or self.contexts["en"]
        own = self.categories_by_subject.get(subject)
        return dataclasses.replace(base, categories=own) if own else base


def load_view(session: Session, obligation_id: int, config: NotificationsConfig) -> ObligationView:
    obligation = session.get_one(Obligation, obligation_id)
    incident = session.get_one(Incident, obligation.incident_id)
    hold = session.get(NoticeHold, obligation_id)
    by_subject: dict[str, set[str]] = {}
    for subjects, categories in session.execute(
        select(FindingRow.subjects, FindingRow.categories).where(
            FindingRow.incident_id == incident.id
        )
    ):
        for subject in subjects:
            by_subject.setdefault(str(subject), set()).update(categories)
    subject_count = session.scalar(
        select(func.count()).where(IncidentSubject.incident_id == incident.id)
    )
    categories = tuple(sorted(incident.categories))
    return ObligationView(
        obligation_id=obligation.id,
        regime=obligation.regime,
        recipient=obligation.recipient,
        obligation_state=obligation.state,
        due_at=obligation.due_at,
        release_at=obligation.release_at,
        incident_id=incident.id,
        incident_ref=incident.ref,
        incident_state=incident.state,
        severity=incident.severity,
        held=bool(hold and hold.held),
        hold_reason=(hold.reason or "") if hold else "",
        contexts=_contexts(incident, categories, config, subject_count or 0),
        categories_by_subject={s: tuple(sorted(c)) for s, c in by_subject.items() if c},
        subject_count=subject_count or 0,
    )


def _contexts(
    incident: Incident, categories: tuple[str, ...], config: NotificationsConfig, count: int
) -> dict[str, NoticeContext]:
    return {
        language: NoticeContext(
            incident_ref=incident.ref,
            nature=text.nature,
            categories=categories,
            detected_at=incident.detected_at,
            likely_consequences=text.likely_consequences,
            measures_taken=text.measures_taken,
            measures_advised=text.measures_advised,
            contact_name=config.contact_name,
            contact_email=config.contact_email,
            contact_phone=config.contact_phone,
            organisation=config.organisation,
            first_event_at=incident.first_event_at,
            last_event_at=incident.last_event_at,
            subject_count=count,
        )
        for language, text in config.texts.items()
    }


def notice_counts(session: Session, obligation_ids: list[int]) -> dict[str, int]:
    """Outbox rows of these obligations by state."""
    if not obligation_ids:
        return {}
    return {
        state: count
        for state, count in session.execute(
            select(OutboxMessage.state, func.count())
            .where(OutboxMessage.obligation_id.in_(obligation_ids))
            .group_by(OutboxMessage.state)
        )
    }


def render_for(
    renderer: NoticeRenderer, view: ObligationView, customer: Customer
) -> RenderedNotice:
    """The notice one customer gets (Art. 34 for a person, Art. 33(2) for a business)."""
    return renderer.render(customer, view.context_for(customer.id, customer.language))


def compose_email(
    renderer: NoticeRenderer,
    view: ObligationView,
    customer: Customer,
    *,
    sender: str,
    message_id: str,
    now: datetime,
) -> EmailMessage:
    """What delivery sends and `notify preview` shows. Raises ValueError (no usable address,
    a malformed sender or message id)."""
    rendered = render_for(renderer, view, customer)
    return build_email(rendered, sender, customer, message_id, date=now)
