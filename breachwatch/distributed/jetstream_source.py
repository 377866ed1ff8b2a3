"""The record stream on NATS JetStream: the wire format of one record, the stream itself, an
asyncio bridge for the synchronous daemon, and one partition's durable pull consumer.

One message = one framed record (all its lines, and what the framer annotated it with: the
auditd directory handle), so a worker parses exactly what a local daemon would have parsed,
with the same file identity and offsets in the evidence (finding keys are
``rule|store|file@offset``: equal to a single daemon's on the same file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from breachwatch.config import StreamSettings
from breachwatch.parsers.auditd import HandleRecord
from breachwatch.parsers.base import Line, Record

T = TypeVar("T")
MSG_ID = "Nats-Msg-Id"


@dataclass(frozen=True, slots=True)
class StreamRecord:
    source: str
    format: str
    file_key: str  # FileIdentity.key (device:inode) of the file it was read from
    path: str
    record: Record

    def msg_id(self) -> str:
        """Deterministic: a re-publish after a shipper crash is dropped by JetStream. The end
        offset is part of it: a record framed again with other lines after a restart (one
        emitted early by the idle flush, then read whole) is another record, not a duplicate
        to drop in favour of the partial one."""
        record = self.record
        return f"{self.source}|{self.file_key}|{record.offset}-{record.end_offset}"

    def encode(self) -> bytes:
        lines = [
            [
                ln.text,
                ln.offset,
                ln.end_offset,
                ln.line_no,
                int(ln.truncated),
                int(ln.decode_errors),
            ]
            for ln in self.record.lines
        ]
        body: dict[str, Any] = {
            "s": self.source,
            "f": self.format,
            "k": self.file_key,
            "p": self.path,
            "l": lines,
        }
        if isinstance(self.record, HandleRecord) and self.record.handle:
            # what the auditd framer knew from earlier records of the same process (the
            # directory a descriptor stands for): the worker has no such history, and its
            # parse of this record alone would leave a relative name relative
            body["h"] = self.record.handle
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> StreamRecord:
        body = json.loads(data)
        path = str(body["p"])
        lines = tuple(
            Line(str(t), int(o), int(e), int(n), bool(tr), bool(bad))
            for t, o, e, n, tr, bad in body["l"]
        )
        handle = body.get("h")
        record = HandleRecord(path, lines, str(handle)) if handle else Record(path, lines)
        return cls(str(body["s"]), str(body["f"]), str(body["k"]), path, record)


class AsyncBridge:
    """An asyncio loop in a daemon thread; synchronous code runs coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nats", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


async def connect(settings: StreamSettings, name: str) -> NATS:
    """Reconnects forever: while NATS is away, callers time out and retry."""
    nc: NATS = await nats.connect(
        settings.url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        allow_reconnect=True,
    )
    return nc


def stream_config(settings: StreamSettings) -> StreamConfig:
    return StreamConfig(
        name=settings.name,
        subjects=[f"{settings.subject_prefix}.*"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.max_age.total_seconds(),
        duplicate_window=settings.duplicate_window.total_seconds(),
    )


async def ensure_stream(js: JetStreamContext, settings: StreamSettings) -> None:
    config = stream_config(settings)
    try:
        await js.stream_info(settings.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    await js.update_stream(config)


def consumer_name(settings: StreamSettings, partition: int) -> str:
    return f"{settings.name}-p{partition}"


class PartitionConsumer:
    """The durable pull consumer of one partition, (re)positioned by its owner at the stream
    sequence after the last one committed in the store: the store, not the consumer's ack
    floor, is the truth, so a takeover does not wait for the dead owner's ack timeout."""

    def __init__(self, js: JetStreamContext, settings: StreamSettings, partition: int) -> None:
        self._js = js
        self._settings = settings
        self.partition = partition
        self.name = consumer_name(settings, partition)
        self._sub: JetStreamContext.PullSubscription | None = None

    async def start(self, after_seq: int) -> None:
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(self._settings.name, self.name)
        config = ConsumerConfig(
            durable_name=self.name,
            filter_subject=f"{self._settings.subject_prefix}.{self.partition}",
            ack_policy=AckPolicy.ALL,  # one ack per committed batch
            ack_wait=60,
            max_ack_pending=-1,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after_seq else DeliverPolicy.ALL,
            opt_start_seq=after_seq + 1 if after_seq else None,
        )
        await self._js.add_consumer(self._settings.name, config)
        self._sub = await self._js.pull_subscribe_bind(
            durable=self.name, stream=self._settings.name
        )

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        if self._sub is None:
            return []
        try:
            return list(await self._sub.fetch(batch, timeout=timeout))
        except (TimeoutError, nats.errors.TimeoutError):
            return []

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):  # the connection may be gone; nothing to keep
                await sub.unsubscribe()
