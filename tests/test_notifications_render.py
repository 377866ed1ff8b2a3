"""Customer directory, notice rendering and message building (no network)."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from breachwatch.errors import ConfigError
from breachwatch.notifications.directory import Customer, CustomerDirectory
from breachwatch.notifications.render import (
    MAX_FIELD,
    NoticeContext,
    NoticeRenderer,
    build_email,
    render_customer_notice,
)

SENDER = "Hostco DPO <dpo@hostco.example>"
WHEN = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)


def context(**changes: object) -> NoticeContext:
    values: dict[str, object] = {
        "incident_ref": "BW-2026-0042",
        "nature": "A staff account read customer records without a reason.",
        "categories": ("identity", "billing", "x_custom"),
        "detected_at": datetime(2026, 1, 15, 13, 30, tzinfo=UTC),
        "likely_consequences": "Phishing using your name is possible.",
        "measures_taken": "The account was blocked.",
        "measures_advised": "Be careful with unexpected invoices.",
        "contact_name": "Jan Peeters",
        "contact_email": "dpo@hostco.example",
        "contact_phone": "+32 2 555 01 01",
        "organisation": "Hostco",
    }
    values.update(changes)
    return NoticeContext(**values)  # type: ignore[arg-type]


def customer(language: str, name: str = "Alice Dupont") -> Customer:
    return Customer("c1", name, "alice@example.org", language)


# --- directory -----------------------------------------------------------------------------


def test_directory_loads_and_normalises(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_text(
        "\ufeffid,name,email,language,segment\n"
        "1,Amélie Dubois,amelie@example.org,fr-BE,x\n"
        "2,Joost,joost@EXÄMPLE.be,NL,x\n"
        "3,No Mail,,en,x\n"
        "4,Bad Mail,not-an-address,de,x\n"
        '5,"Eve\nBcc: a@b.c","eve@example.org, x@y.z",,x\n',
        encoding="utf-8",
    )
    directory = CustomerDirectory.from_csv(path)
    assert len(directory) == 5
    assert directory.get("1") == Customer("1", "Amélie Dubois", "amelie@example.org", "fr")
    joost = directory.get("2")
    assert joost is not None and joost.email == "joost@xn--exmple-cua.be"
    assert joost.language == "nl" and joost.deliverable
    for undeliverable in ("3", "4", "5"):
        found = directory.get(undeliverable)
        assert found is not None and found.email == "" and not found.deliverable
    eve = directory.get("5")
    assert eve is not None and eve.name == "Eve Bcc: a@b.c" and eve.language == "en"
    assert directory.get("nope") is None


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        ("id,name,language\n1,A,fr\n", 1, "missing email"),
        ("id,name,email,language\n1,A,a@b.be,fr\n2,B\n", 3, "a value for email, language"),
        ("id,name,email,language\n1,A,a@b.be,fr\n1,B,b@b.be,nl\n", 3, "'1' repeats"),
        ("", 1, "missing id, name, email, language"),
    ],
)
def test_directory_refuses_bad_files(tmp_path: Path, content: str, line: int, words: str) -> None:
    path = tmp_path / "customers.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        CustomerDirectory.from_csv(path)
    assert caught.value.line == line
    assert f"{path}:{line}" in str(caught.value) and words in str(caught.value)


def test_directory_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="readable"):
        CustomerDirectory.from_csv(tmp_path / "none.csv")


# --- rendering -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "words", "categories", "date"),
    [
        (
            "fr",
            ["violation de données", "délégué à la protection des données", "Conséquences"],
            ["données d'identification", "données de facturation"],
            "15 janvier 2026 à 14:30 (heure de Bruxelles, UTC+01:00)",
        ),
        (
            "nl",
            ["datalek", "inbreuk in verband met persoonsgegevens", "functionaris"],
            ["identificatiegegevens", "facturatiegegevens"],
            "15 januari 2026 om 14:30 (Belgische tijd, UTC+01:00)",
        ),
        (
            "en",
            ["personal data breach", "data protection officer", "Likely consequences"],
            ["identification data", "billing data"],
            "15 January 2026 at 14:30 (Brussels time, UTC+01:00)",
        ),
    ],
)
def test_notice_in_each_language(
    language: str, words: list[str], categories: list[str], date: str
) -> None:
    notice = render_customer_notice(customer(language), context())
    assert notice.language == language
    assert "BW-2026-0042" in notice.subject and "Hostco" in notice.subject
    art_34_2 = [  # nature, contact point, consequences, measures taken and advised
        "read customer records",
        "Jan Peeters",
        "dpo@hostco.example",
        "+32 2 555 01 01",
        "Phishing",
        "blocked",
        "unexpected invoices",
    ]
    for body in (notice.text.lower(), notice.html.replace("&#39;", "'").lower()):
        for expected in [*words, *categories, *art_34_2, date, "x_custom", "Alice Dupont"]:
            assert expected.lower() in body, (language, expected)
    assert f'<html lang="{language}">' in notice.html


def test_unknown_language_is_english() -> None:
    assert render_customer_notice(customer("de"), context()).language == "en"


@pytest.mark.parametrize(
    ("moment", "shown", "offset"),
    [
        (datetime(2026, 7, 1, 13, 30, tzinfo=UTC), "1 July 2026 at 15:30", "+02:00"),
        # Just before and after the switch to summer time on 29 March 2026 at 01:00 UTC.
        (datetime(2026, 3, 29, 0, 59, tzinfo=UTC), "29 March 2026 at 01:59", "+01:00"),
        (datetime(2026, 3, 29, 1, 0, tzinfo=UTC), "29 March 2026 at 03:00", "+02:00"),
        # And back to winter time on 25 October 2026 at 01:00 UTC.
        (datetime(2026, 10, 25, 0, 59, tzinfo=UTC), "25 October 2026 at 02:59", "+02:00"),
        (datetime(2026, 10, 25, 1, 0, tzinfo=UTC), "25 October 2026 at 02:00", "+01:00"),
    ],
)
def test_detected_at_in_brussels_time(moment: datetime, shown: str, offset: str) -> None:
    text = render_customer_notice(customer("en"), context(detected_at=moment)).text
    assert f"{shown} (Brussels time, UTC{offset})" in text


def test_naive_detected_at_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        context(detected_at=datetime(2026, 1, 1, 12, 0))


def test_texts_per_language() -> None:
    nature = {"fr": "Un accès non autorisé.", "nl": "Een ongeoorloofde toegang.", "en": "x"}
    assert (
        "Een ongeoorloofde toegang."
        in render_customer_notice(customer("nl"), context(nature=nature)).text
    )


def test_hostile_values() -> None:
    notice = render_customer_notice(
        customer("en", name="<b>Eve</b> {{ 7*7 }}"),
        context(
            nature="<script>alert(1)</script> {{ 7*7 }} {% if true %}yes{% endif %}",
            incident_ref="BW-1\r\nBcc: attacker@example.com",
            categories=("<img src=x onerror=alert(1)>",),
            measures_taken="A" * 10_000,
        ),
    )
    assert "<script>" not in notice.html and "&lt;script&gt;alert(1)&lt;/script&gt;" in notice.html
    assert "<img" not in notice.html and "<b>Eve" not in notice.html
    for body in (notice.text, notice.html):
        assert "{{ 7*7 }}" in body and "49" not in body
        assert "{% if true %}yes{% endif %}" in body
    assert "\n" not in notice.subject and "\r" not in notice.subject
    assert "A" * MAX_FIELD not in notice.text and "A" * (MAX_FIELD - 1) in notice.text


def test_custom_templates_are_checked_at_load(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"labels\.json"):
        NoticeRenderer(tmp_path)


# --- message -------------------------------------------------------------------------------


def test_build_email_headers_and_parts() -> None:
    rendered = render_customer_notice(customer("nl"), context())
    message = build_email(rendered, SENDER, customer("nl"), "<bw-1@hostco.example>", date=WHEN)
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert parsed["From"] == SENDER
    assert parsed["To"] == "Alice Dupont <alice@example.org>"
    assert parsed["Message-ID"] == "<bw-1@hostco.example>"
    assert parsed["Content-Language"] == "nl"
    assert parsed["Date"] == "Tue, 03 Mar 2026 09:00:00 +0100"
    assert "datalek" in parsed["Subject"]
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]


def test_build_email_hostile_display_name_makes_no_header() -> None:
    eve = Customer("c2", "Eve\r\nBcc: attacker@example.com", "eve@example.org", "en")
    # Bypass the Customer normalisation too: build_email must not rely on it.
    object.__setattr__(eve, "name", "Eve\r\nBcc: attacker@example.com")
    rendered = render_customer_notice(eve, context())
    raw = build_email(rendered, SENDER, eve, "<bw-2@hostco.example>", date=WHEN).as_bytes()
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Bcc"] is None
    assert [a.addr_spec for a in parsed["To"].addresses] == ["eve@example.org"]
    assert b"\r\nBcc:" not in raw and b"\nBcc:" not in raw


@pytest.mark.parametrize(
    ("sender", "message_id", "recipient"),
    [
        ("a@b.be, c@d.be", "<k@hostco.example>", customer("en")),
        (SENDER, "k@hostco.example", customer("en")),
        (SENDER, "<k@hostco.example>\r\nBcc: x@y.z", customer("en")),
        (SENDER, "<k@hostco.example>", Customer("c3", "No Mail", "", "en")),
    ],
)
def test_build_email_refuses_bad_input(sender: str, message_id: str, recipient: Customer) -> None:
    rendered = render_customer_notice(customer("en"), context())
    with pytest.raises(ValueError):
        build_email(rendered, sender, recipient, message_id, date=WHEN)
