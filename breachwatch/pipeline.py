"""parse → enrich → detect, shared by the daemon and `breachwatch scan`.

Pure apart from the detectors' own windows, whose state can be snapshotted and restored so
the daemon commits it with the offsets that produced it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from breachwatch.detection.anomaly import AnomalyDetectors
from breachwatch.detection.conditions import build_conditions
from breachwatch.detection.findings import Finding
from breachwatch.detection.need_to_know import NeedToKnowDetector, PolicyView
from breachwatch.detection.policy import Policy, StaffMember
from breachwatch.detection.reference import Holder
from breachwatch.detection.volume import DistinctSubjectsDetector, UnboundedReadDetector
from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent
from breachwatch.parsers.base import LogFormat, Record, parse_and_detect_each
from breachwatch.sql.enrich import EventEnricher, SqlEnricher


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
        self._view = view = PolicyView(policy)
        self._sql = SqlEnricher(
            policy.subject_columns(),
            policy.anomaly.limit_bound,
            identifying_columns=policy.identifying_columns(),
        )
        # account -> its staff member's person, as evaluate() resolves it: on the hot path
        # (events built already enriched) that is one dict lookup per event
        persons: dict[str, str] = {}
        for member in policy.staff:
            for account in member.accounts:
                actor = view.resolve_actor(account)
                if isinstance(actor, StaffMember):
                    persons[account] = actor.person
        self._enricher = EventEnricher(self._sql, persons.get)
        self._need_to_know = NeedToKnowDetector(view)
        self._unbounded = UnboundedReadDetector(view)
        self._volume = DistinctSubjectsDetector(view)
        self._anomaly = AnomalyDetectors(view)
        self._conditions = build_conditions(view)
        self._anomaly_call = self._anomaly.__call__  # (see detect: a bound method is cheaper)
        # Plan key (see detect) -> the stateless-when-quiet detectors to call, None for each
        # that says it skips such events (nothing found, no state changed). Their verdicts
        # depend on the policy and the key alone; keys come from logs, so this is bounded.
        self._plans: dict[tuple[Any, ...], tuple[Any, Any, Any, Any]] = {}

    def process(self, records: Iterable[Record], fmt: LogFormat, store: str) -> BatchResult:
        # A batch allocates a dozen objects per line, none of them in a reference cycle, and
        # each full collection walks every object the process holds (policy, pglast, caches):
        # that was a quarter of the time. The collector runs again as soon as the batch is done.
        if gc.isenabled():
            gc.disable()
            try:
                return self._process(records, fmt, store)
            finally:
                gc.enable()
        return self._process(records, fmt, store)

    def _process(self, records: Iterable[Record], fmt: LogFormat, store: str) -> BatchResult:
        result = BatchResult()
        # A format that builds its events already enriched (pgaudit stderr) parses and
        # detects the batch itself (in C when built), saving the second construction of each
        # event; any other format's events are enriched here (evaluate).
        run = getattr(fmt, "parse_and_detect", None)
        if run is not None:
            result.events, result.newest_event = run(
                records if type(records) is list else list(records),
                store,
                self._enricher,
                self.detect,
                result.findings,
                result.failures,
            )
        else:
            result.events, result.newest_event = parse_and_detect_each(
                lambda record: fmt.parse(record, store),
                records,
                self.evaluate,
                result.findings,
                result.failures,
            )
        return result

    def evaluate(self, event: AccessEvent) -> list[Finding]:
        # Enrichment sets the person and the SQL-derived fields in one rebuild of the event.
        actor = self._view.resolve_actor(event.actor)
        person = actor.person if isinstance(actor, StaffMember) else event.person
        return self.detect(self._sql.enrich(event, person))

    def detectors(self) -> dict[str, Any]:
        """The detectors by name, in the order :meth:`detect` runs them (for benchmarks)."""
        return {
            "need_to_know": self._need_to_know,
            "unbounded": self._unbounded,
            "volume": self._volume,
            "anomaly": self._anomaly,
            "conditions": self._conditions,
        }

    def detect(self, event: AccessEvent) -> list[Finding]:
        """The back half: every detector on one enriched event (in this order)."""
        # Most events of a day repeat a few keys on which need-to-know, unbounded reads,
        # volume and conditions say nothing and keep no state: one look-up of the key tells
        # which of them to call at all. The key holds every field their ``skips`` depends on.
        key = (
            event.actor,
            event.store,
            event.objects,
            event.action,
            event.command,
            event.application,
            event.client,
            event.person,
            event.unbounded,
            not event.subjects,
        )
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 4096:
                self._plans.clear()
            # Bound methods: calling an instance goes through its type's __call__ slot,
            # twice the cost of calling its bound method.
            ntk, unbounded_, volume_, cond = (
                self._need_to_know,
                self._unbounded,
                self._volume,
                self._conditions,
            )
            plan = self._plans[key] = (
                None if ntk.skips(event) else ntk.__call__,
                None if unbounded_.skips(event) else unbounded_.__call__,
                None if volume_.skips(event) else volume_.__call__,
                None if cond.skips(event) else cond.__call__,
            )
        need_to_know, unbounded, volume, conditions = plan
        # Unrolled: a tuple of the results and a loop over it cost more than the cheapest
        # detectors themselves.
        findings = [] if need_to_know is None else need_to_know(event)
        if unbounded is not None:
            more = unbounded(event)
            if more:
                findings = [*findings, *more]
        if volume is not None:
            more = volume(event)
            if more:
                findings = [*findings, *more]
        more = self._anomaly_call(event)
        if more:
            findings = [*findings, *more]
        if conditions is not None:
            more = conditions(event)
            if more:
                findings = [*findings, *more]
        return findings

    def reference_holders(self) -> tuple[Holder[Any], ...]:
        """The reference tables (cases, registry) this policy reads, for the daemon's
        Refresher: each swaps in a new index when its file or URL changes."""
        return self._conditions.holders

    def snapshot(self) -> dict[str, Any]:
        return {
            "distinct_subjects": self._volume.snapshot(),
            "anomaly": self._anomaly.snapshot(),
            "conditions": self._conditions.snapshot(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        if "distinct_subjects" in state:
            self._volume.restore(state["distinct_subjects"])
        if "anomaly" in state:
            self._anomaly.restore(state["anomaly"])
        if "conditions" in state:  # cases closed in the log, per-grant subject windows
            self._conditions.restore(state["conditions"])
