"""Where a finished notice goes: a Maildir folder or an SMTP relay.

A channel either hands the message over and returns a receipt, or raises DeliveryError
saying whether trying again may help. The outbox decides what to do with that.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from email.headerregistry import Address

    from _typeshed import ReadableBuffer

from breachwatch.errors import ConfigError, DeliveryError
from breachwatch.notifications.mailfolder import MailFolderChannel, key_filename

__all__ = ["Channel", "MailFolderChannel", "SmtpChannel", "key_filename", "read_secret"]

Security = Literal["starttls", "tls", "none"]
# A connection used this recently is reused without a NOOP first (a network heuristic on the
# monotonic clock, not business logic: relays drop idle connections after tens of seconds).
_FRESH = 5.0


class Channel(Protocol):
    name: str

    def deliver(self, message: EmailMessage, key: str) -> str:
        """Hand the message over; return a receipt. Raises DeliveryError."""
        ...

    def was_delivered(self, key: str) -> bool | None:
        """Whether ``key`` was delivered before; None when this channel cannot tell."""
        ...


def read_secret(path: Path) -> str:
    """A password from a file (e.g. under $CREDENTIALS_DIRECTORY), without its final newline."""
    try:
        value = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(str(path), "", f"a readable secret file ({reason})") from err
    value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise ConfigError(str(path), "", "a non-empty secret")
    return value


class SmtpChannel:
    """Sends through an SMTP relay with smtplib. With ``max_per_connection`` > 1 (the daemon
    uses 100) a connection is reused for that many messages (checked with NOOP first; the
    outbox calls :meth:`close` at the end of each run), so a bulk notice does not open one
    connection per customer.

    Errors: a 4xx reply, a refused or dropped connection and a timeout are transient; a 5xx
    reply (a rejected mailbox, failed authentication) is permanent, as are a server without
    STARTTLS when it is required and a certificate that does not verify: those need a person.
    """

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: Security,
        username: str | None,
        password: str | None,
        timeout: float = 30.0,
        local_hostname: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_per_connection: int = 1,
    ) -> None:
        if security not in ("starttls", "tls", "none"):
            raise ConfigError("smtp", "security", "one of starttls, tls, none")
        if (username is None) != (password is None):
            raise ConfigError("smtp", "username", "a username and a password, or neither")
        if security == "none" and username is not None:
            raise ConfigError("smtp", "security", "starttls or tls when a password is sent")
        self._host = host
        self._port = port
        self._security = security
        self._username = username
        self._password = password
        self._timeout = timeout
        self._local_hostname = local_hostname
        self._context = ssl_context or ssl.create_default_context()
        self._max_per_connection = max(1, max_per_connection)
        self._client: _ReplyKeepingSMTP | None = None
        self._sent_on_connection = 0
        self._last_used = 0.0
        self.connections = 0  # opened so far, for tests and logs

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            _close_quietly(client)

    def _open(self) -> _ReplyKeepingSMTP:
        if self._client is not None:
            if time.monotonic() - self._last_used < _FRESH:
                return self._client
            try:
                if self._client.noop()[0] == 250:
                    return self._client
            except (smtplib.SMTPException, OSError):
                pass
            self.close()  # dropped by the relay while idle: nothing was sent on it yet
        client = self._connect()
        try:
            if self._username is not None and self._password is not None:
                client.login(self._username, self._password)
        except BaseException:
            _close_quietly(client)
            raise
        self._client, self._sent_on_connection = client, 0
        self.connections += 1
        return client

    def was_delivered(self, key: str) -> bool | None:
        return None  # the relay's acceptance is not recorded anywhere we can ask

    def deliver(self, message: EmailMessage, key: str) -> str:
        sender, recipients = _envelope(message)
        done = False
        try:
            client = self._open()
            refused = client.send_message(message, sender, recipients)
            code, reply = client.data_reply
            done = True
        except smtplib.SMTPRecipientsRefused as err:
            raise _from_refused(err) from err
        except smtplib.SMTPResponseException as err:
            raise _from_reply(err.smtp_code, err.smtp_error, self._host) from err
        except smtplib.SMTPNotSupportedError as err:
            raise DeliveryError(f"SMTP {self._host}: {err}", transient=False) from err
        except ssl.SSLCertVerificationError as err:
            message_text = f"SMTP {self._host}: certificate rejected: {err.verify_message}"
            raise DeliveryError(message_text, transient=False) from err
        except (smtplib.SMTPServerDisconnected, OSError) as err:
            # Refused or dropped connection, timeout, TLS handshake failure.
            text = f"SMTP {self._host}:{self._port}: {type(err).__name__}: {err}"
            raise DeliveryError(text, transient=True) from err
        except smtplib.SMTPException as err:
            # What is left is about our setup, e.g. "No suitable authentication method found".
            raise DeliveryError(f"SMTP {self._host}: {err}", transient=False) from err
        finally:
            self._sent_on_connection += 1
            self._last_used = time.monotonic()
            if not done or self._sent_on_connection >= self._max_per_connection:
                self.close()
        receipt = f"smtp {self._host}:{self._port} {code} {reply.decode('utf-8', 'replace')}"
        if refused:
            # Some recipients took it: raising would make a retry send it to them again.
            receipt += f" (refused: {_describe(refused)})"
        return receipt

    def _connect(self) -> _ReplyKeepingSMTP:
        client: _ReplyKeepingSMTP
        if self._security == "tls":
            client = _ReplyKeepingSMTPSSL(
                self._host,
                self._port,
                local_hostname=self._local_hostname,
                timeout=self._timeout,
                context=self._context,
            )
        else:
            client = _ReplyKeepingSMTP(
                self._host, self._port, local_hostname=self._local_hostname, timeout=self._timeout
            )
        try:
            if self._security == "starttls":
                client.ehlo()
                # starttls() raises SMTPNotSupportedError when the server does not offer it,
                # so a stripped STARTTLS never falls back to plain text.
                client.starttls(context=self._context)
                client.ehlo()
        except BaseException:
            _close_quietly(client)
            raise
        return client


class _ReplyKeepingSMTP(smtplib.SMTP):
    """smtplib.SMTP that keeps the reply to DATA, usually "250 ... queued as <id>": the
    relay's queue id is the receipt that lets anyone trace the message later."""

    data_reply: tuple[int, bytes] = (0, b"")

    def data(self, msg: ReadableBuffer | str) -> tuple[int, bytes]:
        self.data_reply = super().data(msg)
        return self.data_reply


class _ReplyKeepingSMTPSSL(_ReplyKeepingSMTP, smtplib.SMTP_SSL):
    pass


def _envelope(message: EmailMessage) -> tuple[str, list[str]]:
    """Envelope sender and recipients from the headers. Bcc is refused, not interpreted."""
    if message["Bcc"] is not None:
        raise DeliveryError("message has a Bcc header; notices go to one person", transient=False)
    senders: tuple[Address, ...] = getattr(message["From"], "addresses", ())
    recipients = [
        address.addr_spec
        for field in ("To", "Cc")
        for address in getattr(message[field], "addresses", ())
    ]
    if len(senders) != 1 or not recipients:
        raise DeliveryError("message needs one From and at least one To", transient=False)
    return str(senders[0].addr_spec), recipients


def _from_reply(code: int, reply: bytes | str, host: str) -> DeliveryError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return DeliveryError(f"SMTP {host} replied {code} {text}", transient=400 <= code < 500)


def _describe(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(
        f"{rcpt}: {code} {reply.decode('utf-8', 'replace')}"
        for rcpt, (code, reply) in refused.items()
    )


def _from_refused(err: smtplib.SMTPRecipientsRefused) -> DeliveryError:
    details = _describe(err.recipients)
    # Retry only when every refusal was temporary; one bad mailbox is permanent.
    transient = all(400 <= code < 500 for code, _ in err.recipients.values())
    return DeliveryError(f"SMTP recipient refused: {details}", transient=transient)


def _close_quietly(client: smtplib.SMTP) -> None:
    # After the 250 to DATA the relay owns the message; a failing QUIT changes nothing.
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()
