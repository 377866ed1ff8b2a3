"""Every audience in fr, nl and en, plain text and HTML: the controller notice (Art. 33(2)),
the authority cover letter (Art. 33(3)) and internal notices; hostile values stay text."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from breachwatch.notifications.directory import Customer
from breachwatch.notifications.render import NoticeContext, NoticeRenderer, build_email

RENDERER = NoticeRenderer()
HOSTILE = "{{ 7*7 }} {% raw %}x{% endraw %} <script>alert(1)</script>\r\nBcc: eve@evil.example"


def context(**changes: object) -> NoticeContext:
    values: dict[str, object] = dict(
        incident_ref="BW-2026-0042",
        nature="A staff account read records.",
        categories=("identity", "billing"),
        detected_at=datetime(2026, 7, 1, 8, 30, tzinfo=UTC),
        likely_consequences="Phishing.",
        measures_taken="Account blocked.",
        measures_advised="Be careful.",
        contact_name="Jan Peeters",
        contact_email="dpo@hostco.example",
        contact_phone="+32 2 555 01 01",
        organisation="Hostco",
        first_event_at=datetime(2026, 6, 30, 22, 0, tzinfo=UTC),
        last_event_at=datetime(2026, 7, 1, 7, 0, tzinfo=UTC),
        subject_count=1234,
    )
    values.update(changes)
    return NoticeContext(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("language", "words"),
    [
        (
            "fr",
            [
                "responsable du traitement",
                "article 33(2)",
                "autorité de contrôle",
                "72 heures",
                "1 juillet 2026 à 10:30 (heure de Bruxelles, UTC+02:00)",
            ],
        ),
        (
            "nl",
            [
                "verwerkingsverantwoordelijke",
                "artikel 33(2)",
                "toezichthoudende autoriteit",
                "72 uur",
                "1 juli 2026 om 10:30",
            ],
        ),
        (
            "en",
            [
                "controller",
                "Article 33(2)",
                "supervisory authority",
                "72 hours",
                "1 July 2026 at 10:30 (Brussels time, UTC+02:00)",
                "1 July 2026 at 00:00",
            ],
        ),
    ],
)
def test_business_customer_gets_the_controller_notice(language: str, words: list[str]) -> None:
    business = Customer("2001", "Hostco Client BV", "dpo@client.example", language, "business")
    notice = RENDERER.render(business, context())
    for text in (notice.text, notice.html):
        for word in words:
            assert word in text, (language, word)
    person = RENDERER.render(Customer("1", "A", "a@example.org", language), context())
    assert "33(2)" not in person.text  # a person gets the Art. 34 notice


@pytest.mark.parametrize("language", ["fr", "nl", "en"])
def test_authority_letter_has_art_33_3_items(language: str) -> None:
    letter = RENDERER.render_context("authority", language, context())
    for item in ("(a)", "(b)", "(c)", "(d)", "1234", "Jan Peeters", "dpo@hostco.example"):
        assert item.lower() in letter.text.lower() and item in letter.html
    assert "33(4)" in letter.text


@pytest.mark.parametrize("language", ["fr", "nl", "en"])
@pytest.mark.parametrize("kind", ["reminder", "overdue", "escalation"])
def test_internal_notice_per_kind(language: str, kind: str) -> None:
    values = {
        "kind": kind,
        "elapsed": "75",
        "incident_ref": "BW-1",
        "severity": "high",
        "regime": "gdpr_art34",
        "recipient": "customers",
        "due": "x",
        "hours_left": "3.0",
        "held": True,
        "hold_reason": "legal",
        "notices": "held 2",
    }
    notice = RENDERER.render_values("internal", language, values, "Hostco")
    assert "BW-1" in notice.subject and "legal" in notice.text and "held 2" in notice.html
    if kind == "reminder":
        assert "75 %" in notice.subject


@pytest.mark.parametrize("audience", ["controller", "authority"])
def test_hostile_values_in_the_new_templates(audience: str) -> None:
    ctx = context(
        nature=HOSTILE,
        measures_taken=HOSTILE * 500,
        incident_ref=HOSTILE,
        contact_name=HOSTILE,
        organisation=HOSTILE,
        categories=(HOSTILE,),
    )
    if audience == "controller":
        notice = RENDERER.render(Customer("2", HOSTILE, "b@example.org", "en", "business"), ctx)
    else:
        notice = RENDERER.render_context("authority", "en", ctx)
    assert "49" not in notice.text.replace("2026", "")  # {{ 7*7 }} was not evaluated
    assert "{{ 7*7 }}" in notice.text
    assert "<script>" not in notice.html and "&lt;script&gt;" in notice.html
    assert "\r" not in notice.subject and "\n" not in notice.subject
    assert len(notice.text) < 20000  # oversized fields are cut
    if audience == "controller":
        email = build_email(
            notice,
            "DPO <dpo@hostco.example>",
            Customer("2", HOSTILE, "b@example.org", "en", "business"),
            "<k@hostco.example>",
        )
        assert email["Bcc"] is None
        assert [a.addr_spec for a in email["To"].addresses] == ["b@example.org"]


def test_hostile_values_in_internal_notice() -> None:
    from breachwatch.notifications.labels import clean_line

    values = {
        "kind": "escalation",
        "elapsed": "",
        "incident_ref": clean_line(HOSTILE, 64),
        "severity": "high",
        "regime": "gdpr_art34",
        "recipient": "x",
        "due": "x",
        "hours_left": "1",
        "held": True,
        "hold_reason": clean_line(HOSTILE),
        "notices": "",
    }
    notice = RENDERER.render_values("internal", "en", values, HOSTILE)
    assert "\n" not in notice.subject and "<script>" not in notice.html
    assert "{{ 7*7 }}" in notice.text
