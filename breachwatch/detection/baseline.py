"""Per-actor volume baselines: is today unusual for THIS person, and for their peers?

For each actor (the staff person, else the account) the detector counts, per tumbling window
in local time (default: one Europe/Brussels day), the distinct data subjects read and the
statements that read personal data. When a window ends its counts join the actor's own
:class:`~breachwatch.detection.stats.DecayingReservoir` and that of the actor's peer group
(their first role). While a window is running, its count is compared with::

    limit = max(floor, ratio x usual p99, median + mad_k x 1.4826 x MAD)

computed from the actor's own history once it holds ``learning_windows`` windows (before
that, from the peer group's history, if that is learnt; otherwise nothing is said). Crossing
the limit is ``baseline.distinct_subjects`` / ``baseline.statements`` at the policy's
severity, one level higher when the count is also above the peers' limit or above twice the
actor's own. The suppression layer turns a crossing into ONE finding per window, emitted
again only when the severity rises.

Audit logs do not carry the number of rows a statement returned, so "rows" are measured as
statements touching personal data.

Seeding: ``seed`` names a CSV of past work (helpdesk cases: assignee, account_id, opened_at);
each (assignee, local day) becomes one past window of distinct subjects, so a first day is not
blind. A snapshot restored afterwards replaces the seed.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

from breachwatch.detection.anomaly_policy import BaselinePolicy, BaselineSeed
from breachwatch.detection.findings import Finding, Severity
from breachwatch.detection.need_to_know import PolicyView, describe_actor
from breachwatch.detection.policy import StaffMember
from breachwatch.detection.rules import RULES
from breachwatch.detection.stats import DecayingReservoir, Summary
from breachwatch.detection.suppression import Suppressor
from breachwatch.events import AccessEvent, Action, SourcePosition

COUNTED_ACTIONS = frozenset({Action.READ, Action.EXPORT})
SUBJECTS_RULE = "baseline.distinct_subjects"
STATEMENTS_RULE = "baseline.statements"
_SUBJECT_CAP = 100_000  # distinct subjects held per actor and window; beyond, counts saturate
_EVIDENCE = 20  # positions kept per window as evidence


class _ZoneOffsets:
    """UTC hour -> offset of one zone, and the last event time asked (by identity)."""

    __slots__ = ("by_hour", "last", "zone")

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self.by_hour: dict[int, int] = {}
        # (time, local seconds) of the last call, one tuple so that a reader in another
        # thread never pairs one call's time with another's result.
        self.last: tuple[datetime | None, int] = (None, 0)


# One table per zone name, shared by every LocalWindows of that zone: the baseline and the
# behaviour detector ask for the same event's local time one after the other.
_ZONES: dict[str, _ZoneOffsets] = {}


class LocalWindows:
    """Event time -> (window ordinal, window start) in a time zone, cached per UTC hour."""

    def __init__(self, zone: str, span: timedelta) -> None:
        self.zone = ZoneInfo(zone)
        self.seconds = int(span.total_seconds())
        shared = _ZONES.get(zone)
        if shared is None or shared.zone is not self.zone:
            shared = _ZONES[zone] = _ZoneOffsets(self.zone)
        self._zone = shared
        self._offsets = shared.by_hour

    def offset(self, time: datetime) -> int:
        return self._offset_at(int(time.timestamp()) // 3600)

    def _offset_at(self, hour: int) -> int:
        found = self._offsets.get(hour)
        if found is None:
            utc = datetime.fromtimestamp(hour * 3600, UTC)
            delta = utc.astimezone(self.zone).utcoffset()
            found = int(delta.total_seconds()) if delta is not None else 0
            if len(self._offsets) > 4096:
                self._offsets.clear()
            self._offsets[hour] = found
        return found

    def local_seconds(self, time: datetime) -> int:
        # zoneinfo is asked once per UTC hour (the table), timestamp() once per event.
        last_time, last_local = self._zone.last
        if time is last_time:
            return last_local
        stamp = int(time.timestamp())
        found = self._offsets.get(stamp // 3600)
        if found is None:
            found = self._offset_at(stamp // 3600)
        local = stamp + found
        self._zone.last = (time, local)
        return local

    def ordinal(self, time: datetime) -> int:
        return self.local_seconds(time) // self.seconds

    def start(self, ordinal: int) -> datetime:
        """Wall-clock start of a window, as a local datetime."""
        naive = datetime(1970, 1, 1) + timedelta(seconds=ordinal * self.seconds)
        return naive.replace(tzinfo=self.zone)

    def describe(self, ordinal: int) -> str:
        start = self.start(ordinal)
        if self.seconds == 86400:
            return f"on {start:%Y-%m-%d} ({self.zone.key} day)"
        end = start + timedelta(seconds=self.seconds)
        return f"between {start:%Y-%m-%d %H:%M} and {end:%H:%M} ({self.zone.key})"


def read_seed(seed: BaselineSeed, windows: LocalWindows) -> dict[str, dict[int, int]]:
    """account -> window ordinal -> distinct subjects, from a reference CSV."""
    subjects: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    with seed.path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            actor = (row.get(seed.actor_column) or "").strip()
            subject = (row.get(seed.subject_column) or "").strip()
            raw = (row.get(seed.time_column) or "").strip()
            if not actor or not subject or not raw:
                continue
            try:
                when = datetime.fromisoformat(raw)
            except ValueError:
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=windows.zone)
            if seed.before is not None and when.astimezone(windows.zone).date() >= seed.before:
                continue
            subjects[actor][windows.ordinal(when)].add(subject)
    return {a: {o: len(s) for o, s in per.items()} for a, per in subjects.items()}


@dataclass(slots=True)
class _Current:
    ordinal: int
    subjects: set[str] = field(default_factory=set)
    statements: int = 0
    evidence: list[SourcePosition] = field(default_factory=list)
    objects: dict[str, None] = field(default_factory=dict)
    # Counts at or below which _check cannot fire (max of floor and limit; inf while there
    # is no limit), valid while the detector's epoch is ``epoch``: limits change only when
    # a reservoir does (a window closes, a seed, a restore), and most events are far below.
    epoch: int = -1
    subjects_bound: float = 0.0
    statements_bound: float = 0.0


@dataclass(slots=True)
class _Actor:
    own_subjects: DecayingReservoir
    own_statements: DecayingReservoir
    group: str | None
    current: _Current | None = None


class _ActorState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    actor: str
    group: str | None
    subjects: list[list[float]]
    statements: list[list[float]]
    ordinal: int | None = None
    current_subjects: list[str] = []
    current_statements: int = 0


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1]
    actors: list[_ActorState]
    peers_subjects: dict[str, list[list[float]]]
    peers_statements: dict[str, list[list[float]]]


def _escalate(severity: Severity) -> Severity:
    order = [Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]
    return order[min(order.index(severity) + 1, len(order) - 1)]


def _num(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


class BaselineDetector:
    """``baseline.distinct_subjects`` and ``baseline.statements``."""

    def __init__(
        self, view: PolicyView, config: BaselinePolicy, suppressor: Suppressor | None = None
    ) -> None:
        self._view = view
        self.config = config
        self.windows = LocalWindows(config.timezone, config.window)
        self._suppressor = suppressor or Suppressor(config.window)
        self._exempt = frozenset(config.exempt_roles)
        self._actors: dict[str, _Actor] = {}
        self._peer_subjects: dict[str, DecayingReservoir] = {}
        self._peer_statements: dict[str, DecayingReservoir] = {}
        self._summaries: dict[tuple[int, int], Summary | None] = {}
        self._epoch = 0  # bumped whenever a reservoir changes (see _Current.epoch)
        # (account, store, objects) -> whether such an event is counted at all; and the
        # person of each staff account: both from the policy alone (bounded: keys are logged).
        self._counted: dict[tuple[str, str, tuple[str, ...]], bool] = {}
        self._persons = view.persons
        self._enabled = config.enabled  # (the config is frozen)
        # The last event time asked and its window ordinal (see __call__).
        self._clock_time: datetime | None = None
        self._clock_ordinal = 0
        if config.seed is not None:
            self.seed(read_seed(config.seed, self.windows))

    # ---- state ------------------------------------------------------------------------
    def _group_of(self, account: str) -> str | None:
        actor = self._view.resolve_actor(account)
        return actor.roles[0] if actor is not None and actor.roles else None

    def _actor(self, key: str, account: str) -> _Actor:
        found = self._actors.get(key)
        if found is None:
            config = self.config
            found = _Actor(
                DecayingReservoir(config.history, config.half_life),
                DecayingReservoir(config.history, config.half_life),
                self._group_of(account),
            )
            self._actors[key] = found
            if len(self._actors) > config.max_actors:
                del self._actors[next(iter(self._actors))]
        return found

    def _peers(self, table: dict[str, DecayingReservoir], group: str) -> DecayingReservoir:
        found = table.get(group)
        if found is None:
            found = table[group] = DecayingReservoir(
                self.config.peer_history, self.config.half_life
            )
        return found

    def seed(self, counts: dict[str, dict[int, int]]) -> None:
        """Past windows of distinct subjects per account (see :func:`read_seed`)."""
        self._epoch += 1
        for account, per in sorted(counts.items()):
            actor = self._view.resolve_actor(account)
            key = actor.person if isinstance(actor, StaffMember) else account
            state = self._actor(key, account)
            for ordinal, count in sorted(per.items()):
                state.own_subjects.add(ordinal, count)
                if state.group is not None:
                    self._peers(self._peer_subjects, state.group).add(ordinal, count)

    def _close(self, state: _Actor) -> None:
        current = state.current
        if current is None:
            return
        self._epoch += 1
        state.own_subjects.add(current.ordinal, len(current.subjects))
        state.own_statements.add(current.ordinal, current.statements)
        if state.group is not None:
            self._peers(self._peer_subjects, state.group).add(
                current.ordinal, len(current.subjects)
            )
            self._peers(self._peer_statements, state.group).add(current.ordinal, current.statements)
        state.current = None

    # ---- detection --------------------------------------------------------------------
    def __call__(self, event: AccessEvent) -> list[Finding]:
        if event.action not in COUNTED_ACTIONS or not self._enabled:
            return []
        actor = event.actor
        counted_key = (actor, event.store, event.objects)
        counted = self._counted.get(counted_key)
        if counted is None:
            counted = self._counts(event)
            if len(self._counted) >= 4096:
                self._counted.clear()
            self._counted[counted_key] = counted
        if not counted:
            return []
        person = self._persons.get(actor, event.person)
        key = person or actor
        state = self._actors.get(key)
        if state is None:
            state = self._actor(key, actor)
        # Events come in runs of one timestamp (one datetime object): its window ordinal is
        # worked out once per run.
        time = event.time
        if time is self._clock_time:
            ordinal = self._clock_ordinal
        else:
            windows = self.windows
            ordinal = self._clock_ordinal = windows.local_seconds(time) // windows.seconds
            self._clock_time = time
        current = state.current
        if current is not None and current.ordinal < ordinal:
            self._close(state)
            current = None
        if current is None:
            current = state.current = _Current(ordinal)
        elif current.ordinal > ordinal:
            return []  # a late record of a window already closed: too late to count
        subjects = current.subjects
        before = len(subjects)
        if before < _SUBJECT_CAP:
            subjects.update(event.subjects)
        statements = current.statements = current.statements + 1
        evidence = current.evidence
        if len(evidence) < _EVIDENCE:
            evidence.append(event.position)
        objects = current.objects
        if len(objects) < 32:
            for obj in event.objects:
                if obj not in objects:  # (an update would allocate a dict per event)
                    objects[obj] = None
        if current.epoch != self._epoch:
            self._bounds(state, current)
        count = len(subjects)
        if count > before and count > current.subjects_bound:
            found = self._check(event, person, key, state, SUBJECTS_RULE)
            if statements > current.statements_bound:
                found += self._check(event, person, key, state, STATEMENTS_RULE)
            return found
        if statements > current.statements_bound:
            return self._check(event, person, key, state, STATEMENTS_RULE)
        return []

    def _bounds(self, state: _Actor, current: _Current) -> None:
        config = self.config
        for rule, floor in (
            (SUBJECTS_RULE, config.floor_subjects),
            (STATEMENTS_RULE, config.floor_statements),
        ):
            _, own_limit, _, peer_limit = self._limits(state, rule, current.ordinal)
            limit = own_limit if own_limit is not None else peer_limit
            bound = math.inf if limit is None else max(float(floor), limit)
            if rule == SUBJECTS_RULE:
                current.subjects_bound = bound
            else:
                current.statements_bound = bound
        current.epoch = self._epoch

    def _counts(self, event: AccessEvent) -> bool:
        """Personal objects, by an account with no exempt role (depends on nothing else)."""
        view = self._view
        if not view.personal_objects(event.store, event.objects):
            return False
        return not (self._exempt and self._exempt & view.roles_of(event.actor))

    def _summary(self, reservoir: DecayingReservoir, ordinal: int) -> Summary | None:
        # Reservoirs change only when a window closes: summaries are cached per version.
        key = (reservoir.version, ordinal)
        if key not in self._summaries:
            if len(self._summaries) > 4096:
                self._summaries.clear()
            self._summaries[key] = reservoir.summary(ordinal, self.config.quantile)
        return self._summaries[key]

    def _limits(
        self, state: _Actor, rule: str, ordinal: int
    ) -> tuple[Summary | None, float | None, Summary | None, float | None]:
        config = self.config
        if rule == SUBJECTS_RULE:
            own_r, peers, floor = state.own_subjects, self._peer_subjects, config.floor_subjects
        else:
            own_r, peers, floor = (
                state.own_statements,
                self._peer_statements,
                config.floor_statements,
            )
        own = self._summary(own_r, ordinal)
        own_limit = None
        if own is not None and own.windows >= config.learning_windows:
            own_limit = own.limit(config.ratio, config.mad_k, floor)
        peer = None
        peer_limit = None
        if state.group is not None and state.group in peers:
            peer = self._summary(peers[state.group], ordinal)
            if peer is not None and peer.windows >= config.learning_windows:
                peer_limit = peer.limit(config.ratio, config.mad_k, floor)
        return own, own_limit, peer, peer_limit

    def _check(
        self, event: AccessEvent, person: str | None, key: str, state: _Actor, rule: str
    ) -> list[Finding]:
        current = state.current
        assert current is not None
        count = len(current.subjects) if rule == SUBJECTS_RULE else current.statements
        floor = (
            self.config.floor_subjects if rule == SUBJECTS_RULE else self.config.floor_statements
        )
        if count <= floor:
            return []
        own, own_limit, peer, peer_limit = self._limits(state, rule, current.ordinal)
        limit = own_limit if own_limit is not None else peer_limit
        if limit is None or count <= limit:
            return []
        severity = self._view.severity_of(rule)
        above_peers = peer_limit is not None and count > peer_limit
        if (own_limit is not None and (above_peers or count > 2 * own_limit)) or (
            own_limit is None and count > 2 * limit
        ):
            severity = _escalate(severity)
        text = self._explain(event, person, rule, count, own, own_limit, peer, peer_limit, state)
        subjects = tuple(sorted(current.subjects)) if rule == SUBJECTS_RULE else ()
        objects = tuple(current.objects)
        evidence = (event.position, *[p for p in current.evidence if p != event.position])
        result = Finding(
            rule=rule,
            severity=severity,
            time=event.time,
            actor=event.actor,
            store=event.store,
            explanation=text,
            controls=RULES[rule].controls,
            evidence=evidence,
            person=person,
            objects=objects,
            subjects=subjects,
            categories=self._view.categories_of(event.store, objects),
        )
        end = self.windows.start(current.ordinal + 1)
        remaining = max(end - event.time, timedelta(seconds=1))
        admitted = self._suppressor.admit(result, f"window:{current.ordinal}", window=remaining)
        return [admitted] if admitted is not None else []

    def _explain(
        self,
        event: AccessEvent,
        person: str | None,
        rule: str,
        count: int,
        own: Summary | None,
        own_limit: float | None,
        peer: Summary | None,
        peer_limit: float | None,
        state: _Actor,
    ) -> str:
        assert state.current is not None
        what = "distinct customers" if rule == SUBJECTS_RULE else "statements reading personal data"
        when = self.windows.describe(state.current.ordinal)
        parts = [f"{describe_actor(event, person)} read {count:,} {what} {when}, so far"]
        if own is not None and own_limit is not None:
            parts.append(
                f"usual {own.label} is {_num(own.high)} (median {_num(own.median)}, "
                f"{own.windows} past windows)"
            )
        else:
            have = own.windows if own is not None else 0
            parts.append(f"no own baseline yet ({have} of {self.config.learning_windows} windows)")
        if peer is not None and state.group is not None:
            parts.append(
                f"peers' ({state.group}) {peer.label} is {_num(peer.high)} "
                f"(median {_num(peer.median)})"
            )
        limit = own_limit if own_limit is not None else peer_limit
        assert limit is not None
        factor = count / own.high if own is not None and own.high > 0 else None
        tail = f"alert above {_num(limit)}"
        if factor is not None and own_limit is not None:
            tail += f"; {factor:.1f}x the usual {own.label if own else ''}"
        return "; ".join(parts) + f"; {tail}."

    # ---- persistence ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        actors = [
            _ActorState(
                actor=key,
                group=state.group,
                subjects=state.own_subjects.dump(),
                statements=state.own_statements.dump(),
                ordinal=state.current.ordinal if state.current else None,
                current_subjects=sorted(state.current.subjects) if state.current else [],
                current_statements=state.current.statements if state.current else 0,
            )
            for key, state in self._actors.items()
        ]
        return _State(
            version=1,
            actors=actors,
            peers_subjects={g: r.dump() for g, r in self._peer_subjects.items()},
            peers_statements={g: r.dump() for g, r in self._peer_statements.items()},
        ).model_dump(mode="json")

    def restore(self, data: Any) -> None:
        """Replace the state; a malformed snapshot raises ValueError and changes nothing."""
        saved = _State.model_validate(data)
        config = self.config
        actors: dict[str, _Actor] = {}
        for item in saved.actors[-config.max_actors :]:
            state = _Actor(
                DecayingReservoir(config.history, config.half_life),
                DecayingReservoir(config.history, config.half_life),
                item.group,
            )
            state.own_subjects.load(item.subjects)
            state.own_statements.load(item.statements)
            if item.ordinal is not None:
                state.current = _Current(
                    item.ordinal, set(item.current_subjects), item.current_statements
                )
            actors[item.actor] = state

        def tables(raw: dict[str, list[list[float]]]) -> dict[str, DecayingReservoir]:
            out: dict[str, DecayingReservoir] = {}
            for group, values in raw.items():
                out[group] = DecayingReservoir(config.peer_history, config.half_life)
                out[group].load(values)
            return out

        peers_subjects = tables(saved.peers_subjects)
        peers_statements = tables(saved.peers_statements)
        self._actors = actors
        self._peer_subjects = peers_subjects
        self._peer_statements = peers_statements
        self._summaries.clear()
        self._epoch += 1
