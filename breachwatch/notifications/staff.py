"""Internal notices to the security team: deadline reminders (50/75/90 %), the overdue alarm
and the escalation to the second contact. One outbox row per (obligation, kind): its key is
``ob<obligation>.staff.<kind>``, which no customer key can equal (those are ``ob<id>-<subject>``).
"""

from __future__ import annotations

import re
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage

from breachwatch.config import SecurityTeamConfig
from breachwatch.notifications.context import ObligationView
from breachwatch.notifications.directory import Customer
from breachwatch.notifications.labels import clean_line
from breachwatch.notifications.render import NoticeRenderer, RenderedNotice, build_email

_STAFF_KEY = re.compile(r"^ob(\d+)\.staff\.(reminder-\d{1,3}|overdue|escalation)$")
SECURITY_TEAM = "security-team"
ESCALATION_CONTACT = "escalation-contact"


def reminder_kind(fraction: float) -> str:
    return f"reminder-{round(fraction * 100)}"


def staff_key(obligation_id: int, kind: str) -> str:
    key = f"ob{obligation_id}.staff.{kind}"
    if not _STAFF_KEY.match(key):
        raise ValueError(f"not a staff notice kind: {kind!r}")
    return key


def staff_kind(key: str) -> str | None:
    """The kind of an internal notice's key; None for a customer notice."""
    match = _STAFF_KEY.match(key)
    return match.group(2) if match else None


def contact_as_customer(contact: str, recipient_id: str, language: str) -> Customer:
    """A configured "Name <address>" as a recipient; an unusable one gives no address."""
    header = policy.SMTP.header_factory("To", contact)
    addresses: tuple[Address, ...] = getattr(header, "addresses", ())
    if header.defects or len(addresses) != 1:
        return Customer(recipient_id, "", "", language)
    return Customer(recipient_id, addresses[0].display_name, addresses[0].addr_spec, language)


def render_staff_notice(
    renderer: NoticeRenderer,
    view: ObligationView,
    kind: str,
    *,
    language: str,
    organisation: str,
    now: datetime,
    notices: dict[str, int],
) -> RenderedNotice:
    elapsed = kind.removeprefix("reminder-") if kind.startswith("reminder-") else ""
    hours_left = (view.due_at - now).total_seconds() / 3600
    values = {
        "kind": kind.split("-", 1)[0],
        "elapsed": elapsed,
        "incident_ref": clean_line(view.incident_ref, 64),
        "severity": clean_line(view.severity, 32),
        "regime": clean_line(view.regime, 32),
        "recipient": clean_line(view.recipient),
        "due": renderer.when(view.due_at, language),
        "hours_left": f"{hours_left:.1f}",
        "held": view.held,
        "hold_reason": clean_line(view.hold_reason),
        "notices": ", ".join(f"{state} {count}" for state, count in sorted(notices.items())),
    }
    return renderer.render_values("internal", language, values, organisation)


def build_staff_email(
    rendered: RenderedNotice,
    *,
    sender: str,
    team: SecurityTeamConfig,
    recipient_id: str,
    kind: str,
    incident_ref: str,
    message_id: str,
    date: datetime,
) -> EmailMessage:
    """Raises ValueError when the configured contact is not a usable address."""
    contact = team.escalation_contact if recipient_id == ESCALATION_CONTACT else team.contact
    recipient = contact_as_customer(contact or "", recipient_id, team.language)
    message = build_email(rendered, sender, recipient, message_id, date=date)
    message["X-Breachwatch-Kind"] = kind
    message["X-Breachwatch-Incident"] = clean_line(incident_ref, 64)
    return message
