"""Linux audit log (auditd, RAW or ENRICHED ``log_format``): file access by login users.

One event is a SYSCALL record joined with its PATH/CWD/EXECVE records (framing in
:mod:`auditd_framing`). The actor is the login user (``auid``: who logged in, also behind sudo),
named by the ``uid_map`` option, else by ENRICHED's ``AUID="omar"``, else the number
(``unknown(3002)`` is no name). Objects are the PATH names made absolute with the CWD record.
A name relative to a directory descriptor (``openat(3, "bills.csv")``: ``tar -C``, ``find``,
``gzip``, ``rm -r`` work that way) is resolved the way the kernel resolved it: against the
directory that the same process opened as that descriptor in an earlier event of the log (its
``exit=`` value). The framer follows those descriptors per process and hands them to the parser
with the record (:class:`HandleRecord`), so parsing stays a function of the record. A descriptor
whose opening was not audited (the watch rules did not cover it) is resolved only when its
PATH is a directory named like the watched directory of the rule's key (``-w DIR -k KEY``, the
``watches`` option): that directory itself. Otherwise the name is kept as written (tag
``path_unresolved``), plus the watched directory of the key.

Authentication comes from PAM's records (USER_AUTH, USER_LOGIN, USER_ERR). The kernel's LOGIN
record only says that a process set its login uid (pam_loginuid after a PAM login, which has
its own USER_LOGIN, or any root process writing ``/proc/self/loginuid``): it is no
authentication and yields no event; what is done under that login uid is judged event by event.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.parsers.auditd_framing import AuditdFramer, AuditRecord
from breachwatch.parsers.base import Line, ParseResult, Record

_X86_64 = {0: "read", 1: "write", 2: "open", 44: "sendto", 59: "execve", 76: "truncate"}
_X86_64 |= {77: "ftruncate", 82: "rename", 83: "mkdir", 84: "rmdir", 85: "creat", 86: "link"}
_X86_64 |= {87: "unlink", 88: "symlink", 90: "chmod", 92: "chown", 257: "openat", 260: "fchownat"}
_X86_64 |= {263: "unlinkat", 264: "renameat", 268: "fchmodat", 316: "renameat2", 322: "execveat"}
_AARCH64 = {35: "unlinkat", 38: "renameat", 45: "truncate", 46: "ftruncate", 56: "openat"}
_AARCH64 |= {63: "read", 64: "write", 221: "execve", 276: "renameat2", 281: "execveat"}
_SYSCALLS = {"c000003e": _X86_64, "c00000b7": _AARCH64}
_AT_SYSCALLS = frozenset({"openat", "openat2", "unlinkat", "renameat", "renameat2", "fchmodat"})
_AT_SYSCALLS |= {"fchownat", "execveat", "mkdirat", "linkat", "symlinkat"}
_WRITES = frozenset({"creat", "truncate", "ftruncate", "rename", "renameat", "renameat2"})
_DELETES = frozenset({"unlink", "unlinkat", "rmdir"})
_DENIED_EXITS = {"-13": "EACCES", "-1": "EPERM"}
_UNSET = ("4294967295", "-1")
_AT_FDCWD = "ffffff9c"
_OPENS = frozenset({"open", "openat", "openat2"})
MAX_PROCESSES = 4096  # processes whose directory descriptors the framer remembers
MAX_HANDLES = 64  # directory descriptors remembered per process


@dataclass(frozen=True, slots=True)
class HandleRecord(Record):
    """A record with the directory its syscall's descriptor argument (``a0``) stands for, as
    an earlier event of the same process opened it; ``""`` when unknown."""

    handle: str = ""


def _is_directory(path_record: AuditRecord) -> bool:
    mode = path_record.fields.get("mode", "")
    try:
        return int(mode, 8) & 0o170000 == 0o040000
    except ValueError:
        return False


def decode(value: str | None) -> str | None:
    """An audit string field: ``"quoted"``, hex-encoded (spaces, quotes, non-ASCII), or
    ``(null)``/``(none)``/``?``."""
    if value is None or value in ("(null)", "(none)", "?", ""):
        return None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if len(value) % 2 == 0 and all(c in "0123456789ABCDEFabcdef" for c in value):
        return bytes.fromhex(value).decode("utf-8", "replace").replace("\0", " ")
    return value


def _translated(value: str | None) -> str | None:
    name = decode(value)
    return None if name is None or name == "unset" or name.startswith("unknown(") else name


class AuditdFormat:
    """``uid_map``: uid -> account name; ``watches``: rule key -> watched directory."""

    def __init__(
        self, uid_map: Mapping[str, str] | None = None, watches: Mapping[str, str] | None = None
    ) -> None:
        self.name = "auditd"
        self._uids = {str(k): v for k, v in (uid_map or {}).items()}
        self._watches = dict(watches or {})

    def new_framer(self, path: str) -> HandleFramer:
        return HandleFramer(path, self)

    def parse(self, record: Record, store: str) -> ParseResult:
        try:
            recs = [AuditRecord(line.text) for line in record.lines]
        except ValueError:
            return ParseFailure("bad_record", record.lines[0].text[:120])
        try:
            return self._events(record, recs, store)
        except (ValueError, OverflowError, OSError) as exc:
            return ParseFailure("bad_value", str(exc)[:120])

    def _name(self, raw: str | None, translated: str | None) -> str:
        if raw is None:
            return ""
        return self._uids.get(raw) or _translated(translated) or raw

    def _events(self, record: Record, recs: list[AuditRecord], store: str) -> list[AccessEvent]:
        by_type: dict[str, list[AuditRecord]] = {}
        for rec in recs:
            by_type.setdefault(rec.type, []).append(rec)
        head = recs[0]
        when = datetime.fromtimestamp(float(f"{head.sec}.{head.ms}"), UTC)
        tags = {f"event:{head.event_id}"}
        if head.node:
            tags.add(f"node:{head.node}")
        if any(line.truncated for line in record.lines):
            tags.add("truncated")
        base = _Base(
            when,
            store,
            SourcePosition(
                record.path, record.offset, record.line_no, record.end_offset - record.offset
            ),
        )
        syscall = by_type.get("SYSCALL")
        if syscall and "LOGIN" not in by_type:  # LOGIN: the loginuid write of a new session
            handle = record.handle if isinstance(record, HandleRecord) else ""
            return [self._syscall(syscall[0], by_type, tags, base, handle)]
        for rec in recs:
            action = _login_action(rec)
            if action is not None:
                f, e = rec.fields, rec.enriched
                auid = f.get("auid")
                actor = (
                    decode(f.get("acct"))
                    if rec.type.startswith("USER_") and f.get("acct")
                    else self._name(auid if auid not in _UNSET else f.get("uid"), e.get("AUID"))
                )
                tags.add(f"type:{rec.type}")
                client = decode(f.get("addr"))
                return [
                    AccessEvent(
                        time=base.time,
                        store=base.store,
                        position=base.position,
                        actor=actor or "",
                        action=action,
                        client=client,
                        session=_session(f.get("ses")),
                        tags=frozenset(tags),
                    )
                ]
        return []

    def _syscall(
        self,
        sc: AuditRecord,
        by_type: dict[str, list[AuditRecord]],
        tags: set[str],
        base: _Base,
        handle: str = "",
    ) -> AccessEvent:
        f, e = sc.fields, sc.enriched
        name = syscall_name(sc)
        auid, uid = f.get("auid"), f.get("uid")
        if auid in _UNSET or auid is None:
            actor = self._name(uid, e.get("UID"))
            tags.add("auid_unset")
        else:
            actor = self._name(auid, e.get("AUID"))
            tags.add(f"auid:{auid}")
        if uid is not None and uid != auid:
            tags.add(f"uid:{self._name(uid, e.get('UID'))}")
        keys = decode(f.get("key"))
        tags.update(f"key:{k}" for k in (keys or "").split("\x01") if k)
        tags.add(f"syscall:{name}")
        exe, comm = decode(f.get("exe")), decode(f.get("comm"))
        if exe:
            tags.add(f"exe:{exe}")
        exit_code = f.get("exit", "")
        detail = None
        if f.get("success") == "no":
            tags.add("failed")
            detail = f"exit={exit_code} ({_DENIED_EXITS.get(exit_code, 'error')})"
        argv: tuple[str, ...] = ()
        objects: tuple[str, ...] = ()
        if name in ("execve", "execveat"):
            execve = by_type.get("EXECVE", [])
            if execve:
                args = execve[0].fields
                argv = tuple(decode(args.get(f"a{i}")) or "" for i in range(_argc(args)))
        else:
            objects = self.objects(sc, name, by_type, keys, tags, handle)
        return AccessEvent(
            time=base.time,
            store=base.store,
            position=base.position,
            actor=actor,
            action=_action(name, f, by_type),
            objects=objects,
            application=comm,
            session=_session(f.get("ses")),
            command=name,
            parameters=argv,
            detail=detail,
            tags=frozenset(tags),
        )

    def objects(
        self,
        sc: AuditRecord,
        name: str,
        by_type: Mapping[str, list[AuditRecord]],
        keys: str | None,
        tags: set[str],
        handle: str = "",
    ) -> tuple[str, ...]:
        """The PATH names made absolute (see the module docstring); ``handle`` is the
        directory the descriptor argument stands for, when the framer knows it."""
        paths = sorted(by_type.get("PATH", []), key=lambda r: _int(r.fields.get("item")))
        if any(p.fields.get("nametype") in ("CREATE", "DELETE") for p in paths):
            paths = [p for p in paths if p.fields.get("nametype") != "PARENT"]
        cwd = decode(by_type["CWD"][0].fields.get("cwd")) if "CWD" in by_type else None
        at_cwd = name not in _AT_SYSCALLS or sc.fields.get("a0") == _AT_FDCWD
        base = cwd if at_cwd else handle
        watched = [self._watches[k] for k in (keys or "").split("\x01") if k in self._watches]
        out: dict[str, None] = {}
        for p in paths:
            path = decode(p.fields.get("name"))
            if not path:
                continue
            if not path.startswith("/"):
                if base and base.startswith("/"):
                    path = posixpath.join(base, path)
                else:
                    itself = [
                        w
                        for w in watched
                        if _is_directory(p) and posixpath.basename(w.rstrip("/")) == path
                    ]
                    if itself:  # the watched directory, opened relative to its parent
                        path = itself[0]
                    else:
                        tags.add("path_unresolved")
                        out.update(dict.fromkeys(watched))
                        out[path] = None
                        continue
            out[posixpath.normpath(path)] = None
        return tuple(out)


class HandleFramer:
    """:class:`AuditdFramer` that also follows, per process, which directory each descriptor
    stands for: a successful open of a directory (its PATH's mode) binds the returned
    descriptor (``exit=``) to the directory's path; any other successful open returning that
    number unbinds it. Records of ``*at`` syscalls whose descriptor is bound are handed on as
    :class:`HandleRecord`. Bounded: the least recently seen processes are forgotten.
    """

    def __init__(self, path: str, fmt: AuditdFormat) -> None:
        self._inner = AuditdFramer(path)
        self._fmt = fmt
        self._dirs: OrderedDict[str, dict[str, str]] = OrderedDict()  # pid -> fd -> dir

    def push(self, line: Line) -> list[Record]:
        return [self._follow(r) for r in self._inner.push(line)]

    def flush(self) -> list[Record]:
        return [self._follow(r) for r in self._inner.flush()]

    def pending_offset(self) -> int | None:
        return self._inner.pending_offset()

    def pending_line_no(self) -> int | None:
        return self._inner.pending_line_no()

    def _follow(self, record: Record) -> Record:
        first = record.lines[0].text
        if "type=SYSCALL" not in first or " pid=" not in first:
            return record  # cheap test first: most records are no syscall of interest
        try:
            recs = [AuditRecord(line.text) for line in record.lines]
        except ValueError:
            return record
        by_type: dict[str, list[AuditRecord]] = {}
        for rec in recs:
            by_type.setdefault(rec.type, []).append(rec)
        sc = by_type["SYSCALL"][0] if "SYSCALL" in by_type else None
        pid = sc.fields.get("pid") if sc is not None else None
        if sc is None or pid is None:
            return record
        name = syscall_name(sc)
        f = sc.fields
        handle = ""
        if name in _AT_SYSCALLS and f.get("a0") != _AT_FDCWD:
            handle = self._dirs.get(pid, {}).get(_fd(f.get("a0", "")), "")
            if handle:
                self._dirs.move_to_end(pid)
                record = HandleRecord(record.path, record.lines, handle)
        if name in _OPENS and f.get("success") == "yes" and f.get("exit", "").isdigit():
            self._bind(pid, f["exit"], sc, name, by_type, handle)
        return record

    def _bind(
        self,
        pid: str,
        fd: str,
        sc: AuditRecord,
        name: str,
        by_type: Mapping[str, list[AuditRecord]],
        handle: str,
    ) -> None:
        fds = self._dirs.get(pid)
        paths = by_type.get("PATH", [])
        if len(paths) != 1 or not _is_directory(paths[0]):
            if fds is not None:
                fds.pop(fd, None)
            return
        found = self._fmt.objects(sc, name, by_type, decode(sc.fields.get("key")), set(), handle)
        if len(found) != 1 or not found[0].startswith("/"):
            return
        if fds is None:
            fds = self._dirs[pid] = {}
            while len(self._dirs) > MAX_PROCESSES:
                self._dirs.popitem(last=False)
        self._dirs.move_to_end(pid)
        if len(fds) >= MAX_HANDLES and fd not in fds:
            fds.pop(next(iter(fds)))
        fds[fd] = found[0]


def syscall_name(sc: AuditRecord) -> str:
    """The syscall's name: ENRICHED's translation, else from the architecture's table."""
    f = sc.fields
    number = f.get("syscall", "")
    name = decode(sc.enriched.get("SYSCALL")) or (
        _SYSCALLS.get(f.get("arch", ""), {}).get(int(number)) if number.isdigit() else None
    )
    return name or f"syscall_{number}"


def _fd(a0: str) -> str:
    """The descriptor argument (hex, as logged) as the decimal number ``exit=`` shows."""
    try:
        return str(int(a0, 16))
    except ValueError:
        return ""


@dataclass(frozen=True, slots=True)
class _Base:
    time: datetime
    store: str
    position: SourcePosition


def _int(value: str | None) -> int:
    return int(value) if value is not None and value.isdigit() else 0


def _argc(fields: Mapping[str, str]) -> int:
    return min(_int(fields.get("argc")), 1000)


def _session(ses: str | None) -> str | None:
    return None if ses is None or ses in _UNSET else ses


def _action(name: str, f: Mapping[str, str], by_type: Mapping[str, list[AuditRecord]]) -> Action:
    if f.get("success") == "no":
        return Action.DENIED if f.get("exit") in _DENIED_EXITS else Action.OTHER
    if name in _DELETES:
        return Action.DELETE
    if name in _WRITES:
        return Action.WRITE
    if name in ("open", "openat"):
        flags = f.get("a1" if name == "open" else "a2", "0")
        try:
            value = int(flags, 16)
        except ValueError:
            value = 0
        return Action.WRITE if value & 0x3 or value & 0x240 else Action.READ
    if name == "openat2":
        paths = by_type.get("PATH", [])
        created = any(p.fields.get("nametype") == "CREATE" for p in paths)
        return Action.WRITE if created else Action.READ
    return Action.OTHER


def _login_action(rec: AuditRecord) -> Action | None:
    result = (rec.fields.get("res") or "").strip("'\"")
    if rec.type in ("USER_LOGIN", "USER_AUTH", "USER_ERR"):
        if result in ("failed", "0"):
            return Action.LOGIN_FAILED
        return Action.LOGIN if rec.type == "USER_LOGIN" else None
    return None
