"""The one event type that flows through the pipeline.

Parsers make an :class:`AccessEvent` once, at the edge; everything after them (enrichment,
detectors, incidents) sees only these frozen values, never raw strings or dicts.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

_T = TypeVar("_T")
# from this many fields on, switching the class twice is cheaper than a setter call per field
_SWITCH_FIELDS = 12


def fast_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass a cheaper ``__init__`` with the same signature.

    The generated ``__init__`` sets each field through ``object.__setattr__`` (a call, an
    attribute lookup and a descriptor search per field, because the frozen ``__setattr__``
    refuses plain assignment); this one calls each slot's own setter, bound once. A class of
    many fields (the event: built once per log line) goes further: for the time of its
    construction the new instance becomes a twin subclass that only lifts the freeze
    (``__slots__ = ()``, same layout, so CPython allows the ``__class__`` switch), takes the
    fields as plain slot stores and is switched back, in about two thirds of the time. The
    two switches cost as much as ten setter calls, hence the threshold. Nothing else holds
    the instance before ``__init__`` returns, so nothing can see it unfrozen; an instance of
    a subclass (another layout) gets the setters. Default factories are not supported (use
    an immutable default instead).
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    building = type(
        f"_{cls.__name__}Building",
        (cls,),
        {
            "__slots__": (),
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
            "__module__": cls.__module__,
        },
    )
    namespace: dict[str, Any] = {"_cls": cls, "_building": building, "_set": object.__setattr__}
    params: list[str] = []
    for f in fields(cls):  # type: ignore[arg-type]
        if f.default_factory is not MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: default factories are not supported")
        if f.default is MISSING:
            params.append(f.name)
        else:
            namespace[f"_d_{f.name}"] = f.default
            params.append(f"{f.name}=_d_{f.name}")
        slot = next(k.__dict__[f.name] for k in cls.__mro__ if f.name in k.__dict__)
        namespace[f"_s_{f.name}"] = slot.__set__
    stores = "".join(f"        self.{n} = {n}\n" for n in names)
    setters = "".join(f"        _s_{n}(self, {n})\n" for n in names)
    if len(names) >= _SWITCH_FIELDS:
        body = (
            "    if type(self) is _cls:\n"
            "        _set(self, '__class__', _building)\n"
            f"{stores}"
            "        _set(self, '__class__', _cls)\n"
            "    else:\n"
            f"{setters}"
        )
    else:
        body = setters.replace("        ", "    ") or "    pass\n"
    exec(f"def __init__(self, {', '.join(params)}):\n{body}", namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


class Action(StrEnum):
    """What the actor did to the object, normalised across stores."""

    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    EXPORT = "export"
    DDL = "ddl"
    DENIED = "denied"  # the store refused the statement or request
    LOGIN = "login"  # a successful authentication
    LOGIN_FAILED = "login_failed"
    OTHER = "other"  # audited, but none of the above (ROLE class, SET, ...)


@fast_init
@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a record came from, for evidence: enough to find and hash the raw bytes again."""

    path: str
    offset: int  # byte offset of the record's first byte
    line: int  # 1-based number of the record's first line in that file
    length: int = 0  # bytes the record spans, newline(s) included
    # "dev:inode" of the file, set by the daemon: a rotated log reuses path and offsets, so
    # path@offset alone would make two records of two file generations look the same
    file_id: str = ""


@fast_init
@dataclass(frozen=True, slots=True)
class AccessEvent:
    """One access to a personal-data store, as the store's own audit trail reported it."""

    time: datetime  # timezone-aware
    store: str  # the configured source name, e.g. "pg-main"
    actor: str  # the account as logged (db role, app user, uid)
    action: Action
    position: SourcePosition
    objects: tuple[str, ...] = ()  # schema.table, path or endpoint
    subjects: tuple[str, ...] = ()  # data-subject (customer) ids the record reveals
    columns: tuple[str, ...] = ()  # columns touched, when known
    person: str | None = None  # staff member the actor resolved to, set by enrichment
    client: str | None = None  # client address
    application: str | None = None
    database: str | None = None
    session: str | None = None  # backend pid / connection id, to relate records
    command: str | None = None  # the store's own verb (SELECT, COPY, GET, ...)
    statement: str | None = None
    parameters: tuple[str, ...] = ()
    unbounded: bool = False  # a read of a personal-data object with no subject predicate
    detail: str | None = None  # e.g. the error message of a denied statement
    tags: frozenset[str] = frozenset()
