"""The mail folder channel: Maildir-style files, written atomically, 0600."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from email.message import EmailMessage
from pathlib import Path

from breachwatch.errors import ConfigError, DeliveryError

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")


def key_filename(key: str) -> str:
    """A file name for ``key``: the key itself when harmless, else a readable part plus a hash.

    The "~" only appears in the second form, so two different keys never share a file.
    """
    if _SAFE_KEY.match(key):
        return key
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:60].lstrip(".")
    return f"{readable}~{hashlib.sha256(key.encode('utf-8')).hexdigest()[:24]}"


class MailFolderChannel:
    """Writes each message to ``<directory>/new/<key>.eml`` in Maildir layout, atomically.

    For sites without a relay, and as the record of what was sent. A mail client that reads
    the folder moves files to cur/ (adding ":2,S"); both count as delivered.
    """

    name = "mailfolder"

    def __init__(self, directory: Path) -> None:
        self._root = directory
        try:
            for path in (directory, directory / "tmp", directory / "new", directory / "cur"):
                if not path.is_dir():
                    # exist_ok: two workers sharing a state directory may start together
                    path.mkdir(mode=0o700, parents=True, exist_ok=True)
                    os.chmod(path, 0o700)  # mkdir's mode is narrowed by the umask, not set
        except OSError as err:
            raise ConfigError(str(directory), "", f"a writable directory ({err.strerror})") from err

    def _final_name(self, key: str) -> str:
        return f"{key_filename(key)}.eml"

    def was_delivered(self, key: str) -> bool:
        name = self._final_name(key)
        if (self._root / "new" / name).exists():
            return True
        cur = self._root / "cur"
        return (cur / name).exists() or any(cur.glob(f"{name}:2,*"))

    def deliver(self, message: EmailMessage, key: str) -> str:
        final = self._root / "new" / self._final_name(key)
        if self.was_delivered(key):
            return f"maildir {final} (already delivered)"
        # Maildir convention: a unique name in tmp/, so a crashed writer never collides.
        tmp = self._root / "tmp" / f"{final.name}.{os.getpid()}.{secrets.token_hex(8)}"
        data = message.as_bytes(policy=message.policy.clone(linesep="\n"))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            # The rename itself is durable only once the directory entry is on disk.
            dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            # A full disk or a wrong permission is fixed by an operator; retrying then works.
            raise DeliveryError(f"cannot write {final}: {err.strerror}", transient=True) from err
        return f"maildir {final}"
