"""Breach notices in French, Dutch or English, per audience: a data subject (GDPR Art. 34(2)),
a hosting customer as controller (Art. 33(2)), the authority's cover letter (Art. 33(3)) and
internal notices to the security team.

Pure: the same customer and context always give the same notice. Every value that reaches a
template is treated as hostile text: it is cut to a sane length, stripped of control
characters, escaped in HTML by autoescape, and never compiled as a template itself (so
``{{ 7*7 }}`` in a value prints as written).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path

from jinja2 import (
    BaseLoader,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    TemplateError,
    select_autoescape,
)
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup, escape

from breachwatch.errors import ConfigError
from breachwatch.notifications.directory import DEFAULT_LANGUAGE, LANGUAGES, Customer
from breachwatch.notifications.labels import (
    BRUSSELS,
    MAX_FIELD,
    Labels,
    clean_line,
    clean_text,
)

__all__ = ["AUDIENCES", "MAX_FIELD", "NoticeContext", "NoticeRenderer", "build_email"]

MAX_SUBJECT = 200
# template prefix per audience; "notice" (data subject) keeps the original file names
AUDIENCES = ("notice", "controller", "authority", "internal")

# Staff may write free text once, or once per language; a notice in Dutch with an English
# description would not be the "clear and plain language" Art. 34(2) asks for.
LocalisedText = str | Mapping[str, str]


@dataclass(frozen=True, slots=True)
class NoticeContext:
    """What the organisation says about one breach; the same for every affected customer."""

    incident_ref: str  # public reference, e.g. "BW-2026-0042"; never an internal id
    nature: LocalisedText
    categories: tuple[str, ...]  # data-category ids of this customer's affected data
    detected_at: datetime
    likely_consequences: LocalisedText
    measures_taken: LocalisedText
    measures_advised: LocalisedText  # what the person can do themselves
    contact_name: str  # DPO or other contact point, Art. 34(2) with 33(3)(b)
    contact_email: str
    contact_phone: str
    organisation: str
    first_event_at: datetime | None = None  # the accesses: when they began and ended
    last_event_at: datetime | None = None
    subject_count: int = 0  # affected data subjects (authority letter)

    def __post_init__(self) -> None:
        if self.detected_at.tzinfo is None or self.detected_at.utcoffset() is None:
            raise ValueError("NoticeContext.detected_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class RenderedNotice:
    subject: str
    text: str
    html: str
    language: str


def _pick(value: LocalisedText, language: str) -> str:
    if isinstance(value, str):
        return value
    for candidate in (language, DEFAULT_LANGUAGE, *sorted(value)):
        if candidate in value:
            return value[candidate]
    return ""


def _html_paragraphs(value: str) -> Markup:
    """Line breaks of plain text as <br>, everything else escaped."""
    return Markup("<br>\n").join(escape(line) for line in value.split("\n"))


class NoticeRenderer:
    """Holds the compiled templates. Build one at wiring time and reuse it.

    ``template_dir`` lets the legal team replace the wording without a release; it must hold,
    for fr, nl and en, ``subject_<lang>.txt``, ``notice_<lang>.txt`` and ``notice_<lang>.html``
    and, for each other audience A, ``A_subject_<lang>.txt``, ``A_<lang>.txt``, ``A_<lang>.html``.
    """

    def __init__(self, template_dir: Path | None = None) -> None:
        loader: BaseLoader = (
            PackageLoader("breachwatch.notifications", "templates")
            if template_dir is None
            else FileSystemLoader(template_dir)
        )
        self._env = SandboxedEnvironment(
            loader=loader,
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self._env.filters["paragraphs"] = _html_paragraphs
        where = str(template_dir) if template_dir else "breachwatch/notifications/templates"
        try:
            labels_text = loader.get_source(self._env, "labels.json")[0]
        except TemplateError as err:
            raise ConfigError(where, "labels.json", "the file with dates and categories") from err
        self.labels = Labels.parse(labels_text, where)
        for language in sorted(LANGUAGES):
            for name in (n for a in AUDIENCES for n in self._names(a, language)):
                try:
                    self._env.get_template(name)
                except TemplateError as err:
                    raise ConfigError(where, name, f"a valid Jinja2 template ({err})") from err

    @staticmethod
    def _names(audience: str, language: str) -> tuple[str, str, str]:
        if audience == "notice":
            return f"subject_{language}.txt", f"notice_{language}.txt", f"notice_{language}.html"
        return (
            f"{audience}_subject_{language}.txt",
            f"{audience}_{language}.txt",
            f"{audience}_{language}.html",
        )

    def when(self, moment: datetime | None, language: str) -> str:
        return self.labels.detected(moment, language) if moment is not None else ""

    def render(self, customer: Customer, ctx: NoticeContext) -> RenderedNotice:
        """A person gets the Art. 34 notice; a business customer, the controller notice."""
        audience = "controller" if customer.kind == "business" else "notice"
        return self.render_context(audience, customer.language, ctx, customer.name)

    def render_context(
        self, audience: str, language: str, ctx: NoticeContext, name: str = ""
    ) -> RenderedNotice:
        language = language if language in LANGUAGES else DEFAULT_LANGUAGE
        values = {
            "customer_name": clean_line(name),
            "incident_ref": clean_line(ctx.incident_ref, 64),
            "detected": self.labels.detected(ctx.detected_at, language),
            "first_event": self.when(ctx.first_event_at, language),
            "last_event": self.when(ctx.last_event_at, language),
            "subject_count": max(int(ctx.subject_count), 0),
            "categories": self.labels.category_words(ctx.categories, language),
            "nature": clean_text(_pick(ctx.nature, language)),
            "likely_consequences": clean_text(_pick(ctx.likely_consequences, language)),
            "measures_taken": clean_text(_pick(ctx.measures_taken, language)),
            "measures_advised": clean_text(_pick(ctx.measures_advised, language)),
            "contact_name": clean_line(ctx.contact_name),
            "contact_email": clean_line(ctx.contact_email),
            "contact_phone": clean_line(ctx.contact_phone),
        }
        return self.render_values(audience, language, values, ctx.organisation)

    def render_values(
        self, audience: str, language: str, values: Mapping[str, object], organisation: str
    ) -> RenderedNotice:
        """Render ``audience`` with ``values`` that the caller already cleaned."""
        if audience not in AUDIENCES:
            raise ValueError(f"unknown audience {audience!r}")
        language = language if language in LANGUAGES else DEFAULT_LANGUAGE
        values = {**values, "language": language, "organisation": clean_line(organisation)}
        subject_name, text_name, html_name = self._names(audience, language)
        return RenderedNotice(
            subject=clean_line(self._env.get_template(subject_name).render(values), MAX_SUBJECT),
            text=self._env.get_template(text_name).render(values),
            html=self._env.get_template(html_name).render(values),
            language=language,
        )


def render_customer_notice(
    customer: Customer, ctx: NoticeContext, renderer: NoticeRenderer | None = None
) -> RenderedNotice:
    """The notice for one customer; pass a long-lived ``renderer`` when sending many."""
    return (renderer or NoticeRenderer()).render(customer, ctx)


_MESSAGE_ID = re.compile(r"^<[!-;=?A-~]{1,200}@[A-Za-z0-9.-]{1,200}>$")


def _single_address(sender: str) -> Address:
    header = policy.SMTP.header_factory("From", sender)
    addresses: tuple[Address, ...] = getattr(header, "addresses", ())
    if header.defects or len(addresses) != 1 or not addresses[0].domain:
        raise ValueError(f"sender must be one address like 'Name <dpo@example.be>': {sender!r}")
    address: Address = addresses[0]
    return address


def build_email(
    rendered: RenderedNotice,
    sender: str,
    recipient: Customer,
    message_id: str,
    *,
    date: datetime | None = None,
) -> EmailMessage:
    """The notice as a multipart/alternative message to one customer.

    ``message_id`` (``<key@domain>``) should be derived from the outbox key, so a resent
    notice carries the same id and mail clients can fold duplicates. ``date`` defaults to
    now; pass the clock's time for reproducible messages. Raises ValueError for a customer
    without a usable address, a malformed sender or message id.
    """
    if not recipient.deliverable:
        raise ValueError(f"customer {recipient.id!r} has no usable e-mail address")
    if not _MESSAGE_ID.match(message_id):
        raise ValueError(f"message_id must look like <key@domain>: {message_id!r}")
    moment = date if date is not None else datetime.now(UTC)
    if moment.tzinfo is None:
        raise ValueError("build_email date must be timezone-aware")
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = _single_address(sender)
    # The display name is normalised again here: a Customer may come from anywhere, and a
    # CR/LF would otherwise make Address refuse the whole message.
    message["To"] = Address(clean_line(recipient.name), addr_spec=recipient.email)
    message["Subject"] = clean_line(rendered.subject, MAX_SUBJECT)
    message["Date"] = moment.astimezone(BRUSSELS)
    message["Message-ID"] = message_id
    # RFC 3834: generated by a daemon, so vacation responders should not answer it.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    # Only now: turning the message into multipart moves every Content-* header into the
    # first part, where it would describe just the text.
    message["Content-Language"] = rendered.language
    return message
