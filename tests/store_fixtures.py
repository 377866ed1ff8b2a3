"""Builds a real store and config on a temporary directory, for tests of the shell."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from breachwatch.config import DaemonConfig, load_config
from breachwatch.detection.findings import Finding, Severity
from breachwatch.events import SourcePosition
from breachwatch.store.database import Database
from tests.daemon_harness import write_config


def make_config(tmp_path: Path, **overrides: object) -> DaemonConfig:
    path = write_config(tmp_path, smtp_port=None, extra=dict(overrides))
    return load_config(path)


def make_db(config: DaemonConfig) -> Database:
    db = Database(config.db_url)
    db.create_schema()
    return db


def finding(
    when: datetime,
    *,
    actor: str = "kevin_helpdesk",
    offset: int = 0,
    severity: Severity = Severity.CRITICAL,
    subjects: tuple[str, ...] = ("1001",),
    rule: str = "ntk.departed_account",
) -> Finding:
    return Finding(
        rule=rule,
        severity=severity,
        time=when,
        actor=actor,
        store="pg-main",
        explanation="test finding",
        controls=("ISO27001:2022 A.5.18",),
        evidence=(SourcePosition("/var/log/pg.log", offset, offset // 100 + 1, 100),),
        person="kevin",
        objects=("clients.accounts",),
        subjects=subjects,
        categories=("identity", "contact"),
    )
