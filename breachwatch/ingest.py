"""The ingest shell: tailed lines → records → pipeline → store, one transaction per batch.

Offsets are committed in the same transaction as the findings, incidents, quarantined records
and detector state they produced, so `kill -9` at any moment neither loses nor repeats work.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import groupby

from sqlalchemy import select
from sqlalchemy.orm import Session

from breachwatch.clock import Clock
from breachwatch.config import SourceConfig
from breachwatch.errors import ParseFailure
from breachwatch.incidents.service import IncidentService, RecordResult
from breachwatch.parsers.base import Framer, LogFormat, Record, push_lines
from breachwatch.parsers.registry import build_format
from breachwatch.pipeline import BatchResult, Pipeline
from breachwatch.sources.checkpoint import FileCheckpoint, FileIdentity
from breachwatch.sources.tailer import Tailer
from breachwatch.store.database import Database
from breachwatch.store.schema import Checkpoint, DetectorState, QuarantinedRecord

QUARANTINE_TEXT_LIMIT = 4096
# A quiet file's held record that does not parse is held this much longer before it is
# emitted (and quarantined) anyway: long enough for a writer paused inside a multi-line record,
# short enough that a truly broken last record is not kept back for long (see _flush_idle).
UNPARSED_HOLD = timedelta(seconds=10)


@dataclass
class _FileState:
    identity: FileIdentity
    path: str
    framer: Framer
    done_offset: int  # everything before this is handled once the batch commits
    done_line_no: int
    last_line_at: datetime


@dataclass
class FramedLines:
    """What one read of a source framed: (file key, record) in reading order, and the files
    whose position moved."""

    records: list[tuple[str, Record]] = field(default_factory=list)
    lines: int = 0
    bytes: int = 0
    touched: set[str] = field(default_factory=set)


@dataclass
class IngestReport:
    source: str
    lines: int = 0
    bytes: int = 0
    batch: BatchResult = field(default_factory=BatchResult)
    recorded: RecordResult = field(default_factory=RecordResult)


def load_checkpoints(db: Database, source: str) -> list[FileCheckpoint]:
    with db.transaction() as session:
        rows = session.scalars(select(Checkpoint).where(Checkpoint.source == source))
        return [
            FileCheckpoint(
                source=row.source,
                identity=FileIdentity(row.dev, row.inode, row.fp_len, row.fp_hash),
                path=row.path,
                offset=row.offset,
                line_no=row.line_no,
            )
            for row in rows
        ]


class SourceIngest:
    """Follows one configured source."""

    def __init__(
        self, config: SourceConfig, db: Database, clock: Clock, flush_after: timedelta
    ) -> None:
        self.config = config
        self.name = config.name
        self.format: LogFormat = build_format(config.format, config.options)
        self._db = db
        self._clock = clock
        self._flush_after = flush_after
        self.tailer = Tailer(
            self.name,
            str(config.path),
            load_checkpoints(db, self.name),
            clock,
            max_line_bytes=config.max_line_bytes,
        )
        self._files: dict[str, _FileState] = {}
        self._committed: dict[str, int] = {}  # file key -> committed offset, for lag
        self.newest_event: datetime | None = None
        for checkpoint in load_checkpoints(db, self.name):
            self._committed[checkpoint.identity.key] = checkpoint.offset
        fresh = [
            f.identity
            for f in self.tailer.tracked()
            if f.read_offset == 0 and f.identity.key not in self._committed
        ]
        if fresh:
            self._checkpoint_start(fresh, clock.now())

    def step(
        self, pipeline: Pipeline, incidents: IncidentService, max_lines: int
    ) -> IngestReport | None:
        """Read what is new, process it and commit. None when there was nothing to do."""
        now = self._clock.now()
        framed = self.frame(max_lines, now)
        finished = self.finished_files()
        if not framed.touched and not finished:
            return None
        report = IngestReport(self.name, framed.lines, framed.bytes)
        report.batch = process_files(
            pipeline,
            (
                (key, self.format, self.name, [record for _, record in group])
                for key, group in groupby(framed.records, key=lambda pair: pair[0])
            ),
        )
        with self._db.transaction() as session:
            report.recorded = incidents.record(session, report.batch.findings, now)
            quarantine(session, ((self.name, r, f) for r, f in report.batch.failures), now)
            self.save_positions(session, framed.touched, finished, now)
            _save_detector_state(session, pipeline)
        self.forget(finished)
        if report.batch.newest_event and (
            self.newest_event is None or report.batch.newest_event > self.newest_event
        ):
            self.newest_event = report.batch.newest_event
        return report

    def frame(self, max_lines: int, now: datetime) -> FramedLines:
        """Read up to ``max_lines`` new lines and frame them into records, per file; a file
        idle for ``flush_after`` gives up the record its framer holds (see UNPARSED_HOLD).
        Shared by the daemon and the shipper of the scaled-out mode (distributed/shipper.py)."""
        framed = FramedLines()
        unknown: list[str] = []  # files read from their start that no checkpoint names yet
        for chunk in self.tailer.read(max_lines):
            key = chunk.identity.key
            state = self._files.get(key)
            if state is None or chunk.reset:
                start = chunk.lines[0] if chunk.lines else None
                if key not in self._committed and (start is None or start.offset == 0):
                    unknown.append(key)
                state = _FileState(
                    chunk.identity,
                    chunk.path,
                    self.format.new_framer(chunk.path),
                    start.offset if start else 0,
                    (start.line_no - 1) if start else 0,
                    now,
                )
                self._files[key] = state
            state.identity, state.path = chunk.identity, chunk.path
            # one framer call per chunk (push_many), not one per line: this is the hot path
            framed.records.extend((key, r) for r in push_lines(state.framer, chunk.lines))
            framed.lines += len(chunk.lines)
            framed.bytes += sum(line.end_offset - line.offset for line in chunk.lines)
            if chunk.lines:
                state.done_offset = chunk.lines[-1].end_offset
                state.done_line_no = chunk.lines[-1].line_no
                state.last_line_at = now
                framed.touched.add(key)
        for key, state in self._files.items():
            idle = now - state.last_line_at
            if idle >= self._flush_after and state.framer.pending_offset() is not None:
                released = self._flush_idle(state, idle)
                if released:
                    framed.records.extend((key, r) for r in released)
                    framed.touched.add(key)
        if unknown:
            self._checkpoint_start([self._files[k].identity for k in unknown], now)
        return framed

    def _flush_idle(self, state: _FileState, idle: timedelta) -> list[Record]:
        """The held records of a quiet file, except a last one that does not parse yet: its
        writer may have paused between the lines of a multi-line record (a statement with
        newlines), and emitting the first line alone would quarantine it, and the rest after
        it as a record of its own, losing the access. Such a record goes back to the framer
        (which holds it again, so the checkpoint stays at its start) until more lines come or
        the file has been quiet for UNPARSED_HOLD."""
        records = state.framer.flush()
        if (
            records
            and idle < UNPARSED_HOLD
            and isinstance(self.format.parse(records[-1], self.name), ParseFailure)
        ):
            last = records.pop()
            for line in last.lines:
                records.extend(state.framer.push(line))
        return records

    def save_positions(
        self, session: Session, touched: Iterable[str], finished: list[str], now: datetime
    ) -> None:
        """The checkpoints of a batch, written in the transaction of what the batch produced
        (the daemon) or after JetStream acknowledged it (the shipper)."""
        for key in touched:
            if key in self._files:
                self._committed[key] = self._save_checkpoint(session, self._files[key], now)
        for key in finished:
            # drained rotated file: its checkpoint would only look "missing" at restart
            row = session.get(Checkpoint, (self.name, key))
            if row is not None:
                session.delete(row)

    def forget(self, finished: list[str]) -> None:
        """After the commit: the drained rotated files are no longer followed."""
        for key in finished:
            self._files.pop(key, None)
            self._committed.pop(key, None)

    def finished_files(self) -> list[str]:
        tracked = {f.identity.key for f in self.tailer.tracked()}
        return [
            key
            for key, state in self._files.items()
            if key not in tracked and state.framer.pending_offset() is None
        ]

    def _checkpoint_start(self, identities: list[FileIdentity], now: datetime) -> None:
        """Checkpoint files no checkpoint names yet at their start, at once, before any
        (possibly long) batch: killed before that batch commits and rotated while down, such a
        file is still found at restart under its new name, with the files rotated after it,
        instead of being skipped."""
        paths = {f.identity.key: f.path for f in self.tailer.tracked()}
        with self._db.transaction() as session:
            for identity in identities:
                row = session.get(Checkpoint, (self.name, identity.key))
                if row is None:
                    row = Checkpoint(source=self.name, file_key=identity.key)
                    session.add(row)
                row.path = paths.get(identity.key, "")
                row.dev, row.inode = identity.dev, identity.inode
                row.fp_len, row.fp_hash = identity.fp_len, identity.fp_hash
                row.offset, row.line_no, row.updated_at = 0, 0, now
        for identity in identities:
            self._committed[identity.key] = 0

    def _save_checkpoint(self, session: Session, state: _FileState, now: datetime) -> int:
        pending = state.framer.pending_offset()
        offset, line_no = state.done_offset, state.done_line_no
        if pending is not None:
            pending_line = state.framer.pending_line_no()
            offset, line_no = pending, (pending_line or 1) - 1
        row = session.get(Checkpoint, (self.name, state.identity.key))
        if row is None:
            row = Checkpoint(source=self.name, file_key=state.identity.key)
            session.add(row)
        row.path, row.dev, row.inode = state.path, state.identity.dev, state.identity.inode
        row.fp_len, row.fp_hash = state.identity.fp_len, state.identity.fp_hash
        row.offset, row.line_no, row.updated_at = offset, line_no, now
        return offset

    def lag_bytes(self) -> int:
        """Bytes on disk not yet durably handled (size minus committed offset)."""
        return sum(
            max(f.size - self._committed.get(f.identity.key, 0), 0) for f in self.tailer.tracked()
        )

    def close(self) -> None:
        self.tailer.close()


def process_files(
    pipeline: Pipeline, groups: Iterable[tuple[str, LogFormat, str, list[Record]]]
) -> BatchResult:
    """Run the pipeline file by file — ``groups`` of (file key, format, source, records) in
    reading order — so each finding's evidence names its file by identity (device:inode):
    the finding keys are then the same whichever process read the file (daemon or stream
    worker)."""
    total = BatchResult()
    for key, fmt, source, records in groups:
        batch = pipeline.process(records, fmt, source)
        total.events += batch.events
        total.failures.extend(batch.failures)
        total.findings.extend(
            replace(f, evidence=tuple(replace(p, file_id=key) for p in f.evidence))
            for f in batch.findings
        )
        if batch.newest_event and (
            total.newest_event is None or batch.newest_event > total.newest_event
        ):
            total.newest_event = batch.newest_event
    return total


def quarantine(
    session: Session, failures: Iterable[tuple[str, Record, ParseFailure]], now: datetime
) -> None:
    """Records that did not parse, kept (bounded) for `breachwatch quarantine`; (source,
    record, failure) each."""
    for source, record, failure in failures:
        session.add(
            QuarantinedRecord(
                source=source,
                path=record.path,
                offset=record.offset,
                line_no=record.line_no,
                reason=failure.reason,
                detail=failure.detail[:1000],
                text=record.text[:QUARANTINE_TEXT_LIMIT],
                at=now,
            )
        )


def _save_detector_state(session: Session, pipeline: Pipeline) -> None:
    row = session.get(DetectorState, "pipeline")
    if row is None:
        session.add(DetectorState(name="pipeline", data=pipeline.snapshot()))
    else:
        row.data = pipeline.snapshot()


def load_detector_state(db: Database, pipeline: Pipeline) -> None:
    with db.transaction() as session:
        row = session.get(DetectorState, "pipeline")
        if row is not None:
            pipeline.restore(row.data)
