"""Following one configured log path across rotations, without losing or doubling a line.

The tailer never persists anything. The daemon commits checkpoints together with the results
of the lines, possibly behind what was read (a framer may hold lines back), and builds a new
tailer from them after a restart. Not thread-safe: one thread calls ``read``.
"""

from __future__ import annotations

import codecs
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from breachwatch.clock import Clock
from breachwatch.parsers.base import Line
from breachwatch.sources.checkpoint import FileCheckpoint, FileIdentity
from breachwatch.sources.fingerprint import (
    FINGERPRINT_BYTES,
    identify_fd,
    matches,
    same_content_prefix,
)

_BLOCK = 1 << 20
_MIN_BLOCK = 64 * 1024
# Rotated copies that have been compressed are other files (new inode); never follow them.
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".z", ".zip")


@dataclass(frozen=True, slots=True)
class FileChunk:
    """New complete lines of one file. ``reset``: the file restarts from 0, drop held state."""

    identity: FileIdentity
    path: str
    lines: list[Line]
    reset: bool


@dataclass(frozen=True, slots=True)
class TrackedFile:
    identity: FileIdentity
    path: str
    read_offset: int  # end of the last line returned
    size: int


def _decode_lossy(raw: bytes, cut: bool) -> tuple[str, bool]:
    if cut:
        # Cutting at max_line_bytes may split a character; that is not bad data.
        try:
            return codecs.getincrementaldecoder("utf-8")().decode(raw, final=False), False
        except UnicodeDecodeError:
            pass
    return raw.decode("utf-8", errors="replace"), True


class _Followed:
    """One open file and how far it has been read.

    ``pos`` is where the next line starts. Bytes from ``_buf_off`` are buffered in ``_buf``
    (read but not yet returned). Normally ``_buf_off == pos``; while a line longer than
    ``max_line_bytes`` is pending, ``_head`` keeps its first bytes and the bytes between
    them and ``_buf_off`` have been skipped, so memory stays bounded.
    """

    def __init__(
        self, fd: int, path: str, offset: int, line_no: int, now: datetime, max_bytes: int
    ) -> None:
        self.fd = fd
        self.identity = identify_fd(fd)
        self.path = path
        self.pos = offset
        self.line_no = line_no
        self.size = os.fstat(fd).st_size
        self.last_growth = now
        self.reset_pending = False
        self._max = max_bytes
        self._buf = b""
        self._buf_off = offset
        self._head: bytes | None = None

    def idle(self, now: datetime) -> float:
        return (now - self.last_growth).total_seconds()

    @property
    def drained(self) -> bool:
        return self.pos >= self.size and not self._buf and self._head is None

    def refresh(self, now: datetime) -> None:
        """Notice growth, and restart from 0 if the file was truncated or rewritten in place."""
        size = os.fstat(self.fd).st_size
        if size != self.size:
            self.size = size
            self.last_growth = now
        if size < self._buf_off + len(self._buf) or not matches(self.identity, self.fd):
            self.identity = identify_fd(self.fd)
            self.pos = self._buf_off = self.line_no = 0
            self._buf, self._head = b"", None
            self.reset_pending = True
            self.last_growth = now
        elif self.identity.fp_len < min(size, FINGERPRINT_BYTES):
            self.identity = identify_fd(self.fd)  # still the same file; hash more of it

    def take(self, limit: int, now: datetime, partial_timeout: float) -> list[Line]:
        """Up to ``limit`` complete lines; hot path, so big preads and no per-line syscalls."""
        out: list[Line] = []
        if limit <= 0:
            return out
        buf, i, base, head = self._buf, 0, self._buf_off, self._head
        pos, line_no, max_bytes, count, at_eof = self.pos, self.line_no, self._max, 0, False
        while count < limit:
            nl = buf.find(b"\n", i)
            if nl >= 0:
                if head is not None:
                    raw, cut, head = head, True, None
                elif nl - i > max_bytes:
                    raw, cut = buf[i : i + max_bytes], True
                else:
                    raw, cut = buf[i:nl], False
                try:
                    text, bad = raw.decode("utf-8"), False
                except UnicodeDecodeError:
                    text, bad = _decode_lossy(raw, cut)
                line_no += 1
                end = base + nl + 1
                out.append(Line(text, pos, end, line_no, cut, bad))
                pos, i, count = end, nl + 1, count + 1
                continue
            if head is None and len(buf) - i > max_bytes:
                head = buf[i : i + max_bytes]
            if head is not None:
                base, buf = base + len(buf), b""  # skip the over-long rest
            else:
                base, buf = base + i, buf[i:]
            i = 0
            want = min(_BLOCK, max(_MIN_BLOCK, self.size - base - len(buf)))
            data = os.pread(self.fd, want, base + len(buf))
            if not data:
                at_eof = True
                break
            buf = buf + data if buf else data
            if base + len(buf) > self.size:
                self.size, self.last_growth = base + len(buf), now
        if (
            at_eof
            and count < limit
            and (buf or head is not None)
            and self.idle(now) >= partial_timeout
        ):
            # A last line without newline that stopped growing is returned as it is; the
            # bytes that follow, if any ever do, start a new line.
            raw = head if head is not None else buf
            try:
                text, bad = raw.decode("utf-8"), False
            except UnicodeDecodeError:
                text, bad = _decode_lossy(raw, head is not None)
            end = base + len(buf)
            out.append(Line(text, pos, end, line_no + 1, head is not None, bad))
            pos, line_no, base, buf, head = end, line_no + 1, end, b"", None
        self._buf = buf[i:] if i else buf
        self._buf_off, self._head, self.pos, self.line_no = base + i, head, pos, line_no
        return out

    def close(self) -> None:
        os.close(self.fd)


class Tailer:
    """Follows ``path`` by identity: drains renamed files, restarts truncated ones."""

    def __init__(
        self,
        source: str,
        path: str,
        checkpoints: Sequence[FileCheckpoint],
        clock: Clock,
        *,
        max_line_bytes: int = 64 * 1024,
        partial_line_timeout: float = 5.0,
        rotated_grace: float = 30.0,
    ) -> None:
        if max_line_bytes < 1 or partial_line_timeout < 0 or rotated_grace < 0:
            raise ValueError("max_line_bytes must be >= 1 and the timeouts >= 0")
        self.source = source
        self.path = path
        self._clock = clock
        self._max = max_line_bytes
        self._partial_timeout = partial_line_timeout
        self._grace = rotated_grace
        self._primary: _Followed | None = None
        self._rotated: list[_Followed] = []
        self._missing: list[FileCheckpoint] = []
        self._error: OSError | None = None
        self._closed = False
        try:
            self._resume([cp for cp in checkpoints if cp.source == source])
        except BaseException:
            self.close()
            raise

    # -- construction -------------------------------------------------------------------

    def _siblings(self) -> list[str]:
        """``path`` and the files next to it that may be rotated copies of it."""
        directory, base = os.path.split(self.path)
        try:
            names = sorted(os.listdir(directory or "."))
        except OSError:
            names = []
        found = [self.path]
        for name in names:
            if name != base and name.startswith(base) and not name.lower().endswith(_COMPRESSED):
                found.append(os.path.join(directory, name))
        return found

    def _resume(self, checkpoints: list[FileCheckpoint]) -> None:
        now = self._clock.now()
        wanted = {cp.identity.key: cp for cp in checkpoints}
        found: dict[str, _Followed] = {}
        for candidate in self._siblings():
            fd = self._open(candidate, report=False)
            if fd is None:
                continue
            st = os.fstat(fd)
            cp = wanted.get(f"{st.st_dev}:{st.st_ino}")
            if cp is None or cp.identity.key in found or not matches(cp.identity, fd):
                os.close(fd)
                continue
            found[cp.identity.key] = _Followed(fd, candidate, cp.offset, cp.line_no, now, self._max)
            self._rotated.append(found[cp.identity.key])  # so that close() sees it on error
        self._missing = [cp for key, cp in wanted.items() if key not in found]
        self._adopt_copies(now, found)
        at_path = self._open(self.path, report=True)
        if at_path is not None:
            st = os.fstat(at_path)
            key = f"{st.st_dev}:{st.st_ino}"
            if key in found:
                os.close(at_path)
                self._primary = found.pop(key)
                self._rotated.remove(self._primary)
            else:
                # Unknown, or a known inode whose content changed: a new file, from 0.
                self._primary = _Followed(at_path, self.path, 0, 0, now, self._max)
                self._primary.reset_pending = key in wanted
        rotated_away = [f for f in self._rotated if f is not self._primary]
        if rotated_away:
            # The checkpointed file was rotated while we were down; files rotated after it
            # were created and filled while nobody read them.
            self._adopt_missed(now, min(os.fstat(f.fd).st_mtime_ns for f in rotated_away))
        # Older rotated copies were last written earlier: drain them in that order.
        self._rotated.sort(key=lambda f: os.fstat(f.fd).st_mtime_ns)

    def _known(self) -> set[str]:
        files = [*self._rotated, *([self._primary] if self._primary else [])]
        return {f.identity.key for f in files}

    def _adopt_copies(self, now: datetime, found: dict[str, _Followed]) -> None:
        """A checkpointed file that is gone may live on as a copy (copytruncate writes the
        old content to a new inode): same first bytes. Its unread tail is read from there."""
        for cp in list(self._missing):
            for candidate in self._siblings()[1:]:
                fd = self._open(candidate, report=False)
                if fd is None:
                    continue
                st = os.fstat(fd)
                key = f"{st.st_dev}:{st.st_ino}"
                same_bytes = st.st_size >= cp.offset and same_content_prefix(cp.identity, fd)
                if key in found or key in self._known() or not same_bytes:
                    os.close(fd)
                    continue
                followed = _Followed(fd, candidate, cp.offset, cp.line_no, now, self._max)
                found[key] = followed
                self._rotated.append(followed)
                self._missing.remove(cp)
                break

    def _adopt_missed(self, now: datetime, after_ns: int) -> None:
        """Rotated siblings nobody has read, last written after ``after_ns``: read from 0."""
        known = self._known()
        try:
            at_path = os.stat(self.path)
            known.add(f"{at_path.st_dev}:{at_path.st_ino}")
        except OSError:
            pass
        for candidate in self._siblings()[1:]:
            fd = self._open(candidate, report=False)
            if fd is None:
                continue
            st = os.fstat(fd)
            if f"{st.st_dev}:{st.st_ino}" in known or st.st_mtime_ns < after_ns:
                os.close(fd)
                continue
            self._rotated.append(_Followed(fd, candidate, 0, 0, now, self._max))
            known.add(f"{st.st_dev}:{st.st_ino}")

    def _open(self, path: str, *, report: bool) -> int | None:
        """A read-only fd on the regular file at ``path``; None if there is none (yet)."""
        try:
            # O_NONBLOCK: a FIFO put at the path must not hang the loop; no effect on files.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if report:  # the followed path itself: someone has to fix its permissions
                self._error = exc
            return None
        if report:
            self._error = None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    # -- following ----------------------------------------------------------------------

    def _follow_path(self, now: datetime) -> None:
        try:
            st: os.stat_result | None = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        primary = self._primary
        if primary is not None and (
            st is None or (st.st_dev, st.st_ino) != (primary.identity.dev, primary.identity.inode)
        ):
            # Renamed or deleted: keep draining through the open fd, it may still be written.
            primary.path = self._renamed_to(primary) or primary.path
            self._rotated.append(primary)
            self._primary = None
            # Rotated more than once since the last look: pick up the files in between.
            self._adopt_missed(now, os.fstat(primary.fd).st_mtime_ns)
            self._rotated.sort(key=lambda f: os.fstat(f.fd).st_mtime_ns)
        if self._primary is not None or st is None:
            return
        fd = self._open(self.path, report=True)
        if fd is None:
            return
        for old in self._rotated:
            if matches(old.identity, fd):  # moved away and back again: same file
                os.close(fd)
                old.path = self.path
                self._rotated.remove(old)
                self._primary = old
                return
        self._primary = _Followed(fd, self.path, 0, 0, now, self._max)

    def _renamed_to(self, followed: _Followed) -> str | None:
        key = (followed.identity.dev, followed.identity.inode)
        for candidate in self._siblings()[1:]:
            try:
                st = os.stat(candidate)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == key:
                return candidate
        return None

    def read(self, max_lines: int) -> list[FileChunk]:
        """New complete lines, rotated files first, at most ``max_lines`` in all."""
        if self._closed:
            raise ValueError("read() on a closed Tailer")
        now = self._clock.now()
        self._follow_path(now)
        chunks: list[FileChunk] = []
        budget = max_lines
        files = [*self._rotated, *([self._primary] if self._primary else [])]
        for followed in files:
            followed.refresh(now)
            timeout = self._partial_timeout
            if followed is not self._primary:
                timeout = min(timeout, self._grace)  # nobody will finish that line any more
            lines = followed.take(budget, now, timeout)
            budget -= len(lines)
            if lines or followed.reset_pending:
                chunks.append(
                    FileChunk(followed.identity, followed.path, lines, followed.reset_pending)
                )
                followed.reset_pending = False
        still: list[_Followed] = []
        for followed in self._rotated:
            if followed.drained and followed.idle(now) >= self._grace:
                followed.close()
            else:
                still.append(followed)
        self._rotated = still
        return chunks

    def tracked(self) -> list[TrackedFile]:
        files = [*self._rotated, *([self._primary] if self._primary else [])]
        return [TrackedFile(f.identity, f.path, f.pos, f.size) for f in files]

    def missing_checkpoints(self) -> list[FileCheckpoint]:
        """Checkpoints whose file was not found at start (gone, compressed, or rewritten in
        place): whatever they had not handled yet cannot be read any more."""
        return list(self._missing)

    def last_error(self) -> OSError | None:
        """Why the file at ``path`` could not be opened (permissions), until it can be."""
        return self._error

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for followed in [*self._rotated, *([self._primary] if self._primary else [])]:
            followed.close()
        self._rotated, self._primary = [], None

    def __enter__(self) -> Tailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
