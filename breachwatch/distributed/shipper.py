"""`breachwatch ship`: tail the configured logs, frame records, publish them to JetStream.

Exactly-once file tracking, like the daemon's: the checkpoints live in a small SQLite store of
the shipper's own and are committed only after JetStream acknowledged every record before
them. A crash between the acks and the commit re-publishes those records with the same
``Nats-Msg-Id`` (source, file identity, offset): JetStream's duplicate window drops them.
While NATS is unreachable nothing is committed: the log files are the buffer, and the shipper
publishes the same batch again until it is acknowledged, then catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.exc import SQLAlchemyError

from breachwatch.clock import Clock, SystemClock
from breachwatch.config import DaemonConfig, SourceConfig, StreamSettings
from breachwatch.detection.need_to_know import PolicyView
from breachwatch.detection.policy import StaffMember, load_policy
from breachwatch.distributed.jetstream_source import StreamRecord, connect, ensure_stream
from breachwatch.distributed.partitions import partition_of, subject
from breachwatch.errors import ParseFailure
from breachwatch.events import Action
from breachwatch.ingest import SourceIngest
from breachwatch.parsers.base import Record
from breachwatch.store.database import Database
from breachwatch.store.schema import Base, Checkpoint

log = structlog.get_logger("breachwatch.ship")

ACK_TIMEOUT = 10.0  # seconds to wait for the acks of one batch before publishing it again


class PartitionKeys:
    """Which partition a record goes to: the person key of its actor (see partitions.py)."""

    def __init__(self, view: PolicyView, partitions: int) -> None:
        self._view = view
        self._partitions = partitions
        self._cache: dict[str, int] = {}

    def person_key(self, actor: str, person: str | None) -> str:
        resolved = self._view.resolve_actor(actor)
        if isinstance(resolved, StaffMember):
            return f"person:{resolved.person}"
        return f"person:{person}" if person else f"actor:{actor}"

    def of(self, record: Record, parsed: object, fallback: str) -> int:
        if isinstance(parsed, list) and parsed:
            event = parsed[0]
            if (
                event.action is Action.LOGIN_FAILED
                and self._view.resolve_actor(event.actor) is None
            ):
                # auth.brute_force counts failed logins per client address across account
                # names: guessed (unknown) names meet on the address's worker; a known
                # account's failure stays with its person (README "Scaling out", limits)
                key = f"client:{event.client or 'unknown address'}"
            else:
                key = self.person_key(event.actor, event.person)
        else:  # not an access (checkpoint lines) or a parse failure: any worker will do
            key = fallback
        found = self._cache.get(key)
        if found is None:
            found = partition_of(key, self._partitions)
            if len(self._cache) < 100_000:
                self._cache[key] = found
        return found


@dataclass
class ShipBatch:
    source: str
    lines: int = 0
    records: list[tuple[int, StreamRecord]] = field(default_factory=list)  # (partition, rec)
    touched: set[str] = field(default_factory=set)
    finished: list[str] = field(default_factory=list)


class ShipSource(SourceIngest):
    """One source: the daemon's tailer, framing and checkpoint rules (ingest.SourceIngest),
    with publishing in place of the pipeline."""

    def collect(self, max_lines: int, keys: PartitionKeys) -> ShipBatch | None:
        framed = self.frame(max_lines, self._clock.now())
        batch = ShipBatch(self.name, framed.lines, touched=framed.touched)
        batch.finished = self.finished_files()
        if not batch.touched and not batch.finished:
            return None
        fmt, name = self.format, self.name
        for key, record in framed.records:
            parsed = fmt.parse(record, name)  # only for the actor: the worker parses again
            partition = keys.of(
                record,
                parsed if not isinstance(parsed, ParseFailure) else None,
                f"file:{name}|{key}",
            )
            batch.records.append(
                (partition, StreamRecord(name, fmt.name, key, record.path, record))
            )
        return batch

    def commit(self, batch: ShipBatch, now: datetime) -> None:
        """After JetStream acknowledged the whole batch: the positions move past it."""
        with self._db.transaction() as session:
            self.save_positions(session, batch.touched, batch.finished, now)
        self.forget(batch.finished)


def shipper_db_url(config: DaemonConfig) -> str:
    path = config.stream.shipper_db or Path("shipper.db")
    if not path.is_absolute():
        path = config.state_dir / path
    return f"sqlite:///{path}"


class Shipper:
    def __init__(self, config: DaemonConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.settings: StreamSettings = config.stream
        self.clock = clock or SystemClock()
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = Database(shipper_db_url(config))
        Base.metadata.create_all(self.db.engine, tables=[Checkpoint.__table__])  # type: ignore[list-item]
        self.keys = PartitionKeys(PolicyView(load_policy(config.policy)), self.settings.partitions)
        self.sources = [self._source(s) for s in config.sources]
        self.stop = asyncio.Event()
        self.published = 0
        self.duplicates = 0

    def _source(self, source: SourceConfig) -> ShipSource:
        return ShipSource(source, self.db, self.clock, self.config.flush_after)

    async def run(self) -> None:
        nc = await self._connect()
        js = nc.jetstream(publish_async_max_pending=20_000)
        try:
            while True:
                try:
                    await ensure_stream(js, self.settings)
                    break
                except Exception as exc:  # NATS not ready yet: wait, retry
                    log.warning("stream_unavailable", error=str(exc) or type(exc).__name__)
                    await self._sleep(1.0)
                    if self.stop.is_set():
                        return
            log.info("shipping", sources=len(self.sources), partitions=self.settings.partitions)
            poll = self.config.poll_interval.total_seconds()
            while not self.stop.is_set():
                busy = False
                for source in self.sources:
                    try:
                        busy = await self._ship_once(js, source) or busy
                    except SQLAlchemyError as exc:
                        log.error("checkpoint_write_failed", source=source.name, error=str(exc))
                        self._reopen(source)
                    except OSError as exc:
                        log.error("source_read_failed", source=source.name, error=str(exc))
                if not busy:
                    await self._sleep(poll)
        finally:
            try:
                await asyncio.wait_for(nc.drain(), 5)
            except Exception:  # closing anyway
                await nc.close()
            for source in self.sources:
                source.close()
            self.db.dispose()

    async def _connect(self) -> NATS:
        while True:
            try:
                return await connect(self.settings, f"breachwatch-ship@{socket.gethostname()}")
            except Exception as exc:  # NATS down at start: the logs wait
                log.warning("nats_unavailable", error=str(exc) or type(exc).__name__)
                await self._sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    def _reopen(self, source: ShipSource) -> None:
        index = self.sources.index(source)
        source.close()
        self.sources[index] = self._source(source.config)

    async def _ship_once(self, js: JetStreamContext, source: ShipSource) -> bool:
        batch = source.collect(self.config.batch_lines, self.keys)
        if batch is None:
            return False
        while not await self._publish(js, batch):
            if self.stop.is_set():
                # nothing committed: the next start reads and publishes these records again
                return False
            await self._sleep(1.0)
        source.commit(batch, self.clock.now())
        return batch.lines > 0

    async def _publish(self, js: JetStreamContext, batch: ShipBatch) -> bool:
        """Publish the batch in order and wait for every ack. False: try again (same ids)."""
        prefix = self.settings.subject_prefix
        futures: list[asyncio.Future[Any]] = []
        try:
            for partition, record in batch.records:
                futures.append(
                    await js.publish_async(
                        subject(prefix, partition),
                        record.encode(),
                        wait_stall=ACK_TIMEOUT,
                        headers={"Nats-Msg-Id": record.msg_id()},
                    )
                )
            acks = await asyncio.wait_for(asyncio.gather(*futures), ACK_TIMEOUT)
        except Exception as exc:  # NATS away, stalled or refusing: retry
            for future in futures:
                future.cancel()  # frees its slot in the client's pending-publish budget
            log.warning(
                "publish_failed",
                source=batch.source,
                records=len(batch.records),
                error=str(exc) or type(exc).__name__,
                note="nothing committed; publishing the same records again",
            )
            return False
        self.published += len(acks)
        self.duplicates += sum(1 for ack in acks if getattr(ack, "duplicate", False))
        return True


def run_shipper(config: DaemonConfig) -> int:
    shipper = Shipper(config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, shipper.stop.set)
        started = time.monotonic()
        await shipper.run()
        log.info(
            "stopped",
            published=shipper.published,
            duplicates=shipper.duplicates,
            seconds=round(time.monotonic() - started, 1),
            pid=os.getpid(),
        )

    asyncio.run(main())
    return 0
