"""Scrape-time gauges read from the daemon's state (the HTTP endpoint is in registry.py).

The :class:`StateCollector` calls a ``snapshot`` callable at every scrape, so the numbers are
as fresh as the store, and nothing has to remember to update a gauge. A snapshot that fails
(store locked, corrupt, gone) must not break the scrape: the collector then exports only
``breachwatch_state_up 0``, which is what an alert should watch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

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

    def __init__(self, snapshot: Callable[[], StateSnapshot], clock: Clock) -> None:
        self._snapshot = snapshot
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        """The names this collector owns, so the registry can refuse duplicates
        without calling the snapshot at registration time."""
        yield from self._families(StateSnapshot(), None)
        yield _gauge("breachwatch_nearest_deadline_seconds", "")
        yield _gauge("breachwatch_state_up", "")

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self._snapshot()
            families = list(self._families(snap, self._clock.now()))
        except Exception:
            structlog.get_logger(__name__).warning("metrics_state_snapshot_failed", exc_info=True)
            families = []
            up = 0
        else:
            up = 1
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
