"""kill -9 at every step of a send, then reconcile + deliver again, counting what the real SMTP
server and the real mail folder received: the mail folder never gets a second message; SMTP
only in the documented window (after the relay's 250, before the `sent` commit), and then
with the same Message-ID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from sqlalchemy import select

from breachwatch.config import load_config
from breachwatch.incidents.deadlines import DeadlineKeeper
from breachwatch.incidents.service import IncidentService
from breachwatch.store.schema import OutboxMessage
from tests.daemon_harness import REPO, write_config
from tests.smtp_server import start_smtp_server
from tests.store_fixtures import finding, make_db

pytestmark = pytest.mark.slow

SUBJECTS = ("1001", "1002", "1003", "1004")  # 1004 has no e-mail address in customers.csv
ADDRESSES = {
    "1001": "amelie.dubois@example.org",
    "1002": "pieter.janssens@example.org",
    "1003": "grace.hopper@example.org",
}


def prepare(tmp_path: Path, smtp_port: int | None) -> Path:
    path = write_config(tmp_path, smtp_port=smtp_port)
    config = load_config(path)
    db = make_db(config)
    t0 = datetime.now(UTC) - timedelta(hours=2)
    with db.transaction() as session:
        IncidentService(config).record(session, [finding(t0, subjects=SUBJECTS)], t0)
    channel = "smtp" if smtp_port else "mailfolder"
    assert DeadlineKeeper(db, config, channel).tick(t0 + timedelta(hours=1)).enqueued == 4
    db.dispose()
    return path


def run_child(config: Path, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BREACHWATCH_TEST_CRASH_AT"}
    if crash_at:
        env["BREACHWATCH_TEST_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "tests.outbox_crash_child", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def states(config: Path) -> dict[str, str]:
    db = make_db(load_config(config))
    with db.transaction() as session:
        rows = {m.recipient_id: m.state for m in session.scalars(select(OutboxMessage))}
    db.dispose()
    return rows


def folder_counts(tmp_path: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for sub in ("new", "cur"):
        for path in (tmp_path / "state" / "mail" / sub).iterdir():
            message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
            counts[message["To"].addresses[0].addr_spec] += 1
    return counts


@pytest.mark.parametrize("crash_at", ["before_send", "after_send", "after_commit"])
def test_mail_folder_never_twice(tmp_path: Path, crash_at: str) -> None:
    config = prepare(tmp_path, None)
    crashed = run_child(config, crash_at)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    expected_state = {"before_send": "sending", "after_send": "sending", "after_commit": "sent"}
    assert states(config)["1001"] == expected_state[crash_at]

    again = run_child(config, None)
    assert again.returncode == 0, again.stderr
    assert folder_counts(tmp_path) == Counter(ADDRESSES.values())  # exactly one each
    final = states(config)
    assert final == {"1001": "sent", "1002": "sent", "1003": "sent", "1004": "failed"}
    # a third run (another restart) changes nothing
    assert run_child(config, None).returncode == 0
    assert folder_counts(tmp_path) == Counter(ADDRESSES.values())


@pytest.mark.parametrize(
    ("crash_at", "copies_of_first"),
    [("before_send", 1), ("after_send", 2), ("after_commit", 1)],
)
def test_smtp_at_most_the_documented_window(
    tmp_path: Path, crash_at: str, copies_of_first: int
) -> None:
    smtp = start_smtp_server(tmp_path, require_starttls=False, auth=None)
    try:
        config = prepare(tmp_path, smtp.port)
        crashed = run_child(config, crash_at)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        again = run_child(config, None)
        assert again.returncode == 0, again.stderr
        received = smtp.messages
    finally:
        smtp.stop()
    per_recipient = Counter(rcpt for m in received for rcpt in m.rcpt_tos)
    assert per_recipient == Counter(
        {
            "amelie.dubois@example.org": copies_of_first,
            "pieter.janssens@example.org": 1,
            "grace.hopper@example.org": 1,
        }
    )
    # the window's duplicate carries the same Message-ID, so clients can fold it
    first_ids = {m["Message-ID"] for m in received if "amelie" in str(m["To"])}
    assert len(first_ids) == 1
    assert states(config)["1001"] == "sent"
