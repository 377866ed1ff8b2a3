"""Outbox state machine against a real SMTP server (aiosmtpd): transient errors are retried
with backoff, permanent ones fail at once with the reason, a customer without an address is a
failed row staff can see, and the rate limit runs on the injected clock."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from breachwatch.clock import FakeClock
from breachwatch.config import DaemonConfig, load_config
from breachwatch.incidents.deadlines import DeadlineKeeper
from breachwatch.incidents.service import IncidentService
from breachwatch.notifications.channels import Channel, SmtpChannel
from breachwatch.notifications.directory import CustomerDirectory
from breachwatch.notifications.outbox import OutboxWorker, backoff
from breachwatch.store.database import Database
from breachwatch.store.schema import OutboxMessage
from tests.conftest import skip_or_fail
from tests.daemon_harness import cli_json, write_config
from tests.smtp_server import Server, free_port, start_smtp_server
from tests.store_fixtures import finding, make_db

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@dataclass
class Store:
    path: Path
    config: DaemonConfig
    db: Database
    clock: FakeClock
    sleeps: list[float]

    def worker(self, channel: Channel, **kwargs: object) -> OutboxWorker:
        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.clock.advance(timedelta(seconds=seconds))

        directory = CustomerDirectory.from_csv(self.config.notifications.customers)
        return OutboxWorker(
            self.db,
            channel,
            directory,
            self.config.notifications,
            self.clock,
            pace=sleep,
            rng=random.Random(7),
            **kwargs,
        )  # type: ignore[arg-type]

    def rows(self) -> dict[str, OutboxMessage]:
        with self.db.transaction() as session:
            return {m.recipient_id: m for m in session.scalars(select(OutboxMessage))}


def make_store(
    tmp_path: Path,
    subjects: tuple[str, ...] = ("1001",),
    smtp_port: int | None = None,
    database_url: str | None = None,
    **notifications: object,
) -> Store:
    extra = {"database_url": database_url} if database_url else None
    path = write_config(tmp_path, smtp_port=smtp_port, extra=extra)
    if notifications:
        import yaml

        data = yaml.safe_load(path.read_text())
        data["notifications"].update(notifications)
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
    config = load_config(path)
    db = make_db(config)
    with db.transaction() as session:
        IncidentService(config).record(session, [finding(T0, subjects=subjects)], T0)
    DeadlineKeeper(db, config, "smtp").tick(T0)
    return Store(path, config, db, FakeClock(T0), [])


def plain(server: Server) -> SmtpChannel:
    return SmtpChannel(
        server.host, server.port, security="none", username=None, password=None, timeout=5
    )


@pytest.fixture
def smtp_ok(tmp_path: Path) -> Iterator[Server]:
    server = start_smtp_server(tmp_path, require_starttls=False, auth=None)
    yield server
    server.stop()


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    delays = [backoff(n, rng).total_seconds() for n in range(1, 10)]
    assert 15 <= delays[0] <= 30 and 30 <= delays[1] <= 60 and 60 <= delays[2] <= 120
    assert all(1800 <= d <= 3600 for d in delays[7:])
    assert len({backoff(3, random.Random(s)) for s in range(5)}) > 1  # jitter


def test_connection_refused_is_retried_then_delivered_once(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    port = free_port()
    down = SmtpChannel("127.0.0.1", port, security="none", username=None, password=None, timeout=2)
    report = store.worker(down).deliver_due()
    assert report.retried == 1 and report.sent == 0
    row = store.rows()["1001"]
    assert row.state == "queued" and row.attempts == 1
    assert "ConnectionRefusedError" in (row.last_error or "")
    assert row.not_before > T0  # backoff
    assert store.worker(down).deliver_due().retried == 0  # not due yet: nothing tried

    server = start_smtp_server(tmp_path, require_starttls=False, auth=None)
    try:
        # the relay came back on another port: same row, new channel, after the backoff
        store.clock.set(row.not_before)
        report = store.worker(plain(server)).deliver_due()
        assert report.sent == 1
        assert len(server.messages) == 1
    finally:
        server.stop()
    row = store.rows()["1001"]
    assert row.state == "sent" and row.attempts == 2 and row.last_error is None


@pytest.mark.parametrize(
    ("where", "reply", "state"),
    [
        ("rcpt", "421 4.7.0 too many connections, closing", "queued"),
        ("data", "451 4.3.0 local error, try later", "queued"),
        ("rcpt", "550 5.1.1 no such mailbox", "failed"),
        ("data", "554 5.7.1 rejected as spam", "failed"),
    ],
)
def test_reply_codes(tmp_path: Path, where: str, reply: str, state: str) -> None:
    store = make_store(tmp_path)
    kwargs = {"rcpt_reply": reply} if where == "rcpt" else {"data_reply": reply}
    server = start_smtp_server(tmp_path, require_starttls=False, auth=None, **kwargs)
    try:
        store.worker(plain(server)).deliver_due()
    finally:
        server.stop()
    row = store.rows()["1001"]
    assert row.state == state
    assert reply.split()[0] in (row.last_error or "")  # the reason is kept
    assert row.attempts == 1


def test_wrong_relay_password_535_is_permanent(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        skip_or_fail("openssl CLI (test certificate)")
    store = make_store(tmp_path)
    server = start_smtp_server(tmp_path, require_starttls=True, auth=("bw", "right"))
    try:
        channel = SmtpChannel(
            server.host,
            server.port,
            security="starttls",
            username="bw",
            password="wrong",
            ssl_context=server.client_context(),
            timeout=5,
        )
        report = store.worker(channel).deliver_due()
        assert server.messages == []
    finally:
        server.stop()
    assert report.failed == 1
    row = store.rows()["1001"]
    assert row.state == "failed" and "535" in (row.last_error or "")


def test_transient_errors_stop_after_max_attempts(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_attempts=3)
    down = SmtpChannel(
        "127.0.0.1", free_port(), security="none", username=None, password=None, timeout=2
    )
    for _ in range(5):
        store.worker(down).deliver_due()
        store.clock.advance(timedelta(hours=2))
    row = store.rows()["1001"]
    assert row.state == "failed" and row.attempts == 3
    assert "ConnectionRefusedError" in (row.last_error or "")


def test_customer_without_address_is_a_visible_failed_row(tmp_path: Path, smtp_ok: Server) -> None:
    store = make_store(tmp_path, subjects=("1001", "1004"))
    report = store.worker(plain(smtp_ok)).deliver_due()
    assert report.sent == 1 and report.failed == 1
    rows = store.rows()
    assert rows["1004"].state == "failed"
    assert (rows["1004"].last_error or "").startswith("no usable address")
    failed = cli_json(store.path, "notices", "--state", "failed")
    assert [(n["recipient"], n["error"][:17]) for n in failed] == [("1004", "no usable address")]


def test_rate_limit_on_the_injected_clock_and_resume_after_restart(
    tmp_path: Path, smtp_ok: Server
) -> None:
    store = make_store(tmp_path, subjects=("1001", "1002", "1003"), rate_per_second=2, burst=1)
    first = store.worker(plain(smtp_ok))
    report = first.deliver_due(limit=2)  # a "restart" after two messages
    assert report.sent == 2
    assert store.sleeps == [pytest.approx(0.5)]  # 1 token, then one every 0.5 s
    second = store.worker(plain(smtp_ok))  # a new worker: new bucket, same outbox
    assert second.reconcile() == 0
    assert second.deliver_due().sent == 1
    assert len(smtp_ok.messages) == 3
    assert {m.rcpt_tos[0] for m in smtp_ok.messages} == {
        "amelie.dubois@example.org",
        "pieter.janssens@example.org",
        "grace.hopper@example.org",
    }
