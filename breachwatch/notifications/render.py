"""The breach notice to one data subject (GDPR Art. 34(2)), in French, Dutch or English.

Pure: the same customer and context always give the same notice. Every value that reaches a
template is treated as hostile text: it is cut to a sane length, stripped of control
characters, escaped in HTML by autoescape, and never compiled as a template itself (so
``{{ 7*7 }}`` in a value prints as written).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

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

BRUSSELS: Final = ZoneInfo("Europe/Brussels")
MAX_FIELD = 2000
MAX_LINE_FIELD = 200
MAX_SUBJECT = 200
MAX_CATEGORIES = 50

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

    def __post_init__(self) -> None:
        if self.detected_at.tzinfo is None or self.detected_at.utcoffset() is None:
            raise ValueError("NoticeContext.detected_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class RenderedNotice:
    subject: str
    text: str
    html: str
    language: str


def clean_text(value: str, limit: int = MAX_FIELD) -> str:
    """Multi-line text: line breaks kept, other control characters dropped, cut at ``limit``."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    kept = "".join(
        c for c in value if c in "\n\t" or not unicodedata.category(c).startswith("C")
    ).strip()
    return kept if len(kept) <= limit else kept[: limit - 1].rstrip() + "…"


def clean_line(value: str, limit: int = MAX_LINE_FIELD) -> str:
    """One line: every control character and run of whitespace becomes one space."""
    spaced = "".join(" " if unicodedata.category(c).startswith("C") else c for c in value)
    line = " ".join(spaced.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class Labels:
    """The words from ``labels.json`` next to the templates, checked at load."""

    date_format: Mapping[str, str]
    months: Mapping[str, list[str]]
    categories: Mapping[str, Mapping[str, str]]

    @classmethod
    def parse(cls, text: str, where: str) -> Labels:
        try:
            data = json.loads(text)
            date_format = {lang: str(data["date_format"][lang]) for lang in LANGUAGES}
            months = {lang: [str(m) for m in data["months"][lang]] for lang in LANGUAGES}
            categories = {
                str(category): {lang: str(words[lang]) for lang in LANGUAGES}
                for category, words in data["categories"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            expected = "JSON with date_format, months and categories for fr, nl and en"
            raise ConfigError(where, "labels.json", f"{expected} ({err!r})") from err
        if any(len(names) != 12 for names in months.values()):
            raise ConfigError(where, "labels.json", "twelve month names per language")
        return cls(date_format, months, categories)

    def detected(self, moment: datetime, language: str) -> str:
        """The time in Brussels, with the offset that applied then (CET +01:00, CEST +02:00)."""
        local = moment.astimezone(BRUSSELS)
        offset = local.strftime("%z")
        parts = {
            "{day}": str(local.day),
            "{month}": self.months[language][local.month - 1],
            "{year}": str(local.year),
            "{time}": local.strftime("%H:%M"),
            "{offset}": f"{offset[:3]}:{offset[3:]}",
        }
        # Plain replacement, not str.format: a format string can reach attributes.
        text = self.date_format[language]
        for placeholder, value in parts.items():
            text = text.replace(placeholder, value)
        return text

    def category_words(self, categories: tuple[str, ...], language: str) -> list[str]:
        """Readable words for each category id, in order, without repeats; unknown ids as-is."""
        words: list[str] = []
        for category in categories[:MAX_CATEGORIES]:
            known = self.categories.get(category)
            label = known[language] if known else clean_line(category)
            if label and label not in words:
                words.append(label)
        return words


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

    ``template_dir`` lets the legal team replace the wording without a release; it must hold
    ``subject_<lang>.txt``, ``notice_<lang>.txt`` and ``notice_<lang>.html`` for fr, nl, en.
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
        self._labels = Labels.parse(labels_text, where)
        for language in sorted(LANGUAGES):
            for name in self._names(language):
                try:
                    self._env.get_template(name)
                except TemplateError as err:
                    raise ConfigError(where, name, f"a valid Jinja2 template ({err})") from err

    @staticmethod
    def _names(language: str) -> tuple[str, str, str]:
        return f"subject_{language}.txt", f"notice_{language}.txt", f"notice_{language}.html"

    def render(self, customer: Customer, ctx: NoticeContext) -> RenderedNotice:
        language = customer.language if customer.language in LANGUAGES else DEFAULT_LANGUAGE
        values = {
            "language": language,
            "customer_name": clean_line(customer.name),
            "incident_ref": clean_line(ctx.incident_ref, 64),
            "organisation": clean_line(ctx.organisation),
            "detected": self._labels.detected(ctx.detected_at, language),
            "categories": self._labels.category_words(ctx.categories, language),
            "nature": clean_text(_pick(ctx.nature, language)),
            "likely_consequences": clean_text(_pick(ctx.likely_consequences, language)),
            "measures_taken": clean_text(_pick(ctx.measures_taken, language)),
            "measures_advised": clean_text(_pick(ctx.measures_advised, language)),
            "contact_name": clean_line(ctx.contact_name),
            "contact_email": clean_line(ctx.contact_email),
            "contact_phone": clean_line(ctx.contact_phone),
        }
        subject_name, text_name, html_name = self._names(language)
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
