"""The detection policy: who the people are, which objects hold personal data, who may do what.

Loaded once from a YAML file (``config/policy.yml`` is a complete, valid example)::

    version: 1
    staff:                          # people and their accounts in every store
      - person: yasmine             # pseudonymous id used in findings; unique
        accounts: [yasmine_helpdesk]  # an account belongs to exactly one person
        roles: [helpdesk]
        status: active              # active | suspended | left
    service_accounts:
      - account: svc_shop
        roles: [webshop]
    data_map:                       # which store objects hold personal data
      - object: clients.accounts    # exact name, or a glob like "webmail.*"
        store: "*"                  # a configured source name, or "*" (default)
        categories: [identity, contact]
        subject_column: id          # column naming the data subject; optional
        identifying_columns: [email]  # also single out one subject (web-shop login); optional
    grants:
      - role: helpdesk
        objects: [clients.accounts, "webmail.*"]  # names/globs, and/or
        categories: [identity, contact]           # data categories
        actions: [read, write]                    # values of breachwatch.events.Action
    anomaly:
      distinct_subjects: {window: 10m, threshold: 50, exempt_roles: [webshop]}
      unbounded_reads: true
      limit_bound: 100              # a LIMIT above this makes a read "unbounded"
    severity:                       # optional per-rule overrides
      ntk.outside_grants: high

Durations are a whole number followed by s, m, h or d ("90s", "10m", "2h", "1d").

Lookup semantics:

- ``data_entry``: an exact object name beats a glob; at equal kind an entry for the store
  beats a ``"*"`` entry; among globs the first in file order wins.
- A grant covers an object when one of its ``objects`` matches the name, or when the object's
  data categories are ALL among the grant's ``categories`` (a grant for "identity" must not
  open a table that also holds billing data).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from breachwatch.detection.anomaly_policy import DetectionPolicy
from breachwatch.detection.casework import Casework
from breachwatch.detection.findings import Severity
from breachwatch.detection.hours import Schedule
from breachwatch.detection.policy_types import duration_parser, duration_renderer
from breachwatch.detection.registry import Registry
from breachwatch.detection.rules import RULES
from breachwatch.detection.transfers import Transfers
from breachwatch.events import Action
from breachwatch.yamlconf import load_yaml_model

# Object names come from log records (nginx paths can embed ids), so the lookup caches
# must not grow with the log; past this many keys the oldest are dropped.
_CACHE_LIMIT = 4096

# Policy durations take no years ("y"): windows and suppression spans are short.
_parse_duration = duration_parser("smhd")
format_duration = duration_renderer("smhd")


Duration = Annotated[
    timedelta, BeforeValidator(_parse_duration), PlainSerializer(format_duration, return_type=str)
]
Name = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StaffStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    LEFT = "left"


class StaffMember(_Model):
    person: Name
    accounts: tuple[Name, ...] = Field(min_length=1)
    roles: tuple[Name, ...] = ()
    status: StaffStatus = StaffStatus.ACTIVE
    team: Name | None = None  # cases assigned to the team count as the person's
    start: date | None = None  # employment start / end: use outside them is "departed"
    end: date | None = None

    def departed_at(self, when: datetime) -> bool:
        """Whether the account must not be used at ``when`` (status, or after the end date
        even if nobody updated the status)."""
        if self.status is not StaffStatus.ACTIVE:
            return True
        day = when.date()
        return (self.end is not None and day > self.end) or (
            self.start is not None and day < self.start
        )


# Client applications that mean a person is typing (a service account must never show them).
INTERACTIVE_CLIENTS = (
    "psql",
    "pgAdmin*",
    "DBeaver*",
    "DataGrip*",
    "mysql",
    "mariadb",
    "MySQL Workbench*",
    "HeidiSQL*",
    "Navicat*",
    "TablePlus*",
)


class ServiceAccount(_Model):
    account: Name
    roles: tuple[Name, ...] = ()
    # What the service legitimately shows up as; empty = not checked. Once applications are
    # listed, an interactive client (``interactive_clients``: psql, DBeaver...) is a finding
    # even if it is listed too.
    applications: tuple[Name, ...] = ()  # globs on the application name
    sources: tuple[Name, ...] = ()  # addresses, CIDRs, "[local]", "localhost"


class DataMapEntry(_Model):
    object: Name
    store: Name = "*"
    categories: tuple[Name, ...] = Field(min_length=1)
    subject_column: Name | None = None
    identifying_columns: tuple[Name, ...] = ()
    archive: bool = False  # retention-only data: only the archive roles process it

    @property
    def is_glob(self) -> bool:
        return any(char in self.object for char in "*?[")


class SubjectLimit(_Model):
    window: Duration
    threshold: int = Field(ge=1)


class Grant(_Model):
    role: Name
    objects: tuple[Name, ...] = ()
    categories: tuple[Name, ...] = ()
    actions: tuple[Action, ...] = Field(min_length=1)
    # Conditions: all must hold for the grant to cover an access.
    ticket: bool = False  # an open case of the customer assigned to the person or team
    hours: Name | None = None  # a schedule in ``hours``
    max_subjects: SubjectLimit | None = None
    legal_reference: bool = False  # only with a recorded legal exception
    bulk: bool = False  # whole-table reads are part of the job (lists, batch runs)
    purpose: Name | None = None  # marketing, analytics, billing, support, ...

    @model_validator(mode="after")
    def _covers_something(self) -> Grant:
        if not self.objects and not self.categories:
            raise ValueError("a grant needs objects, categories or both")
        return self

    def matches_object(self, name: str) -> bool:
        return any(pattern == name or fnmatchcase(name, pattern) for pattern in self.objects)


class DistinctSubjects(_Model):
    window: Duration = timedelta(minutes=10)
    threshold: int = Field(default=50, ge=1)
    # Accounts whose job is to touch many customers (the web shop) would otherwise alert
    # every window.
    exempt_roles: tuple[Name, ...] = ()


class Anomaly(_Model):
    distinct_subjects: DistinctSubjects = DistinctSubjects()
    unbounded_reads: bool = True
    limit_bound: int = Field(default=100, ge=1)


class LegalException(_Model):
    """A recorded legal ground (court order, law-enforcement request) to access content."""

    id: Name
    person: Name | None = None  # None: anyone
    objects: tuple[Name, ...] = ()  # names/globs; empty: any
    subjects: tuple[Name, ...] = ()  # empty: any
    start: datetime
    end: datetime


class Telecom(_Model):
    """Communications content (e-communications secrecy): read only under a legal exception."""

    categories: tuple[Name, ...] = ("communications_content",)
    exceptions: tuple[LegalException, ...] = ()


class Privileged(_Model):
    roles: tuple[Name, ...] = ()
    change_windows: Name | None = None  # a schedule in ``hours``; None: never
    # DDL that does not change what is stored (routine maintenance), by command prefix.
    maintenance: tuple[Name, ...] = (
        "CREATE INDEX",
        "DROP INDEX",
        "REINDEX",
        "ANALYZE",
        "VACUUM",
        "CLUSTER",
        "COMMENT",
        "OPTIMIZE",
    )


class Marketing(_Model):
    purposes: tuple[Name, ...] = ("marketing",)
    # Registers a campaign must exclude (NOT EXISTS / NOT IN): objections, restrictions...
    must_exclude: tuple[Name, ...] = ()


class Retention(_Model):
    former_customer_after: Duration = timedelta(days=730)
    purposes: tuple[Name, ...] = ("marketing", "analytics")  # live purposes
    end_columns: tuple[Name, ...] = ("ends_on",)  # a filter "< ..." on these targets them


Actor = StaffMember | ServiceAccount
Loc = tuple[str | int, ...]


def _refuse(loc: Loc, value: Any, message: str) -> ValidationError:
    # Raised from the model validator with an absolute location, so that the loader can
    # point at the offending line instead of at the top of the file.
    error = PydanticCustomError("policy_reference", message)
    return ValidationError.from_exception_data(
        "Policy", [InitErrorDetails(type=error, loc=loc, input=value)]
    )


class Policy(_Model):
    version: Literal[1]
    staff: tuple[StaffMember, ...] = ()
    service_accounts: tuple[ServiceAccount, ...] = ()
    data_map: tuple[DataMapEntry, ...] = ()
    grants: tuple[Grant, ...] = ()
    anomaly: Anomaly = Anomaly()
    detection: DetectionPolicy = DetectionPolicy()  # baselines, behaviour, Sigma
    severity: dict[str, Severity] = Field(default_factory=dict)
    hours: dict[Name, Schedule] = Field(default_factory=dict)
    casework: Casework | None = None
    registry: Registry | None = None
    transfers: Transfers = Transfers()
    telecom: Telecom = Telecom()
    archive_roles: tuple[Name, ...] = ("finance", "legal")
    privileged: Privileged = Privileged()
    marketing: Marketing = Marketing()
    retention: Retention = Retention()
    interactive_clients: tuple[Name, ...] = INTERACTIVE_CLIENTS

    _base: Path = PrivateAttr(default_factory=Path.cwd)
    _actors: dict[str, Actor] = PrivateAttr(default_factory=dict)
    _exact: dict[tuple[str, str], DataMapEntry] = PrivateAttr(default_factory=dict)
    _globs: tuple[DataMapEntry, ...] = PrivateAttr(default=())
    _entry_cache: dict[tuple[str, str], DataMapEntry | None] = PrivateAttr(default_factory=dict)
    _grant_cache: dict[tuple[frozenset[str], str, str, Action], bool] = PrivateAttr(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _cross_check(self) -> Policy:
        owners: dict[str, str] = {}
        persons: dict[str, int] = {}
        for i, member in enumerate(self.staff):
            if member.person in persons:
                first = f"staff.{persons[member.person]}"
                raise _refuse(
                    ("staff", i, "person"),
                    member.person,
                    f"person {member.person!r} is already listed at {first}; "
                    "list all of a person's accounts in one entry",
                )
            persons[member.person] = i
            for j, account in enumerate(member.accounts):
                if account in owners:
                    raise _refuse(
                        ("staff", i, "accounts", j),
                        account,
                        f"account {account!r} is already listed at {owners[account]}; "
                        "an account belongs to exactly one person",
                    )
                owners[account] = f"staff.{i} ({member.person})"
        for i, service in enumerate(self.service_accounts):
            if service.account in owners:
                raise _refuse(
                    ("service_accounts", i, "account"),
                    service.account,
                    f"account {service.account!r} is already listed at {owners[service.account]}",
                )
            owners[service.account] = f"service_accounts.{i}"
        for i, grant in enumerate(self.grants):
            if grant.hours is not None and grant.hours not in self.hours:
                raise _refuse(
                    ("grants", i, "hours"),
                    grant.hours,
                    f"no schedule {grant.hours!r} in hours; known: {sorted(self.hours)}",
                )
            if grant.ticket and self.casework is None:
                raise _refuse(
                    ("grants", i, "ticket"), True, "a ticket condition needs a casework section"
                )
        windows = self.privileged.change_windows
        if windows is not None and windows not in self.hours:
            raise _refuse(
                ("privileged", "change_windows"),
                windows,
                f"no schedule {windows!r} in hours; known: {sorted(self.hours)}",
            )
        for rule in self.severity:
            if rule not in RULES:
                raise _refuse(
                    ("severity", rule),
                    rule,
                    f"unknown rule {rule!r}; known rules: {', '.join(sorted(RULES))}",
                )
        return self

    def model_post_init(self, context: Any, /) -> None:
        for member in self.staff:
            for account in member.accounts:
                self._actors[account] = member
        for service in self.service_accounts:
            self._actors[service.account] = service
        globs: list[DataMapEntry] = []
        for entry in self.data_map:
            if entry.is_glob:
                globs.append(entry)
            else:
                self._exact.setdefault((entry.store, entry.object), entry)
        self._globs = tuple(globs)

    @property
    def base_dir(self) -> Path:
        """The directory relative reference paths are resolved against."""
        return self._base

    def resolve_actor(self, account: str) -> Actor | None:
        return self._actors.get(account)

    def roles_of(self, account: str) -> frozenset[str]:
        actor = self._actors.get(account)
        return frozenset(actor.roles) if actor is not None else frozenset()

    def severity_of(self, rule: str) -> Severity:
        return self.severity.get(rule, RULES[rule].default_severity)

    def data_entry(self, store: str, obj: str) -> DataMapEntry | None:
        """The data-map entry for an object, or None when it holds no personal data."""
        key = (store, obj)
        try:
            return self._entry_cache[key]
        except KeyError:
            pass
        found = self._exact.get(key) or self._exact.get(("*", obj))
        if found is None:
            matching = [e for e in self._globs if fnmatchcase(obj, e.object)]
            found = next((e for e in matching if e.store == store), None) or next(
                (e for e in matching if e.store == "*"), None
            )
        _remember(self._entry_cache, key, found)
        return found

    def categories_of(self, store: str, objects: Iterable[str]) -> tuple[str, ...]:
        """Data categories of the objects, each once, in order of first appearance."""
        seen: dict[str, None] = {}
        for obj in objects:
            entry = self.data_entry(store, obj)
            if entry is not None:
                seen.update(dict.fromkeys(entry.categories))
        return tuple(seen)

    def subject_columns(self, store: str | None = None) -> dict[str, str]:
        """Object name or glob -> column naming the data subject, for the SQL enricher.

        With a store, entries of that store win over ``"*"`` entries; without one, the first
        entry in file order wins."""
        columns: dict[str, str] = {}
        for entry in self.data_map:
            if entry.subject_column is None:
                continue
            if store is None or entry.store == store:
                columns.setdefault(entry.object, entry.subject_column)
        if store is not None:
            for entry in self.data_map:
                if entry.subject_column is not None and entry.store == "*":
                    columns.setdefault(entry.object, entry.subject_column)
        return columns

    def identifying_columns(self) -> dict[str, tuple[str, ...]]:
        """Object -> further columns that single out one subject, for the SQL enricher
        (``WHERE email = $1`` is a lookup of one customer, not a table scan)."""
        columns: dict[str, tuple[str, ...]] = {}
        for entry in self.data_map:
            if entry.identifying_columns:
                columns.setdefault(entry.object, entry.identifying_columns)
        return columns

    def covering_grants(
        self, roles: frozenset[str], store: str, obj: str, action: Action
    ) -> tuple[Grant, ...]:
        """Every grant of ``roles`` that covers ``action`` on ``obj`` (conditions aside)."""
        entry = self.data_entry(store, obj)
        return tuple(
            grant
            for grant in self.grants
            if grant.role in roles
            and action in grant.actions
            and (
                grant.matches_object(obj)
                or (entry is not None and set(entry.categories) <= set(grant.categories))
            )
        )

    def is_granted(self, roles: frozenset[str], store: str, obj: str, action: Action) -> bool:
        key = (roles, store, obj, action)
        cached = self._grant_cache.get(key)
        if cached is None:
            cached = self._evaluate_grants(roles, store, obj, action)
            _remember(self._grant_cache, key, cached)
        return cached

    def _evaluate_grants(self, roles: frozenset[str], store: str, obj: str, action: Action) -> bool:
        entry = self.data_entry(store, obj)
        for grant in self.grants:
            if grant.role not in roles or action not in grant.actions:
                continue
            if grant.matches_object(obj):
                return True
            if entry is not None and set(entry.categories) <= set(grant.categories):
                return True
        return False


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        del cache[next(iter(cache))]
    cache[key] = value


def load_policy(path: Path) -> Policy:
    """Read and check a policy file; refuses it with a ConfigError (file, line, key path).
    Relative reference paths (cases, registry) are relative to the file's directory."""
    policy = load_yaml_model(Policy, path)
    policy._base = path.resolve().parent
    return policy
