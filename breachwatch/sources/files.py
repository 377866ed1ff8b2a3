"""Whole-file reading for replays (`breachwatch scan`): the same Line values the tailer makes,
from plain or gzip-compressed files."""

from __future__ import annotations

import gc
import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from breachwatch.parsers.base import Line
from breachwatch.speedups import builder, native

# Large binary reads split with bytes.split: iterating a file line by line costs a method call
# and a buffer scan per line, which is a measurable share of a replay. 128 KiB (about 400
# pgaudit lines) rather than more: the lines, records and events of one block then stay in
# the CPU's cache from reading to detection (1 MiB blocks were 15% slower end to end).
_CHUNK = 1 << 17
_LINE = builder(Line)


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _blocks(stream: BinaryIO) -> Iterator[tuple[list[bytes], bool, bool]]:
    """(lines without their b"\\n", whether any holds a b"\\r", last): the last list holds
    only the tail of the file (the bytes after its final newline), or nothing."""
    pending: list[bytes] = []  # pieces of a line that spans reads
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            tail = b"".join(pending)
            yield ([tail] if tail else []), b"\r" in tail, True
            return
        cut = chunk.rfind(b"\n")
        if cut < 0:
            pending.append(chunk)
            continue
        if pending:
            pending.append(chunk[: cut + 1])
            head = b"".join(pending)
            pending = []
        else:
            head = chunk if cut == len(chunk) - 1 else chunk[: cut + 1]
        if cut + 1 < len(chunk):
            pending.append(chunk[cut + 1 :])
        lines = head.split(b"\n")
        lines.pop()  # head ends with b"\n": the last element is b""
        yield lines, b"\r" in head, False


def read_line_batches(path: Path, max_line_bytes: int = 64 * 1024) -> Iterator[list[Line]]:
    """:func:`read_lines` in lists of lines (one per read of 128 KiB)."""
    offset = 0
    line_no = 0
    with _open(path) as stream:
        for raws, has_cr, last in _blocks(stream):
            if gc.isenabled():
                # A block makes thousands of Line objects and no reference cycle; every 700
                # of them would start a collection that walks the young objects (and now and
                # then the whole heap). Re-enabled before the block is handed on.
                gc.disable()
                try:
                    out, offset, line_no = _lines(raws, has_cr, offset, line_no, max_line_bytes)
                finally:
                    gc.enable()
            else:
                out, offset, line_no = _lines(raws, has_cr, offset, line_no, max_line_bytes)
            if last and out:
                # the file's final line has no newline: its end is the end of its bytes
                final = out[-1]
                end = final.end_offset - 1
                out[-1] = Line(
                    final.text,
                    final.offset,
                    end,
                    final.line_no,
                    final.truncated,
                    final.decode_errors,
                )
                offset = end
            if out:
                yield out


def _lines(
    raws: list[bytes], has_cr: bool, offset: int, line_no: int, max_line_bytes: int
) -> tuple[list[Line], int, int]:
    """The Line values of one block, and the offset and line number after it."""
    if native is not None:
        built: tuple[list[Line], int, int] = native.lines_of(
            raws, has_cr, offset, line_no, max_line_bytes, _LINE
        )
        return built
    return _lines_py(raws, has_cr, offset, line_no, max_line_bytes)


def _lines_py(
    raws: list[bytes], has_cr: bool, offset: int, line_no: int, max_line_bytes: int
) -> tuple[list[Line], int, int]:
    """:func:`_lines` in Python: the definition of what the C twin does."""
    out: list[Line] = []
    append = out.append
    for body in raws:
        line_no += 1
        end = offset + len(body) + 1
        if has_cr and body.endswith(b"\r"):
            body = body[:-1]
        truncated = len(body) > max_line_bytes
        if truncated:
            body = body[:max_line_bytes]
        try:
            append(Line(body.decode("utf-8"), offset, end, line_no, truncated, False))
        except UnicodeDecodeError:
            text = body.decode("utf-8", errors="replace")
            append(Line(text, offset, end, line_no, truncated, True))
        offset = end
    return out, offset, line_no


def read_lines(path: Path, max_line_bytes: int = 64 * 1024) -> Iterator[Line]:
    """Every line of the file with byte offsets (of the uncompressed text) and 1-based numbers.

    Offsets are counted on the uncompressed stream, so a finding in a rotated .gz file points
    at the same bytes as it did before compression.
    """
    for batch in read_line_batches(path, max_line_bytes):
        yield from batch
