"""HTTP channels against a real local HTTP server (http.server in a thread): the provider API
is down for a while and comes back (retried, delivered once), 4xx is permanent, the webhook is
signed with HMAC-SHA256 of the exact body, and the outbox key is the Idempotency-Key."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from breachwatch.errors import DeliveryError
from breachwatch.notifications.directory import Customer
from breachwatch.notifications.http import HttpMailApiChannel, WebhookChannel, signature
from breachwatch.notifications.render import NoticeContext, build_email, render_customer_notice
from tests.test_outbox_retries import make_store


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeProvider:
    """Answers ``status`` (a list consumed front to back, then 202) and, like real providers,
    accepts each Idempotency-Key once: a repeat gets 200 without a second delivery."""

    statuses: list[int] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    delivered: dict[str, Recorded] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, rec: Recorded) -> tuple[int, bytes]:
        with self.lock:
            self.requests.append(rec)
            if self.statuses:
                status = self.statuses.pop(0)
                return status, json.dumps({"error": f"status {status}"}).encode()
            key = rec.headers.get("Idempotency-Key", "")
            if key in self.delivered:
                return 200, b'{"id": "dup"}'
            self.delivered[key] = rec
            return 202, json.dumps({"id": f"msg-{len(self.delivered)}"}).encode()


@pytest.fixture
def provider() -> Iterator[tuple[FakeProvider, str]]:
    state = FakeProvider()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status, reply = state.handle(Recorded(self.path, dict(self.headers), body))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def message(customer: Customer) -> object:
    ctx = NoticeContext(
        incident_ref="BW-2026-0042",
        nature="n",
        categories=("identity",),
        detected_at=datetime(2026, 3, 2, 9, 15, tzinfo=UTC),
        likely_consequences="c",
        measures_taken="t",
        measures_advised="a",
        contact_name="DPO",
        contact_email="dpo@hostco.example",
        contact_phone="+32",
        organisation="Hostco",
    )
    return build_email(
        render_customer_notice(customer, ctx),
        "DPO <dpo@hostco.example>",
        customer,
        "<k1@hostco.example>",
        date=ctx.detected_at,
    )


ALICE = Customer("c1", "Alice Dupont", "alice@example.org", "fr")


def test_api_payload_token_and_idempotency_key(provider: tuple[FakeProvider, str]) -> None:
    state, base = provider
    channel = HttpMailApiChannel(f"{base}/v1/send", "tok-123", timeout=5)
    receipt = channel.deliver(message(ALICE), "ob1-c1")  # type: ignore[arg-type]
    assert receipt.startswith("http_api 202")
    [rec] = state.requests
    assert rec.headers["Authorization"] == "Bearer tok-123"
    assert rec.headers["Idempotency-Key"] == "ob1-c1"
    payload = json.loads(rec.body)
    assert payload["to"] == ["alice@example.org"]
    assert payload["message_id"] == "<k1@hostco.example>"
    assert "violation" in payload["subject"] and "Alice Dupont" in payload["html"]
    assert payload["headers"]["Content-Language"] == "fr"
    channel.close()


@pytest.mark.parametrize(
    ("status", "transient"),
    [(500, True), (503, True), (429, True), (400, False), (401, False), (422, False)],
)
def test_api_status_classes(
    provider: tuple[FakeProvider, str], status: int, transient: bool
) -> None:
    state, base = provider
    state.statuses = [status]
    with pytest.raises(DeliveryError) as info:
        HttpMailApiChannel(base, "t", timeout=5).deliver(message(ALICE), "k")  # type: ignore[arg-type]
    assert info.value.transient is transient
    assert str(status) in str(info.value)


def test_api_timeout_and_refused_are_transient() -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts, never answers: a timeout
    port = listener.getsockname()[1]
    try:
        with pytest.raises(DeliveryError) as slow:
            HttpMailApiChannel(f"http://127.0.0.1:{port}", "t", timeout=0.3).deliver(
                message(ALICE), "k"
            )  # type: ignore[arg-type]
        assert slow.value.transient
    finally:
        listener.close()
    with pytest.raises(DeliveryError) as refused:
        HttpMailApiChannel(f"http://127.0.0.1:{port}", "t", timeout=1).deliver(message(ALICE), "k")  # type: ignore[arg-type]
    assert refused.value.transient


def test_provider_down_for_a_while_then_back_delivers_once(
    tmp_path: Path, provider: tuple[FakeProvider, str]
) -> None:
    state, base = provider
    state.statuses = [503, 502]  # down for two attempts
    store = make_store(tmp_path, subjects=("1001", "1002"))
    channel = HttpMailApiChannel(base, "t", timeout=5)
    for _ in range(4):
        store.worker(channel).deliver_due()
        store.clock.advance(timedelta(hours=1))  # past any backoff
    rows = store.rows()
    assert {r.state for r in rows.values()} == {"sent"}
    assert sorted(r.attempts for r in rows.values()) == [2, 2]  # each met one outage reply
    assert len(state.delivered) == 2  # each recipient exactly once
    assert sorted(state.delivered) == sorted(r.key for r in rows.values())


def test_webhook_signature_over_the_exact_body(provider: tuple[FakeProvider, str]) -> None:
    state, base = provider
    channel = WebhookChannel(f"{base}/hooks/bw", "s3cret", timeout=5)
    team = Customer("security-team", "Security", "security@hostco.example", "en")
    email = message(team)
    email["X-Breachwatch-Kind"] = "overdue"  # type: ignore[index]
    channel.deliver(email, "ob3.staff.overdue")  # type: ignore[arg-type]
    [rec] = state.requests
    expected = "sha256=" + hmac.new(b"s3cret", rec.body, hashlib.sha256).hexdigest()
    assert rec.headers["X-Breachwatch-Signature"] == expected == signature(b"s3cret", rec.body)
    assert rec.headers["Idempotency-Key"] == "ob3.staff.overdue"
    payload = json.loads(rec.body)
    assert payload["kind"] == "overdue" and payload["key"] == "ob3.staff.overdue"
    assert signature(b"other", rec.body) != expected  # a receiver with the wrong secret refuses
