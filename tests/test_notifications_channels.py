"""Delivery channels against a real Maildir and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from breachwatch.errors import ConfigError, DeliveryError
from breachwatch.notifications.channels import (
    Channel,
    MailFolderChannel,
    SmtpChannel,
    key_filename,
    read_secret,
)
from breachwatch.notifications.directory import Customer
from breachwatch.notifications.render import NoticeContext, build_email, render_customer_notice
from tests.conftest import skip_or_fail
from tests.smtp_server import Server, free_port, start_smtp_server

USER, PASSWORD = "breachwatch", "s3cret pass"
SENDER = "Hostco DPO <dpo@hostco.example>"


@pytest.fixture(scope="module", autouse=True)
def _openssl() -> None:
    if shutil.which("openssl") is None:
        skip_or_fail("openssl CLI (test certificate)")


def notice(customer: Customer, message_id: str = "<bw-1@hostco.example>") -> EmailMessage:
    ctx = NoticeContext(
        incident_ref="BW-2026-0042",
        nature="A staff account read customer records without a reason.",
        categories=("identity", "billing"),
        detected_at=datetime(2026, 3, 2, 9, 15, tzinfo=UTC),
        likely_consequences="Phishing using your name is possible.",
        measures_taken="The account was blocked.",
        measures_advised="Be careful with unexpected invoices.",
        contact_name="Jan Peeters",
        contact_email="dpo@hostco.example",
        contact_phone="+32 2 555 01 01",
        organisation="Hostco",
    )
    rendered = render_customer_notice(customer, ctx)
    return build_email(
        rendered, SENDER, customer, message_id, date=datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    )


ALICE = Customer("c1", "Alice Dupont", "alice@example.org", "fr")


# --- mail folder ---------------------------------------------------------------------------


def test_mail_folder_layout_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "outbox"
    channel: Channel = MailFolderChannel(root)
    for sub in ("", "tmp", "new", "cur"):
        assert stat.S_IMODE((root / sub).stat().st_mode) == 0o700, sub

    assert channel.was_delivered("inc-1/c1") is False
    receipt = channel.deliver(notice(ALICE), "inc-1/c1")

    [written] = list((root / "new").iterdir())
    assert str(written) in receipt
    assert written.name.endswith(".eml") and "/" not in written.name[:-4]
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert list((root / "tmp").iterdir()) == []
    assert channel.was_delivered("inc-1/c1") is True
    assert channel.was_delivered("inc-1/c2") is False
    assert b"Message-ID: <bw-1@hostco.example>" in written.read_bytes()


def test_mail_folder_counts_messages_a_reader_moved_to_cur(tmp_path: Path) -> None:
    channel = MailFolderChannel(tmp_path)
    channel.deliver(notice(ALICE), "k1")
    [written] = list((tmp_path / "new").iterdir())
    os.rename(written, tmp_path / "cur" / f"{written.name}:2,S")
    assert channel.was_delivered("k1") is True
    # A second delivery of the same key must not make a duplicate.
    assert "already delivered" in channel.deliver(notice(ALICE), "k1")
    assert list((tmp_path / "new").iterdir()) == []


ATOMIC_PROBE = """
import resource, signal, sys
from pathlib import Path
from email.message import EmailMessage
from breachwatch.errors import DeliveryError
from breachwatch.notifications.channels import MailFolderChannel

channel = MailFolderChannel(Path(sys.argv[1]))
message = EmailMessage()
message["Subject"] = "big"
message.set_content("x" * 200_000)
# The disk "fills up" after 1,000 bytes: works for root too, unlike a read-only directory.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
try:
    channel.deliver(message, "k1")
except DeliveryError as err:
    print("transient" if err.transient else "permanent", err)
"""


def test_mail_folder_write_is_atomic(tmp_path: Path) -> None:
    """A write that fails half-way leaves nothing in new/ nor tmp/: never half a message."""
    result = subprocess.run(
        [sys.executable, "-c", ATOMIC_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.startswith("transient"), result.stdout + result.stderr
    assert "File too large" in result.stdout
    assert list((tmp_path / "new").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []
    assert MailFolderChannel(tmp_path).was_delivered("k1") is False


def test_key_filename_is_safe_and_distinct() -> None:
    assert key_filename("inc-1.c1") == "inc-1.c1"
    hostile = ["../../etc/passwd", "a/b", "a_b~x", ".hidden", "x:2,S", "a\nb", ""]
    names = {key_filename(k) for k in hostile}
    assert len(names) == len(hostile)
    for name in names:
        assert "/" not in name and ":" not in name and "\n" not in name
        assert not name.startswith(".") and name


# --- secrets -------------------------------------------------------------------------------


def test_read_secret(tmp_path: Path) -> None:
    path = tmp_path / "smtp-password"
    path.write_text("pa ss\n")
    assert read_secret(path) == "pa ss"
    with pytest.raises(ConfigError, match="smtp-missing"):
        read_secret(tmp_path / "smtp-missing")


# --- SMTP ----------------------------------------------------------------------------------


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Server]:
    server = start_smtp_server(tmp_path, require_starttls=True, auth=(USER, PASSWORD))
    yield server
    server.stop()


def smtp_to(server: Server, password: str = PASSWORD, timeout: float = 10.0) -> SmtpChannel:
    return SmtpChannel(
        server.host,
        server.port,
        security="starttls",
        username=USER,
        password=password,
        timeout=timeout,
        ssl_context=server.client_context(),
    )


def test_smtp_delivers_over_starttls_with_auth(relay: Server) -> None:
    receipt = smtp_to(relay).deliver(notice(ALICE), "k1")

    [got] = relay.wait_for(1)
    assert "250" in receipt and "TEST0001" in receipt
    assert got.tls and got.login == USER
    assert got.mail_from == "dpo@hostco.example"
    assert got.rcpt_tos == ("alice@example.org",)
    message = got
    assert message["Message-ID"] == "<bw-1@hostco.example>"
    assert message["To"] == "Alice Dupont <alice@example.org>"
    assert message["From"] == SENDER
    assert message["Content-Language"] == "fr"
    assert message.get_content_type() == "multipart/alternative"
    assert "violation de données" in str(message["Subject"])
    html_part = message.get_body(("html",))
    assert html_part is not None and "Alice Dupont" in html_part.get_content()


def test_smtp_hostile_display_name_adds_no_recipient(relay: Server) -> None:
    eve = Customer("c2", "Eve\r\nBcc: attacker@example.com", "eve@example.org", "en")
    smtp_to(relay).deliver(notice(eve), "k2")

    [got] = relay.wait_for(1)
    assert got.rcpt_tos == ("eve@example.org",)
    assert got["Bcc"] is None
    assert b"\nBcc:" not in got.raw and b"\rBcc:" not in got.raw


def test_smtp_wrong_password_is_permanent(relay: Server) -> None:
    with pytest.raises(DeliveryError) as caught:
        smtp_to(relay, password="wrong").deliver(notice(ALICE), "k1")
    assert not caught.value.transient
    assert "535" in str(caught.value)
    assert relay.messages == []


def test_smtp_untrusted_certificate_is_refused(relay: Server) -> None:
    channel = SmtpChannel(
        relay.host, relay.port, security="starttls", username=USER, password=PASSWORD
    )  # the system trust store does not know the test certificate
    with pytest.raises(DeliveryError, match="certificate") as caught:
        channel.deliver(notice(ALICE), "k1")
    assert not caught.value.transient
    assert relay.messages == []


def test_smtp_server_down_is_transient() -> None:
    port = free_port()  # nothing listens there any more
    channel: Channel = SmtpChannel("127.0.0.1", port, security="none", username=None, password=None)
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(notice(ALICE), "k1")
    assert caught.value.transient


@pytest.mark.parametrize(
    ("where", "reply", "transient"),
    [
        ("data", "451 4.3.0 try later", True),
        ("rcpt", "451 4.2.0 greylisted, try later", True),
        ("rcpt", "550 5.1.1 no such user", False),
        ("data", "554 5.7.1 rejected as spam", False),
    ],
)
def test_smtp_reply_codes(tmp_path: Path, where: str, reply: str, transient: bool) -> None:
    server = start_smtp_server(
        tmp_path,
        require_starttls=True,
        auth=(USER, PASSWORD),
        rcpt_reply=reply if where == "rcpt" else None,
        data_reply=reply if where == "data" else None,
    )
    try:
        with pytest.raises(DeliveryError) as caught:
            smtp_to(server).deliver(notice(ALICE), "k1")
    finally:
        server.stop()
    assert caught.value.transient is transient
    assert reply.split(" ", 1)[1] in str(caught.value)  # the server's words reach the operator


def test_smtp_implicit_tls_and_plain(tmp_path: Path) -> None:
    tls_server = start_smtp_server(
        tmp_path, require_starttls=False, implicit_tls=True, auth=(USER, PASSWORD)
    )
    plain_server = start_smtp_server(tmp_path, require_starttls=False, auth=None)
    try:
        SmtpChannel(
            tls_server.host,
            tls_server.port,
            security="tls",
            username=USER,
            password=PASSWORD,
            ssl_context=tls_server.client_context(),
        ).deliver(notice(ALICE), "k1")
        SmtpChannel(
            plain_server.host, plain_server.port, security="none", username=None, password=None
        ).deliver(notice(ALICE), "k1")
        [over_tls] = tls_server.wait_for(1)
        [over_plain] = plain_server.wait_for(1)
    finally:
        tls_server.stop()
        plain_server.stop()
    assert over_tls.tls and over_tls.login == USER
    assert not over_plain.tls and over_plain.login is None


def test_smtp_starttls_required_but_not_offered(tmp_path: Path) -> None:
    plain_server = start_smtp_server(tmp_path, require_starttls=False, auth=None)
    try:
        channel = SmtpChannel(
            plain_server.host, plain_server.port, security="starttls", username=None, password=None
        )
        with pytest.raises(DeliveryError, match="STARTTLS") as caught:
            channel.deliver(notice(ALICE), "k1")
    finally:
        plain_server.stop()
    assert not caught.value.transient
    assert plain_server.messages == []


def test_smtp_refuses_password_over_plain_text() -> None:
    with pytest.raises(ConfigError):
        SmtpChannel("127.0.0.1", 25, security="none", username=USER, password=PASSWORD)
    assert (
        SmtpChannel("h", 25, security="none", username=None, password=None).was_delivered("k")
        is None
    )
