"""The long-running service: explicit phases (startup, main loop, shutdown), signals that only
set flags, and one wiring place that builds everything from the config and hands it down."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import Gauge
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from breachwatch import __version__
from breachwatch.api.server import ApiServer, serve_api
from breachwatch.clock import Clock, SystemClock
from breachwatch.config import DaemonConfig, load_config
from breachwatch.detection.policy import load_policy
from breachwatch.detection.reference import Refresher
from breachwatch.errors import BreachwatchError
from breachwatch.incidents.deadlines import DeadlineKeeper
from breachwatch.incidents.service import IncidentService
from breachwatch.ingest import IngestReport, SourceIngest, load_detector_state
from breachwatch.metrics.collector import SourceLag, StateCollector, StateSnapshot
from breachwatch.metrics.registry import Metrics, MetricsServer, label_token, serve_metrics
from breachwatch.notifications.channels import Channel
from breachwatch.notifications.outbox import OutboxWorker
from breachwatch.notifications.wiring import (
    build_customer_channel,
    build_directory,
    build_staff_channel,
)
from breachwatch.pipeline import Pipeline
from breachwatch.sdnotify import SystemdNotifier
from breachwatch.sources.watch import DirectoryWatcher
from breachwatch.speedups import tune_gc
from breachwatch.store.database import Database
from breachwatch.store.schema import Incident, Obligation, OutboxMessage, QuarantinedRecord

log = structlog.get_logger("breachwatch.daemon")

STATUS_INTERVAL = 2.0  # seconds between STATUS= updates to systemd
# Seconds between two looks at the reference tables (cases, registers): one stat() per file;
# HTTP sources are polled on their own `poll` period however often they are asked.
REFERENCE_REFRESH = 1.0
STATE_MAX_AGE = timedelta(seconds=1)  # staleness allowed for the store-derived gauges
BATCH_PACE = 0.05  # seconds: at most one ingest step (one commit per source) this often


def build_channel(config: DaemonConfig) -> Channel:
    """The customer channel chosen by `notifications.channel` (notifications/wiring.py)."""
    return build_customer_channel(config.notifications)


@dataclass
class _Flags:
    stop: threading.Event
    reload: threading.Event
    wake: threading.Event


class Daemon:
    def __init__(
        self,
        config_path: Path,
        config: DaemonConfig,
        clock: Clock | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.notifier = notifier or SystemdNotifier()
        self.flags = _Flags(threading.Event(), threading.Event(), threading.Event())
        self.metrics = Metrics(version=__version__)
        self._metrics_server: MetricsServer | None = None
        self._api_server: ApiServer | None = None
        self._refresher: Refresher | None = None
        self._signals = 0
        self._events_since_status = 0
        self._status_at = 0.0
        self._last_events_at: dict[str, datetime] = {}  # per source, for stall detection
        self._stalled: set[str] = set()
        self.source_stalled = Gauge(
            "breachwatch_source_stalled",
            "1 when a source produced no access event for its stall_after time.",
            ["source"],
            registry=self.metrics.registry,
        )

    # ---- startup -----------------------------------------------------------------------
    def start(self) -> None:
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(config.state_dir, 0o700)
        self.db = Database(config.db_url)
        self.db.create_schema()
        self.pipeline = Pipeline(load_policy(config.policy))
        self.incidents = IncidentService(config)
        tune_gc()
        self.start_ingest()
        self.start_notifications()
        self.start_references()
        self.start_service()

    # The scaled-out worker (distributed/worker.py) is this daemon with other records: it
    # overrides the ingest hooks below (start_ingest, ingest_once, stop_ingest, use_pipeline,
    # reconcile_at_start) and shares the rest of the wiring.
    def start_ingest(self) -> None:
        """Tailed sources: detector state, one SourceIngest per source, the watcher."""
        config = self.config
        load_detector_state(self.db, self.pipeline)
        for source_config in config.sources:
            source_config.path.parent.mkdir(parents=True, exist_ok=True)
        self.sources = [
            SourceIngest(s, self.db, self.clock, config.flush_after) for s in config.sources
        ]
        for source in self.sources:
            self.metrics.init_source(source.name)
            self.source_stalled.labels(source=label_token(source.name)).set(0)
            self._last_events_at[source.name] = self.clock.now()
        for source in self.sources:
            for lost in source.tailer.missing_checkpoints():
                log.warning(
                    "checkpoint_file_missing",
                    source=source.name,
                    path=lost.path,
                    unread_from=lost.offset,
                )
        self.watcher = DirectoryWatcher([str(s.path) for s in config.sources], self.flags.wake)
        self.watcher.start()

    def start_notifications(self) -> None:
        """Customer channel, directory, outbox and deadline keeper (used by the scaled-out
        worker too, distributed/worker.py)."""
        config = self.config
        self.channel = build_channel(config)
        self.directory = build_directory(config.notifications, self.clock)
        self.outbox = OutboxWorker(
            self.db,
            self.channel,
            self.directory,
            config.notifications,
            self.clock,
            observe=self.metrics.record_notice,
            staff_channel=build_staff_channel(config.notifications),
        )
        self.deadlines = DeadlineKeeper(self.db, config, self.channel.name)

    def start_service(self) -> None:
        """The rest of the start-up, after ingest and notifications are wired."""
        config = self.config
        resumed = self.reconcile_at_start()
        self._start_scheduler()
        # Store-derived gauges are read at most once per STATE_MAX_AGE however often /metrics
        # is scraped: a scrape costs the ingest loop (GIL, store) almost nothing.
        self.metrics.attach(StateCollector(self.snapshot, self.clock, max_age=STATE_MAX_AGE))
        if config.metrics.enabled:
            self._metrics_server = serve_metrics(
                self.metrics, config.metrics.host, config.metrics.port
            )
        if config.api.enabled:
            self._api_server = serve_api(config, self.db, self.clock)
        log.info(
            "started",
            version=__version__,
            sources=len(self.sources),
            metrics_port=self._metrics_server.port if self._metrics_server else None,
            api_port=self._api_server.port if self._api_server else None,
            reconciled_notices=resumed,
        )
        self._status_at = self.clock.now().timestamp()
        self.notifier.ready(self.status_text(0.0))

    def start_references(self) -> None:
        """(Re)start the thread that reloads the current pipeline's reference tables when
        they change (detection/reference.py); the previous thread, if any, is stopped."""
        self.stop_references()
        self._refresher = Refresher(
            self.pipeline.reference_holders(),
            REFERENCE_REFRESH,
            self._on_reference,
        )
        self._refresher.start()

    def _on_reference(self, kind: str, detail: str) -> None:
        """Refresher report: each swap (info) and each new error (warning + metric; detection
        goes on with the last table that loaded, tests/test_faults.py)."""
        self.metrics.record_reference(kind)
        if kind == "reloaded":
            log.info("reference_reloaded", detail=detail)
        else:
            log.warning("reference_failed", detail=detail, note="last loaded data kept")

    def stop_references(self) -> None:
        if self._refresher is not None:
            self._refresher.stop()
            self._refresher = None

    def reconcile_at_start(self) -> int:
        """Notices a previous life left in `sending` (killed mid-send) are settled first."""
        return self.outbox.reconcile()

    def _start_scheduler(self) -> None:
        # Memory job store on purpose: the store is the truth and jobs are rebuilt from it
        # (PITFALLS: persisted APScheduler jobs are lost on kill -9 and deleted on misfire).
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
        )
        self.scheduler.add_job(
            self.run_deadlines,
            "interval",
            id="tick",
            seconds=self.config.tick_interval.total_seconds(),
            next_run_time=datetime.now(UTC),
        )
        self.scheduler.start()
        self.plan_wakeups()

    def plan_wakeups(self) -> None:
        """(Re)build one job per obligation at its next action time; ids are deterministic."""
        for job_id, when in self.deadlines.next_wakeups():
            self.scheduler.add_job(
                self.run_deadlines, "date", id=job_id, run_date=when, replace_existing=True
            )

    def run_deadlines(self) -> None:
        """Scheduler job: reminders, overdue marks, release and delivery of notices."""
        try:
            report = self.deadlines.tick(self.clock.now())
            if report.clock_moved_back:
                self.metrics.record_clock_backward_jump()
            delivered = self.outbox.deliver_due()
            if report.reminders or report.overdue or report.enqueued or delivered.sent:
                self.plan_wakeups()
        except Exception:  # a failed tick must not kill the scheduler thread; next tick retries
            log.exception("deadline_tick_failed")

    # ---- main loop ---------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(128 + signum)  # second signal: the operator means it
        self.flags.stop.set()
        self.flags.wake.set()

    def _on_reload_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.flags.reload.set()
        self.flags.wake.set()

    def run_forever(self) -> None:
        interval = self.config.poll_interval.total_seconds()
        watchdog = self.notifier.watchdog_interval()
        last_ping = 0.0
        step_started = 0.0
        while not self.flags.stop.is_set():
            if self.flags.reload.is_set():
                self.flags.reload.clear()
                self.reload()
            # A step costs a transaction and a detector-state snapshot whatever its size; run
            # at every wake-up of a writer flushing every few ms, that was hundreds of batches
            # of a few lines a second, most of the daemon's CPU at 5,000 lines/s. Pacing
            # (monotonic: not the injected clock) gathers them, adding at most BATCH_PACE.
            pause = step_started + BATCH_PACE - time.monotonic()
            if pause > 0 and self.flags.stop.wait(pause):
                break
            step_started = time.monotonic()
            busy = self.ingest_once()
            now = self.clock.now().timestamp()
            if watchdog and now - last_ping >= watchdog and self.healthy():
                self.notifier.watchdog()
                last_ping = now
            if now - self._status_at >= STATUS_INTERVAL:
                self.check_stalled()
                self.notifier.status(self.status_text(now - self._status_at))
                self._events_since_status = 0
                self._status_at = now
            if not busy:
                self.flags.wake.wait(interval)
                self.flags.wake.clear()

    def ingest_once(self) -> bool:
        busy = False
        for source in self.sources:
            try:
                report = source.step(self.pipeline, self.incidents, self.config.batch_lines)
            except BreachwatchError:
                raise
            except OSError as exc:
                log.error("source_read_failed", source=source.name, error=str(exc))
                continue
            except SQLAlchemyError as exc:
                self._recover_from_store_error(source, exc)
                continue
            if report is not None:
                busy = busy or report.lines > 0
                self._after_commit(report)
        return busy

    def _after_commit(self, report: IngestReport) -> None:
        m = self.metrics
        m.record_read(report.source, report.lines, report.bytes)
        m.record_events(report.source, report.batch.events, report.batch.newest_event)
        self._events_since_status += report.batch.events
        if report.batch.events:
            self._last_events_at[report.source] = self.clock.now()
        for _record, failure in report.batch.failures:
            m.record_parse_error(report.source, failure.reason)
        for finding in report.recorded.new_findings:
            m.record_finding(finding.rule, finding.severity.value)
        for incident in report.recorded.opened:
            m.record_incident_opened(incident.severity)
            log.warning("incident_opened", incident=incident.ref, severity=incident.severity)
        if report.batch.failures:
            log.warning(
                "records_quarantined", source=report.source, count=len(report.batch.failures)
            )
        if report.recorded.new_obligations:
            self.plan_wakeups()

    def _recover_from_store_error(self, source: SourceIngest, exc: SQLAlchemyError) -> None:
        """The batch was rolled back (store locked, disk full): forget what was read in memory
        and resume from the committed offsets and detector state, so no line is lost."""
        log.error(
            "store_write_failed",
            source=source.name,
            error=(str(getattr(exc, "orig", None) or exc).splitlines() or ["?"])[0],
            note="batch rolled back; re-reading from the last committed offset",
        )
        index = self.sources.index(source)
        try:
            fresh = SourceIngest(source.config, self.db, self.clock, self.config.flush_after)
            load_detector_state(self.db, self.pipeline)
        except SQLAlchemyError:
            self.flags.wake.wait(1.0)  # store still unavailable: keep the old one, retry later
            return
        source.close()
        self.sources[index] = fresh
        self.flags.wake.wait(1.0)  # do not spin on a store that refuses writes

    def check_stalled(self) -> None:
        """A source with no event for its ``stall_after`` is flagged (metric + log), once."""
        now = self.clock.now()
        for source in self.sources:
            name = source.name
            quiet = now - self._last_events_at.get(name, now)
            stalled = quiet >= source.config.stall_after
            if stalled and name not in self._stalled:
                self._stalled.add(name)
                log.warning(
                    "source_stalled", source=name, quiet_seconds=round(quiet.total_seconds())
                )
            elif not stalled and name in self._stalled:
                self._stalled.discard(name)
                log.info("source_resumed", source=name)
            self.source_stalled.labels(source=label_token(name)).set(1 if stalled else 0)

    def status_text(self, elapsed: float) -> str:
        rate = self._events_since_status / elapsed if elapsed > 0 else 0.0
        try:
            with self.db.transaction() as session:
                open_incidents = session.scalar(
                    select(func.count())
                    .select_from(Incident)
                    .where(Incident.state.notin_(("closed", "dismissed")))
                )
            incidents = f"{open_incidents or 0} open incidents"
        except SQLAlchemyError:
            incidents = "store unreadable"
        stalled = f", stalled: {','.join(sorted(self._stalled))}" if self._stalled else ""
        return f"{rate:.1f} events/s, {incidents}{stalled}"

    def healthy(self) -> bool:
        return self.watcher.is_alive() and self.scheduler.running

    def reload(self) -> None:
        """SIGHUP: a new policy; an invalid file keeps the old one (error log + metric)."""
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
            pipeline = Pipeline(load_policy(config.policy))
        except BreachwatchError as exc:
            self.metrics.record_reload_failure()
            log.error("reload_refused", error=str(exc))
            self.notifier.ready()
            return
        self.use_pipeline(pipeline)
        self.start_references()  # the new policy's tables
        self.notifier.ready()
        log.info("reloaded", note="policy reloaded; source changes need a restart")

    def use_pipeline(self, pipeline: Pipeline) -> None:
        """A reloaded policy's pipeline takes over the detector state of the current one."""
        pipeline.restore(self.pipeline.snapshot())
        self.pipeline = pipeline

    # ---- metrics -----------------------------------------------------------------------
    def snapshot(self) -> StateSnapshot:
        with self.db.transaction() as session:
            incidents = {
                (s, v): n
                for s, v, n in session.execute(
                    select(Incident.state, Incident.severity, func.count()).group_by(
                        Incident.state, Incident.severity
                    )
                )
            }
            pending: dict[str, int] = {}
            overdue: dict[str, int] = {}
            nearest = None
            for regime, due_at, overdue_since in session.execute(
                select(Obligation.regime, Obligation.due_at, Obligation.overdue_since).where(
                    Obligation.state == "open"
                )
            ):
                pending[regime] = pending.get(regime, 0) + 1
                if overdue_since is not None:
                    overdue[regime] = overdue.get(regime, 0) + 1
                nearest = due_at if nearest is None else min(nearest, due_at)
            outbox = {
                state: count
                for state, count in session.execute(
                    select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state)
                )
            }
            quarantined = session.scalar(select(func.count()).select_from(QuarantinedRecord))
        lags = [
            SourceLag(s.name, len(s.tailer.tracked()), s.lag_bytes(), s.newest_event)
            for s in self.sources
        ]
        return StateSnapshot(
            open_incidents=incidents,
            obligations_pending=pending,
            obligations_overdue=overdue,
            nearest_deadline=nearest,
            outbox=outbox,
            quarantined_records=quarantined or 0,
            sources=lags,
        )

    # ---- shutdown ----------------------------------------------------------------------
    def shutdown(self) -> None:
        self.notifier.stopping()
        self.notifier.status("stopping")
        if self._api_server is not None:
            self._api_server.shutdown()  # first: no change is accepted while stopping
        self.scheduler.shutdown(wait=True)
        self.stop_references()
        self.stop_ingest()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self.db.dispose()
        log.info("stopped")

    def stop_ingest(self) -> None:
        self.watcher.stop()
        for source in self.sources:
            source.close()


def run_daemon(config_path: Path, **kwargs: Any) -> int:
    config = load_config(config_path)
    daemon_class: type[Daemon] = Daemon
    if config.mode == "jetstream":  # scaled out: records from the stream (breachwatch/distributed)
        from breachwatch.distributed.worker import DistributedDaemon

        daemon_class = DistributedDaemon
    daemon = daemon_class(config_path, config, **kwargs)
    daemon.install_signal_handlers()
    daemon.start()
    try:
        daemon.run_forever()
    finally:
        daemon.shutdown()
    return 0
