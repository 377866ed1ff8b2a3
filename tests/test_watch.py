"""The directory watcher with a real inotify observer on a temporary directory."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.events import FileModifiedEvent, FileMovedEvent

from breachwatch.sources.watch import DirectoryWatcher, WakeHandler


@pytest.fixture
def wake() -> threading.Event:
    return threading.Event()


@pytest.fixture
def watcher(tmp_path: Path, wake: threading.Event) -> Iterator[DirectoryWatcher]:
    w = DirectoryWatcher([str(tmp_path / "audit.log")], wake)
    w.start()
    yield w
    w.stop()


def test_append_and_rename_rotation_wake_the_loop(
    tmp_path: Path, wake: threading.Event, watcher: DirectoryWatcher
) -> None:
    log = tmp_path / "audit.log"
    assert watcher.is_alive() and watcher.unwatched() == []
    (tmp_path / "unrelated.txt").write_bytes(b"x\n")
    assert not wake.wait(0.3)
    log.write_bytes(b"one\n")
    assert wake.wait(1.0)
    wake.clear()
    with log.open("ab") as f:
        f.write(b"two\n")
    assert wake.wait(1.0)
    wake.clear()
    log.rename(tmp_path / "audit.log.1")
    assert wake.wait(1.0)
    wake.clear()
    log.write_bytes(b"new\n")
    assert wake.wait(1.0)
    assert watcher.is_alive()


def test_stop_ends_the_observer(tmp_path: Path, wake: threading.Event) -> None:
    w = DirectoryWatcher([str(tmp_path / "a.log")], wake)
    assert not w.is_alive()
    w.start()
    assert w.is_alive()
    w.stop()
    assert not w.is_alive()
    w.stop()


def test_missing_directory_is_reported_not_raised(tmp_path: Path, wake: threading.Event) -> None:
    w = DirectoryWatcher([str(tmp_path / "nope" / "a.log"), str(tmp_path / "b.log")], wake)
    w.start()
    try:
        assert w.unwatched() == [str(tmp_path / "nope")]
        assert w.is_alive()
        (tmp_path / "b.log").write_bytes(b"x\n")
        assert wake.wait(1.0)
    finally:
        w.stop()


def test_handler_never_raises_and_wakes_when_unsure(tmp_path: Path) -> None:
    wake = threading.Event()
    handler = WakeHandler({str(tmp_path): ("audit.log",)}, wake)
    handler.dispatch(FileModifiedEvent(str(tmp_path / "other.log")))
    assert not wake.is_set()
    handler.dispatch(FileMovedEvent(str(tmp_path / "x"), str(tmp_path / "audit.log.1")))
    assert wake.is_set()
    wake.clear()
    handler.dispatch(FileModifiedEvent(bytes(tmp_path / "audit.log")))
    assert wake.is_set()
    wake.clear()
    handler.dispatch(FileModifiedEvent(12345))  # type: ignore[arg-type]  # fsdecode raises
    assert wake.is_set()
