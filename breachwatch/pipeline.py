"""parse → enrich → detect, shared by the daemon and `breachwatch scan`.

Pure apart from the detectors' own windows, whose state can be snapshotted and restored so
the daemon commits it with the offsets that produced it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from breachwatch.detection.findings import Detector, Finding
from breachwatch.detection.need_to_know import NeedToKnowDetector, resolve_person
from breachwatch.detection.policy import Policy
from breachwatch.detection.volume import DistinctSubjectsDetector, UnboundedReadDetector
from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent
from breachwatch.parsers.base import LogFormat, Record
from breachwatch.sql.enrich import SqlEnricher

Enricher = Callable[[AccessEvent], AccessEvent]


@dataclass
class BatchResult:
    events: int = 0
    findings: list[Finding] = field(default_factory=list)
    failures: list[tuple[Record, ParseFailure]] = field(default_factory=list)
    newest_event: datetime | None = None


class Pipeline:
    """One policy's view of the logs. Build a new one when the policy changes."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._enrichers: tuple[Enricher, ...] = (
            SqlEnricher(
                policy.subject_columns(),
                policy.anomaly.limit_bound,
                identifying_columns=policy.identifying_columns(),
            ),
            resolve_person(policy),
        )
        self._volume = DistinctSubjectsDetector(policy)
        self._detectors: tuple[Detector, ...] = (
            NeedToKnowDetector(policy),
            UnboundedReadDetector(policy),
            self._volume,
        )

    def process(self, records: Iterable[Record], fmt: LogFormat, store: str) -> BatchResult:
        result = BatchResult()
        for record in records:
            parsed = fmt.parse(record, store)
            if isinstance(parsed, ParseFailure):
                result.failures.append((record, parsed))
                continue
            for event in parsed:
                result.events += 1
                if result.newest_event is None or event.time > result.newest_event:
                    result.newest_event = event.time
                result.findings.extend(self.evaluate(event))
        return result

    def evaluate(self, event: AccessEvent) -> list[Finding]:
        for enrich in self._enrichers:
            event = enrich(event)
        findings: list[Finding] = []
        for detect in self._detectors:
            findings.extend(detect(event))
        return findings

    def snapshot(self) -> dict[str, Any]:
        return {"distinct_subjects": self._volume.snapshot()}

    def restore(self, state: dict[str, Any]) -> None:
        if "distinct_subjects" in state:
            self._volume.restore(state["distinct_subjects"])
