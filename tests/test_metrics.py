"""Metrics: a real HTTP scrape of a fresh registry, checked by promtool."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from breachwatch.clock import FakeClock
from breachwatch.metrics.collector import (
    MetricsServer,
    SourceLag,
    StateCollector,
    StateSnapshot,
    serve_metrics,
)
from breachwatch.metrics.registry import Metrics
from tests.conftest import skip_or_fail

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def snapshot() -> StateSnapshot:
    return StateSnapshot(
        open_incidents={("open", "high"): 2, ("triage", "low"): 1},
        obligations_pending={"gdpr": 3, "hipaa": 1},
        obligations_overdue={"gdpr": 1},
        nearest_deadline=NOW + timedelta(hours=5),
        outbox={"queued": 4, "retry": 1},
        quarantined_records=7,
        sources=(
            SourceLag("pg-main", files_tracked=2, lag_bytes=1024, newest_event_time=NOW),
            SourceLag("mysql", 1, 0, NOW - timedelta(seconds=90)),
            SourceLag("idle", 0, 0, None),
        ),
    )


def fill(m: Metrics) -> None:
    m.init_source("pg-main")
    m.record_read("pg-main", lines=10, bytes_=2048)
    m.record_events("pg-main", 8, NOW)
    m.record_events("pg-main", 0, NOW - timedelta(hours=1))  # older: gauge must not go back
    m.record_parse_error("pg-main", "bad_prefix")
    m.record_parse_error("pg-main", "alice@example.com")  # must not leak
    m.record_finding("ntk.outside_grants", "high")
    m.record_finding("1234567", "high")  # a digit-only id is not a rule id
    m.record_notice("smtp", "sent")
    m.record_notice("webhook", "retry")
    m.record_incident_opened("high")
    m.record_reload_failure()


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics(version="1.2.3")
    m.attach(StateCollector(snapshot, FakeClock(NOW)))
    fill(m)
    return m


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    srv = serve_metrics(metrics, "127.0.0.1", 0)
    yield srv
    srv.shutdown()


def scrape(srv: MetricsServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, line
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def value(s: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **lb: str) -> float:
    return s[(name, frozenset(lb.items()))]


def test_scrape_has_counters_and_state(server: MetricsServer) -> None:
    s = samples(scrape(server))
    assert value(s, "breachwatch_events_total", source="pg-main") == 8
    assert value(s, "breachwatch_lines_read_total", source="pg-main") == 10
    assert value(s, "breachwatch_bytes_read_total", source="pg-main") == 2048
    assert value(s, "breachwatch_parse_errors_total", source="pg-main", reason="bad_prefix") == 1
    assert value(s, "breachwatch_parse_errors_total", source="pg-main", reason="invalid") == 1
    assert value(s, "breachwatch_findings_total", rule="ntk.outside_grants", severity="high") == 1
    assert value(s, "breachwatch_findings_total", rule="invalid", severity="high") == 1
    assert value(s, "breachwatch_notices_total", channel="webhook", outcome="retry") == 1
    assert value(s, "breachwatch_incidents_opened_total", severity="high") == 1
    assert value(s, "breachwatch_config_reload_failures_total") == 1
    assert value(s, "breachwatch_build_info", version="1.2.3") == 1
    assert value(s, "breachwatch_last_event_timestamp_seconds", source="pg-main") == NOW.timestamp()

    assert value(s, "breachwatch_state_up") == 1
    assert value(s, "breachwatch_open_incidents", state="open", severity="high") == 2
    assert value(s, "breachwatch_obligations_pending", regime="gdpr") == 3
    assert value(s, "breachwatch_obligations_overdue", regime="gdpr") == 1
    assert value(s, "breachwatch_nearest_deadline_seconds") == 5 * 3600
    assert value(s, "breachwatch_notices_queued", state="queued") == 4
    assert value(s, "breachwatch_quarantined_records") == 7
    assert value(s, "breachwatch_source_files_tracked", source="pg-main") == 2
    assert value(s, "breachwatch_source_lag_bytes", source="pg-main") == 1024
    assert value(s, "breachwatch_source_lag_seconds", source="mysql") == 90
    assert value(s, "breachwatch_source_lag_seconds", source="pg-main") == 0
    assert ("breachwatch_source_lag_seconds", frozenset({("source", "idle")})) not in s
    assert value(s, "breachwatch_source_files_tracked", source="idle") == 0


def test_no_created_series_and_no_personal_data_in_labels(server: MetricsServer) -> None:
    text = scrape(server)
    assert "_created" not in text
    for (metric, labels), _v in samples(text).items():
        if not metric.startswith("breachwatch_"):
            continue  # python_info{minor="11"} and friends are not ours
        for name, val in labels:
            assert "@" not in val, (metric, name, val)
            assert not val.isdigit(), (metric, name, val)


def test_promtool_finds_no_problems(server: MetricsServer) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool not installed (Debian package: prometheus)")
        return
    text = scrape(server)
    res = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), (
        res.stdout + res.stderr
    )


def test_promtool_would_catch_a_bad_name() -> None:
    """The check above can fail: promtool does flag a non-base unit."""
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool not installed (Debian package: prometheus)")
        return
    bad = "# HELP x_latency_milliseconds x\n# TYPE x_latency_milliseconds gauge\n"
    bad += "x_latency_milliseconds 1\n"
    res = subprocess.run(
        [promtool, "check", "metrics"], input=bad, capture_output=True, text=True, timeout=60
    )
    assert res.returncode != 0 and "milliseconds" in res.stdout + res.stderr


def test_overdue_deadline_is_negative_and_none_is_absent() -> None:
    clock = FakeClock(NOW)
    deadline: list[datetime | None] = [NOW - timedelta(minutes=10)]
    m = Metrics(process_metrics=False)
    m.attach(StateCollector(lambda: StateSnapshot(nearest_deadline=deadline[0]), clock))
    srv = serve_metrics(m, "127.0.0.1", 0)
    try:
        assert value(samples(scrape(srv)), "breachwatch_nearest_deadline_seconds") == -600
        clock.advance(timedelta(minutes=5))
        assert value(samples(scrape(srv)), "breachwatch_nearest_deadline_seconds") == -900
        deadline[0] = None
        assert "breachwatch_nearest_deadline_seconds" not in scrape(srv)
    finally:
        srv.shutdown()


def test_failing_snapshot_gives_state_up_zero_and_scrape_still_works() -> None:
    def broken() -> StateSnapshot:
        raise OSError("database is locked")

    m = Metrics(process_metrics=False)
    m.attach(StateCollector(broken, FakeClock(NOW)))
    m.record_events("pg-main", 3, None)
    srv = serve_metrics(m, "127.0.0.1", 0)
    try:
        s = samples(scrape(srv))
    finally:
        srv.shutdown()
    assert value(s, "breachwatch_state_up") == 0
    assert value(s, "breachwatch_events_total", source="pg-main") == 3
    assert not any(name == "breachwatch_open_incidents" for name, _ in s)


def test_registries_are_independent_and_collector_names_are_owned() -> None:
    a, b = Metrics(process_metrics=False), Metrics(process_metrics=False)
    a.record_reload_failure()
    a.attach(StateCollector(snapshot, FakeClock(NOW)))
    assert a.registry.get_sample_value("breachwatch_config_reload_failures_total") == 1
    assert b.registry.get_sample_value("breachwatch_config_reload_failures_total") == 0
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        a.attach(StateCollector(snapshot, FakeClock(NOW)))


def test_bad_outcome_and_naive_time_are_rejected() -> None:
    m = Metrics(process_metrics=False)
    with pytest.raises(ValueError, match="outcome"):
        m.record_notice("smtp", "delivered")
    with pytest.raises(ValueError, match="timezone"):
        m.record_events("pg-main", 1, datetime(2025, 1, 1))


def test_process_metrics_are_exported(server: MetricsServer) -> None:
    text = scrape(server)
    assert "python_info" in text
    if not os.access("/proc/stat", os.R_OK):
        pytest.skip("/proc/stat not readable here")
    assert "process_cpu_seconds_total" in text


def test_state_snapshot_is_reused_for_max_age_however_often_scraped() -> None:
    """A scrape storm (a dashboard, a benchmark polling every few ms) must not turn into a
    storm of store queries: the snapshot is taken once per max_age, while the deadline is
    still counted from the scrape's own now."""
    ticks = [100.0]
    calls: list[int] = []
    open_incidents = [1]

    def counted() -> StateSnapshot:
        calls.append(1)
        return StateSnapshot(
            open_incidents={("open", "high"): open_incidents[0]},
            nearest_deadline=NOW + timedelta(hours=1),
        )

    clock = FakeClock(NOW)
    m = Metrics(process_metrics=False)
    m.attach(
        StateCollector(counted, clock, max_age=timedelta(seconds=1), monotonic=lambda: ticks[0])
    )
    srv = serve_metrics(m, "127.0.0.1", 0)
    try:
        for _ in range(20):
            s = samples(scrape(srv))
        assert len(calls) == 1
        open_incidents[0] = 5
        clock.advance(timedelta(minutes=10))
        ticks[0] += 0.5  # still fresh: same incidents, deadline from the scrape's now
        s = samples(scrape(srv))
        assert value(s, "breachwatch_open_incidents", state="open", severity="high") == 1
        assert value(s, "breachwatch_nearest_deadline_seconds") == 3000
        assert len(calls) == 1
        ticks[0] += 0.6  # past max_age: the store is read again
        s = samples(scrape(srv))
        assert value(s, "breachwatch_open_incidents", state="open", severity="high") == 5
        assert len(calls) == 2
    finally:
        srv.shutdown()


def test_failed_snapshot_is_retried_after_max_age_not_at_every_scrape() -> None:
    ticks = [0.0]
    attempts: list[int] = []

    def flaky() -> StateSnapshot:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("database is locked")
        return StateSnapshot(quarantined_records=3)

    m = Metrics(process_metrics=False)
    m.attach(
        StateCollector(
            flaky, FakeClock(NOW), max_age=timedelta(seconds=1), monotonic=lambda: ticks[0]
        )
    )
    srv = serve_metrics(m, "127.0.0.1", 0)
    try:
        assert value(samples(scrape(srv)), "breachwatch_state_up") == 0
        assert value(samples(scrape(srv)), "breachwatch_state_up") == 0
        assert len(attempts) == 1
        ticks[0] = 1.0
        s = samples(scrape(srv))
        assert value(s, "breachwatch_state_up") == 1
        assert value(s, "breachwatch_quarantined_records") == 3
    finally:
        srv.shutdown()
