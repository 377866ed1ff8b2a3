"""Need-to-know rules: is this actor allowed to touch this personal data at all?

Stateless: each event is judged on its own against the policy. The rules, in the order a
finding list carries them:

- ``ntk.departed_account``: any event (login, failed login, denied, access) of an account
  whose person has status left or suspended. Such an account must not be used at all, so
  even a refused attempt is reported. Grants are not checked for these accounts: the use of
  the account is the finding, and a second one per statement would only add noise.
- ``ntk.unknown_actor``: an account that is neither staff nor a service account accesses a
  personal-data object.
- ``ntk.outside_grants``: staff or a service account accesses personal-data objects that no
  grant of its roles covers; one finding per event, naming every uncovered object.
- ``access.denied`` and ``auth.failed_login``: reported as they come, at low severity; the
  correlation of bursts (brute force) belongs to a later stage.

Objects absent from the data map hold no personal data and never raise an ntk finding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from breachwatch.detection.findings import Finding, Severity
from breachwatch.detection.policy import (
    DataMapEntry,
    Policy,
    ServiceAccount,
    StaffMember,
    StaffStatus,
)
from breachwatch.detection.rules import RULES
from breachwatch.events import AccessEvent, Action
from breachwatch.sql.analyze import analyze

ACCESS_ACTIONS = frozenset({Action.READ, Action.WRITE, Action.DELETE, Action.EXPORT, Action.DDL})

_PAST = {
    Action.READ: "read",
    Action.WRITE: "wrote to",
    Action.DELETE: "deleted from",
    Action.EXPORT: "exported",
    Action.DDL: "ran DDL on",
}
_ATTEMPT = {
    Action.LOGIN: "logged in",
    Action.LOGIN_FAILED: "tried to log in and failed",
    Action.DENIED: "was refused access",
    Action.OTHER: "ran an audited command",
}


_NO_ROLES: frozenset[str] = frozenset()

# Object names come from log records, so every cache keyed by them is bounded.
_CACHE_LIMIT = 4096


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def is_aggregate(event: AccessEvent, identifying: frozenset[str] = frozenset()) -> bool:
    """A read whose statement returns only aggregates (counts, sums), grouped by nothing in
    ``identifying`` (the data map's subject and identifying columns): statistics, not
    personal data. (The shape is cached per statement.)"""
    if event.action is not Action.READ or not event.statement:
        return False
    shape = analyze(event.statement)
    return shape.aggregate_only and not identifying.intersection(shape.group_columns)


def is_maintenance(event: AccessEvent, policy: Policy) -> bool:
    """DDL that does not change what is stored (indexes, statistics), by command prefix."""
    if event.action is not Action.DDL:
        return False
    texts = [t.lstrip().upper() for t in (event.command, event.statement) if t]
    prefixes = [p.upper() for p in policy.privileged.maintenance]
    return any(t.startswith(p) for t in texts for p in prefixes)


class PolicyView:
    """The policy lookups detectors make per event, in plain dicts.

    Policy keeps its indexes in pydantic private attributes, and each access to one goes
    through pydantic's ``__getattr__``: at one event per log line that was a third of the
    detection time. The view answers the same questions with the same semantics.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.anomaly = policy.anomaly
        self._actors: dict[str, StaffMember | ServiceAccount] = {}
        for member in policy.staff:
            self._actors.update(dict.fromkeys(member.accounts, member))
        for service in policy.service_accounts:
            self._actors[service.account] = service
        # Per account, resolved once: detectors ask for roles and person on every event, and
        # building the frozenset each time was a measurable share of the anomaly detectors.
        # The view is built per policy (a reload builds a new pipeline), so nothing goes stale.
        self._roles = {a: frozenset(actor.roles) for a, actor in self._actors.items()}
        self.persons: dict[str, str] = {
            a: actor.person for a, actor in self._actors.items() if isinstance(actor, StaffMember)
        }
        self._entries: dict[tuple[str, str], DataMapEntry | None] = {}
        self._personal_of: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
        self._severity = {rule: policy.severity_of(rule) for rule in RULES}
        self._personal: dict[tuple[str, str], bool] = {}
        self._categories: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
        self._granted: dict[tuple[frozenset[str], str, str, Action], bool] = {}
        self._bulk: dict[tuple[frozenset[str], str, str, Action], bool] = {}
        self.privileged_roles = frozenset(policy.privileged.roles)
        self.privileged_accounts = frozenset(
            a for a, roles in self._roles.items() if roles & self.privileged_roles
        )
        self.identifying = frozenset(
            column
            for entry in policy.data_map
            for column in (entry.subject_column, *entry.identifying_columns)
            if column
        )

    def resolve_actor(self, account: str) -> StaffMember | ServiceAccount | None:
        return self._actors.get(account)

    def roles_of(self, account: str) -> frozenset[str]:
        return self._roles.get(account, _NO_ROLES)

    def person_of(self, event: AccessEvent) -> str | None:
        """As :func:`person_of`, from the per-account table."""
        return self.persons.get(event.actor, event.person)

    def data_entry(self, store: str, obj: str) -> DataMapEntry | None:
        """``policy.data_entry`` through a plain dict (pydantic's private attributes are slow)."""
        key = (store, obj)
        try:
            return self._entries[key]
        except KeyError:
            found = self.policy.data_entry(store, obj)
            _remember(self._entries, key, found)
            return found

    def personal_objects(self, store: str, objects: tuple[str, ...]) -> tuple[str, ...]:
        """The objects that hold personal data, in order (the event's own tuple when all do)."""
        key = (store, objects)
        found = self._personal_of.get(key)
        if found is None:
            found = tuple(o for o in objects if self.is_personal(store, o))
            if found == objects:
                found = objects
            _remember(self._personal_of, key, found)
        return found

    def severity_of(self, rule: str) -> Severity:
        return self._severity[rule]

    def is_personal(self, store: str, obj: str) -> bool:
        key = (store, obj)
        found = self._personal.get(key)
        if found is None:
            found = self.policy.data_entry(store, obj) is not None
            _remember(self._personal, key, found)
        return found

    def categories_of(self, store: str, objects: Iterable[str]) -> tuple[str, ...]:
        key = (store, tuple(objects))
        found = self._categories.get(key)
        if found is None:
            found = self.policy.categories_of(store, key[1])
            _remember(self._categories, key, found)
        return found

    def is_granted(self, roles: frozenset[str], store: str, obj: str, action: Action) -> bool:
        key = (roles, store, obj, action)
        found = self._granted.get(key)
        if found is None:
            found = self.policy.is_granted(roles, store, obj, action)
            _remember(self._granted, key, found)
        return found

    def bulk_allowed(self, roles: frozenset[str], store: str, obj: str, action: Action) -> bool:
        """Whether a grant with ``bulk: true`` covers the access (lists are the job)."""
        key = (roles, store, obj, action)
        found = self._bulk.get(key)
        if found is None:
            grants = self.policy.covering_grants(roles, store, obj, action)
            found = any(g.bulk for g in grants)
            _remember(self._bulk, key, found)
        return found


def person_of(policy: Policy | PolicyView, event: AccessEvent) -> str | None:
    """The pseudonymous person behind the event's account, when it is staff."""
    if isinstance(policy, PolicyView):
        return policy.persons.get(event.actor, event.person)
    actor = policy.resolve_actor(event.actor)
    return actor.person if isinstance(actor, StaffMember) else event.person


def describe_actor(event: AccessEvent, person: str | None) -> str:
    """How findings name who did it: the pseudonymous person, with the account as logged."""
    if person is None:
        return f"account {event.actor}"
    return f"{person} (account {event.actor})"


def finding(
    policy: Policy | PolicyView,
    rule: str,
    event: AccessEvent,
    explanation: str,
    *,
    person: str | None,
    objects: tuple[str, ...],
) -> Finding:
    """A finding about one event, with controls and severity from the catalogue/policy."""
    # Positional: keyword arguments cost a third of the construction.
    return Finding(
        rule,
        policy.severity_of(rule),
        event.time,
        event.actor,
        event.store,
        explanation,
        RULES[rule].controls,
        (event.position,),
        person,
        objects,
        event.subjects,
        policy.categories_of(event.store, objects),
    )


class NeedToKnowDetector:
    """Callable detector: ``detector(event) -> list[Finding]``."""

    def __init__(self, policy: Policy | PolicyView) -> None:
        self._policy = policy if isinstance(policy, PolicyView) else PolicyView(policy)
        # (actor, store, objects, action) -> True when such an event raises nothing: the
        # verdict depends on nothing else, and most events of a day repeat one of a few keys.
        # For privileged accounts it also depends on whether the statement is an aggregate
        # (see _access), so their keys carry that too; nobody else pays the SQL look-up.
        self._quiet: dict[tuple[Any, ...], bool] = {}
        self._privileged = self._policy.privileged_accounts

    def __call__(self, event: AccessEvent) -> list[Finding]:
        actor = event.actor
        key: tuple[Any, ...] = (actor, event.store, event.objects, event.action)
        if actor in self._privileged:
            key = (*key, is_aggregate(event, self._policy.identifying))
        quiet = self._quiet.get(key)
        if quiet is None:
            quiet = self._is_quiet(event)
            _remember(self._quiet, key, quiet)
        return [] if quiet else self._judge(event)

    def skips(self, event: AccessEvent) -> bool:
        """True when every event that agrees with ``event`` on actor, store, objects and
        action raises nothing here (the detector keeps no state), so a caller may skip it."""
        if event.actor in self._privileged:
            return False  # the verdict also depends on the statement
        key = (event.actor, event.store, event.objects, event.action)
        quiet = self._quiet.get(key)
        if quiet is None:
            quiet = self._is_quiet(event)
            _remember(self._quiet, key, quiet)
        return quiet

    def _is_quiet(self, event: AccessEvent) -> bool:
        if event.action in (Action.DENIED, Action.LOGIN_FAILED):
            return False
        actor = self._policy.resolve_actor(event.actor)
        if isinstance(actor, StaffMember) and (
            actor.status is not StaffStatus.ACTIVE or actor.start or actor.end
        ):
            return False  # judged every time: the verdict depends on the date
        return not self._judge(event)

    def _judge(self, event: AccessEvent) -> list[Finding]:
        policy = self._policy
        actor = policy.resolve_actor(event.actor)
        person = actor.person if isinstance(actor, StaffMember) else event.person
        who = describe_actor(event, person)
        personal = tuple(o for o in event.objects if policy.is_personal(event.store, o))
        found: list[Finding] = []

        if isinstance(actor, StaffMember) and actor.departed_at(event.time):
            what = _what(event)
            if actor.status is not StaffStatus.ACTIVE:
                why = f"{actor.person} has status {actor.status.value}"
            elif actor.end is not None and event.time.date() > actor.end:
                why = f"{actor.person}'s employment ended on {actor.end}"
            else:
                why = f"{actor.person}'s employment starts on {actor.start}"
            found.append(
                finding(
                    policy,
                    "ntk.departed_account",
                    event,
                    f"{who} {what}, but {why}; the account must not be used.",
                    person=person,
                    objects=event.objects,
                )
            )
        elif event.action in ACCESS_ACTIONS and personal:
            found.extend(self._access(event, actor, who, person, personal))

        if event.action is Action.DENIED:
            reason = f" ({event.detail})" if event.detail else ""
            target = f" to {', '.join(event.objects)}" if event.objects else ""
            found.append(
                finding(
                    policy,
                    "access.denied",
                    event,
                    f"{who} was refused access{target}{reason}.",
                    person=person,
                    objects=event.objects,
                )
            )
        elif event.action is Action.LOGIN_FAILED:
            origin = f" from {event.client}" if event.client else ""
            found.append(
                finding(
                    policy,
                    "auth.failed_login",
                    event,
                    f"Failed login as {who}{origin}.",
                    person=person,
                    objects=event.objects,
                )
            )
        return found

    def _access(
        self,
        event: AccessEvent,
        actor: StaffMember | ServiceAccount | None,
        who: str,
        person: str | None,
        personal: tuple[str, ...],
    ) -> list[Finding]:
        policy = self._policy
        verb = _PAST[event.action]
        if actor is None:
            return [
                finding(
                    policy,
                    "ntk.unknown_actor",
                    event,
                    f"{who} {verb} {', '.join(personal)}, but the account belongs to no "
                    "known staff member or service account.",
                    person=person,
                    objects=personal,
                )
            ]
        roles = frozenset(actor.roles)
        if roles & policy.privileged_roles and is_aggregate(event, policy.identifying):
            return []  # counts and statistics are routine administration
        outside = tuple(
            o for o in personal if not policy.is_granted(roles, event.store, o, event.action)
        )
        if not outside:
            return []
        if roles:
            why = f"no grant of role(s) {', '.join(sorted(roles))} allows {event.action.value}"
        else:
            why = f"the account has no roles, so no grant allows {event.action.value}"
        return [
            finding(
                policy,
                "ntk.outside_grants",
                event,
                f"{who} {verb} {', '.join(outside)}, but {why} of {', '.join(outside)}.",
                person=person,
                objects=outside,
            )
        ]


def _what(event: AccessEvent) -> str:
    if event.action in _PAST:
        on = ", ".join(event.objects) or "the store"
        return f"{_PAST[event.action]} {on}"
    return f"{_ATTEMPT[event.action]} at {event.store}"


def resolve_person(policy: Policy | PolicyView) -> Callable[[AccessEvent], AccessEvent]:
    """An enrichment step that sets ``person`` on events of staff accounts."""
    view = policy if isinstance(policy, PolicyView) else PolicyView(policy)

    def enrich(event: AccessEvent) -> AccessEvent:
        actor = view.resolve_actor(event.actor)
        if isinstance(actor, StaffMember) and event.person != actor.person:
            return replace(event, person=actor.person)
        return event

    return enrich
