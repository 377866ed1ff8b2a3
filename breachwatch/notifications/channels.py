"""Where a finished notice goes: a Maildir folder or an SMTP relay.

A channel either hands the message over and returns a receipt, or raises DeliveryError
saying whether trying again may help. The outbox decides what to do with that.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from email.headerregistry import Address

    from _typeshed import ReadableBuffer

from breachwatch.errors import ConfigError, DeliveryError

Security = Literal["starttls", "tls", "none"]

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")


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


def key_filename(key: str) -> str:
    """A file name for ``key``: the key itself when harmless, else a readable part plus a hash.

    The "~" only appears in the second form, so two different keys never share a file.
    """
    if _SAFE_KEY.match(key):
        return key
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:60].lstrip(".")
    return f"{readable}~{hashlib.sha256(key.encode('utf-8')).hexdigest()[:24]}"


class MailFolderChannel:
    """Writes each message to ``<directory>/new/<key>.eml`` in Maildir layout, atomically.

    For sites without a relay, and as the record of what was sent. A mail client that reads
    the folder moves files to cur/ (adding ":2,S"); both count as delivered.
    """

    name = "mailfolder"

    def __init__(self, directory: Path) -> None:
        self._root = directory
        try:
            for path in (directory, directory / "tmp", directory / "new", directory / "cur"):
                if not path.is_dir():
                    path.mkdir(mode=0o700, parents=True)
                    os.chmod(path, 0o700)  # mkdir's mode is narrowed by the umask, not set
        except OSError as err:
            raise ConfigError(str(directory), "", f"a writable directory ({err.strerror})") from err

    def _final_name(self, key: str) -> str:
        return f"{key_filename(key)}.eml"

    def was_delivered(self, key: str) -> bool:
        name = self._final_name(key)
        if (self._root / "new" / name).exists():
            return True
        cur = self._root / "cur"
        return (cur / name).exists() or any(cur.glob(f"{name}:2,*"))

    def deliver(self, message: EmailMessage, key: str) -> str:
        final = self._root / "new" / self._final_name(key)
        if self.was_delivered(key):
            return f"maildir {final} (already delivered)"
        # Maildir convention: a unique name in tmp/, so a crashed writer never collides.
        tmp = self._root / "tmp" / f"{final.name}.{os.getpid()}.{secrets.token_hex(8)}"
        data = message.as_bytes(policy=message.policy.clone(linesep="\n"))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            # The rename itself is durable only once the directory entry is on disk.
            dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            # A full disk or a wrong permission is fixed by an operator; retrying then works.
            raise DeliveryError(f"cannot write {final}: {err.strerror}", transient=True) from err
        return f"maildir {final}"


class SmtpChannel:
    """Sends through an SMTP relay with smtplib, one connection per message.

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

    def was_delivered(self, key: str) -> bool | None:
        return None  # the relay's acceptance is not recorded anywhere we can ask

    def deliver(self, message: EmailMessage, key: str) -> str:
        sender, recipients = _envelope(message)
        client: smtplib.SMTP | None = None
        try:
            client = self._connect()
            if self._username is not None and self._password is not None:
                client.login(self._username, self._password)
            refused = client.send_message(message, sender, recipients)
            code, reply = client.data_reply
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
            if client is not None:
                _close_quietly(client)
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
