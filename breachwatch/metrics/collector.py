"""Scrape-time gauges read from the daemon's state (the HTTP endpoint is in registry.py).

The :class:`StateCollector` calls a ``snapshot`` callable when scraped, so nothing has to
remember to update a gauge. A snapshot costs a few store queries, and a scrape must stay cheap
whoever polls (a dashboard, a benchmark polling every few ms): with ``max_age`` the snapshot is
reused for that long, so the store is read at most once per ``max_age`` however often
/metrics is scraped. Times relative to now (deadline, lag seconds) are still computed at each
scrape. A snapshot that fails (store locked, corrupt, gone) must not break the scrape: the
collector then exports only ``breachwatch_state_up 0``, which is what an alert should watch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from breachwatch.clock import Clock
from breachwatch.metrics.registry import MetricsServer, label_token, serve_metrics

# MetricsServer and serve_metrics live in registry.py; re-exported here for convenience.
__all__ = ["MetricsServer", "SourceLag", "StateCollector", "StateSnapshot", "serve_metrics"]


@dataclass(frozen=True, slots=True)
class SourceLag:
    source: str
    files_tracked: int
    lag_bytes: int  # bytes written to the tracked files and not read yet
    newest_event_time: datetime | None  # timezone-aware


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    open_incidents: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (state, sev)
    obligations_pending: Mapping[str, int] = field(default_factory=dict)  # regime → count
    obligations_overdue: Mapping[str, int] = field(default_factory=dict)  # regime → count
    nearest_deadline: datetime | None = None  # timezone-aware; None when nothing is open
    outbox: Mapping[str, int] = field(default_factory=dict)  # notice state → count
    quarantined_records: int = 0
    sources: Sequence[SourceLag] = ()


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _seconds_between(later: datetime, earlier: datetime) -> float:
    if later.tzinfo is None or earlier.tzinfo is None:
        raise ValueError("naive datetime in state snapshot")
    return (later - earlier).total_seconds()


class StateCollector:
    """A prometheus_client collector; register it with :meth:`Metrics.attach`."""

    def __init__(
        self,
        snapshot: Callable[[], StateSnapshot],
        clock: Clock,
        *,
        max_age: timedelta = timedelta(0),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._snapshot = snapshot
        self._clock = clock
        # A monotonic timer, not the wall clock: a clock stepped back must not pin a stale
        # snapshot, nor a step forward make every scrape query the store.
        self._max_age = max_age.total_seconds()
        self._monotonic = monotonic
        self._lock = threading.Lock()  # concurrent scrapes share one snapshot query
        self._cached: tuple[float, StateSnapshot | None] | None = None  # (taken at, snap)

    def _current(self) -> StateSnapshot | None:
        """The snapshot for this scrape, None when it failed (a failure is reused for
        ``max_age`` too: a locked store is not hammered by every scrape)."""
        with self._lock:
            now = self._monotonic()
            if self._cached is not None and now - self._cached[0] < self._max_age:
                return self._cached[1]
            snap: StateSnapshot | None
            try:
                snap = self._snapshot()
            except Exception:
                structlog.get_logger(__name__).warning(
                    "metrics_state_snapshot_failed", exc_info=True
                )
                snap = None
            self._cached = (now, snap)
            return snap

    def describe(self) -> Iterator[Metric]:
        """The names this collector owns, so the registry can refuse duplicates
        without calling the snapshot at registration time."""
        yield from self._families(StateSnapshot(), None)
        yield _gauge("breachwatch_nearest_deadline_seconds", "")
        yield _gauge("breachwatch_state_up", "")

    def collect(self) -> Iterator[Metric]:
        snap = self._current()
        families: list[Metric] = []
        up = 0
        if snap is not None:
            try:
                families = list(self._families(snap, self._clock.now()))
                up = 1
            except Exception:
                structlog.get_logger(__name__).warning(
                    "metrics_state_snapshot_failed", exc_info=True
                )
        yield from families
        state_up = _gauge(
            "breachwatch_state_up", "1 when the state snapshot for this scrape could be read."
        )
        state_up.add_metric([], up)
        yield state_up

    def _families(self, snap: StateSnapshot, now: datetime | None) -> Iterator[Metric]:
        g = _gauge(
            "breachwatch_open_incidents",
            "Incidents not closed, by state and severity.",
            ("state", "severity"),
        )
        for (state, severity), n in sorted(snap.open_incidents.items()):
            g.add_metric([label_token(state), label_token(severity)], n)
        yield g

        for name, doc, per_regime in (
            (
                "breachwatch_obligations_pending",
                "Notification obligations not yet met, by legal regime.",
                snap.obligations_pending,
            ),
            (
                "breachwatch_obligations_overdue",
                "Notification obligations past their deadline, by legal regime.",
                snap.obligations_overdue,
            ),
        ):
            g = _gauge(name, doc, ("regime",))
            for regime, n in sorted(per_regime.items()):
                g.add_metric([label_token(regime)], n)
            yield g

        if now is not None and snap.nearest_deadline is not None:
            g = _gauge(
                "breachwatch_nearest_deadline_seconds",
                "Seconds until the nearest open notification deadline; negative when overdue.",
            )
            g.add_metric([], _seconds_between(snap.nearest_deadline, now))
            yield g

        g = _gauge("breachwatch_notices_queued", "Notices in the outbox, by state.", ("state",))
        for state, n in sorted(snap.outbox.items()):
            g.add_metric([label_token(state)], n)
        yield g

        g = _gauge(
            "breachwatch_quarantined_records",
            "Raw records kept aside because they failed to parse.",
        )
        g.add_metric([], snap.quarantined_records)
        yield g

        files = _gauge(
            "breachwatch_source_files_tracked", "Files a source is tailing.", ("source",)
        )
        lag_bytes = _gauge(
            "breachwatch_source_lag_bytes",
            "Bytes written to a source's files and not read yet.",
            ("source",),
        )
        lag_seconds = _gauge(
            "breachwatch_source_lag_seconds",
            "Seconds since the newest event read from a source (absent before the first).",
            ("source",),
        )
        for lag in sorted(snap.sources, key=lambda s: s.source):
            s = [label_token(lag.source)]
            files.add_metric(s, lag.files_tracked)
            lag_bytes.add_metric(s, lag.lag_bytes)
            if now is not None and lag.newest_event_time is not None:
                lag_seconds.add_metric(s, _seconds_between(now, lag.newest_event_time))
        yield files
        yield lag_bytes
        yield lag_seconds
