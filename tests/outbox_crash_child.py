"""Test hook: runs one outbox delivery (reconcile + deliver) in its own process and, when
$BREACHWATCH_TEST_CRASH_AT is set, kills itself with SIGKILL at that step of the first send:

  before_send   the row is committed as `sending`, nothing handed to the channel yet
  after_send    the channel accepted the message (relay 250 / file in new/), not committed
  after_commit  the row is committed as `sent`

Nothing in breachwatch is patched: the real channel is wrapped, and the commit hook is the
worker's `observe` callback, which runs after the `sent` commit.

    python -m tests.outbox_crash_child CONFIG
"""

from __future__ import annotations

import os
import signal
import sys
from email.message import EmailMessage
from pathlib import Path

from breachwatch.clock import SystemClock
from breachwatch.config import load_config
from breachwatch.notifications.channels import Channel
from breachwatch.notifications.outbox import OutboxWorker
from breachwatch.notifications.wiring import (
    build_customer_channel,
    build_directory,
    build_staff_channel,
)
from breachwatch.store.database import Database

CRASH_AT = os.environ.get("BREACHWATCH_TEST_CRASH_AT", "")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CrashingChannel:
    def __init__(self, inner: Channel) -> None:
        self._inner = inner
        self.name = inner.name

    def was_delivered(self, key: str) -> bool | None:
        return self._inner.was_delivered(key)

    def deliver(self, message: EmailMessage, key: str) -> str:
        if CRASH_AT == "before_send":
            _die()
        receipt = self._inner.deliver(message, key)
        if CRASH_AT == "after_send":
            _die()
        return receipt

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if callable(close):
            close()


def main(config_path: str) -> int:
    config = load_config(Path(config_path))
    db = Database(config.db_url)
    db.create_schema()
    clock = SystemClock()

    def observe(_channel: str, outcome: str) -> None:
        if CRASH_AT == "after_commit" and outcome == "sent":
            _die()

    worker = OutboxWorker(
        db,
        CrashingChannel(build_customer_channel(config.notifications)),
        build_directory(config.notifications, clock),
        config.notifications,
        clock,
        observe=observe,
        pace=lambda _seconds: None,
        staff_channel=build_staff_channel(config.notifications),
    )
    reconciled = worker.reconcile()
    report = worker.deliver_due(limit=None)
    print(f"reconciled={reconciled} sent={report.sent} failed={report.failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
