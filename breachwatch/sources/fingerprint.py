"""Recognising a followed file: device + inode, plus a hash of its first bytes.

An inode alone is not enough: inodes are reused as soon as a file is deleted, and a file
truncated in place (copytruncate) keeps its inode while its content starts over. The hash of
the first bytes (at most ``FINGERPRINT_BYTES``, as Filebeat does) tells those cases apart.
"""

from __future__ import annotations

import hashlib
import os

from breachwatch.sources.checkpoint import FileIdentity

FINGERPRINT_BYTES = 1024

PathOrFd = str | os.PathLike[str] | int


def _read_prefix(fd: int, length: int) -> bytes:
    """The first ``length`` bytes (fewer if the file is shorter), without moving the fd."""
    chunks: list[bytes] = []
    got = 0
    while got < length:
        # pread may return short reads on some file systems; loop until EOF or enough.
        data = os.pread(fd, length - got, got)
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def identify_fd(fd: int) -> FileIdentity:
    """Identity of an open file. Stat and hash come from the same open file, so no race."""
    st = os.fstat(fd)
    prefix = _read_prefix(fd, min(st.st_size, FINGERPRINT_BYTES))
    return FileIdentity(
        dev=st.st_dev,
        inode=st.st_ino,
        fp_len=len(prefix),
        fp_hash=hashlib.sha256(prefix).hexdigest(),
    )


def identify(path: str | os.PathLike[str]) -> FileIdentity | None:
    """Identity of the file at ``path`` (symlinks followed), or None if there is no file.

    A permission error is raised, not hidden: it is a deployment fault someone must fix.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang us
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return identify_fd(fd)
    except IsADirectoryError:
        return None
    finally:
        os.close(fd)


def _matches_fd(identity: FileIdentity, fd: int) -> bool:
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (identity.dev, identity.inode):
        return False
    if st.st_size < identity.fp_len:
        return False  # shorter than what was hashed: truncated or rewritten
    prefix = _read_prefix(fd, identity.fp_len)
    return len(prefix) == identity.fp_len and (
        hashlib.sha256(prefix).hexdigest() == identity.fp_hash
    )


def matches(identity: FileIdentity, path_or_fd: PathOrFd) -> bool:
    """True when the file is the same file: same dev/inode and the same first fp_len bytes.

    A file that has grown since ``identity`` was taken still matches; one truncated or
    rewritten in place, or a new file that reuses the inode, does not.
    """
    if isinstance(path_or_fd, int):
        try:
            return _matches_fd(identity, path_or_fd)
        except OSError:
            return False
    try:
        fd = os.open(path_or_fd, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return _matches_fd(identity, fd)
    except OSError:
        return False
    finally:
        os.close(fd)


def same_content_prefix(identity: FileIdentity, fd: int) -> bool:
    """True when the file's first ``fp_len`` bytes hash like ``identity``, whatever its inode:
    a copy of that file (copytruncate writes the old content to a new inode)."""
    if identity.fp_len == 0:
        return False  # an empty prefix matches everything; it proves nothing
    try:
        prefix = _read_prefix(fd, identity.fp_len)
    except OSError:
        return False
    return len(prefix) == identity.fp_len and (
        hashlib.sha256(prefix).hexdigest() == identity.fp_hash
    )
