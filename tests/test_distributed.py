"""Scaled-out mode, in process: partition keys, the wire format, leases with fencing and the
leader lock on a real PostgreSQL database."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from breachwatch.distributed.jetstream_source import StreamRecord
from breachwatch.distributed.leader import LeaderLock
from breachwatch.distributed.partitions import (
    Lease,
    LeaseLostError,
    LeaseTable,
    create_tables,
    fence,
    partition_of,
)
from breachwatch.parsers.base import Line, Record
from tests.conftest import skip_or_fail
from tests.distributed_harness import missing_services, scratch_database


def test_partition_is_stable_and_spread() -> None:
    assert partition_of("person:kevin", 16) == partition_of("person:kevin", 16)
    assert partition_of("person:kevin", 16) == 7 or 0 <= partition_of("person:kevin", 16) < 16
    spread = {partition_of(f"actor:user{i}", 8) for i in range(200)}
    assert spread == set(range(8))


def test_record_round_trip_and_deterministic_id() -> None:
    lines = (Line("a,b", 10, 14, 3), Line("\tcontinued é", 14, 28, 4, False, True))
    rec = StreamRecord("pg-main", "pgaudit_stderr", "65024:99", "/x.log", Record("/x.log", lines))
    back = StreamRecord.decode(rec.encode())
    assert back == rec
    assert rec.msg_id() == "pg-main|65024:99|10"


def test_leases_fair_share_takeover_and_fencing(tmp_path: Path) -> None:
    if reason := missing_services():
        skip_or_fail(reason)
    with scratch_database() as url:
        engine = create_engine(url)
        try:
            create_tables(engine, 4)
            ttl = timedelta(seconds=1)
            a, b = LeaseTable(engine, "a", 4, ttl), LeaseTable(engine, "b", 4, ttl)
            first = a.rebalance({})
            assert len(first.acquired) == 4  # alone: everything
            held_a = {lease.partition: lease.epoch for lease in first.acquired}
            b_first = b.rebalance({})  # b is live now but a still holds all four
            assert b_first.acquired == []
            second = a.rebalance(held_a)
            assert len(second.released) == 2  # fair share of two live workers
            for p in second.released:
                held_a.pop(p)
            held_b = {lease.partition: lease.epoch for lease in b.rebalance({}).acquired}
            assert set(held_b) == set(second.released)
            # a stops renewing (dies): after the ttl b takes its partitions, with new epochs
            import time

            taken: set[int] = set()
            for _ in range(10):  # b keeps renewing; a's leases expire
                time.sleep(0.3)
                changes = b.rebalance(held_b)
                assert changes.lost == []
                for lease in changes.acquired:
                    held_b[lease.partition] = lease.epoch
                    taken.add(lease.partition)
            assert taken == set(held_a)
            # a zombie a cannot commit any more on them
            from sqlalchemy.orm import Session

            with Session(engine) as session:
                p, epoch = next(iter(held_a.items()))
                with pytest.raises(LeaseLostError):
                    fence(session, "a", Lease(p, epoch))
        finally:
            engine.dispose()


def test_one_leader_and_takeover() -> None:
    if reason := missing_services():
        skip_or_fail(reason)
    with scratch_database() as url:
        one, two = LeaderLock(url), LeaderLock(url)
        try:
            assert one.ensure() == (True, True)
            assert two.ensure() == (False, False)
            assert one.ensure() == (True, False)
            one.release()  # as when its session dies
            assert two.ensure() == (True, True)
        finally:
            one.release()
            two.release()
