"""The tailer across rotations, truncations and restarts, on real files really rotated."""

from __future__ import annotations

import os
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

from breachwatch.clock import FakeClock
from breachwatch.parsers.base import Line
from breachwatch.sources.checkpoint import FileCheckpoint
from breachwatch.sources.tailer import FileChunk, Tailer


def clock() -> FakeClock:
    return FakeClock(datetime(2025, 6, 17, 12, 0, tzinfo=UTC))


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def numbered(first: int, last: int) -> bytes:
    return b"".join(b"line %d\n" % i for i in range(first, last + 1))


def texts(chunks: list[FileChunk]) -> list[str]:
    return [line.text for chunk in chunks for line in chunk.lines]


def read_all(tailer: Tailer) -> list[FileChunk]:
    out: list[FileChunk] = []
    while chunks := tailer.read(1000):
        out.extend(chunks)
    return out


class Writer(threading.Thread):
    """Appends numbered lines and rotates by rename + create, like logrotate's default.

    After each rename a few lines still go to the old file (a writer that has not reopened
    yet), and some lines are written in two pieces. It rotates again only once the tailer
    has seen the current file: a file born and renamed away between two polls is not seen.
    """

    def __init__(self, path: Path, rotations: int, per_file: int, seen: set[str]) -> None:
        super().__init__(daemon=True)
        self.path, self.rotations, self.per_file, self.seen = path, rotations, per_file, seen
        self.written: dict[str, list[str]] = {}  # by "dev:inode"
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc

    def _run(self) -> None:
        seq = 0
        out = self.path.open("ab", buffering=0)
        for generation in range(self.rotations + 1):
            st = os.fstat(out.fileno())
            key = f"{st.st_dev}:{st.st_ino}"
            lines = self.written.setdefault(key, [])
            for _ in range(self.per_file):
                seq += 1
                text = f"seq={seq} gen={generation}"
                data = text.encode() + b"\n"
                if seq % 7 == 0:
                    out.write(data[:5])
                    time.sleep(0)
                    out.write(data[5:])
                else:
                    out.write(data)
                lines.append(text)
            if generation == self.rotations:
                break
            deadline = time.monotonic() + 10
            while key not in self.seen and time.monotonic() < deadline:
                time.sleep(0.001)
            for n in range(generation, 0, -1):  # path.1 -> path.2 ...
                os.rename(f"{self.path}.{n}", f"{self.path}.{n + 1}")
            os.rename(self.path, f"{self.path}.1")
            for _ in range(3):
                seq += 1
                text = f"seq={seq} gen={generation} late"
                out.write(text.encode() + b"\n")
                lines.append(text)
            out.close()
            out = self.path.open("ab", buffering=0)
        out.close()


def test_rename_rotation_under_a_writer_thread_loses_and_doubles_nothing(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.touch()
    fake = clock()
    seen: set[str] = set()
    writer = Writer(log, rotations=5, per_file=2000, seen=seen)
    got: dict[str, list[Line]] = {}
    order: list[str] = []
    with Tailer("s", str(log), [], fake, rotated_grace=30.0) as tailer:
        writer.start()
        deadline = time.monotonic() + 20
        while writer.is_alive() and time.monotonic() < deadline:
            for chunk in tailer.read(500):
                assert not chunk.reset
                got.setdefault(chunk.identity.key, []).extend(chunk.lines)
                order.extend(chunk.identity.key for _ in chunk.lines)
            seen.update(f.identity.key for f in tailer.tracked())
            fake.advance(timedelta(milliseconds=1))
        writer.join(1)
        assert writer.error is None and not writer.is_alive()
        for chunk in read_all(tailer):
            got.setdefault(chunk.identity.key, []).extend(chunk.lines)
            order.extend(chunk.identity.key for _ in chunk.lines)
        assert len(tailer.tracked()) > 1  # renamed files are still drained within the grace
        fake.advance(timedelta(seconds=31))
        assert tailer.read(1000) == []
        (current,) = tailer.tracked()
        assert current.path == str(log)

    assert len(writer.written) == 6
    assert {key: [line.text for line in lines] for key, lines in got.items()} == writer.written
    for lines in got.values():
        assert [line.line_no for line in lines] == list(range(1, len(lines) + 1))
        assert lines[0].offset == 0
        assert all(a.end_offset == b.offset for a, b in pairwise(lines))
    # Files are finished one after the other: no file's lines come after the next one's.
    assert [key for i, key in enumerate(order) if i == 0 or order[i - 1] != key] == list(
        writer.written
    )


def test_renamed_file_is_drained_until_idle_then_dropped(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(numbered(1, 3))
    fake = clock()
    with Tailer("s", str(log), [], fake, rotated_grace=30.0) as tailer:
        assert texts(tailer.read(100)) == ["line 1", "line 2", "line 3"]
        with log.open("ab") as old:
            log.rename(tmp_path / "audit.log.1")
            log.write_bytes(b"new 1\n")
            old.write(b"line 4\n")
            old.flush()
            chunks = tailer.read(100)
            assert [(c.path, texts([c])) for c in chunks] == [
                (str(tmp_path / "audit.log.1"), ["line 4"]),
                (str(log), ["new 1"]),
            ]
            assert chunks[0].lines[0].line_no == 4
            fake.advance(timedelta(seconds=29))
            old.write(b"line 5\n")  # still written: the idle time starts over
            old.flush()
            assert texts(tailer.read(100)) == ["line 5"]
        fake.advance(timedelta(seconds=29))
        tailer.read(100)
        assert len(tailer.tracked()) == 2
        fake.advance(timedelta(seconds=2))
        tailer.read(100)
        assert [t.path for t in tailer.tracked()] == [str(log)]


def test_old_file_is_read_before_new_one_under_a_small_budget(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    with Tailer("s", str(log), [], clock()) as tailer:
        tailer.read(10)
        append(log, numbered(1, 5))
        log.rename(tmp_path / "audit.log.1")
        log.write_bytes(b"new 1\n")
        batches = [texts(tailer.read(2)) for _ in range(4)]
    assert batches == [["line 1", "line 2"], ["line 3", "line 4"], ["line 5", "new 1"], []]


def test_copytruncate_restarts_from_zero(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(numbered(1, 4))
    with Tailer("s", str(log), [], clock()) as tailer:
        assert len(texts(tailer.read(100))) == 4
        shutil.copyfile(log, tmp_path / "audit.log.1")
        with log.open("r+b") as f:
            f.truncate(0)
        append(log, b"after 1\n")
        (chunk,) = tailer.read(100)
        assert chunk.reset and texts([chunk]) == ["after 1"]
        assert (chunk.lines[0].offset, chunk.lines[0].line_no) == (0, 1)
        append(log, b"after 2\n")
        (chunk,) = tailer.read(100)
        assert not chunk.reset and chunk.lines[0].line_no == 2
        assert len(tailer.tracked()) == 1  # the copy is another file, not followed


def test_rewritten_in_place_past_the_offset_is_caught_by_fingerprint(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"2025-06-16 old\n")
    with Tailer("s", str(log), [], clock()) as tailer:
        tailer.read(100)
        with log.open("r+b") as f:  # truncated and refilled between two polls
            f.truncate(0)
            f.write(b"2025-06-17 new a\n2025-06-17 new b\n")
        (chunk,) = tailer.read(100)
    assert chunk.reset and texts([chunk]) == ["2025-06-17 new a", "2025-06-17 new b"]


def test_reset_is_reported_even_without_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(numbered(1, 2) + b"partial")
    with Tailer("s", str(log), [], clock()) as tailer:
        tailer.read(100)
        with log.open("r+b") as f:
            f.truncate(0)
        (chunk,) = tailer.read(100)
        assert chunk.reset and chunk.lines == []
        assert tailer.read(100) == []


def checkpoint(tailer: Tailer, line: Line, path: str | None = None) -> FileCheckpoint:
    (tracked,) = [t for t in tailer.tracked() if path is None or t.path == path]
    return FileCheckpoint("s", tracked.identity, tracked.path, line.end_offset, line.line_no)


def test_deleted_and_recreated_while_down_starts_new_file_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(numbered(1, 5))
    with Tailer("s", str(log), [], clock()) as tailer:
        last = [line for chunk in tailer.read(100) for line in chunk.lines][-1]
        saved = [checkpoint(tailer, last)]
    log.unlink()
    log.write_bytes(b"fresh 1\nfresh 2\n")  # may well reuse the inode: the hash tells
    with Tailer("s", str(log), saved, clock()) as tailer:
        chunks = read_all(tailer)
        assert texts(chunks) == ["fresh 1", "fresh 2"]
        assert [line.line_no for line in chunks[0].lines] == [1, 2]
        assert tailer.missing_checkpoints() == saved


def test_replaced_while_down_drains_renamed_file_from_its_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    (tmp_path / "audit.log.2").write_bytes(b"ancient\n")
    (tmp_path / "audit.log.2.gz").write_bytes(b"not a log\n")
    (tmp_path / "other.log").write_bytes(b"unrelated\n")
    log.write_bytes(numbered(1, 10))
    with Tailer("s", str(log), [], clock()) as tailer:
        read = [line for chunk in tailer.read(100) for line in chunk.lines]
        saved = [checkpoint(tailer, read[5])]  # lines 7.. were held back when it stopped
    append(log, numbered(11, 13))
    log.rename(tmp_path / "audit.log-20250617")
    log.write_bytes(b"new 1\nnew 2\n")
    fake = clock()
    with Tailer("s", str(log), saved, fake) as tailer:
        assert tailer.missing_checkpoints() == []
        chunks = read_all(tailer)
        assert [chunk.path for chunk in chunks] == [str(tmp_path / "audit.log-20250617"), str(log)]
        assert texts(chunks[:1]) == [f"line {i}" for i in range(7, 14)]
        assert chunks[0].lines[0].line_no == 7 and chunks[0].lines[0].offset == read[6].offset
        assert texts(chunks[1:]) == ["new 1", "new 2"]
        fake.advance(timedelta(seconds=31))
        tailer.read(100)
        assert [t.path for t in tailer.tracked()] == [str(log)]


def test_resume_of_both_a_rotated_and_the_current_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(numbered(1, 4))
    with Tailer("s", str(log), [], clock()) as tailer:
        old = [line for chunk in tailer.read(100) for line in chunk.lines]
        log.rename(tmp_path / "audit.log.1")
        log.write_bytes(b"new 1\nnew 2\n")
        new = [line for chunk in tailer.read(100) for line in chunk.lines]
        saved = [
            checkpoint(tailer, old[1], str(tmp_path / "audit.log.1")),
            checkpoint(tailer, new[0], str(log)),
        ]
    with Tailer("s", str(log), list(reversed(saved)), clock()) as tailer:
        chunks = read_all(tailer)
    assert texts(chunks) == ["line 3", "line 4", "new 2"]


def test_moved_away_and_back_is_not_read_twice(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(numbered(1, 2))
    with Tailer("s", str(log), [], clock()) as tailer:
        tailer.read(100)
        log.rename(tmp_path / "audit.log.tmp")
        assert tailer.read(100) == []
        (tmp_path / "audit.log.tmp").rename(log)
        append(log, b"line 3\n")
        assert texts(tailer.read(100)) == ["line 3"]
        assert len(tailer.tracked()) == 1


def test_deleted_file_is_drained_then_dropped(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(numbered(1, 1))
    fake = clock()
    with Tailer("s", str(log), [], fake) as tailer, log.open("ab") as writer:
        tailer.read(100)
        log.unlink()
        writer.write(b"line 2\n")
        writer.flush()
        assert texts(tailer.read(100)) == ["line 2"]
        fake.advance(timedelta(seconds=31))
        assert tailer.read(100) == [] and tailer.tracked() == []
