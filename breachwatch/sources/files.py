"""Whole-file reading for replays (`breachwatch scan`): the same Line values the tailer makes,
from plain or gzip-compressed files."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from breachwatch.parsers.base import Line


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def read_lines(path: Path, max_line_bytes: int = 64 * 1024) -> Iterator[Line]:
    """Every line of the file with byte offsets (of the uncompressed text) and 1-based numbers.

    Offsets are counted on the uncompressed stream, so a finding in a rotated .gz file points
    at the same bytes as it did before compression.
    """
    offset = 0
    with _open(path) as stream:
        for line_no, raw in enumerate(stream, start=1):
            end = offset + len(raw)
            body = raw[:-1] if raw.endswith(b"\n") else raw
            if body.endswith(b"\r"):
                body = body[:-1]
            truncated = len(body) > max_line_bytes
            if truncated:
                body = body[:max_line_bytes]
            try:
                text, bad = body.decode("utf-8"), False
            except UnicodeDecodeError:
                text, bad = body.decode("utf-8", errors="replace"), True
            yield Line(text, offset, end, line_no, truncated, bad)
            offset = end
