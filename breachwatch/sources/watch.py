"""Waking the tailing loop early when a followed file, or a rotated copy of it, changes.

Events are only hints: the kernel queue can overflow silently, so the daemon also polls on a
timer. The directories are watched, not the files, so that a rename rotation is seen.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from watchdog.events import (
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

# Not opened / closed-without-write: the tailer's own opens would wake it in a loop.
_EVENTS: list[type[FileSystemEvent]] = [
    FileModifiedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
    FileAttribEvent,
]


class WakeHandler(FileSystemEventHandler):
    """Sets ``wake`` for events about files whose name starts with a watched base name."""

    def __init__(self, names_by_dir: dict[str, tuple[str, ...]], wake: threading.Event) -> None:
        self._names_by_dir = names_by_dir
        self._wake = wake

    def _concerns(self, raw: bytes | str) -> bool:
        if not raw:
            return False
        directory, name = os.path.split(os.fsdecode(raw))
        prefixes = self._names_by_dir.get(os.path.abspath(directory), ())
        return any(name.startswith(prefix) for prefix in prefixes)

    def dispatch(self, event: FileSystemEvent) -> None:
        # Anything raised here would kill the observer thread without a word.
        try:
            if self._concerns(event.src_path) or self._concerns(event.dest_path):
                self._wake.set()
        except Exception:
            self._wake.set()  # unsure what happened: a spurious poll costs little


class DirectoryWatcher:
    """A watchdog observer on the parent directories of ``paths``, non-recursive."""

    def __init__(self, paths: Sequence[str], wake: threading.Event) -> None:
        names: dict[str, set[str]] = {}
        for path in paths:
            directory, name = os.path.split(os.path.abspath(path))
            names.setdefault(directory, set()).add(name)
        self._names_by_dir = {d: tuple(sorted(n)) for d, n in names.items()}
        self.handler = WakeHandler(self._names_by_dir, wake)
        self._observer: BaseObserver | None = None
        self._unwatched: list[str] = []

    def start(self) -> None:
        """Start watching. A directory that does not exist is left to the timer and reported
        by ``unwatched()``; a later ``start()`` (after ``stop()``) tries it again."""
        if self._observer is not None:
            raise RuntimeError("DirectoryWatcher already started")
        observer = Observer()
        observer.daemon = True
        # Started first, so that each directory's inotify watch is set up (and can fail)
        # one at a time in schedule() instead of all at once in start().
        observer.start()
        self._unwatched = []
        for directory in self._names_by_dir:
            try:
                observer.schedule(self.handler, directory, recursive=False, event_filter=_EVENTS)
            except OSError:
                self._unwatched.append(directory)
        self._observer = observer

    def stop(self, timeout: float = 5.0) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout)

    def is_alive(self) -> bool:
        """False when not started or when the observer thread has died."""
        return self._observer is not None and self._observer.is_alive()

    def unwatched(self) -> list[str]:
        return list(self._unwatched)
