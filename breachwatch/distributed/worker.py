"""`breachwatch run` with ``mode: jetstream``: a worker of the record stream.

Each worker owns some partitions (leases, partitions.py). For each one it keeps a Pipeline
whose detector state is the partition's, fetches records from the partition's durable
consumer and commits, in ONE transaction: the lease check (fencing), the findings, incidents
and quarantined records, the partition's detector state and the last stream sequence. Only
then does it ack. A redelivered message (crash between commit and ack) has a sequence at or
below the committed one and is skipped; a new owner loads the state and starts the consumer
right after that sequence. The deadline scheduler runs only on the leader (leader.py).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, cast

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.exc import SQLAlchemyError

from breachwatch.clock import Clock
from breachwatch.config import DaemonConfig, SourceConfig
from breachwatch.daemon import REFERENCE_REFRESH, Daemon
from breachwatch.detection.policy import Policy
from breachwatch.detection.reference import Holder, Refresher
from breachwatch.distributed.jetstream_source import (
    AsyncBridge,
    PartitionConsumer,
    StreamRecord,
    connect,
    ensure_stream,
)
from breachwatch.distributed.leader import LeaderLock
from breachwatch.distributed.partitions import (
    Lease,
    LeaseLostError,
    LeaseTable,
    create_tables,
    fence,
    load_state,
    save_state,
)
from breachwatch.errors import BreachwatchError, ConfigError
from breachwatch.incidents.service import IncidentService
from breachwatch.ingest import IngestReport, process_files, quarantine
from breachwatch.parsers.base import LogFormat
from breachwatch.parsers.registry import build_format
from breachwatch.pipeline import BatchResult, Pipeline
from breachwatch.store.database import Database

log = structlog.get_logger("breachwatch.worker")

FETCH_WAIT = 0.05  # seconds a fetch on an idle partition waits


@dataclass
class _Owned:
    lease: Lease
    pipeline: Pipeline
    consumer: PartitionConsumer
    last_seq: int


@dataclass
class StepReport:
    reports: list[IngestReport] = field(default_factory=list)
    skipped: int = 0  # redelivered messages at or below the committed sequence
    busy: bool = False


class StreamWorker:
    def __init__(
        self,
        config: DaemonConfig,
        db: Database,
        incidents: IncidentService,
        policy: Policy,
        clock: Clock,
    ) -> None:
        self.config = config
        self.settings = config.stream
        self.db = db
        self.incidents = incidents
        self.policy = policy
        self.clock = clock
        self.worker_id = self.settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.leases = LeaseTable(
            db.engine, self.worker_id, self.settings.partitions, self.settings.lease_ttl
        )
        self.sources: dict[str, SourceConfig] = {s.name: s for s in config.sources}
        self._formats: dict[str, LogFormat] = {}
        self.owned: dict[int, _Owned] = {}
        self._rebalanced_at = 0.0  # next rebalance gives it back as a stray lease
        self.bridge = AsyncBridge()
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        create_tables(self.db.engine, self.settings.partitions)
        self._nc = self.bridge.call(connect(self.settings, f"breachwatch-{self.worker_id}"), 30)
        self._js = self._nc.jetstream()
        self.bridge.call(ensure_stream(self._js, self.settings), 30)
        log.info("worker_started", worker=self.worker_id, partitions=self.settings.partitions)

    def close(self, release: bool = True) -> None:
        for owned in list(self.owned.values()):
            self._stop_consumer(owned)
        self.owned.clear()
        if release:
            with contextlib.suppress(SQLAlchemyError):
                self.leases.release_all()
        if self._nc is not None:
            with contextlib.suppress(Exception):  # shutting down anyway
                self.bridge.call(self._nc.close(), 5)
        self.bridge.close()

    # ---- leases ------------------------------------------------------------------------
    def rebalance(self, force: bool = False) -> None:
        interval = self.settings.lease_ttl.total_seconds() / 3
        if not force and time.monotonic() - self._rebalanced_at < interval:
            return
        self._rebalanced_at = time.monotonic()
        changes = self.leases.rebalance({p: o.lease.epoch for p, o in self.owned.items()})
        for partition in [*changes.lost, *changes.released]:
            owned = self.owned.pop(partition, None)
            if owned is not None:
                self._stop_consumer(owned)
                log.warning(
                    "partition_given_up",
                    partition=partition,
                    reason="lost" if partition in changes.lost else "rebalance",
                )
        for lease in changes.acquired:
            self._take(lease)

    def _take(self, lease: Lease) -> None:
        with self.db.transaction() as session:
            last_seq, detector = load_state(session, lease.partition)
        pipeline = Pipeline(self.policy)
        if detector:
            pipeline.restore(detector)
        assert self._js is not None
        consumer = PartitionConsumer(self._js, self.settings, lease.partition)
        self.bridge.call(consumer.start(last_seq), 30)
        self.owned[lease.partition] = _Owned(lease, pipeline, consumer, last_seq)
        log.info("partition_taken", partition=lease.partition, epoch=lease.epoch, after=last_seq)

    def _stop_consumer(self, owned: _Owned) -> None:
        with contextlib.suppress(Exception):  # a dead connection has nothing to stop
            self.bridge.call(owned.consumer.stop(), 5)

    def _reset(self, partition: int) -> None:
        """Forget what was fetched or computed in memory; resume from the store."""
        owned = self.owned.pop(partition, None)
        if owned is None:
            return
        self._stop_consumer(owned)
        try:
            self._take(owned.lease)
        except (SQLAlchemyError, Exception) as exc:  # retried at next rebalance
            log.error("partition_resume_failed", partition=partition, error=str(exc))
            self._rebalanced_at = 0.0  # next rebalance gives it back as a stray lease

    def reload_policy(self, policy: Policy) -> None:
        self.policy = policy
        for owned in self.owned.values():
            pipeline = Pipeline(policy)
            pipeline.restore(owned.pipeline.snapshot())
            owned.pipeline = pipeline

    # ---- processing --------------------------------------------------------------------
    def step(self) -> StepReport:
        report = StepReport()
        self.rebalance()
        wait = FETCH_WAIT if self.owned else 0.0
        if not self.owned:
            time.sleep(0.2)
        for partition in sorted(self.owned):
            owned = self.owned.get(partition)
            if owned is None:
                continue
            msgs = self.bridge.call(
                owned.consumer.fetch(self.settings.fetch_batch, wait), wait + 30
            )
            if not msgs:
                continue
            report.busy = True
            try:
                done = self._process(owned, msgs, report)
            except LeaseLostError as exc:
                log.warning("partition_fenced", partition=partition, error=str(exc))
                self._stop_consumer(owned)
                self.owned.pop(partition, None)
                continue
            except SQLAlchemyError as exc:
                log.error(
                    "store_write_failed",
                    partition=partition,
                    error=(str(getattr(exc, "orig", None) or exc).splitlines() or ["?"])[0],
                    note="batch rolled back; resuming from the committed sequence",
                )
                self._reset(partition)
                continue
            if done is not None:
                report.reports.append(done)
            try:
                self.bridge.call(msgs[-1].ack(), 10)  # AckPolicy.ALL: acks the whole batch
            except Exception as exc:  # committed already; a redelivery is skipped
                log.warning("ack_failed", partition=partition, error=str(exc))
            self.rebalance()
        return report

    def _process(self, owned: _Owned, msgs: list[Any], report: StepReport) -> IngestReport | None:
        now = self.clock.now()
        fresh: list[StreamRecord] = []
        last = owned.last_seq
        for msg in msgs:
            seq = int(msg.metadata.sequence.stream)
            if seq <= last:
                report.skipped += 1
                continue
            last = seq
            fresh.append(StreamRecord.decode(msg.data))
        if not fresh:
            return None
        before = owned.pipeline.snapshot()
        out = IngestReport(f"partition-{owned.lease.partition}")
        try:
            out.batch = self._run_pipeline(owned.pipeline, fresh)
            out.lines = sum(len(r.record.lines) for r in fresh)
            out.bytes = sum(r.record.end_offset - r.record.offset for r in fresh)
            with self.db.transaction() as session:
                fence(session, self.worker_id, owned.lease)
                out.recorded = self.incidents.record(session, out.batch.findings, now)
                sources = {id(r.record): r.source for r in fresh}
                quarantine(
                    session,
                    ((sources[id(r)], r, f) for r, f in out.batch.failures),
                    now,
                )
                save_state(session, owned.lease.partition, last, owned.pipeline.snapshot())
        except BaseException:
            owned.pipeline.restore(before)  # keep memory equal to the store
            raise
        owned.last_seq = last
        return out

    def _format(self, source: str, name: str) -> LogFormat:
        fmt = self._formats.get(source)
        if fmt is None:
            config = self.sources.get(source)
            if config is None:
                raise ConfigError(
                    "<config>", "sources", f"no source {source!r} for streamed records"
                )
            fmt = build_format(name, config.options)
            self._formats[source] = fmt
        return fmt

    def _run_pipeline(self, pipeline: Pipeline, records: list[StreamRecord]) -> BatchResult:
        """As the daemon's ingest step (ingest.process_files): per file, in stream order."""
        return process_files(
            pipeline,
            (
                (key, self._format(source, fmt_name), source, [r.record for r in group])
                for (source, fmt_name, key), group in groupby(
                    records, key=lambda r: (r.source, r.format, r.file_key)
                )
            ),
        )


class PartitionReferences:
    """The reference tables (cases, registers) of every owned partition's pipeline, as one
    holder for the daemon's Refresher thread: partitions come and go with the leases, so the
    set is read at each round. Refreshing only swaps indexes, as in the single daemon."""

    def __init__(self, pipelines: Callable[[], Iterable[Pipeline]]) -> None:
        self._pipelines = pipelines

    def _holders(self) -> list[Holder[Any]]:
        return [h for p in self._pipelines() for h in p.reference_holders()]

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(sorted({s for h in self._holders() for s in getattr(h, "sources", ())}))

    @property
    def errors(self) -> list[str]:
        return sorted({e for h in self._holders() for e in h.errors})

    def refresh(self) -> bool:
        changed = False
        for holder in self._holders():
            changed = holder.refresh() or changed
        return changed


class DistributedDaemon(Daemon):
    """The daemon (daemon.py: same start-up, notifications, scheduler, metrics, API and
    shutdown) with the stream worker in place of the tailed sources, and the deadline
    scheduler gated by the leader lock. Only the ingest hooks differ: the distributed mode
    is configuration (``mode: jetstream``), not a second daemon."""

    def start_ingest(self) -> None:
        # no tailed sources and no global detector state: each partition's state is loaded
        # by whichever worker takes the partition (StreamWorker._take)
        self.sources = []
        self.worker = StreamWorker(
            self.config, self.db, self.incidents, self.pipeline.policy, self.clock
        )
        self.worker.start()
        self.leader = LeaderLock(self.config.db_url)

    def reconcile_at_start(self) -> int:
        return 0  # done by whoever becomes leader, when it does (run_deadlines)

    def start_references(self) -> None:
        # the tables the partitions' pipelines read, not those of self.pipeline (unused here)
        self.stop_references()
        if self.pipeline.reference_holders():
            # Refresher only calls refresh() and reads errors (and sources): what this offers
            worker = self.worker
            # a copy of the owned partitions: the ingest thread changes the dict meanwhile
            tables = PartitionReferences(lambda: [o.pipeline for o in list(worker.owned.values())])
            holders = [cast("Holder[Any]", tables)]
            self._refresher = Refresher(holders, REFERENCE_REFRESH, self._on_reference)
            self._refresher.start()

    def run_deadlines(self) -> None:
        try:
            leader, became = self.leader.ensure()
        except Exception:  # not leader this tick; the next one tries again
            log.exception("leader_check_failed")
            return
        if not leader:
            return
        if became:
            try:
                resumed = self.outbox.reconcile()  # the previous leader may have died mid-send
                log.info("leader_started", reconciled_notices=resumed)
            except Exception:
                log.exception("reconcile_failed")
                return
            self.plan_wakeups()  # the dead leader's scheduled wake-ups died with it
        super().run_deadlines()

    def plan_wakeups(self) -> None:
        if self.leader.held:
            super().plan_wakeups()

    def ingest_once(self) -> bool:
        try:
            step = self.worker.step()
        except BreachwatchError:
            raise
        except SQLAlchemyError as exc:
            log.error("lease_update_failed", error=str(exc).splitlines()[0])
            self.flags.wake.wait(1.0)
            return False
        except Exception as exc:  # NATS away: keep trying, leases will tell
            log.error("stream_step_failed", error=str(exc) or type(exc).__name__)
            self.flags.wake.wait(1.0)
            return False
        for report in step.reports:
            self._after_commit(report)
        return step.busy

    def healthy(self) -> bool:
        return bool(self.scheduler.running)

    def use_pipeline(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.worker.reload_policy(pipeline.policy)  # each partition keeps its own state

    def stop_ingest(self) -> None:
        # after the scheduler stopped: no tick runs once the leader lock is given back
        self.worker.close()
        self.leader.release()
