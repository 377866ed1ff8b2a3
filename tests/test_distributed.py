"""Scaled-out mode, in process: partition keys, the wire format, leases with fencing and the
leader lock on a real PostgreSQL database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
from sqlalchemy import create_engine

from breachwatch.clock import FakeClock
from breachwatch.config import SourceConfig
from breachwatch.detection.need_to_know import PolicyView
from breachwatch.detection.policy import load_policy
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
from breachwatch.distributed.shipper import PartitionKeys, ShipBatch, ShipSource
from breachwatch.distributed.worker import PartitionReferences
from breachwatch.ingest import UNPARSED_HOLD, load_checkpoints
from breachwatch.parsers.base import Line, Record
from breachwatch.parsers.registry import build_format
from breachwatch.pipeline import Pipeline
from breachwatch.store.database import Database
from breachwatch.store.schema import Base, Checkpoint
from tests.casework import HELPDESK_POLICY, write_cases
from tests.conftest import REPO, skip_or_fail
from tests.daemon_harness import PREFIX, audit_read
from tests.distributed_harness import SAMPLE, missing_services, scratch_database

# omar's CTE on webmail.messages in the labelled sample: a record of two lines (the statement
# has a newline), which a live writer may leave half-written for a moment
CTE_OFFSET = 240955
FLUSH_AFTER = timedelta(milliseconds=200)


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
    # offset and end: the same record read again is dropped, a record framed with other
    # lines after a restart is not mistaken for it
    assert rec.msg_id() == "pg-main|65024:99|10-28"


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


class _CutSample(NamedTuple):
    lines: list[bytes]  # the sample's lines
    cut: int  # how many of them are in the log: up to the first line of omar's record
    log: Path
    state: Path  # the shipper's checkpoint store
    clock: FakeClock
    keys: PartitionKeys


def _cut_sample(folder: Path) -> _CutSample:
    """The sample written to ``folder`` up to the first of the two lines of omar's CTE
    record, as a writer pausing between them leaves it, for a shipper on a fake clock."""
    if not SAMPLE.is_file():
        skip_or_fail(f"sample log not found at {SAMPLE}")
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    offset, cut = 0, None
    for i, line in enumerate(lines):
        if offset == CTE_OFFSET:
            assert lines[i + 1].startswith(b"\t")  # its continuation line
            cut = i + 1
            break
        offset += len(line)
    assert cut is not None, "record not found in the sample"
    log = folder / "postgresql.log"
    log.write_bytes(b"".join(lines[:cut]))
    clock = FakeClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    keys = PartitionKeys(PolicyView(load_policy(REPO / "config" / "policy.yml")), 8)
    return _CutSample(lines, cut, log, folder / "shipper.db", clock, keys)


class _ShipSource(ShipSource):
    """The shipper's source with its own store connection, closed with it."""

    def close(self) -> None:
        super().close()
        self._db.dispose()


def _shipper_source(log: Path, state: Path, clock: FakeClock) -> ShipSource:
    db = Database(f"sqlite:///{state}")
    Base.metadata.create_all(db.engine, tables=[Checkpoint.__table__])  # type: ignore[list-item]
    config = SourceConfig(
        name="pg-main",
        path=log,
        format="pgaudit_stderr",
        options={"log_line_prefix": PREFIX, "timezone": "Europe/Brussels"},
    )
    return _ShipSource(config, db, clock, FLUSH_AFTER)


def _shipped(batch: ShipBatch | None) -> dict[int, Record]:
    return {} if batch is None else {rec.record.offset: rec.record for _, rec in batch.records}


def test_shipper_killed_between_the_lines_of_a_record_ships_it_whole(tmp_path: Path) -> None:
    """The cause of the missing CTE findings (issue 8): the writer paused between the two
    lines of the record for longer than ``flush_after``; the idle flush emitted the first line
    as a record (quarantined: unterminated quote), the shipper committed past it, and after a
    restart the continuation line came alone. Deterministic: fake clock, the shipper dropped
    without a commit exactly between the two lines, as kill -9 leaves it."""
    lines, cut, log, state, clock, keys = _cut_sample(tmp_path)

    first = _shipper_source(log, state, clock)
    batch = first.collect(100_000, keys)
    assert batch is not None and CTE_OFFSET not in _shipped(batch)  # held: the next may attach
    first.commit(batch, clock.now())
    clock.advance(FLUSH_AFTER * 5)  # the file is quiet: held records are due
    idle = first.collect(100_000, keys)
    assert CTE_OFFSET not in _shipped(idle)  # does not parse yet: held on, not shipped
    if idle is not None:
        first.commit(idle, clock.now())
    first.close()  # killed here: the checkpoint is still at the record's start

    with log.open("ab") as f:
        f.write(b"".join(lines[cut : cut + 2]))  # the continuation, and the next record
    second = _shipper_source(log, state, clock)
    clock.advance(FLUSH_AFTER)
    shipped = _shipped(second.collect(100_000, keys))
    second.close()
    record = shipped[CTE_OFFSET]
    assert len(record.lines) == 2 and record.lines[1].text.startswith("\tSELECT msg.received_at")
    assert all(not r.text.startswith("\t") for r in shipped.values())  # no orphan line

    # what the worker raises on it: the two findings the scaled-out run was missing
    fmt = second.format
    found = Pipeline(load_policy(REPO / "config" / "policy.yml")).process([record], fmt, "pg")
    assert not found.failures
    assert {f.rule for f in found.findings} >= {"ntk.outside_grants", "privacy.telecom_content"}


def test_a_record_that_never_completes_is_shipped_after_the_hold(tmp_path: Path) -> None:
    """Held, not lost: a last record that does not parse goes out (to quarantine) once the
    file has been quiet for UNPARSED_HOLD."""
    lines, cut, log, state, clock, keys = _cut_sample(tmp_path)
    source = _shipper_source(log, state, clock)
    try:
        batch = source.collect(100_000, keys)
        assert batch is not None
        source.commit(batch, clock.now())
        clock.advance(UNPARSED_HOLD - timedelta(seconds=1))
        assert CTE_OFFSET not in _shipped(source.collect(100_000, keys))
        clock.advance(timedelta(seconds=1))
        late = source.collect(100_000, keys)
        assert late is not None and len(_shipped(late)[CTE_OFFSET].lines) == 1
        source.commit(late, clock.now())
        # the checkpoint is past it now: it is not read again
        db = Database(f"sqlite:///{state}")
        (checkpoint,) = load_checkpoints(db, "pg-main")
        db.dispose()
        assert checkpoint.offset == sum(len(line) for line in lines[:cut])
    finally:
        source.close()


def test_partition_pipelines_follow_their_reference_tables(tmp_path: Path) -> None:
    """The worker's Refresher holder reloads the case table of every owned partition's
    pipeline (they are not the daemon's own pipeline), as the single daemon reloads its one."""
    (tmp_path / "policy.yml").write_text(HELPDESK_POLICY)
    write_cases(tmp_path, {11: 201})
    policy = load_policy(tmp_path / "policy.yml")
    owned = [Pipeline(policy), Pipeline(policy)]  # two partitions of one worker
    tables = PartitionReferences(lambda: owned)
    fmt = build_format("pgaudit_stderr", {"log_line_prefix": PREFIX, "timezone": "UTC"})
    text = audit_read(
        "2026-11-30 10:00:05.000 UTC",
        4200,
        "yasmine_helpdesk",
        5,
        "clients.accounts",
        "SELECT full_name FROM clients.accounts WHERE id = 100;",
    ).rstrip("\n")
    record = Record("/x.log", (Line(text, 0, len(text) + 1, 1),))

    def rules(pipeline: Pipeline) -> set[str]:
        return {f.rule for f in pipeline.process([record], fmt, "pg-main").findings}

    assert "ntk.no_open_case" in rules(owned[1])  # no case for customer 100 yet
    assert tables.refresh() is False and tables.errors == []  # nothing changed: no reload
    write_cases(tmp_path, {11: 201, 12: 100})
    assert tables.refresh() is True and tables.errors == []
    assert all("ntk.no_open_case" not in rules(p) for p in owned)  # both partitions see it


def test_auditd_directory_handle_travels_with_the_record() -> None:
    """The auditd framer resolves a name relative to a directory descriptor from earlier
    records of the same process; a worker parses one record with no such history, so the
    handle must travel in the message (issue #8: auditd findings differed without it)."""
    from breachwatch.parsers.auditd import AuditdFormat, HandleRecord
    from tests.parser_helpers import frame, text_lines
    from tests.test_parser_auditd import _openat

    fmt = AuditdFormat({"3004": "omar"}, {"k": "/srv/data"})
    lines = text_lines(
        [
            *_openat(1, 100, "ffffff9c", 3, "/srv/data/", "040750"),  # fd 3 = the directory
            *_openat(2, 100, "3", 4, "a.csv", "0100640"),  # relative to fd 3
        ]
    )
    local = frame(fmt, lines, "/var/log/audit/audit.log")
    assert isinstance(local[1], HandleRecord) and local[1].handle == "/srv/data"
    shipped = [
        StreamRecord.decode(StreamRecord("ops", "auditd", "65024:7", r.path, r).encode())
        for r in local
    ]
    assert [s.record for s in shipped] == local  # the handle, not only the lines
    parsed = [fmt.parse(s.record, "ops") for s in shipped]
    objects = [e.objects for result in parsed if isinstance(result, list) for e in result]
    assert objects == [("/srv/data",), ("/srv/data/a.csv",)]
    # a record without a handle stays a plain Record on the wire
    plain = StreamRecord("ops", "auditd", "65024:7", local[0].path, local[0]).encode()
    assert "h" not in json.loads(plain)
