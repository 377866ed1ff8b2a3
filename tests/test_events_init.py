"""fast_init: the cheaper constructors of the frozen event types build the same values.

AccessEvent (19 fields) is built by switching the new instance's class for the time of its
construction; the smaller types by slot setters. Both must give what the dataclass's own
``__init__`` gives, stay frozen afterwards and keep subclasses intact.
"""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, datetime

import pytest

from breachwatch.events import AccessEvent, Action, SourcePosition, fast_init
from breachwatch.parsers.base import Line, Record

POSITION = SourcePosition("pg.log", 10, 2, 40, "8:1")
ARGS = (
    datetime(2026, 11, 30, 1, 8, 36, tzinfo=UTC),
    "pg-main",
    "tom",
    Action.READ,
    POSITION,
    ("clients.accounts",),
    ("1048",),
    ("id", "email"),
    "Tom",
    "10.0.0.1",
    "psql",
    "webhostdb",
    "4132",
    "SELECT",
    "SELECT id, email FROM clients.accounts WHERE id = 1048",
    ("1048",),
    True,
    "detail",
    frozenset({"stmt:2"}),
)


@dataclasses.dataclass(frozen=True, slots=True)
class _PlainEvent:  # AccessEvent's fields with the dataclass's own __init__
    time: datetime
    store: str
    actor: str
    action: Action
    position: SourcePosition
    objects: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    person: str | None = None
    client: str | None = None
    application: str | None = None
    database: str | None = None
    session: str | None = None
    command: str | None = None
    statement: str | None = None
    parameters: tuple[str, ...] = ()
    unbounded: bool = False
    detail: str | None = None
    tags: frozenset[str] = frozenset()


def _values(obj: object) -> tuple[object, ...]:
    return tuple(getattr(obj, f.name) for f in dataclasses.fields(obj))  # type: ignore[arg-type]


def test_event_fields_as_the_dataclass_init_sets_them() -> None:
    assert [f.name for f in dataclasses.fields(AccessEvent)] == [
        f.name for f in dataclasses.fields(_PlainEvent)
    ]
    for n in range(5, len(ARGS) + 1):  # every default in turn
        event = AccessEvent(*ARGS[:n])
        assert type(event) is AccessEvent
        assert _values(event) == _values(_PlainEvent(*ARGS[:n]))
    names = [f.name for f in dataclasses.fields(AccessEvent)]
    assert AccessEvent(**dict(zip(names, ARGS, strict=True))) == AccessEvent(*ARGS)


def test_event_is_frozen_and_behaves_as_a_dataclass() -> None:
    event = AccessEvent(*ARGS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.actor = "mallory"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del event.person  # type: ignore[misc]
    assert event == AccessEvent(*ARGS) and hash(event) == hash(AccessEvent(*ARGS))
    assert event != AccessEvent(*ARGS[:-1])
    changed = dataclasses.replace(event, actor="ann")
    assert type(changed) is AccessEvent and changed.actor == "ann" and event.actor == "tom"
    assert pickle.loads(pickle.dumps(event)) == event
    assert repr(event).startswith("AccessEvent(time=")


def test_a_subclass_keeps_its_class_and_gets_every_field() -> None:
    class Tagged(AccessEvent):  # another layout: the class switch does not apply
        __slots__ = ("note",)

    event = Tagged(*ARGS)
    assert type(event) is Tagged
    assert _values(event) == ARGS
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.actor = "x"  # type: ignore[misc]


def test_small_types_and_records() -> None:
    assert _values(SourcePosition("a", 1, 2)) == ("a", 1, 2, 0, "")
    line = Line("text", 0, 5, 1)
    assert _values(line) == ("text", 0, 5, 1, False, False)
    record = Record("a", (line,))
    assert record.text == "text" and record.end_offset == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        line.text = "x"  # type: ignore[misc]


def test_default_factories_are_refused() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFactory:
        items: list[str] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="default factories"):
        fast_init(WithFactory)
