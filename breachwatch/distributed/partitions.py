"""Partitions of the record stream, and who owns them.

A record goes to the partition of its *person key* (the staff member the account belongs to,
else the account itself): everything one person does reaches one worker, in order, which is
what the per-person detector windows and the per-actor incident correlation need.

Ownership is a lease row per partition in the shared PostgreSQL store (owner, epoch,
expires_at, all in the database's own clock). The epoch is a fencing token: every commit of a
worker locks its lease row and checks that owner and epoch are still its own, in the same
transaction as the findings, the partition's detector state and the last stream sequence. A
worker that lost its lease (paused, partitioned away) can therefore never commit again.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    text,
)
from sqlalchemy.orm import Session

from breachwatch.store.locks import lock_key

# A metadata of its own: these tables belong to the distributed mode, not to the store's
# migrations; they are created (if missing) by the workers and the benchmark.
metadata = MetaData()

partition_leases = Table(
    "stream_partition_leases",
    metadata,
    Column("partition", Integer, primary_key=True),
    Column("owner", String(128), nullable=True),
    Column("epoch", BigInteger, nullable=False, default=0),
    Column("expires_at", DateTime(timezone=True), nullable=True),
)

partition_state = Table(
    "stream_partition_state",
    metadata,
    Column("partition", Integer, primary_key=True),
    Column("last_seq", BigInteger, nullable=False, default=0),  # JetStream stream sequence
    Column("detector", JSON, nullable=False),  # Pipeline.snapshot() of this partition
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

stream_workers = Table(
    "stream_workers",
    metadata,
    Column("worker", String(128), primary_key=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
)


def partition_of(key: str, partitions: int) -> int:
    """Stable across processes, hosts and Python versions (no ``hash()``: it is salted)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def subject(prefix: str, partition: int) -> str:
    return f"{prefix}.{partition}"


def create_tables(engine: Engine, partitions: int) -> None:
    with engine.begin() as conn:
        # workers starting together on an empty store: one creates, the others wait and see
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("stream_tables")})
        metadata.create_all(conn)
        conn.execute(
            text(
                "INSERT INTO stream_partition_leases (partition, owner, epoch, expires_at) "
                "SELECT g, NULL, 0, NULL FROM generate_series(0, :n - 1) AS g "
                "ON CONFLICT (partition) DO NOTHING"
            ),
            {"n": partitions},
        )


@dataclass(frozen=True, slots=True)
class Lease:
    partition: int
    epoch: int


@dataclass
class LeaseChanges:
    kept: list[Lease]
    lost: list[int]
    acquired: list[Lease]
    released: list[int]
    live_workers: int


class LeaseLostError(RuntimeError):
    """The partition now belongs to someone else: whatever was processed is discarded."""


class LeaseTable:
    """One worker's view of the lease table. All times are the database's ``now()``."""

    def __init__(self, engine: Engine, worker: str, partitions: int, ttl: timedelta) -> None:
        self._engine = engine
        self.worker = worker
        self.partitions = partitions
        self._ttl = f"{ttl.total_seconds()} seconds"

    def rebalance(self, held: dict[int, int]) -> LeaseChanges:
        """Heartbeat, renew what is held, give back what exceeds a fair share, take free or
        expired partitions up to it. ``held``: partition → epoch. One short transaction."""
        with self._engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO stream_workers (worker, heartbeat_at) VALUES (:w, now()) "
                    "ON CONFLICT (worker) DO UPDATE SET heartbeat_at = now()"
                ),
                {"w": self.worker},
            )
            live = int(
                conn.scalar(
                    text(
                        "SELECT count(*) FROM stream_workers "
                        "WHERE heartbeat_at > now() - CAST(:ttl AS interval)"
                    ),
                    {"ttl": self._ttl},
                )
                or 1
            )
            renewed = {
                int(p): int(e)
                for p, e in conn.execute(
                    text(
                        "UPDATE stream_partition_leases "
                        "SET expires_at = now() + CAST(:ttl AS interval) "
                        "WHERE owner = :w AND expires_at > now() RETURNING partition, epoch"
                    ),
                    {"w": self.worker, "ttl": self._ttl},
                )
            }
            kept = [Lease(p, e) for p, e in sorted(renewed.items()) if held.get(p) == e]
            lost = sorted(p for p in held if renewed.get(p) != held[p])
            # rows renewed that this process does not run (a previous life): give them back
            stray = [p for p in renewed if held.get(p) != renewed[p]]
            share = math.ceil(self.partitions / max(live, 1))
            released: list[int] = []
            if len(kept) > share:
                released = [lease.partition for lease in kept[share:]]
                kept = kept[:share]
            for p in [*released, *stray]:
                self._release(conn, p)
            acquired: list[Lease] = []
            want = share - len(kept)
            if want > 0:
                rows = conn.execute(
                    text(
                        "SELECT partition FROM stream_partition_leases "
                        "WHERE owner IS NULL OR expires_at IS NULL OR expires_at <= now() "
                        "ORDER BY partition LIMIT :n FOR UPDATE SKIP LOCKED"
                    ),
                    {"n": want},
                ).all()
                for (p,) in rows:
                    epoch = conn.scalar(
                        text(
                            "UPDATE stream_partition_leases SET owner = :w, epoch = epoch + 1, "
                            "expires_at = now() + CAST(:ttl AS interval) "
                            "WHERE partition = :p RETURNING epoch"
                        ),
                        {"w": self.worker, "ttl": self._ttl, "p": p},
                    )
                    acquired.append(Lease(int(p), int(epoch or 0)))
        return LeaseChanges(kept, lost, acquired, released, live)

    @staticmethod
    def _release(conn: Connection, partition: int) -> None:
        conn.execute(
            text(
                "UPDATE stream_partition_leases SET owner = NULL, expires_at = now() "
                "WHERE partition = :p"
            ),
            {"p": partition},
        )

    def release_all(self) -> None:
        """Clean stop: the partitions move at once instead of after the lease time."""
        with self._engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE stream_partition_leases SET owner = NULL, expires_at = now() "
                    "WHERE owner = :w"
                ),
                {"w": self.worker},
            )
            conn.execute(text("DELETE FROM stream_workers WHERE worker = :w"), {"w": self.worker})


def fence(session: Session, worker: str, lease: Lease) -> None:
    """Inside a commit: lock the lease row and check it is still ours (raises otherwise).
    Expiry is not checked here on purpose: an expired lease nobody took yet is still safe to
    commit on, since a new owner must first lock this row to bump the epoch."""
    owner = session.execute(
        text("SELECT owner, epoch FROM stream_partition_leases WHERE partition = :p FOR UPDATE"),
        {"p": lease.partition},
    ).first()
    if owner is None or owner[0] != worker or int(owner[1]) != lease.epoch:
        raise LeaseLostError(f"partition {lease.partition} is no longer owned by {worker}")


def load_state(session: Session, partition: int) -> tuple[int, dict[str, Any] | None]:
    row = session.execute(
        text("SELECT last_seq, detector FROM stream_partition_state WHERE partition = :p"),
        {"p": partition},
    ).first()
    if row is None:
        return 0, None
    detector = row[1]
    if isinstance(detector, str):  # JSON, not JSONB: some drivers hand back text
        detector = json.loads(detector)
    return int(row[0]), detector


def save_state(session: Session, partition: int, last_seq: int, detector: dict[str, Any]) -> None:
    session.execute(
        text(
            "INSERT INTO stream_partition_state (partition, last_seq, detector, updated_at) "
            "VALUES (:p, :s, CAST(:d AS json), now()) ON CONFLICT (partition) DO UPDATE SET "
            "last_seq = EXCLUDED.last_seq, detector = EXCLUDED.detector, updated_at = now()"
        ),
        {"p": partition, "s": last_seq, "d": json.dumps(detector, separators=(",", ":"))},
    )
