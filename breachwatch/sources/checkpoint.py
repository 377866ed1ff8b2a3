"""What is remembered about each followed file between runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """A file is the same file when device, inode and the hash of its first bytes agree.

    ``fp_len`` bytes were hashed (at most 1,024; fewer while the file is smaller), so a file
    that has grown can still be recognised by hashing the same number of bytes again.
    """

    dev: int
    inode: int
    fp_len: int
    fp_hash: str  # hex sha256 of the first fp_len bytes

    @property
    def key(self) -> str:
        """Stable while the file grows (fp_len and fp_hash may then change)."""
        return f"{self.dev}:{self.inode}"


@dataclass(frozen=True, slots=True)
class FileCheckpoint:
    """Everything before ``offset`` in that file has been durably handled."""

    source: str
    identity: FileIdentity
    path: str  # last path the file was seen under
    offset: int
    line_no: int  # number of lines before offset (so the next line is line_no + 1)
