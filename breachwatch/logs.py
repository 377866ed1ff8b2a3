"""breachwatch's own logs: one JSON object per line on stdout, for journald.

Under systemd, ``$JOURNAL_STREAM`` names the stream journald reads; each line then starts with a
``<N>`` syslog priority so ``journalctl -p err`` works. Standard-library loggers (APScheduler,
watchdog) are rendered the same way. Customer and staff ids are logged only through
:func:`pseudonymise`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["configure_logging", "pseudonymise"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# structlog level name → syslog priority (sd-daemon(3) prefixes).
_PRIORITY = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}


class JournalRenderer:
    """Final processor: JSON, prefixed with ``<N>`` when journald reads the stream."""

    def __init__(self, prefix_priority: bool) -> None:
        self._json = structlog.processors.JSONRenderer()
        self.prefix_priority = prefix_priority

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        level = str(event_dict.get("level", method_name)).lower()
        line = self._json(logger, method_name, event_dict)
        assert isinstance(line, str)
        if self.prefix_priority:
            return f"<{_PRIORITY.get(level, 6)}>{line}"
        return line


def _stream_is_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    """True when ``$JOURNAL_STREAM`` ("dev:inode") is the file ``stream`` writes to, as
    systemd.exec(5) advises: a child that inherited the variable but writes to a pipe or a
    terminal must not get prefixed lines."""
    value = env.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def configure_logging(
    level: str = "info",
    stream: TextIO | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Configure structlog (and the stdlib root logger) once, at start.

    ``stream`` defaults to ``sys.stdout`` as it is at call time; ``environ`` to ``os.environ``.
    """
    try:
        min_level = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level must be one of {sorted(_LEVELS)}: {level!r}") from None
    out = sys.stdout if stream is None else stream
    renderer = JournalRenderer(_stream_is_journal(out, os.environ if environ is None else environ))
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.dict_tracebacks, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        context_class=dict,
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.dict_tracebacks,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(min_level, logging.INFO))  # third-party debug chatter stays out
    # APScheduler logs every job run at INFO; the deadline tick runs every few seconds.
    logging.getLogger("apscheduler").setLevel(max(min_level, logging.WARNING))
    # Alembic narrates every migration context at INFO on each start.
    logging.getLogger("alembic").setLevel(max(min_level, logging.WARNING))


def pseudonymise(value: str, key: bytes) -> str:
    """A stable, keyed stand-in for a customer or staff id: ``p:`` + 12 hex of HMAC-SHA256.

    Without the key the id cannot be confirmed by hashing guesses; with it, an investigator can
    recompute the token for a known id and grep the logs for it.
    """
    if not key:
        raise ValueError("pseudonymise needs a non-empty key")
    return "p:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:12]
