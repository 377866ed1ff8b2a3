"""The HTTP transport of the API: the standard library's ThreadingHTTPServer on a daemon
thread, bearer-token check, request body limit, JSON responses. Endpoints are in routes.py."""

from __future__ import annotations

import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from breachwatch.api.auth import Authenticator, load_token
from breachwatch.api.routes import ApiError, Request, Response, Routes
from breachwatch.clock import Clock, SystemClock
from breachwatch.config import DaemonConfig
from breachwatch.store.database import Database

log = structlog.get_logger("breachwatch.api")

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
SOCKET_TIMEOUT = 30.0  # seconds a client may take to send its request


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], routes: Routes, auth: Authenticator, max_body: int
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.routes = routes
        self.auth = auth
        self.max_body = max_body
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "breachwatch-api"
    sys_version = ""
    timeout = SOCKET_TIMEOUT
    _principal: str | None = None

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        self._principal = None
        try:
            principal = None
            if self.server.routes.needs_auth(url.path):
                principal = self.server.auth.principal_for(self.headers.get("Authorization"))
                if principal is None:
                    self.close_connection = True  # the body (if any) is not read
                    raise ApiError(
                        401,
                        "unauthorized",
                        "a valid bearer token is required (Authorization: Bearer TOKEN)",
                        headers={"WWW-Authenticate": 'Bearer realm="breachwatch"'},
                    )
            self._principal = principal
            body = self._read_body(method)
            request = Request(
                method=method,
                path=url.path,
                query=parse_qs(url.query, keep_blank_values=True),
                body=body,
                principal=principal,
            )
            response = self.server.routes.dispatch(request)
        except ApiError as exc:
            response = exc.response()
        except Exception:
            log.exception("api_request_failed", method=method, path=url.path)
            response = Response(500, {"error": "internal", "message": "internal error; see log"})
        self._send(response)

    def _read_body(self, method: str) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "length_required", "send the body with a Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            if method in BODY_METHODS:
                self.close_connection = True
                raise ApiError(411, "length_required", "send the body with a Content-Length")
            return b""
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError as exc:
            self.close_connection = True
            raise ApiError(
                400, "bad_request", "Content-Length: a number", "Content-Length"
            ) from exc
        if length > self.server.max_body:
            self.close_connection = True  # the body is left unread
            raise ApiError(
                413,
                "body_too_large",
                f"the request body is limited to {self.server.max_body} bytes",
            )
        content_type = (self.headers.get("Content-Type") or "application/json").split(";")[0]
        body = self.rfile.read(length)
        if length and content_type.strip().lower() != "application/json":
            raise ApiError(415, "unsupported_media_type", "send application/json")
        return body

    def _send(self, response: Response) -> None:
        data = response.encode()
        self.send_response(response.status)
        content_type = response.content_type
        if content_type == "application/json":
            content_type = "application/json; charset=utf-8"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info(
            "api_request",
            method=self.command,
            path=urlsplit(self.path).path,
            status=int(code) if str(code).isdigit() else code,
            principal=self._principal,
            client=self.client_address[0],
        )

    def log_message(self, format: str, *args: Any) -> None:
        log.warning("api_http", message=format % args, client=self.client_address[0])


class ApiServer:
    """The running API (a daemon thread); :meth:`shutdown` stops it and closes the socket."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def shutdown(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)


def serve_api(
    config: DaemonConfig,
    db: Database,
    clock: Clock | None = None,
    *,
    token: str | None = None,
) -> ApiServer:
    """Start the API for ``config.api`` (``port=0`` picks a free port; see ``.port``). The
    token is read from ``api.token_file`` / ``api.token_credential`` unless given."""
    api = config.api
    auth = Authenticator(token if token is not None else load_token(api), api.principal)
    routes = Routes(config, db, clock or SystemClock())
    server = _Server((api.host, api.port), routes, auth, api.max_body_bytes)
    thread = threading.Thread(target=server.serve_forever, name="breachwatch-api", daemon=True)
    thread.start()
    if not _loopback(api.host):
        log.warning(
            "api_not_loopback",
            host=api.host,
            note="the token travels in clear text: put a TLS proxy in front or bind 127.0.0.1",
        )
    return ApiServer(server, thread)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
