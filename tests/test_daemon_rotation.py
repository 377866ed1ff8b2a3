"""The real daemon follows a log that is rotated (rename + create) while it is being written,
and is killed with SIGKILL in the middle: every line is evaluated exactly once."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProcess, audit_read, wait_for, write_config

pytestmark = pytest.mark.slow

LINES = 300


def _line(i: int) -> str:
    # every line is a finding of its own (departed account) with its own subject
    return audit_read(
        "2026-11-30 10:00:00.000 CET",
        5000 + i,
        "kevin_helpdesk",
        i,
        "clients.accounts",
        f"SELECT email FROM clients.accounts WHERE id = {100000 + i};",
    )


def _writer(log: Path, rotations: int) -> threading.Thread:
    def write() -> None:
        per_file = LINES // (rotations + 1)
        for i in range(LINES):
            with log.open("a") as out:
                out.write(_line(i))
            if i and i % per_file == 0 and i // per_file <= rotations:
                generation = i // per_file
                log.rename(log.with_name(f"{log.name}.{generation}"))  # like logrotate `create`
                log.touch()
            time.sleep(0.004)

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def _subjects(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT subjects FROM findings WHERE rule = 'ntk.departed_account'")
        return [subject for (text,) in rows for subject in __import__("json").loads(text)]


def test_rotation_and_kills_while_writing_lose_and_double_nothing(tmp_path: Path) -> None:
    # rotated files are drained for rotated_grace (30 s) so none is dropped while we kill
    config = write_config(tmp_path, smtp_port=None, hold="1h")
    log = tmp_path / "logs" / "postgresql.log"
    log.write_text("")
    db = tmp_path / "state" / "breachwatch.db"
    daemon = DaemonProcess(config, tmp_path / "d1.out").start()
    writer = _writer(log, rotations=3)
    try:
        for n in range(2):
            target = (n + 1) * LINES // 4
            wait_for(
                lambda target=target: len(_subjects(db)) > target or None,  # type: ignore[misc]
                30,
                "progress before a kill",
                daemon,
            )
            daemon.kill9()
            daemon = DaemonProcess(config, tmp_path / f"d{n + 2}.out").start()
        writer.join(30)
        wait_for(lambda: len(_subjects(db)) >= LINES or None, 60, "every line", daemon)
        time.sleep(1.0)  # a doubled line would be committed within this second
    finally:
        writer.join(30)
        daemon.stop()
    subjects = _subjects(db)
    assert len(subjects) == LINES, "lines lost or doubled"
    assert sorted(subjects) == sorted(str(100000 + i) for i in range(LINES))
