"""The ingest shell: tailed lines → records → pipeline → store, one transaction per batch.

Offsets are committed in the same transaction as the findings, incidents, quarantined records
and detector state they produced, so `kill -9` at any moment neither loses nor repeats work.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import groupby

from sqlalchemy import select
from sqlalchemy.orm import Session

from breachwatch.clock import Clock
from breachwatch.config import SourceConfig
from breachwatch.errors import ParseFailure
from breachwatch.incidents.service import IncidentService, RecordResult
from breachwatch.parsers.base import Framer, LogFormat, Record
from breachwatch.parsers.registry import build_format
from breachwatch.pipeline import BatchResult, Pipeline
from breachwatch.sources.checkpoint import FileCheckpoint, FileIdentity
from breachwatch.sources.tailer import Tailer
from breachwatch.store.database import Database
from breachwatch.store.schema import Checkpoint, DetectorState, QuarantinedRecord

QUARANTINE_TEXT_LIMIT = 4096


@dataclass
class _FileState:
    identity: FileIdentity
    path: str
    framer: Framer
    done_offset: int  # everything before this is handled once the batch commits
    done_line_no: int
    last_line_at: datetime


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
        report = IngestReport(self.name)
        records: list[tuple[str, Record]] = []  # (file key, record), in reading order
        touched: set[str] = set()
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
            for line in chunk.lines:
                records.extend((key, r) for r in state.framer.push(line))
                report.lines += 1
                report.bytes += line.end_offset - line.offset
            if chunk.lines:
                state.done_offset = chunk.lines[-1].end_offset
                state.done_line_no = chunk.lines[-1].line_no
                state.last_line_at = now
                touched.add(key)
        for key, state in self._files.items():
            idle = now - state.last_line_at >= self._flush_after
            if idle and state.framer.pending_offset() is not None:
                records.extend((key, r) for r in state.framer.flush())
                touched.add(key)
        if unknown:
            self._checkpoint_start([self._files[k].identity for k in unknown], now)
        finished = self._finished_files()
        if not touched and not finished:
            return None
        report.batch = self._process(pipeline, records)
        with self._db.transaction() as session:
            report.recorded = incidents.record(session, report.batch.findings, now)
            self._quarantine(session, report.batch.failures, now)
            for key in touched:
                self._committed[key] = self._save_checkpoint(session, self._files[key], now)
            for key in finished:
                # drained rotated file: its checkpoint would only look "missing" at restart
                row = session.get(Checkpoint, (self.name, key))
                if row is not None:
                    session.delete(row)
            _save_detector_state(session, pipeline)
        for key in finished:
            self._files.pop(key, None)
            self._committed.pop(key, None)
        if report.batch.newest_event and (
            self.newest_event is None or report.batch.newest_event > self.newest_event
        ):
            self.newest_event = report.batch.newest_event
        return report

    def _process(self, pipeline: Pipeline, records: list[tuple[str, Record]]) -> BatchResult:
        """Run the pipeline file by file, so each finding's evidence names its file."""
        total = BatchResult()
        for key, group in groupby(records, key=lambda pair: pair[0]):
            batch = pipeline.process([record for _, record in group], self.format, self.name)
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

    def _finished_files(self) -> list[str]:
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

    def _quarantine(
        self, session: Session, failures: list[tuple[Record, ParseFailure]], now: datetime
    ) -> None:
        for record, failure in failures:
            session.add(
                QuarantinedRecord(
                    source=self.name,
                    path=record.path,
                    offset=record.offset,
                    line_no=record.line_no,
                    reason=failure.reason,
                    detail=failure.detail[:1000],
                    text=record.text[:QUARANTINE_TEXT_LIMIT],
                    at=now,
                )
            )

    def lag_bytes(self) -> int:
        """Bytes on disk not yet durably handled (size minus committed offset)."""
        return sum(
            max(f.size - self._committed.get(f.identity.key, 0), 0) for f in self.tailer.tracked()
        )

    def close(self) -> None:
        self.tailer.close()


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
