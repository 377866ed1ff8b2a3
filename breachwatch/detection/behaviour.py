"""Behaviour detectors: what this actor has never done before.

Per actor (the staff person, else the account) a small profile is kept: when it was first
seen, how many events it has, a 24-bucket histogram of local hours (Europe/Brussels by
default; halved when large, so it decays), and the most recently used objects, stores,
client addresses and applications (each at most ``max_known``, least recently used dropped).
Until the profile is ``learning`` old AND has ``learning_events`` events, it only learns.

- ``behaviour.first_access``: first access to a store, or to a personal-data object (named as
  the data map names it, so ``/panel/clients/1234`` and ``/panel/clients/99`` are one object).
- ``behaviour.unusual_hour``: access or login at a local hour in which (with its neighbours)
  the actor has at most ``min_hour_share`` of their events (0: never).
- ``behaviour.new_client``: a client address the actor never used; ``behaviour.new_application``:
  an application never used (versions and editor tabs are cut: "DBeaver 24.1.0 - SQLEditor
  <Script-3.sql>" is "DBeaver").
- ``behaviour.denied_burst``: ``count`` refused statements of one actor within ``window``.
- ``auth.brute_force``: failed logins from ONE address against ``names`` distinct account
  names, or ``attempts`` failures, within ``window``. A single typo stays ``auth.failed_login``.

Every finding goes through the suppression layer with a cause key, so a night session of fifty
statements is one ``unusual_hour`` finding with a count, not fifty.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from breachwatch.detection.anomaly_policy import BehaviourPolicy
from breachwatch.detection.baseline import LocalWindows
from breachwatch.detection.findings import Finding, Severity
from breachwatch.detection.need_to_know import ACCESS_ACTIONS, PolicyView, describe_actor
from breachwatch.detection.policy import DataMapEntry
from breachwatch.detection.rules import RULES
from breachwatch.detection.suppression import Suppressor
from breachwatch.events import AccessEvent, Action, SourcePosition

HOUR_ACTIONS = ACCESS_ACTIONS | {Action.LOGIN}
# The members the per-event path compares with, as module names: ``Action.LOGIN`` goes
# through the enum type's attribute look-up, several times the cost of a global.
_LOGIN = Action.LOGIN
_LOGIN_FAILED = Action.LOGIN_FAILED
_DENIED = Action.DENIED
_HOUR_CAP = 10_000.0  # histogram total above which every bucket is halved (decay)
_VERSION = re.compile(r"^v?\d[\w.\-]*$")
_UNKNOWN_APPS = frozenset({"", "[unknown]", "unknown", "-"})
_UNKNOWN = "\0not cached"  # "not in the family cache" (compared by identity, never by value)
_CACHE_LIMIT = 4096  # keys come from log records: every cache below is bounded
# A key the profile remembers an access by, with the object as logged and its data-map entry
# (both None for the store's own key).
_Touch = tuple[str, str | None, DataMapEntry | None]


def app_family(application: str | None) -> str | None:
    """The application without version numbers and per-window suffixes."""
    if application is None:
        return None
    name = application.split(" - ", 1)[0].strip()
    name = name.split("/", 1)[0].strip()
    words = [w for w in name.split() if not _VERSION.match(w)]
    family = " ".join(words) or name
    return None if family.lower() in _UNKNOWN_APPS else family


@dataclass(slots=True)
class _Profile:
    first_seen: datetime
    events: int = 0
    days: int = 0  # distinct local days with activity
    last_day: int = -1
    hours: list[float] = field(default_factory=lambda: [0.0] * 24)
    # Least recently used first. OrderedDict for move_to_end: marking a known value as used
    # is one C call, where a dict needed a membership test, a delete and an insert.
    objects: OrderedDict[str, None] = field(default_factory=OrderedDict)
    clients: OrderedDict[str, None] = field(default_factory=OrderedDict)
    apps: OrderedDict[str, None] = field(default_factory=OrderedDict)
    denied: deque[tuple[datetime, SourcePosition]] = field(default_factory=deque)


class _ProfileState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    actor: str
    first_seen: AwareDatetime
    events: int
    days: int = 0
    last_day: int = -1
    hours: list[float]
    objects: list[str]
    clients: list[str]
    apps: list[str]


class _Attempt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    time: AwareDatetime
    name: str
    path: str
    offset: int
    line: int
    length: int


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1]
    profiles: list[_ProfileState]
    failures: dict[str, list[_Attempt]]


def _remember(known: OrderedDict[str, None], value: str, cap: int) -> bool:
    """Mark as recently used; True when it was not known."""
    try:
        known.move_to_end(value)
        return False
    except KeyError:
        known[value] = None
        if len(known) > cap:
            known.popitem(last=False)
        return True


def _burst(times: list[datetime], now: datetime, window: timedelta) -> list[int]:
    """Indexes of the largest group of ``times`` that holds ``now`` and spans less than
    ``window``. Sources reach the detector out of time order (two logs, backends flushing
    late), so the queue is in arrival order, not time order; in time order this is every
    entry after ``now - window``, as a front-pruned queue gives."""
    starts = sorted({t for t in times if now - window < t <= now})
    best: list[int] = []
    for start in starts:
        group = [i for i, t in enumerate(times) if start <= t < start + window]
        if len(group) > len(best):
            best = group
    return best


class BehaviourDetector:
    def __init__(
        self, view: PolicyView, config: BehaviourPolicy, suppressor: Suppressor | None = None
    ) -> None:
        self._view = view
        self.config = config
        self._suppressor = suppressor or Suppressor(timedelta(hours=1))
        self._local = LocalWindows(config.timezone, timedelta(days=1))
        self._exempt = frozenset(config.exempt_roles)
        self._profiles: dict[str, _Profile] = {}
        self._failures: dict[str, deque[tuple[datetime, str, SourcePosition]]] = {}
        # Pure functions of the policy and of logged strings, cached (bounded): the data-map
        # objects of an event's objects, and an application's family.
        self._touches: dict[tuple[str, tuple[str, ...]], tuple[_Touch, ...]] = {}
        self._families: dict[str | None, str | None] = {}
        self._persons = view.persons  # staff account -> person, per policy
        # The policy's numbers, read once (the config is frozen).
        self._enabled = config.enabled
        self._max_actors = config.max_actors
        self._learning_events = config.learning_events
        self._learning = config.learning
        self._unusual_hours = config.unusual_hours
        self._hour_learning_days = config.hour_learning_days
        # The last event time asked and its local hour and day (see __call__).
        self._clock_time: datetime | None = None
        self._clock_hour = 0
        self._clock_day = 0

    def learned(self, actor: str, now: datetime) -> bool:
        profile = self._profiles.get(actor)
        return profile is not None and self._learned(profile, now)

    def _learned(self, profile: _Profile, now: datetime) -> bool:
        return (
            profile.events >= self._learning_events and now - profile.first_seen >= self._learning
        )

    def __call__(self, event: AccessEvent) -> list[Finding]:
        # The per-event path keeps to the stateful parts (histogram, recency of objects,
        # clients, applications); attributes are read once into locals, and nothing is
        # allocated beyond the result list unless a check fires. Whether the profile is
        # learnt is only asked when a check could fire (it has no side effect).
        if not self._enabled:
            return []
        action = event.action
        found: list[Finding] = []
        if action is _LOGIN_FAILED:
            found += self._brute_force(event)
        actor = event.actor
        if self._exempt and self._exempt & self._view.roles_of(actor):
            return found
        person = self._persons.get(actor, event.person)
        key = person or actor
        time = event.time
        profile = self._profiles.get(key)
        if profile is None:
            profile = self._profiles[key] = _Profile(first_seen=time)
            if len(self._profiles) > self._max_actors:
                del self._profiles[next(iter(self._profiles))]
        if action in HOUR_ACTIONS:
            # Events come in runs of one timestamp (one datetime object): its local hour and
            # day are worked out once per run.
            if time is self._clock_time:
                hour = self._clock_hour
                day = self._clock_day
            else:
                local = self._local.local_seconds(time)
                hour = self._clock_hour = (local // 3600) % 24
                day = self._clock_day = local // 86400
                self._clock_time = time
            if (
                profile.days >= self._hour_learning_days
                and self._unusual_hours
                and self._learned(profile, time)
            ):
                found += self._hour(event, person, profile, hour, day)
            if day > profile.last_day:
                profile.days += 1
                profile.last_day = day
            hours = profile.hours
            count = hours[hour] + 1.0
            hours[hour] = count
            if count > _HOUR_CAP:
                profile.hours = [h / 2 for h in hours]
            # Novelty (HOUR_ACTIONS are its actions too), inlined: the common case (everything
            # known) only marks values as used, one C call each (OrderedDict.move_to_end
            # raises for a new value), and builds no text until something is new.
            if action is not _LOGIN:
                store = event.store
                touches = self._touches.get((store, event.objects))
                if touches is None:
                    touches = self._touches_of(store, event.objects)
                move = profile.objects.move_to_end
                for touched, obj, entry in touches:
                    try:
                        move(touched)
                    except KeyError:
                        found += self._first_access(event, person, profile, touched, obj, entry)
            client = event.client
            if client:
                try:
                    profile.clients.move_to_end(client)
                except KeyError:
                    found += self._new_client(event, person, profile, client)
            application = event.application
            family = self._families.get(application, _UNKNOWN)
            if family is _UNKNOWN:
                family = self._family(application)
            if family:
                try:
                    profile.apps.move_to_end(family)
                except KeyError:
                    found += self._new_application(event, person, profile, family)
        elif action is _DENIED:
            found += self._denied(event, person, profile)
        profile.events += 1
        return found

    # ---- the checks -------------------------------------------------------------------
    def _emit(
        self,
        rule: str,
        event: AccessEvent,
        person: str | None,
        text: str,
        cause: str,
        *,
        objects: tuple[str, ...] = (),
        evidence: tuple[SourcePosition, ...] = (),
        window: timedelta | None = None,
        actor: str | None = None,
        severity: Severity | None = None,
    ) -> list[Finding]:
        result = Finding(
            rule=rule,
            severity=severity or self._view.severity_of(rule),
            time=event.time,
            actor=actor or event.actor,
            store=event.store,
            explanation=text,
            controls=RULES[rule].controls,
            evidence=evidence or (event.position,),
            person=person,
            objects=objects,
            subjects=event.subjects,
            categories=self._view.categories_of(event.store, objects) if objects else (),
        )
        admitted = self._suppressor.admit(result, cause, window=window)
        return [admitted] if admitted is not None else []

    def _hour(
        self, event: AccessEvent, person: str | None, profile: _Profile, hour: int, day: int
    ) -> list[Finding]:
        hours = profile.hours
        near = hours[(hour - 1) % 24] + hours[hour] + hours[(hour + 1) % 24]
        total = sum(hours)
        if total <= 0 or near > self.config.min_hour_share * total:
            return []
        usual = [h for h in range(24) if hours[h] > 0]
        span = ", ".join(f"{h:02d}h" for h in usual[:12]) + ("…" if len(usual) > 12 else "")
        share = 100.0 * near / total
        text = (
            f"{describe_actor(event, person)} was active at {hour:02d}:xx "
            f"({self._local.zone.key}), an hour in which they have {share:.0f}% of their "
            f"{profile.events:,} events (usual hours: {span})."
        )
        return self._emit(
            "behaviour.unusual_hour",
            event,
            person,
            text,
            f"day:{day}:{hour}",
            objects=tuple(o for o in event.objects if self._view.is_personal(event.store, o)),
        )

    def _touches_of(self, store: str, objects: tuple[str, ...]) -> tuple[_Touch, ...]:
        """The profile keys an access touches, in order: the store's (with no object and no
        entry), then each data-map object's."""
        key = (store, objects)
        found = self._touches.get(key)
        if found is None:
            touches: list[_Touch] = [(f"store:{store}", None, None)]
            for obj in objects:
                entry = self._view.data_entry(store, obj)
                if entry is not None:
                    touches.append((f"{store}|{entry.object}", obj, entry))
            found = tuple(touches)
            if len(self._touches) >= _CACHE_LIMIT:
                self._touches.clear()
            self._touches[key] = found
        return found

    def _family(self, application: str | None) -> str | None:
        try:
            return self._families[application]
        except KeyError:
            family = app_family(application)
            if len(self._families) >= _CACHE_LIMIT:
                self._families.clear()
            self._families[application] = family
            return family

    def _new_client(
        self, event: AccessEvent, person: str | None, profile: _Profile, client: str
    ) -> list[Finding]:
        return self._novel(
            event,
            person,
            profile,
            profile.clients,
            client,
            "behaviour.new_client",
            f"client:{client}",
            f"connected from {client}, an address",
        )

    def _new_application(
        self, event: AccessEvent, person: str | None, profile: _Profile, family: str
    ) -> list[Finding]:
        return self._novel(
            event,
            person,
            profile,
            profile.apps,
            family,
            "behaviour.new_application",
            f"app:{family}",
            f"used the application {event.application!r},",
        )

    def _first_access(
        self,
        event: AccessEvent,
        person: str | None,
        profile: _Profile,
        key: str,
        obj: str | None,
        entry: DataMapEntry | None,
    ) -> list[Finding]:
        """``key`` is new to the profile: remember it, and say so once the profile is learnt."""
        config = self.config
        _remember(profile.objects, key, config.max_known)
        if not (config.first_access and self._learned(profile, event.time)):
            return []
        who = describe_actor(event, person)
        if obj is None or entry is None:
            text = f"{who} accessed the store {event.store} for the first time."
            return self._emit("behaviour.first_access", event, person, text, key)
        text = (
            f"{who} accessed {obj} ({', '.join(entry.categories)}) in {event.store} for the "
            f"first time after {profile.events:,} events since {profile.first_seen:%Y-%m-%d}."
        )
        return self._emit(
            "behaviour.first_access", event, person, text, f"object:{key}", objects=(obj,)
        )

    def _novel(
        self,
        event: AccessEvent,
        person: str | None,
        profile: _Profile,
        known: OrderedDict[str, None],
        value: str,
        rule: str,
        cause: str,
        what: str,
    ) -> list[Finding]:
        """``value`` is new among the actor's ``known`` clients or applications: remember it,
        and say so once the profile is learnt (``new_client`` switches both). ``what`` is the
        sentence's middle, e.g. "connected from 10.0.0.9, an address"."""
        config = self.config
        before = list(known)[-5:]  # the recent ones, as they were before this event
        _remember(known, value, config.max_known)
        if not (config.new_client and self._learned(profile, event.time)):
            return []
        text = (
            f"{describe_actor(event, person)} {what} not seen for them before "
            f"(known: {', '.join(before) or 'none'})."
        )
        return self._emit(rule, event, person, text, cause)

    def _denied(self, event: AccessEvent, person: str | None, profile: _Profile) -> list[Finding]:
        burst = self.config.denied_burst
        queue = profile.denied
        queue.append((event.time, event.position))
        horizon = event.time - burst.window
        while queue and queue[0][0] <= horizon:
            queue.popleft()
        while len(queue) > 4 * burst.count:  # memory bound; out-of-order entries wait here
            queue.popleft()
        group = [queue[i] for i in _burst([t for t, _ in queue], event.time, burst.window)]
        if len(group) < burst.count:
            return []
        group = group[-burst.count :]
        seconds = (max(t for t, _ in group) - min(t for t, _ in group)).total_seconds()
        text = (
            f"{describe_actor(event, person)} was refused {len(group)} times in "
            f"{seconds:.0f} s (burst threshold {burst.count} within "
            f"{int(burst.window.total_seconds() // 60)} min)."
        )
        return self._emit(
            "behaviour.denied_burst",
            event,
            person,
            text,
            "denied",
            objects=event.objects,
            evidence=(event.position, *(p for _, p in group if p != event.position)),
            window=burst.window,
        )

    def _brute_force(self, event: AccessEvent) -> list[Finding]:
        config = self.config.brute_force
        address = event.client or "unknown address"
        queue = self._failures.get(address)
        if queue is None:
            queue = self._failures[address] = deque()
            if len(self._failures) > self.config.max_actors:
                del self._failures[next(iter(self._failures))]
        queue.append((event.time, event.actor, event.position))
        horizon = event.time - config.window
        while queue and queue[0][0] <= horizon:
            queue.popleft()
        while len(queue) > 4 * config.attempts:
            queue.popleft()
        group = [queue[i] for i in _burst([t for t, _, _ in queue], event.time, config.window)]
        names = list(dict.fromkeys(name for _, name, _ in group))
        if len(names) < config.names and len(group) < config.attempts:
            return []
        seconds = (max(t for t, _, _ in group) - min(t for t, _, _ in group)).total_seconds()
        text = (
            f"{len(group)} failed logins from {address} against {len(names)} account names "
            f"({', '.join(names[:8])}) within {seconds:.0f} s: password guessing, not a typo "
            f"(threshold {config.names} names or {config.attempts} attempts within "
            f"{int(config.window.total_seconds() // 60)} min)."
        )
        return self._emit(
            "auth.brute_force",
            event,
            None,
            text,
            f"address:{address}",
            evidence=(event.position, *(p for _, _, p in group if p != event.position)),
            window=config.window,
            actor=f"address:{address}",
        )

    # ---- persistence ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        profiles = [
            _ProfileState(
                actor=key,
                first_seen=p.first_seen,
                events=p.events,
                days=p.days,
                last_day=p.last_day,
                hours=list(p.hours),
                objects=list(p.objects),
                clients=list(p.clients),
                apps=list(p.apps),
            )
            for key, p in self._profiles.items()
        ]
        failures = {
            address: [
                _Attempt(
                    time=t,
                    name=name,
                    path=pos.path,
                    offset=pos.offset,
                    line=pos.line,
                    length=pos.length,
                )
                for t, name, pos in queue
            ]
            for address, queue in self._failures.items()
            if queue
        }
        return _State(version=1, profiles=profiles, failures=failures).model_dump(mode="json")

    def restore(self, data: Any) -> None:
        saved = _State.model_validate(data)
        cap = self.config.max_known
        profiles: dict[str, _Profile] = {}
        for p in saved.profiles[-self.config.max_actors :]:
            if len(p.hours) != 24:
                raise ValueError("an hour histogram has 24 buckets")
            profiles[p.actor] = _Profile(
                first_seen=p.first_seen,
                events=p.events,
                days=p.days,
                last_day=p.last_day,
                hours=list(p.hours),
                objects=OrderedDict.fromkeys(p.objects[-cap:]),
                clients=OrderedDict.fromkeys(p.clients[-cap:]),
                apps=OrderedDict.fromkeys(p.apps[-cap:]),
            )
        failures = {
            address: deque(
                (a.time, a.name, SourcePosition(a.path, a.offset, a.line, a.length))
                for a in attempts
            )
            for address, attempts in saved.failures.items()
        }
        self._profiles = profiles
        self._failures = failures
