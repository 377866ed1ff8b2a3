"""A 10,000-recipient notice through the real SMTP server (aiosmtpd): every customer gets
exactly one message, the token bucket holds the configured rate on the injected clock, and
the progress metric (breachwatch_notices_total{outcome="sent"}) moves while it runs."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from breachwatch.metrics.registry import Metrics
from breachwatch.notifications.channels import SmtpChannel
from tests.smtp_server import start_smtp_server
from tests.test_outbox_retries import make_store

pytestmark = pytest.mark.slow

N = 10_000
RATE = 2000.0
BURST = 10


@pytest.mark.timeout(900)
def test_ten_thousand_recipients_at_the_configured_rate(tmp_path: Path) -> None:
    customers = tmp_path / "customers.csv"
    languages = ("fr", "nl", "en")
    customers.write_text(
        "id,name,email,language\n"
        + "".join(
            f"c{i:05d},Customer {i},customer{i}@example.org,{languages[i % 3]}\n" for i in range(N)
        )
    )
    store = make_store(
        tmp_path,
        subjects=tuple(f"c{i:05d}" for i in range(N)),
        customers=str(customers),
        rate_per_second=RATE,
        burst=BURST,
    )
    assert len(store.rows()) == N
    metrics = Metrics(process_metrics=False)
    sent_counter = metrics.notices.labels(channel="smtp", outcome="sent")
    samples: list[float] = []

    def progress(done: int, total: int) -> None:
        if done % 1000 == 0:
            samples.append(sent_counter._value.get())

    server = start_smtp_server(tmp_path, require_starttls=False, auth=None)
    try:
        channel = SmtpChannel(
            server.host,
            server.port,
            security="none",
            username=None,
            password=None,
            timeout=10,
            max_per_connection=100,
        )
        worker = store.worker(channel, observe=metrics.record_notice)
        started_virtual, started = store.clock.now(), time.monotonic()
        report = worker.deliver_due(limit=None, progress=progress)
        elapsed = time.monotonic() - started
        received = server.wait_for(N, timeout=30)
    finally:
        server.stop()
    assert report.sent == N and report.failed == 0
    per_recipient = Counter(r for m in received for r in m.rcpt_tos)
    assert len(per_recipient) == N and set(per_recipient.values()) == {1}
    # the rate: after the burst, one token every 1/RATE s of virtual time, and only the
    # limiter's sleeps moved the clock
    virtual = (store.clock.now() - started_virtual).total_seconds()
    assert virtual == pytest.approx(sum(store.sleeps), abs=1e-3)
    assert virtual == pytest.approx((N - BURST) / RATE, rel=0.01)
    assert max(store.sleeps) <= 1 / RATE + 2e-6
    assert worker.bucket.acquired == N
    assert samples == [float(k * 1000) for k in range(1, 11)]  # the metric moved as it went
    assert channel.connections <= N // 100 + 1  # connections were reused
    print(f"\n{N} notices in {elapsed:.1f} s real time, {virtual:.2f} s virtual")
