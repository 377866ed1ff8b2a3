"""Linux audit log (auditd, RAW or ENRICHED ``log_format``): file access by login users.

One event is a SYSCALL record joined with its PATH/CWD/EXECVE records (framing in
:mod:`auditd_framing`). The actor is the login user (``auid``: who logged in, also behind sudo),
named by the ``uid_map`` option, else by ENRICHED's ``AUID="omar"``, else the number
(``unknown(3002)`` is no name). Objects are the PATH names made absolute with the CWD record;
a name relative to a directory descriptor cannot be resolved from the log alone: it is kept as
written (tag ``path_unresolved``), plus the watched directory of the rule's key when the
``watches`` option (key -> directory, as in ``-w DIR -k KEY``) names it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from breachwatch.errors import ParseFailure
from breachwatch.events import AccessEvent, Action, SourcePosition
from breachwatch.parsers.auditd_framing import AuditdFramer, AuditRecord
from breachwatch.parsers.base import ParseResult, Record

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

    def new_framer(self, path: str) -> AuditdFramer:
        return AuditdFramer(path)

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
            return [self._syscall(syscall[0], by_type, tags, base)]
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
    ) -> AccessEvent:
        f, e = sc.fields, sc.enriched
        number = f.get("syscall", "")
        name = decode(e.get("SYSCALL")) or (
            _SYSCALLS.get(f.get("arch", ""), {}).get(int(number)) if number.isdigit() else None
        )
        name = name or f"syscall_{number}"
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
            objects = self._objects(sc, name, by_type, keys, tags)
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

    def _objects(
        self,
        sc: AuditRecord,
        name: str,
        by_type: dict[str, list[AuditRecord]],
        keys: str | None,
        tags: set[str],
    ) -> tuple[str, ...]:
        paths = sorted(by_type.get("PATH", []), key=lambda r: _int(r.fields.get("item")))
        if any(p.fields.get("nametype") in ("CREATE", "DELETE") for p in paths):
            paths = [p for p in paths if p.fields.get("nametype") != "PARENT"]
        cwd = decode(by_type["CWD"][0].fields.get("cwd")) if "CWD" in by_type else None
        at_cwd = name not in _AT_SYSCALLS or sc.fields.get("a0") == _AT_FDCWD
        out: dict[str, None] = {}
        for p in paths:
            path = decode(p.fields.get("name"))
            if not path:
                continue
            if not path.startswith("/"):
                if at_cwd and cwd and cwd.startswith("/"):
                    path = posixpath.join(cwd, path)
                else:
                    tags.add("path_unresolved")
                    for key in (keys or "").split("\x01"):
                        if key in self._watches:
                            out[self._watches[key]] = None
                    out[path] = None
                    continue
            out[posixpath.normpath(path)] = None
        return tuple(out)


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
    if rec.type == "LOGIN":
        return Action.LOGIN if result in ("1", "success") else None
    if rec.type in ("USER_LOGIN", "USER_AUTH", "USER_ERR"):
        if result in ("failed", "0"):
            return Action.LOGIN_FAILED
        return Action.LOGIN if rec.type == "USER_LOGIN" else None
    return None
