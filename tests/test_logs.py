"""structlog configuration: JSON lines, journald priority prefixes, keyed pseudonyms."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from breachwatch.logs import configure_logging, pseudonymise


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_capture_logs_sees_events() -> None:
    configure_logging("info", io.StringIO(), environ={})
    with capture_logs() as logs:
        structlog.get_logger().info(
            "incident_opened", severity="high", subject=pseudonymise("c1", b"k")
        )
        structlog.get_logger().debug("too_chatty")
    assert logs == [
        {
            "event": "incident_opened",
            "severity": "high",
            "subject": pseudonymise("c1", b"k"),
            "log_level": "info",
        }
    ]


def test_one_json_object_per_line() -> None:
    out = io.StringIO()
    configure_logging("debug", out, environ={})
    log = structlog.get_logger()
    structlog.contextvars.bind_contextvars(source="pg-main")
    try:
        log.info("started", sources=2)
        log.debug("tick")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("scan_failed")
    finally:
        structlog.contextvars.clear_contextvars()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["started", "tick", "scan_failed"]
    assert [r["level"] for r in records] == ["info", "debug", "error"]
    assert all(r["source"] == "pg-main" for r in records)
    assert records[0]["timestamp"].endswith("Z")
    assert records[2]["exception"][0]["exc_type"] == "RuntimeError"


def test_level_filters_and_bad_level_is_refused() -> None:
    out = io.StringIO()
    configure_logging("warning", out, environ={})
    structlog.get_logger().info("hidden")
    structlog.get_logger().warning("shown")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["shown"]
    with pytest.raises(ValueError, match="log level"):
        configure_logging("verbose", out, environ={})


def _journal_env(path: Path) -> tuple[io.TextIOWrapper, dict[str, str]]:
    stream = path.open("w", encoding="utf-8")
    st = os.fstat(stream.fileno())
    return stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_priority_prefix_when_journald_reads_the_stream(tmp_path: Path) -> None:
    stream, env = _journal_env(tmp_path / "journal")
    with stream:
        configure_logging("info", stream, environ=env)
        log = structlog.get_logger()
        log.info("ok")
        log.warning("slow")
        log.error("failed")
        logging.getLogger("apscheduler.scheduler").warning("Run time of job was missed")
    lines = (tmp_path / "journal").read_text().splitlines()
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>", "<4>"]
    foreign = json.loads(lines[3][3:])
    assert foreign["event"] == "Run time of job was missed"
    assert foreign["logger"] == "apscheduler.scheduler"
    assert json.loads(lines[2][3:])["event"] == "failed"


def test_no_prefix_without_journal_stream_or_for_another_stream(tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging("info", out, environ={})
    structlog.get_logger().error("failed")
    assert out.getvalue().startswith("{")

    # Inherited JOURNAL_STREAM naming some other file: our stream is not the journal.
    elsewhere, env = _journal_env(tmp_path / "elsewhere")
    elsewhere.close()
    other = (tmp_path / "mine").open("w", encoding="utf-8")
    with other:
        configure_logging("info", other, environ=env)
        structlog.get_logger().error("failed")
    assert (tmp_path / "mine").read_text().startswith("{")


def test_pseudonymise_is_stable_keyed_and_opaque() -> None:
    a = pseudonymise("customer-4711", b"key-one")
    assert a == pseudonymise("customer-4711", b"key-one")
    assert a.startswith("p:") and len(a) == 14
    int(a[2:], 16)
    assert a != pseudonymise("customer-4711", b"key-two")
    assert a != pseudonymise("customer-4712", b"key-one")
    assert "4711" not in a
    # Known answer (openssl dgst -sha256 -hmac secret), so the scheme cannot drift silently:
    # old logs must stay greppable for a known id.
    assert pseudonymise("alice@example.com", b"secret") == "p:a398d49ce198"
    with pytest.raises(ValueError):
        pseudonymise("x", b"")
