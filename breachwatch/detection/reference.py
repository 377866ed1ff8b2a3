"""Reference tables the policy points at (cases, the data-subject registry), and their reloads.

A table is a CSV or JSON file, or an HTTP endpoint answering CSV or JSON (a list of objects,
or ``{"items": [...]}``). This is the shell around the pure indexes: :class:`FileTable` reloads
when the file's size or mtime changes, :class:`HttpTable` polls on an injected clock (with
``If-None-Match`` when the server sends an ETag). Each ``refresh()`` parses the whole table
into a new immutable value and swaps it in with one assignment, so a reader sees either the old
or the new table, never half of one. A failed reload keeps the previous table and reports why.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from zoneinfo import ZoneInfo

import requests

from breachwatch.clock import Clock
from breachwatch.detection.policy_types import Source

T = TypeVar("T")
Row = Mapping[str, str]
Rows = tuple[Row, ...]


class ReferenceDataError(ValueError):
    """A reference table could not be read or parsed (the previous table stays in force)."""


def parse_rows(text: str, *, json_hint: bool) -> Rows:
    """CSV with a header row, or JSON: a list of objects or ``{"items": [...]}``."""
    stripped = text.lstrip()
    if json_hint or stripped.startswith(("[", "{")):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ReferenceDataError(f"invalid JSON: {exc}") from exc
        items = doc.get("items") if isinstance(doc, dict) else doc
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ReferenceDataError('expected a JSON list of objects or {"items": [...]}')
        return tuple(
            {str(k): "" if v is None else str(v) for k, v in item.items()} for item in items
        )
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise ReferenceDataError("expected a CSV file with a header row")
    return tuple({k: (v or "") for k, v in row.items() if k is not None} for row in reader)


def parse_time(value: str, zone: tzinfo) -> datetime | None:
    """ISO dates and times as exports write them (``2025-06-16 14:05:00+02``, ``2025-06-16``);
    naive values are in ``zone``. Empty means "not set"."""
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ReferenceDataError(f"not a date or time: {value!r}") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=zone)


def zone_of(name: str) -> ZoneInfo:
    return ZoneInfo(name)


class Table(Protocol):
    @property
    def rows(self) -> Rows: ...

    def refresh(self) -> bool:
        """Reload if the source changed; True when a new table was swapped in."""
        ...


class FileTable:
    """A CSV/JSON file, reloaded when its size or modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.rows: Rows = ()
        self.error: str | None = None
        self.refresh(strict=True)

    def refresh(self, *, strict: bool = False) -> bool:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return False
            rows = parse_rows(
                self.path.read_text(encoding="utf-8"), json_hint=self.path.suffix == ".json"
            )
        except (OSError, UnicodeDecodeError, ReferenceDataError) as exc:
            self.error = f"{self.path}: {exc}"
            if strict:
                raise ReferenceDataError(self.error) from exc
            return False
        self.rows, self._stamp, self.error = rows, stamp, None
        return True


class HttpTable:
    """An HTTP endpoint polled every ``interval`` on ``clock`` (the first poll is at once)."""

    def __init__(
        self,
        url: str,
        clock: Clock,
        interval: timedelta,
        *,
        session: requests.Session | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self._clock = clock
        self._interval = interval
        self._session = session or requests.Session()
        self._headers = {"Accept": "application/json, text/csv"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._etag: str | None = None
        self._due: datetime | None = None
        self.rows: Rows = ()
        self.error: str | None = None
        self.refresh()

    def refresh(self) -> bool:
        now = self._clock.now()
        if self._due is not None and now < self._due:
            return False
        self._due = now + self._interval
        headers = dict(self._headers)
        if self._etag:
            headers["If-None-Match"] = self._etag
        try:
            response = self._session.get(self.url, headers=headers, timeout=self._timeout)
            if response.status_code == 304:
                return False
            response.raise_for_status()
            kind = response.headers.get("Content-Type", "")
            rows = parse_rows(response.text, json_hint="json" in kind)
        except (requests.RequestException, ReferenceDataError) as exc:
            self.error = f"{self.url}: {exc}"
            return False
        self.rows, self._etag, self.error = rows, response.headers.get("ETag"), None
        return True


def open_table(source: Source, base: Path, clock: Clock) -> Table:
    """The table a policy ``Source`` names; relative file paths are relative to ``base``."""
    if source.file is not None:
        path = source.file if source.file.is_absolute() else base / source.file
        return FileTable(path)
    assert source.url is not None
    token = None
    if source.token_file is not None:
        token_path = (
            source.token_file if source.token_file.is_absolute() else base / source.token_file
        )
        token = token_path.read_text(encoding="utf-8").strip()
    return HttpTable(source.url, clock, source.poll, token=token)


class Holder(Generic[T]):
    """One immutable index built from some tables, swapped atomically on reload."""

    def __init__(self, tables: Sequence[Table], build: Callable[[Sequence[Rows]], T]) -> None:
        self._tables = tuple(tables)
        self.sources = tuple(str(getattr(t, "path", None) or getattr(t, "url", "")) for t in tables)
        self._build = build
        self._lock = threading.Lock()
        self.current: T = build([t.rows for t in self._tables])

    def refresh(self) -> bool:
        """Refresh every table; rebuild (and swap) the index when one of them changed."""
        with self._lock:
            changed = [t.refresh() for t in self._tables]
            if any(changed):
                self.current = self._build([t.rows for t in self._tables])
            return any(changed)

    @property
    def errors(self) -> list[str]:
        return [e for t in self._tables if (e := getattr(t, "error", None))]


class Refresher:
    """A daemon thread that calls ``refresh()`` on holders every ``interval`` seconds; it only
    swaps indexes, so the pipeline never waits on a file or the network.

    A file is re-read when its size or mtime changed (one ``stat`` per file and round); an
    HTTP source is polled on its own ``poll`` period, however often it is asked. ``report``
    is told of each swap and of each new error (a failed reload keeps the previous index);
    nothing a holder raises stops the thread.
    """

    def __init__(
        self,
        holders: Sequence[Holder[Any]],
        interval: float = 5.0,
        report: Callable[[str, str], None] | None = None,
    ) -> None:
        self._holders = tuple(holders)
        self._interval = interval
        self._report = report or (lambda _kind, _detail: None)
        self._errors: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reference-refresh", daemon=True)

    def start(self) -> None:
        if self._holders:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval + 1)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def refresh_once(self) -> None:
        """One round over every holder (what the thread does each ``interval``)."""
        errors: set[str] = set()
        for holder in self._holders:
            try:
                if holder.refresh():
                    self._report("reloaded", ", ".join(getattr(holder, "sources", ())))
            except Exception as exc:  # a table that parses but does not build (a bad date)
                errors.add(f"{type(exc).__name__}: {exc}")
            errors.update(holder.errors)
        for error in sorted(errors - self._errors):
            self._report("failed", error)
        self._errors = errors

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.refresh_once()
