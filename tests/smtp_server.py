"""A real SMTP server (aiosmtpd) for tests: in-process, or for a daemon under test in a
subprocess that sends to ``127.0.0.1:<port>``.

    server = start_smtp_server(tmp_path, require_starttls=True, auth=("user", "secret"))
    try:
        ...  # SmtpChannel("127.0.0.1", server.port, ssl_context=server.client_context(), ...)
        [received] = server.wait_for(1)
    finally:
        server.stop()

TLS uses a throw-away self-signed certificate for "localhost" and 127.0.0.1, made with the
openssl CLI in ``tmp_path``.
"""

from __future__ import annotations

import hmac
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

HOST = "127.0.0.1"


class Received(EmailMessage):
    """A received message, with its SMTP transaction as attributes."""

    mail_from: str = ""
    rcpt_tos: tuple[str, ...] = ()  # envelope recipients: who really got it, whatever To says
    raw: bytes = b""
    tls: bool = False
    login: str | None = None


def free_port() -> int:
    # aiosmtpd's Controller cannot bind port 0 (it needs the port before it starts).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate valid for localhost and 127.0.0.1: (cert.pem, key.pem)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to make a test certificate")
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            f"subjectAltName=DNS:localhost,IP:{HOST}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@dataclass
class _Handler:
    auth: tuple[str, str] | None
    implicit_tls: bool
    rcpt_reply: str | None
    data_reply: str | None
    messages: list[Received] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if self.auth is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = (part.encode("utf-8") for part in self.auth)
        ok = hmac.compare_digest(auth_data.login, user) & hmac.compare_digest(
            auth_data.password, password
        )
        if not ok:
            # handled=False makes aiosmtpd answer "535 5.7.8"; True would leave the client hanging.
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=auth_data.login.decode("utf-8", "replace"))

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        # aiosmtpd only enforces AUTH itself after STARTTLS; this covers implicit TLS too.
        if self.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply is not None:
            return self.data_reply
        raw = bytes(envelope.original_content or envelope.content)
        received = BytesParser(_class=Received, policy=policy.default).parsebytes(raw)
        assert isinstance(received, Received)
        received.mail_from = str(envelope.mail_from)
        received.rcpt_tos = tuple(envelope.rcpt_tos)
        received.raw = raw
        received.tls = self.implicit_tls or session.ssl is not None  # ssl: after STARTTLS
        received.login = session.auth_data if session.authenticated else None
        with self.arrived:
            self.messages.append(received)
            self.arrived.notify_all()
            number = len(self.messages)
        return f"250 2.0.0 Ok: queued as TEST{number:04d}"


class Server:
    """A running aiosmtpd server on 127.0.0.1. Always call :meth:`stop`."""

    def __init__(self, controller: Controller, handler: _Handler, cert: Path | None) -> None:
        self._controller = controller
        self._handler = handler
        self.host = HOST
        self.port: int = controller.port
        self.cert_path = cert

    @property
    def messages(self) -> list[Received]:
        with self._handler.arrived:
            return list(self._handler.messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until ``count`` messages arrived; raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._handler.arrived:
            while len(self._handler.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = len(self._handler.messages)
                    raise TimeoutError(f"{got} of {count} messages after {timeout} s")
                self._handler.arrived.wait(left)
            return list(self._handler.messages)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly this server's certificate."""
        if self.cert_path is None:
            raise RuntimeError("this server runs without TLS")
        return ssl.create_default_context(cafile=str(self.cert_path))

    def stop(self) -> None:
        self._controller.stop()


def start_smtp_server(
    tmp_path: Path,
    *,
    require_starttls: bool,
    auth: tuple[str, str] | None,
    implicit_tls: bool = False,
    rcpt_reply: str | None = None,
    data_reply: str | None = None,
) -> Server:
    """Start a server. ``auth`` makes AUTH mandatory (LOGIN and PLAIN) and needs TLS, as a real
    relay would; ``rcpt_reply``/``data_reply`` (e.g. "451 4.3.0 try later") replace the
    server's answer to every RCPT TO / DATA. Plain mode (no TLS, no auth) is what a daemon
    under test can be pointed at with ``security: none``."""
    use_tls = require_starttls or implicit_tls
    if auth is not None and not use_tls:
        raise ValueError("AUTH without TLS is not a setup to test against")
    handler = _Handler(
        auth=auth, implicit_tls=implicit_tls, rcpt_reply=rcpt_reply, data_reply=data_reply
    )
    cert: Path | None = None
    options: dict[str, Any] = {}
    if use_tls:
        cert, key = make_certificate(tmp_path)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        if implicit_tls:
            options["ssl_context"] = server_context
        else:
            options.update(tls_context=server_context, require_starttls=True)
    if auth is not None:
        # With implicit TLS aiosmtpd does not know the session is encrypted, and
        # auth_required without auth_require_tls warns: handle_MAIL enforces AUTH instead.
        options.update(
            authenticator=handler.authenticate,
            auth_required=not implicit_tls,
            auth_require_tls=not implicit_tls,
        )
    controller = Controller(handler, hostname=HOST, port=free_port(), **options)
    controller.start()
    return Server(controller, handler, cert)
