"""Volume and shape anomalies: many customers in a short time, whole-table reads, exports.

:class:`DistinctSubjectsDetector` keeps a sliding window per actor, measured in EVENT time
(the daemon may replay hours of log in seconds). The window ends at the newest event time
seen for the actor; a record that arrives a little out of order still counts as long as it
lies inside the window. Memory is bounded three ways: subjects leave the window by time,
each actor holds at most ``cap`` subjects (the oldest go first; cap > threshold, so a
crossing is still seen), and actors idle for two windows are dropped.

After a finding the actor is quiet until one full window has passed: the same burst must not
alert on every further statement.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from breachwatch.detection.findings import Finding, Severity
from breachwatch.detection.need_to_know import PolicyView, describe_actor
from breachwatch.detection.policy import Policy
from breachwatch.detection.rules import RULES
from breachwatch.events import AccessEvent, Action, SourcePosition, fast_init

# Reads and exports are what leave the store; writes to many customers are a different story.
COUNTED_ACTIONS = frozenset({Action.READ, Action.EXPORT})
# As module names for the per-event path: ``Action.READ`` goes through the enum type's
# attribute look-up, several times the cost of a global.
_READ = Action.READ
_EXPORT = Action.EXPORT
# What an unbounded read or export says, apart from the event's own fields: rule, severity,
# controls, objects named, explanation, categories.
_Plan = tuple[str, Severity, tuple[str, ...], tuple[str, ...], str, tuple[str, ...]]
_UNPLANNED: Any = object()  # "not in the plan cache" (None is a plan: "say nothing")


@fast_init  # one per counted read
@dataclass(frozen=True, slots=True)
class _Sighting:
    time: datetime
    store: str
    position: SourcePosition
    objects: tuple[str, ...]


@dataclass(slots=True)
class _Window:
    newest: datetime
    horizon: datetime  # newest - the detector's span: sightings at or before it are out
    quiet_until: datetime | None = None
    latest: dict[str, _Sighting] = field(default_factory=dict)  # subject -> newest sighting
    # (time, subject) of every sighting, oldest first; entries superseded by a newer
    # sighting of the same subject are skipped when popped and compacted away in bulk.
    heap: list[tuple[datetime, str]] = field(default_factory=list)

    def add(self, subject: str, sighting: _Sighting) -> None:
        known = self.latest.get(subject)
        if known is not None and known.time >= sighting.time:
            return
        self.latest[subject] = sighting
        heapq.heappush(self.heap, (sighting.time, subject))
        if len(self.heap) > 2 * len(self.latest) + 16:
            self.heap = [(s.time, subject) for subject, s in self.latest.items()]
            heapq.heapify(self.heap)

    def _pop_oldest(self) -> None:
        time, subject = heapq.heappop(self.heap)
        known = self.latest.get(subject)
        if known is not None and known.time == time:
            del self.latest[subject]

    def evict(self, horizon: datetime, cap: int) -> None:
        while self.heap and self.heap[0][0] <= horizon:
            self._pop_oldest()
        while len(self.latest) > cap:
            self._pop_oldest()


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SightingState(_State):
    subject: str
    time: AwareDatetime
    store: str
    path: str
    offset: int
    line: int
    length: int
    objects: tuple[str, ...]


class _WindowState(_State):
    actor: str
    newest: AwareDatetime
    quiet_until: AwareDatetime | None
    sightings: tuple[_SightingState, ...]


class _DetectorState(_State):
    version: Literal[1]
    watermark: AwareDatetime | None
    swept: AwareDatetime | None
    windows: tuple[_WindowState, ...]


def human_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


class DistinctSubjectsDetector:
    """``anomaly.distinct_subjects``: an actor reads more distinct customers than the policy
    threshold within the window."""

    def __init__(self, policy: Policy | PolicyView, *, cap: int | None = None) -> None:
        config = policy.anomaly.distinct_subjects
        self._policy = policy if isinstance(policy, PolicyView) else PolicyView(policy)
        self._span = config.window
        self._threshold = config.threshold
        self._exempt = frozenset(config.exempt_roles)
        self._cap = cap if cap is not None else max(1000, 10 * config.threshold)
        if self._cap <= self._threshold:
            raise ValueError(f"cap ({self._cap}) must exceed the threshold ({self._threshold})")
        self._windows: dict[str, _Window] = {}
        self._counted: dict[tuple[str, str, tuple[str, ...]], bool] = {}
        self._watermark: datetime | None = None
        self._swept: datetime | None = None
        self._persons = self._policy.persons
        self._sweep_checked: datetime | None = None  # the last time _sweep was asked about
        self._recheck_same_time = not self._span > timedelta(0)

    def tracked(self, actor: str) -> int:
        """How many subjects are held for an actor (person id, or account when not staff)."""
        window = self._windows.get(actor)
        return len(window.latest) if window else 0

    def __call__(self, event: AccessEvent) -> list[Finding]:
        if event.action not in COUNTED_ACTIONS or not event.subjects:
            return []
        actor = event.actor
        # Personal objects, by an actor with no exempt role: depends on these three only.
        counted_key = (actor, event.store, event.objects)
        counted = self._counted.get(counted_key)
        if counted is None:
            counted = self._counts(event)
        if not counted:
            return []
        time = event.time
        # Events come in runs of one timestamp (one datetime object): within a run the
        # first sweep check stands (exact for a positive span, see _sweep).
        if time is not self._sweep_checked or self._recheck_same_time:
            self._sweep(time)
            self._sweep_checked = time
        person = self._persons.get(actor, event.person)  # person_of(), inlined
        key = person or actor
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(time, time - self._span)
        elif time > window.newest:
            window.newest = time
            window.horizon = time - self._span
        horizon = window.horizon
        if time > horizon:
            sighting = _Sighting(time, event.store, event.position, event.objects)
            for subject in event.subjects:
                window.add(subject, sighting)
        heap = window.heap
        if (heap and heap[0][0] <= horizon) or len(window.latest) > self._cap:
            window.evict(horizon, self._cap)
        if len(window.latest) <= self._threshold:
            return []
        if window.quiet_until is not None and window.newest < window.quiet_until:
            return []
        window.quiet_until = window.newest + self._span
        return [self._finding(event, person, window)]

    def skips(self, event: AccessEvent) -> bool:
        """True when every event that agrees with ``event`` on action, actor, store, objects
        and naming subjects or not is not counted: it returns nothing and changes no state,
        so a caller may skip it."""
        if event.action not in COUNTED_ACTIONS or not event.subjects:
            return True
        counted = self._counted.get((event.actor, event.store, event.objects))
        return not (self._counts(event) if counted is None else counted)

    def _counts(self, event: AccessEvent) -> bool:
        """Personal objects, by an actor with no exempt role (cached: depends on the actor,
        store and objects only)."""
        policy = self._policy
        counted = any(policy.is_personal(event.store, o) for o in event.objects) and not (
            self._exempt & policy.roles_of(event.actor)
        )
        if len(self._counted) >= 4096:
            self._counted.clear()
        self._counted[(event.actor, event.store, event.objects)] = counted
        return counted

    def _sweep(self, time: datetime) -> None:
        # (Called twice with one time, the second call changes nothing: the watermark stands
        # and the first call either returned early or set ``swept`` to the watermark.)
        if self._watermark is None or time > self._watermark:
            self._watermark = time
        if self._swept is not None and self._watermark - self._swept < self._span:
            return
        self._swept = self._watermark
        # Two windows, not one: a late record of the actor (out of order by less than a
        # window) must find the same state it would have found had nothing been dropped.
        stale = self._watermark - 2 * self._span
        for key in [k for k, w in self._windows.items() if w.newest <= stale]:
            del self._windows[key]

    def _finding(self, event: AccessEvent, person: str | None, window: _Window) -> Finding:
        sightings = sorted(
            set(window.latest.values()),
            key=lambda s: (s.time, s.position.path, s.position.offset),
        )
        objects = tuple(sorted({o for s in sightings for o in s.objects}))
        categories: dict[str, None] = {}
        for s in sightings:
            categories.update(dict.fromkeys(self._policy.categories_of(s.store, s.objects)))
        count = len(window.latest)
        first, last = sightings[0].time, sightings[-1].time
        explanation = (
            f"{describe_actor(event, person)} read {count} distinct customers in "
            f"{human_duration(self._span)} (between {first:%Y-%m-%d %H:%M:%S} and "
            f"{last:%H:%M:%S %Z}) from {', '.join(objects)}; threshold {self._threshold}."
        )
        rule = "anomaly.distinct_subjects"
        return Finding(
            rule=rule,
            severity=self._policy.severity_of(rule),
            time=event.time,
            actor=event.actor,
            store=event.store,
            explanation=explanation,
            controls=RULES[rule].controls,
            evidence=tuple(dict.fromkeys(s.position for s in sightings)),
            person=person,
            objects=objects,
            subjects=tuple(sorted(window.latest)),
            categories=tuple(categories),
        )

    def snapshot(self) -> dict[str, Any]:
        """The whole state as JSON-serialisable data, to persist with the source offsets."""
        windows = tuple(
            _WindowState(
                actor=key,
                newest=window.newest,
                quiet_until=window.quiet_until,
                sightings=tuple(
                    _SightingState(
                        subject=subject,
                        time=s.time,
                        store=s.store,
                        path=s.position.path,
                        offset=s.position.offset,
                        line=s.position.line,
                        length=s.position.length,
                        objects=s.objects,
                    )
                    for subject, s in sorted(window.latest.items())
                ),
            )
            for key, window in sorted(self._windows.items())
        )
        state = _DetectorState(
            version=1, watermark=self._watermark, swept=self._swept, windows=windows
        )
        return state.model_dump(mode="json")

    def restore(self, data: Any) -> None:
        """Replace the state with a snapshot; a malformed one raises ValidationError (a
        ValueError) and leaves the current state untouched."""
        state = _DetectorState.model_validate(data)
        windows: dict[str, _Window] = {}
        for saved in state.windows:
            window = _Window(saved.newest, saved.newest - self._span, saved.quiet_until)
            for s in saved.sightings:
                position = SourcePosition(s.path, s.offset, s.line, s.length)
                window.add(s.subject, _Sighting(s.time, s.store, position, s.objects))
            # The policy may have changed since the snapshot: apply today's window and cap.
            window.evict(window.newest - self._span, self._cap)
            windows[saved.actor] = window
        self._windows = windows
        self._watermark = state.watermark
        self._swept = state.swept
        self._sweep_checked = None


class UnboundedReadDetector:
    """``anomaly.export`` for any export of personal data; ``anomaly.unbounded_read`` for a
    read the enricher marked as unbounded (no subject predicate, or a LIMIT above the bound).
    An unbounded export is reported once, as an export: that is the graver reading."""

    def __init__(self, policy: Policy | PolicyView) -> None:
        self._policy = policy if isinstance(policy, PolicyView) else PolicyView(policy)
        self._reads = self._policy.anomaly.unbounded_reads
        self._persons = self._policy.persons
        # (rule, actor, person, store, objects, unbounded) -> everything of the finding that
        # is not the event's own (rule, severity, controls, objects named, explanation,
        # categories), or None when nothing is said: all follow from the key and the policy
        # alone, and a bulk reader repeats the same key thousands of times a day (bounded:
        # keys are logged).
        self._plans: dict[tuple[Any, ...], _Plan | None] = {}

    def __call__(self, event: AccessEvent) -> list[Finding]:
        plan, person = self._lookup(event)
        if plan is None:
            return []
        rule, severity, controls, personal, text, categories = plan
        # Positional, as need_to_know.finding() builds it (keywords cost a third).
        return [
            Finding(
                rule,
                severity,
                event.time,
                event.actor,
                event.store,
                text,
                controls,
                (event.position,),
                person,
                personal,
                event.subjects,
                categories,
            )
        ]

    def skips(self, event: AccessEvent) -> bool:
        """True when every event that agrees with ``event`` on action, unbounded, actor,
        person, store and objects raises nothing (the detector keeps no state), so a caller
        may skip it."""
        return self._lookup(event)[0] is None

    def _lookup(self, event: AccessEvent) -> tuple[_Plan | None, str | None]:
        """(the plan of the event's key, None when nothing is said; the actor's person)."""
        action = event.action
        if action is _EXPORT:
            rule = "anomaly.export"
        elif action is _READ and event.unbounded and self._reads:
            rule = "anomaly.unbounded_read"
        else:
            return None, None
        actor = event.actor
        person = self._persons.get(actor, event.person)  # PolicyView.person_of, inlined
        key = (rule, actor, person, event.store, event.objects, event.unbounded)
        plan = self._plans.get(key, _UNPLANNED)
        if plan is _UNPLANNED:
            plan = self._plan(key, event)
        return plan, person

    def _plan(self, key: tuple[Any, ...], event: AccessEvent) -> _Plan | None:
        """The plan of ``key`` (rule, actor, person, store, objects, unbounded), cached."""
        plan = self._make_plan(key[0], event, key[2])
        if len(self._plans) >= 4096:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _make_plan(self, rule: str, event: AccessEvent, person: str | None) -> _Plan | None:
        policy = self._policy
        personal = tuple(o for o in event.objects if policy.is_personal(event.store, o))
        if not personal:
            return None
        if rule == "anomaly.unbounded_read":
            roles = policy.roles_of(event.actor)
            # Lists are part of some jobs (a grant with ``bulk: true``): the policy's other
            # conditions (hours, purpose, registers) still judge them.
            if all(policy.bulk_allowed(roles, event.store, o, event.action) for o in personal):
                return None
        who = describe_actor(event, person)
        names = ", ".join(personal)
        kinds = ", ".join(policy.categories_of(event.store, personal))
        if rule == "anomaly.export":
            scope = " without a data-subject predicate" if event.unbounded else ""
            text = f"{who} exported {names} ({kinds}) out of {event.store}{scope}."
        else:
            text = (
                f"{who} read {names} ({kinds}) without a data-subject predicate or with a "
                f"LIMIT above {policy.anomaly.limit_bound}: potentially every customer's data."
            )
        return (
            rule,
            policy.severity_of(rule),
            RULES[rule].controls,
            personal,
            text,
            policy.categories_of(event.store, personal),
        )
