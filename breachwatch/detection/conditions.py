"""Policy conditions beyond "which role may touch which object": cases, hours, subject limits,
legal exceptions, the data-subject registry, transfers, archives, privileged work.

:class:`PolicyConditionsDetector` is a detector like the others (``detector(event) ->
findings``; the event time is "now"). Reference data arrives as holders of immutable indexes
(:class:`breachwatch.detection.reference.Holder`), read once per event, so a reload swaps them
between two events. Its only own state: cases closed in the log, per-grant subject windows and
the web pages seen per account (navigation.py); snapshot()/restore() carry it over restarts.

Not judged here: unknown actors, accesses no grant covers and departed accounts (those are
:mod:`need_to_know`), bulk reads and exports (:mod:`volume`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from breachwatch.clock import Clock, SystemClock
from breachwatch.detection.casework import CaseIndex
from breachwatch.detection.conditions_state import dump_state, grant_key, load_state
from breachwatch.detection.findings import Finding
from breachwatch.detection.navigation import WEB_METHODS, Navigation
from breachwatch.detection.need_to_know import (
    ACCESS_ACTIONS,
    PolicyView,
    describe_actor,
    finding,
    is_aggregate,
    is_maintenance,
)
from breachwatch.detection.policy import (
    Grant,
    Policy,
    ServiceAccount,
    StaffMember,
    StaffStatus,
)
from breachwatch.detection.reference import Holder, open_table
from breachwatch.detection.registry import SubjectRegistry
from breachwatch.detection.transfers import address_matches
from breachwatch.events import AccessEvent, Action

_PROCESSING = frozenset({Action.WRITE, Action.DELETE, Action.EXPORT})
_READS = frozenset({Action.READ, Action.EXPORT})
_CACHE_LIMIT = 4096


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


@dataclass(slots=True)
class _Seen:
    """Distinct subjects of one actor under one grant, newest sighting per subject."""

    last: dict[str, datetime]
    quiet_until: datetime | None = None


def _exclusion_regex(table: str) -> re.Pattern[str]:
    name = re.escape(table.rsplit(".", 1)[-1])
    return re.compile(
        rf"NOT\s+(?:EXISTS|IN)\s*\(\s*SELECT\b[^()]*?\bFROM\s+[`\"]?(?:\w+[`\"]?\.[`\"]?)?{name}\b",
        re.IGNORECASE,
    )


def _reference_regex(table: str) -> re.Pattern[str]:
    name = re.escape(table.rsplit(".", 1)[-1])
    return re.compile(rf"\b(?:FROM|JOIN)\s+[`\"]?(?:\w+[`\"]?\.[`\"]?)?{name}\b", re.IGNORECASE)


class PolicyConditionsDetector:
    """Callable detector for the conditional rules of the policy (see the module docstring)."""

    def __init__(
        self,
        policy: Policy | PolicyView,
        cases: Holder[CaseIndex] | None = None,
        registry: Holder[SubjectRegistry] | None = None,
    ) -> None:
        self._view = view = policy if isinstance(policy, PolicyView) else PolicyView(policy)
        self._policy = p = view.policy
        self._cases = cases
        self._registry = registry
        self._casework = p.casework
        self._telecom = frozenset(p.telecom.categories)
        self._archive_roles = frozenset(p.archive_roles)
        self._privileged = frozenset(p.privileged.roles)
        self._change = p.hours.get(p.privileged.change_windows or "")
        self._marketing = frozenset(p.marketing.purposes)
        self._retention_purposes = frozenset(p.retention.purposes)
        self._exclusions = tuple((t, _exclusion_regex(t)) for t in p.marketing.must_exclude)
        self._references = tuple((t, _reference_regex(t)) for t in p.marketing.must_exclude)
        ends = "|".join(re.escape(c) for c in p.retention.end_columns) or "(?!)"
        self._targets_ended = re.compile(rf"\b(?:\w+\.)?(?:{ends})\s*<", re.IGNORECASE)
        self._owners: dict[str, frozenset[str]] = {}
        for member in p.staff:
            owners = {member.person, *member.accounts}
            if member.team:
                owners.add(member.team)
            self._owners.update(dict.fromkeys(member.accounts, frozenset(owners)))
        self._closed: dict[str, datetime] = {}
        self._seen: dict[tuple[str, int], _Seen] = {}
        self._grant_ids = {id(g): i for i, g in enumerate(p.grants)}
        self._entries: dict[tuple[str, str], tuple[bool, bool, bool]] = {}
        self._covering: dict[tuple[frozenset[str], str, str, Action], tuple[Grant, ...]] = {}
        # Rule plans: (actor, store, objects, action, application, client, names no subject)
        # -> True when no event with that key can raise anything here, whatever its time,
        # subjects or statement (see _always_quiet). Most events of a day repeat a handful of
        # keys; theirs then cost one look-up. A plan depends on the policy only (never on the
        # contents of the reference tables, which reload underneath), and a policy reload
        # builds a new detector. ``use_plans = False`` judges every event in full (tests
        # compare the two).
        self.use_plans = True
        self._plans: dict[tuple[Any, ...], bool] = {}
        self.holders: tuple[Holder[Any], ...] = tuple(h for h in (cases, registry) if h)
        self._navigation = Navigation(p.casework, cases)

    # ---- lookups (cached; object names come from logs, so caches are bounded) ------------
    def _entry(self, store: str, obj: str) -> tuple[bool, bool, bool]:
        """(personal, telecom content, archive) for an object."""
        key = (store, obj)
        found = self._entries.get(key)
        if found is None:
            entry = self._policy.data_entry(store, obj)
            found = (
                entry is not None,
                entry is not None and bool(self._telecom & set(entry.categories)),
                entry is not None and entry.archive,
            )
            _remember(self._entries, key, found)
        return found

    def _grants(
        self, roles: frozenset[str], store: str, obj: str, action: Action
    ) -> tuple[Grant, ...]:
        key = (roles, store, obj, action)
        found = self._covering.get(key)
        if found is None:
            found = self._policy.covering_grants(roles, store, obj, action)
            _remember(self._covering, key, found)
        return found

    # ---- the detector ----------------------------------------------------------------------
    def __call__(self, event: AccessEvent) -> list[Finding]:
        if event.action not in ACCESS_ACTIONS:
            return []
        if event.command in WEB_METHODS:  # (Navigation returns any other event untouched)
            event = self._navigation(event)  # web pages about the customer of their Referer
        if self._casework is not None and event.action is Action.WRITE:
            for case_id in self._casework.closed_cases(event):
                known = self._closed.get(case_id)
                if known is None or event.time < known:
                    self._closed[case_id] = event.time
        if self.use_plans and self._planned_quiet(event):
            return []
        personal = tuple(o for o in event.objects if self._entry(event.store, o)[0])
        if not personal:
            return []
        view = self._view
        actor = view.resolve_actor(event.actor)
        if isinstance(actor, StaffMember) and actor.departed_at(event.time):
            return []  # ntk.departed_account says it all
        roles = frozenset(actor.roles) if actor is not None else frozenset()
        privileged = bool(roles & self._privileged)
        aggregate = is_aggregate(event, view.identifying)
        if privileged and (aggregate or is_maintenance(event, self._policy)):
            return []  # statistics, counts, indexes: routine administration
        person = actor.person if isinstance(actor, StaffMember) else event.person
        out = _Findings(view, event, person)

        purposes = self._transfer(event, actor, out)
        self._content(event, person, personal, out)
        if personal and any(self._entry(event.store, o)[2] for o in personal):
            archived = tuple(o for o in personal if self._entry(event.store, o)[2])
            if not roles & self._archive_roles:
                out.add(
                    "privacy.archive_access",
                    f"{out.who} {_verb(event)} {', '.join(archived)}, which is archived "
                    "(retention only); only "
                    f"{', '.join(sorted(self._archive_roles))} may process archived data.",
                    archived,
                )
        if privileged and event.action in _READS and not self._in_change_window(event.time):
            out.add(
                "privileged.personal_read",
                f"{out.who}, a privileged account, {_verb(event)} {', '.join(personal)} "
                "outside a change window; administrators keep the data running, they do not "
                "read it.",
                personal,
            )
        if (
            event.action is Action.DDL
            and not is_maintenance(event, self._policy)
            and not self._in_change_window(event.time)
        ):
            out.add(
                "change.ddl_personal_table",
                f"{out.who} changed the structure of {', '.join(personal)} "
                f"({(event.command or 'DDL')}) outside a change window.",
                personal,
            )
        if actor is not None:
            granted = self._conditions(event, actor, roles, personal, out)
            if not purposes:  # a sub-processor's purpose is its contract's, not the account's
                purposes = granted
        self._registry_rules(event, personal, purposes, aggregate, out)
        return out.found

    def _planned_quiet(self, event: AccessEvent) -> bool:
        plan = (
            event.actor,
            event.store,
            event.objects,
            event.action,
            event.application,
            event.client,
            not event.subjects,
        )
        quiet = self._plans.get(plan)
        if quiet is None:
            quiet = self._always_quiet(event)
            _remember(self._plans, plan, quiet)
        return quiet

    def skips(self, event: AccessEvent) -> bool:
        """True when every event that agrees with ``event`` on action, command, actor, store,
        objects, application, client and naming subjects or not returns nothing here and
        changes no state, so a caller may skip it: the plan says quiet, and the event is
        neither a web request (pages seen) nor a write that may close a case."""
        if event.action not in ACCESS_ACTIONS:
            return True
        if (
            not self.use_plans
            or event.command in WEB_METHODS
            or (self._casework is not None and event.action is Action.WRITE)
        ):
            return False
        return self._planned_quiet(event)

    def _always_quiet(self, event: AccessEvent) -> bool:
        """Whether ``__call__`` returns nothing for every event sharing this one's actor,
        store, objects, action, application, client and naming subjects or not (the plan
        key), and changes no state beyond the closed cases and the pages seen (both recorded
        before the plan is consulted). Conservative: any rule whose outcome depends on the
        time, the subjects, the statement or the reference tables makes it False, and such
        events are judged in full. A rule added to ``__call__`` must be added here too."""
        store, action = event.store, event.action
        personal = tuple(o for o in event.objects if self._entry(store, o)[0])
        if not personal:
            return True
        actor = self._view.resolve_actor(event.actor)
        # A departed account's event is quiet here (ntk.departed_account's): whether a start
        # or end date makes this one departed does not matter when the rest is quiet too.
        if isinstance(actor, StaffMember) and actor.status is not StaffStatus.ACTIVE:
            return True
        roles = frozenset(actor.roles) if actor is not None else frozenset()
        if roles & self._privileged or action is Action.DDL:
            return False  # aggregates, maintenance, change windows: per statement and time
        if self._policy.transfers.identify(event) is not None:
            return False  # a processor's contract status depends on the date
        if isinstance(actor, ServiceAccount) and (actor.applications or actor.sources):
            return False
        if any(self._entry(store, o)[1] or self._entry(store, o)[2] for o in personal):
            return False  # telecom exceptions are dated; archive access is a finding
        if self._registry is not None and event.subjects:
            return False  # registers are per subject and reload underneath
        purposes: set[str] = set()
        if actor is not None:
            for obj in personal:
                grants = self._grants(roles, store, obj, action)
                if not grants:
                    continue  # ntk.outside_grants, not judged here
                first = grants[0]
                if (
                    first.hours is not None
                    or first.legal_reference
                    or first.ticket
                    or first.max_subjects is not None
                ):
                    return False  # hours, exceptions, cases, subject windows: per event
                if first.purpose:
                    purposes.add(first.purpose)
        # Marketing, retention and analytics rules read the statement.
        return not purposes & (self._marketing | self._retention_purposes | {"analytics"})

    # ---- state, committed with the offsets (see conditions_state) ----------------------
    def snapshot(self) -> dict[str, Any]:
        keys = [grant_key(g) for g in self._policy.grants]
        windows = {
            (who, keys[i]): (dict(seen.last), seen.quiet_until)
            for (who, i), seen in self._seen.items()
            if 0 <= i < len(keys)
        }
        return dump_state(self._closed, windows, self._navigation.snapshot())

    def restore(self, data: Any) -> None:
        closed, windows, pages = load_state(data)
        self._navigation.restore(pages)
        index = {grant_key(g): i for i, g in enumerate(self._policy.grants)}
        self._closed = closed
        self._seen = {
            (who, index[key]): _Seen(last, quiet)
            for (who, key), (last, quiet) in windows.items()
            if key in index
        }

    def _in_change_window(self, when: datetime) -> bool:
        return self._change is not None and self._change.in_window(when)

    def _transfer(
        self, event: AccessEvent, actor: StaffMember | ServiceAccount | None, out: _Findings
    ) -> set[str]:
        processor = self._policy.transfers.identify(event)
        if processor is not None:
            problem = processor.problem(event.time.date())
            if problem is not None:
                out.add(
                    "transfer.unapproved_processor",
                    f"Personal data ({', '.join(event.objects)}) went to {processor.name} "
                    f"({describe_actor(event, None)}), but {problem}.",
                    event.objects,
                )
            return {processor.purpose} if processor.purpose else set()
        if not isinstance(actor, ServiceAccount):
            return set()
        app = event.application
        interactive = self._policy.interactive_clients
        # Checked once the policy says what the service shows up as (its applications).
        if actor.applications and app and any(fnmatchcase(app, p) for p in interactive):
            out.add(
                "ntk.service_account_interactive",
                f"Service account {event.actor} was used with the interactive client {app!r}"
                f"{_from(event)}; service accounts are for their service only.",
                event.objects,
            )
        elif actor.sources and event.client and not address_matches(event.client, actor.sources):
            out.add(
                "ntk.service_account_interactive",
                f"Service account {event.actor} was used from {event.client}, which is not one "
                f"of its allowed sources ({', '.join(actor.sources)}).",
                event.objects,
            )
        elif (
            actor.applications and app and not any(fnmatchcase(app, p) for p in actor.applications)
        ):
            out.add(
                "transfer.unapproved_processor",
                f"Service account {event.actor} was used by {app!r}{_from(event)}, which is "
                "neither its own service nor an approved sub-processor: personal data "
                f"({', '.join(event.objects)}) left through an unapproved integration.",
                event.objects,
            )
        return set()

    def _content(
        self, event: AccessEvent, person: str | None, personal: tuple[str, ...], out: _Findings
    ) -> None:
        content = tuple(o for o in personal if self._entry(event.store, o)[1])
        if not content or self._has_exception(event, person, content):
            return
        out.add(
            "privacy.telecom_content",
            f"{out.who} {_verb(event)} communications content ({', '.join(content)}) with no "
            "recorded legal exception; it is covered by the secrecy of communications.",
            content,
        )

    def _has_exception(
        self, event: AccessEvent, person: str | None, objects: Iterable[str]
    ) -> bool:
        for exc in self._policy.telecom.exceptions:
            if not exc.start <= event.time < exc.end:
                continue
            if exc.person is not None and exc.person not in (person, event.actor):
                continue
            if exc.objects and not all(
                any(o == p or fnmatchcase(o, p) for p in exc.objects) for o in objects
            ):
                continue
            if exc.subjects and not (event.subjects and set(event.subjects) <= set(exc.subjects)):
                continue
            return True
        return False

    def _conditions(
        self,
        event: AccessEvent,
        actor: StaffMember | ServiceAccount,
        roles: frozenset[str],
        personal: tuple[str, ...],
        out: _Findings,
    ) -> set[str]:
        purposes: set[str] = set()
        failures: dict[str, tuple[str, set[str]]] = {}
        for obj in personal:
            grants = self._grants(roles, event.store, obj, event.action)
            if not grants:
                continue  # ntk.outside_grants
            best: dict[str, str] | None = None
            for grant in grants:
                failed = self._grant_failures(event, actor, grant, obj)
                if not failed:
                    best = {}
                    if grant.purpose:
                        purposes.add(grant.purpose)
                    break
                if best is None or len(failed) < len(best):
                    best = failed
            for rule, why in (best or {}).items():
                failures.setdefault(rule, (why, set()))[1].add(obj)
            if best:
                purposes.update(g.purpose for g in grants if g.purpose)
        for rule, (why, objs) in failures.items():
            names = tuple(o for o in personal if o in objs)
            out.add(rule, f"{out.who} {_verb(event)} {', '.join(names)}, but {why}.", names)
        return purposes

    def _grant_failures(
        self, event: AccessEvent, actor: StaffMember | ServiceAccount, grant: Grant, obj: str
    ) -> dict[str, str]:
        failed: dict[str, str] = {}
        person = actor.person if isinstance(actor, StaffMember) else None
        if grant.hours is not None:
            schedule = self._policy.hours[grant.hours]
            if not schedule.allows(event.time, person):
                local = schedule.local(event.time)
                failed["ntk.outside_hours"] = (
                    f"the grant of role {grant.role} holds only during {grant.hours} hours "
                    f"({schedule.timezone}) and it was {local:%a %H:%M} with no on-call duty"
                )
        if grant.legal_reference and not self._has_exception(event, person, (obj,)):
            failed["privacy.telecom_content"] = (
                f"the grant of role {grant.role} requires a recorded legal exception and none "
                "covers this access"
            )
        if grant.ticket and not self._casework_ok(event, obj):
            failed["ntk.no_open_case"] = self._case_reason(event, grant)
        if grant.max_subjects is not None and event.subjects:
            why = self._over_limit(event, grant)
            if why:
                failed["ntk.subject_limit"] = why
        return failed

    def _casework_ok(self, event: AccessEvent, obj: str) -> bool:
        casework = self._casework
        if casework is None or self._cases is None:
            return True
        if casework.is_case_object(obj):
            return True  # the work list itself
        index = self._cases.current
        subjects = event.subjects or self._subjects_by_case(event, index)
        if not subjects:
            # A search or list is bound to no case; a lookup by a key the log does not
            # record (a prepared statement's value) is bound to one, unknown here.
            return casework.pins_unlogged_key(event, self._view.identifying)
        owners = self._owners.get(event.actor, frozenset({event.actor}))
        return all(
            index.open_case(s, owners, event.time, self._closed) is not None for s in subjects
        )

    def _subjects_by_case(self, event: AccessEvent, index: CaseIndex) -> tuple[str, ...]:
        assert self._casework is not None
        cases = [index.by_case.get(c) for c in self._casework.named_cases(event)]
        return tuple(c.subject for c in cases if c is not None)

    def _case_reason(self, event: AccessEvent, grant: Grant) -> str:
        if not event.subjects:
            return (
                f"the grant of role {grant.role} needs an open case of the customer, and this "
                "access names no customer (a search or list is not bound to any case)"
            )
        owners = self._owners.get(event.actor, frozenset({event.actor}))
        index = self._cases.current if self._cases is not None else CaseIndex()
        missing = [
            s
            for s in event.subjects
            if index.open_case(s, owners, event.time, self._closed) is None
        ]
        parts = []
        for subject in missing[:5]:
            last = index.last_case(subject, owners)
            if last is None:
                parts.append(f"customer {subject} has no case assigned to them")
            else:
                closed = self._closed.get(last.case_id) or last.closed
                when = f" at {closed:%Y-%m-%d %H:%M}" if closed else ""
                parts.append(f"their case {last.case_id} of customer {subject} was closed{when}")
        return f"the grant of role {grant.role} needs an open case: " + "; ".join(parts)

    def _over_limit(self, event: AccessEvent, grant: Grant) -> str | None:
        limit = grant.max_subjects
        assert limit is not None
        key = (event.person or event.actor, self._grant_ids.get(id(grant), -1))
        seen = self._seen.setdefault(key, _Seen({}))
        for subject in event.subjects:
            seen.last[subject] = max(event.time, seen.last.get(subject, event.time))
        horizon = event.time - limit.window
        if len(seen.last) > limit.threshold:
            seen.last = {s: t for s, t in seen.last.items() if t > horizon}
        if len(seen.last) <= limit.threshold:
            return None
        if seen.quiet_until is not None and event.time < seen.quiet_until:
            return None
        seen.quiet_until = event.time + limit.window
        return (
            f"the grant of role {grant.role} allows at most {limit.threshold} distinct customers "
            f"per {_human(limit.window)} and this makes {len(seen.last)}"
        )

    def _registry_rules(
        self,
        event: AccessEvent,
        personal: tuple[str, ...],
        purposes: set[str],
        aggregate: bool,
        out: _Findings,
    ) -> None:
        marketing = bool(purposes & self._marketing)
        live = bool(purposes & self._retention_purposes)
        if self._registry is not None and event.subjects:
            registry = self._registry.current
            current = tuple(o for o in personal if not self._entry(event.store, o)[2])
            erased = [s for s in event.subjects if registry.erased(s, event.time)]
            if erased and current:
                out.add(
                    "gdpr.erased_subject",
                    f"{out.who} {_verb(event)} data of customer(s) {', '.join(erased)}, whose "
                    "erasure (Art. 17) is recorded as done.",
                    current,
                )
            restricted = [s for s in event.subjects if registry.restricted(s, event.time)]
            if restricted and (event.action in _PROCESSING or marketing):
                out.add(
                    "gdpr.restricted_subject",
                    f"{out.who} {_verb(event)} data of customer(s) {', '.join(restricted)} "
                    "under an Art. 18 restriction: only storage is allowed.",
                    personal,
                )
            if marketing:
                objected = [s for s in event.subjects if registry.objected(s, event.time)]
                if objected:
                    out.add(
                        "gdpr.marketing_objection",
                        f"{out.who} used customer(s) {', '.join(objected)} for marketing, "
                        "but they objected to marketing (Art. 21).",
                        personal,
                    )
            if live:
                cutoff = event.time - self._policy.retention.former_customer_after
                former = [
                    s
                    for s in event.subjects
                    if (end := registry.contract_ended(s)) is not None and end < cutoff
                ]
                if former:
                    out.add(
                        "gdpr.retention_expired",
                        f"{out.who} used data of former customer(s) {', '.join(former)} for "
                        f"{', '.join(sorted(purposes))}; their contract ended more than "
                        f"{_human(self._policy.retention.former_customer_after)} ago.",
                        personal,
                    )
        statement = event.statement
        if not statement or aggregate or event.action not in _READS:
            if "analytics" in purposes and not aggregate and event.action in _READS:
                self._analytics(event, personal, out)
            return
        if marketing:
            self._campaign(event, statement, personal, out)
        if live and self._targets_ended.search(statement):
            out.add(
                "gdpr.retention_expired",
                f"{out.who} selected customers by the end of their contract "
                f"({', '.join(self._policy.retention.end_columns)}) for "
                f"{', '.join(sorted(purposes))}: former customers' data is kept for retention "
                "only.",
                personal,
            )
        if "analytics" in purposes:
            self._analytics(event, personal, out)

    def _campaign(
        self, event: AccessEvent, statement: str, personal: tuple[str, ...], out: _Findings
    ) -> None:
        selected = [
            t
            for (t, ref), (_, excl) in zip(self._references, self._exclusions, strict=True)
            if ref.search(statement) and not excl.search(statement)
        ]
        if selected:
            out.add(
                "gdpr.marketing_objection",
                f"{out.who} selected customers for marketing through {', '.join(selected)} "
                "instead of excluding them: the register of objections and restrictions "
                "picks exactly the people who must not be contacted.",
                personal,
            )
        elif not event.subjects:
            missing = [t for t, excl in self._exclusions if not excl.search(statement)]
            if missing:
                out.add(
                    "gdpr.marketing_objection",
                    f"{out.who} built a marketing list from {', '.join(personal)} without "
                    f"excluding {', '.join(missing)} (objections, restrictions, erasures).",
                    personal,
                )

    def _analytics(self, event: AccessEvent, personal: tuple[str, ...], out: _Findings) -> None:
        out.add(
            "gdpr.analytics_identifiable",
            f"{out.who} read identifiable rows of {', '.join(personal)} for analytics; "
            "analytics works on aggregates or pseudonymised data.",
            personal,
        )


class _Findings:
    """The findings of one event, at most one per rule."""

    def __init__(self, view: PolicyView, event: AccessEvent, person: str | None) -> None:
        self._view = view
        self._event = event
        self._person = person
        self.who = describe_actor(event, person)
        self.found: list[Finding] = []
        self._rules: set[str] = set()

    def add(self, rule: str, explanation: str, objects: tuple[str, ...]) -> None:
        if rule in self._rules:
            return
        self._rules.add(rule)
        self.found.append(
            finding(
                self._view, rule, self._event, explanation, person=self._person, objects=objects
            )
        )


_VERBS = {
    Action.READ: "read",
    Action.WRITE: "wrote to",
    Action.DELETE: "deleted from",
    Action.EXPORT: "exported",
    Action.DDL: "ran DDL on",
}


def _verb(event: AccessEvent) -> str:
    return _VERBS.get(event.action, event.action.value)


def _from(event: AccessEvent) -> str:
    return f" from {event.client}" if event.client else ""


def _human(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def build_conditions(view: PolicyView, clock: Clock | None = None) -> PolicyConditionsDetector:
    """The detector with its reference tables opened from the policy (the shell part: reads
    the files or polls the URLs once now; ``detector.holders`` refresh them later)."""
    policy = view.policy
    clock = clock or SystemClock()
    cases: Holder[CaseIndex] | None = None
    registry: Holder[SubjectRegistry] | None = None
    if policy.casework is not None:
        casework = policy.casework
        cases = Holder(
            [open_table(casework.source, policy.base_dir, clock)],
            lambda tables: CaseIndex.build(casework, tables),
        )
    if policy.registry is not None and policy.registry.registers():
        config = policy.registry
        registry = Holder(
            [open_table(r.source, policy.base_dir, clock) for _, r in config.registers()],
            lambda tables: SubjectRegistry.build(config, tables),
        )
    return PolicyConditionsDetector(view, cases, registry)
