"""The daemon's own Prometheus instruments, on a registry of their own, and its /metrics server.

No global state: each :class:`Metrics` owns a fresh ``CollectorRegistry``; nothing is put on
prometheus_client's default ``REGISTRY``. Label values are short tokens (source name, format,
reason, rule id, state, severity, regime, channel, outcome), never customer or staff ids, e-mail
addresses, IPs or incident ids: a value that does not look like a token is exported as
``"invalid"`` rather than leaking it or growing the series count without bound.
"""

from __future__ import annotations

import re
import threading
from datetime import datetime
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from breachwatch import __version__

__all__ = ["NOTICE_OUTCOMES", "Metrics", "MetricsServer", "label_token", "serve_metrics"]

NOTICE_OUTCOMES: Final = frozenset({"sent", "failed", "retry"})

# A token starts with a letter, so digit-only ids, IPs and timestamps never match; no '@', no
# whitespace, no '/', bounded length.
_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,62}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,62}")  # PEP 440 / semver, no '@' or '/'
INVALID_LABEL: Final = "invalid"


def label_token(value: str) -> str:
    """``value`` if it is a safe, bounded label token, else ``"invalid"``."""
    return value if _TOKEN.fullmatch(value) else INVALID_LABEL


class Metrics:
    """Counters and gauges the pipeline updates as it works.

    State that lives in the store (open incidents, deadlines, lag) is not kept here: it is read
    at scrape time by a :class:`~breachwatch.metrics.collector.StateCollector` given to
    :meth:`attach`.
    """

    def __init__(self, version: str = __version__, *, process_metrics: bool = True) -> None:
        # A process-wide switch read at exposition time: the output no longer depends on
        # $PROMETHEUS_DISABLE_CREATED_SERIES.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        r = self.registry
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

        self.events = Counter(
            "breachwatch_events", "Access events parsed from a source.", ["source"], registry=r
        )
        self.lines_read = Counter(
            "breachwatch_lines_read", "Log lines read from a source.", ["source"], registry=r
        )
        self.bytes_read = Counter(
            "breachwatch_bytes_read", "Bytes read from a source's files.", ["source"], registry=r
        )
        self.parse_errors = Counter(
            "breachwatch_parse_errors",
            "Records that could not be parsed, by reason token.",
            ["source", "reason"],
            registry=r,
        )
        self.findings = Counter(
            "breachwatch_findings",
            "Findings raised by detection rules.",
            ["rule", "severity"],
            registry=r,
        )
        self.notices = Counter(
            "breachwatch_notices",
            "Notification delivery attempts, by channel and outcome (sent, failed, retry).",
            ["channel", "outcome"],
            registry=r,
        )
        self.incidents_opened = Counter(
            "breachwatch_incidents_opened", "Incidents opened.", ["severity"], registry=r
        )
        self.last_event_timestamp = Gauge(
            "breachwatch_last_event_timestamp_seconds",
            "Time (Unix seconds) of the newest event parsed from a source.",
            ["source"],
            registry=r,
        )
        self.config_reload_failures = Counter(
            "breachwatch_config_reload_failures",
            "Configuration reloads rejected (the previous configuration stayed in force).",
            registry=r,
        )
        self.clock_backward_jumps = Counter(
            "breachwatch_clock_backward_jumps",
            "Times the wall clock was seen to go back by more than a second (NTP step, VM "
            "restore); deadlines are unaffected but delayed actions fire later.",
            registry=r,
        )
        self.reference_failures = Counter(
            "breachwatch_reference_refresh_failures",
            "Reference-table reloads (cases, registers) that failed with a new error: file "
            "unreadable, HTTP API down or timing out. The previous table stays in force.",
            registry=r,
        )
        self.reference_reloads = Counter(
            "breachwatch_reference_reloads",
            "Reference tables (cases, registers) reloaded because their source changed.",
            registry=r,
        )
        self.build_info = Gauge(
            "breachwatch_build_info",
            "Always 1; the version label says which breachwatch is running.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(
            version=version if _VERSION.fullmatch(version) else INVALID_LABEL
        ).set(1)
        self._lock = threading.Lock()
        self._newest: dict[str, float] = {}

    def init_source(self, source: str) -> None:
        """Export zero-valued series for a configured source before its first read, so that
        ``rate()`` and absence alerts see it from the start."""
        s = label_token(source)
        self.events.labels(source=s)
        self.lines_read.labels(source=s)
        self.bytes_read.labels(source=s)

    def record_read(self, source: str, lines: int, bytes_: int) -> None:
        s = label_token(source)
        self.lines_read.labels(source=s).inc(lines)
        self.bytes_read.labels(source=s).inc(bytes_)

    def record_events(self, source: str, n: int, newest_event_time: datetime | None) -> None:
        """Count ``n`` events; the timestamp gauge only ever moves forward."""
        s = label_token(source)
        self.events.labels(source=s).inc(n)
        if newest_event_time is None:
            return
        if newest_event_time.tzinfo is None:
            raise ValueError("newest_event_time must be timezone-aware")
        ts = newest_event_time.timestamp()
        with self._lock:
            if ts > self._newest.get(s, float("-inf")):
                self._newest[s] = ts
                self.last_event_timestamp.labels(source=s).set(ts)

    def record_parse_error(self, source: str, reason: str) -> None:
        self.parse_errors.labels(source=label_token(source), reason=label_token(reason)).inc()

    def record_finding(self, rule: str, severity: str) -> None:
        self.findings.labels(rule=label_token(rule), severity=label_token(severity)).inc()

    def record_notice(self, channel: str, outcome: str) -> None:
        if outcome not in NOTICE_OUTCOMES:
            raise ValueError(
                f"notice outcome must be one of {sorted(NOTICE_OUTCOMES)}: {outcome!r}"
            )
        self.notices.labels(channel=label_token(channel), outcome=outcome).inc()

    def record_incident_opened(self, severity: str) -> None:
        self.incidents_opened.labels(severity=label_token(severity)).inc()

    def record_reload_failure(self) -> None:
        self.config_reload_failures.inc()

    def record_clock_backward_jump(self) -> None:
        self.clock_backward_jumps.inc()

    def record_reference(self, outcome: str) -> None:
        """A reference refresh outcome as the Refresher reports it: ``reloaded`` or
        ``failed`` (labels would be paths or URLs, so the log line names the table)."""
        if outcome == "reloaded":
            self.reference_reloads.inc()
        elif outcome == "failed":
            self.reference_failures.inc()
        else:
            raise ValueError(f"reference outcome must be reloaded or failed: {outcome!r}")

    def attach(self, collector: Collector) -> None:
        """Register a scrape-time collector (e.g. the state collector) on this registry."""
        self.registry.register(collector)


class MetricsServer:
    """The running /metrics endpoint (a daemon thread)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return self._server.server_port

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    def shutdown(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)


def serve_metrics(metrics: Metrics, host: str = "127.0.0.1", port: int = 9464) -> MetricsServer:
    """Serve ``metrics.registry`` over HTTP; ``port=0`` picks a free port (see ``.port``)."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(server, thread)
