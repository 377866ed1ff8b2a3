"""The auditd parser against the real ENRICHED audit.log of the ops host and its ground truth."""

from __future__ import annotations

import csv
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from breachwatch.errors import ParseFailure
from breachwatch.events import Action
from breachwatch.parsers.auditd import AuditdFormat, decode
from breachwatch.parsers.registry import FORMAT_NAMES, build_format
from tests.parser_helpers import Parsed, assert_each_line_once, frame, text_lines

SAMPLE = "auditd_files"
EVENT_ID = re.compile(r"msg=audit\(([^)]*)\)")


def host_accounts(samples_dir: Path) -> dict[str, str]:
    with (samples_dir / SAMPLE / "reference_host_accounts.csv").open() as fh:
        return {row["uid"]: row["username"] for row in csv.DictReader(fh)}


def watches(samples_dir: Path) -> dict[str, str]:
    """``-w DIR -p PERMS -k KEY`` lines of the rules file: key -> directory."""
    out: dict[str, str] = {}
    for line in (samples_dir / SAMPLE / "server_settings_rules.txt").read_text().splitlines():
        words = line.split()
        if words[:1] == ["-w"] and "-k" in words:
            out[words[words.index("-k") + 1]] = words[1]
    return out


@pytest.fixture(scope="module")
def parsed(samples_dir: Path) -> Parsed:
    fmt = AuditdFormat(host_accounts(samples_dir), watches(samples_dir))
    return Parsed(fmt, samples_dir / SAMPLE / "audit.log", "ops")


@pytest.fixture(scope="module")
def truth(samples_dir: Path) -> list[dict[str, Any]]:
    path = samples_dir / SAMPLE / "ground_truth.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_line_is_consumed_exactly_once(parsed: Parsed) -> None:
    assert len(parsed.lines) == 391
    assert_each_line_once(parsed.records, 391)
    assert not parsed.failures
    # one record per event id: the serials of a record are all the same, and none repeats
    ids = [{EVENT_ID.findall(li.text)[0] for li in r.lines} for r in parsed.records]
    assert all(len(i) == 1 for i in ids)
    assert len({next(iter(i)) for i in ids}) == len(parsed.records) == 84


def test_ground_truth_events(parsed: Parsed, truth: list[dict[str, Any]]) -> None:
    assert len(truth) == 8
    for entry in truth:
        record = parsed.record_of[entry["lines"][0]]
        assert [line.line_no for line in record.lines] == entry["lines"], entry["id"]
        (event,) = parsed.at(entry["lines"][0])
        assert event.actor == entry["actor"], entry["id"]  # the login user, also behind sudo
        assert f"key:{entry['key']}" in event.tags
        assert f"auid:{entry['auid']}" in event.tags
        assert event.application == entry["comm"]
        expected = Action.DENIED if entry["success"] == "no" else Action.READ
        assert event.action is expected, entry["id"]
        assert any(entry["path_contains"] in obj for obj in event.objects), event.objects
        assert event.time == datetime.fromisoformat(entry["time_utc"])
        if entry["uid"] == 0:
            assert "uid:root" in event.tags
        for related in entry["related_events"]:
            assert parsed.record_of[related["lines"][0]].line_no == related["lines"][0]


def test_objects_are_absolute_paths(parsed: Parsed) -> None:
    (denied,) = parsed.at(194)  # AUD-01: yasmine, EACCES on a mail file
    assert denied.objects == (
        "/var/lib/webhost-lab/auditd/srv/vmail/ozturk5155.de/post1/cur/1750140100.M2P1.mx2:2,S",
    )
    assert denied.detail == "exit=-13 (EACCES)" and denied.session == "53"
    # AUD-07: tar -C srv backups: openat(3, "backups") on a descriptor whose opening was not
    # audited is the watched directory itself; openat(5, "webhostdb_nightly.dump") is resolved
    # through descriptor 5, which that openat returned (exit=5) in the same process.
    (backups,) = parsed.at(307)
    assert backups.objects == ("/var/lib/webhost-lab/auditd/srv/backups",)
    (tar,) = parsed.at(311)
    assert tar.objects == ("/var/lib/webhost-lab/auditd/srv/backups/webhostdb_nightly.dump",)
    assert "path_unresolved" not in tar.tags
    # AUD-05: gzip opened finance/ as descriptor 3 (event 424), then openat(3, "bills_...")
    (archive,) = parsed.at(279)
    assert archive.objects == ("/var/lib/webhost-lab/auditd/srv/finance/bills_archive_2017.csv.gz",)
    reads = [e for e in parsed.events if e.action in (Action.READ, Action.DENIED)]
    assert all(
        o.startswith("/") for e in reads if "path_unresolved" not in e.tags for o in e.objects
    )
    execs = [e for e in parsed.events if e.command == "execve" and "key:staff_exec" in e.tags]
    (zcat,) = parsed.at(236)  # gotcha 27: the shell script zcat; its open shows comm=gzip
    assert zcat.parameters == (
        "/bin/sh",
        "/usr/bin/zcat",
        "/var/lib/webhost-lab/auditd/srv/finance/bills_archive_2017.csv.gz",
    )
    assert zcat in execs and zcat.action is Action.OTHER and zcat.objects == ()
    # The kernel's LOGIN record (a loginuid write) is no authentication: no event of its own;
    # what kevin's login uid does next is (his cp of the export, AUD-06).
    assert not [e for e in parsed.events if e.action is Action.LOGIN]
    assert parsed.at(283) == []
    assert {e.actor for e in parsed.at(293)} == {"kevin_helpdesk"}


def test_without_uid_map_enriched_names_or_numbers() -> None:
    fmt = build_format("auditd", {})
    lines = text_lines(
        [
            "type=SYSCALL msg=audit(1796001009.679:411): arch=c000003e syscall=2 success=yes "
            'exit=3 a0=7ffd a1=241 a2=1b6 items=2 auid=3004 uid=0 ses=4 comm="vi" '
            'exe="/usr/bin/vi" key=(null)\x1dAUID="omar" UID="root"',
            'type=CWD msg=audit(1796001009.679:411): cwd="/srv/data"',
            'type=PATH msg=audit(1796001009.679:411): item=0 name="/srv/data/" nametype=PARENT',
            "type=PATH msg=audit(1796001009.679:411): item=1 name=6E6F74657320322E747874 "
            "nametype=CREATE",
            "type=SYSCALL msg=audit(1796001009.700:412): arch=c000003e syscall=87 success=yes "
            'exit=0 auid=3002 uid=3002 ses=5\x1dAUID="unknown(3002)"',
            'type=PATH msg=audit(1796001009.700:412): item=0 name="old.csv" nametype=DELETE',
            "type=USER_AUTH msg=audit(1796001020.000:413): pid=1 uid=0 auid=4294967295 "
            "msg='op=PAM:authentication acct=\"mallory\" addr=192.0.2.7 res=failed'",
            "type=EOE msg=audit(1796001009.679:411): ",
            "no audit record at all",
        ]
    )
    records = frame(fmt, lines)
    assert_each_line_once(records, 9)
    results = [fmt.parse(r, "ops") for r in records]
    events = [e for r in results if isinstance(r, list) for e in r]
    write, delete, failed = events
    assert (write.actor, write.action, write.objects) == (
        "omar",
        Action.WRITE,
        ("/srv/data/notes 2.txt",),
    )
    assert (delete.actor, delete.action, delete.objects) == ("3002", Action.DELETE, ("old.csv",))
    assert "path_unresolved" in delete.tags  # unlink(2) is relative to the cwd, not logged
    assert (failed.actor, failed.action, failed.client) == (
        "mallory",
        Action.LOGIN_FAILED,
        "192.0.2.7",
    )
    assert sum(isinstance(r, ParseFailure) for r in results) == 1
    assert "auditd" in FORMAT_NAMES
    with pytest.raises(ValueError):
        build_format("auditd", {"uid_map": {"3001": ""}})
    with pytest.raises(ValueError):
        build_format("auditd", {"uid_map": ["3001"]})
    assert build_format("auditd", {"uid_map": {3001: "yasmine"}}).name == "auditd"


def test_framer_interleaving_and_timeout() -> None:
    fmt = AuditdFormat()
    a, b, c = "msg=audit(100.001:1):", "msg=audit(100.002:2):", "msg=audit(105.000:3):"
    texts = [
        f"type=SYSCALL {a} syscall=2 success=yes exit=3 auid=1 uid=1 a1=0",
        f"type=SYSCALL {b} syscall=2 success=yes exit=3 auid=2 uid=2 a1=0",
        f'type=PATH {a} item=0 name="/a"',
        f"type=PROCTITLE {a} proctitle=6361",
        f'type=PATH {b} item=0 name="/b"',  # no PROCTITLE: the next event, 5 s later, ends it
        f"type=SYSCALL {c} syscall=2 success=yes exit=3 auid=3 uid=3 a1=0",
    ]
    records = frame(fmt, text_lines(texts))
    assert [[line.line_no for line in r.lines] for r in records] == [[1, 3, 4], [2, 5], [6]]
    events = [e for r in records for e in fmt.parse(r, "ops")]  # type: ignore[union-attr]
    assert [(e.actor, e.objects) for e in events] == [("1", ("/a",)), ("2", ("/b",)), ("3", ())]
    assert events[0].time == datetime(1970, 1, 1, 0, 1, 40, 1000, tzinfo=UTC)


def test_decode() -> None:
    assert decode('"plain"') == "plain"
    assert decode("2F746D702F6120622E747874") == "/tmp/a b.txt"
    assert decode("(null)") is None
    assert decode("abc") == "abc"  # odd length: not hex


def test_hostile_lines_are_fast() -> None:
    fmt = AuditdFormat()
    hostile = [
        "type=SYSCALL msg=audit(1.1:1): " + 'a="' * 50_000,
        "type=PATH msg=audit(1.1:1): name=" + "41" * 50_000,
        "type=EXECVE msg=audit(1.1:1): argc=99999999 " + "a0=x " * 20_000,
        "type=SYSCALL msg=audit(" + "9" * 100_000 + ".1:1): syscall=2",
        "node=" + "x" * 100_000,
    ]
    for text in hostile:
        start = time.perf_counter()
        for record in frame(fmt, text_lines([text, "type=EXECVE msg=audit(1.1:1): argc=3"])):
            fmt.parse(record, "ops")
        assert time.perf_counter() - start < 0.5, text[:40]


def _openat(serial: int, pid: int, a0: str, exit_code: int, name: str, mode: str) -> list[str]:
    head = f"msg=audit(1796001100.000:{serial}):"
    return [
        f"type=SYSCALL {head} arch=c000003e syscall=257 success=yes exit={exit_code} a0={a0} "
        f'a1=0 a2=90800 items=1 ppid=1 pid={pid} auid=3004 uid=0 ses=9 comm="find" key="k"',
        f'type=CWD {head} cwd="/home/omar"',
        f'type=PATH {head} item=0 name="{name}" mode={mode} nametype=NORMAL',
        f"type=PROCTITLE {head} proctitle=66696E64",
    ]


def test_directory_descriptors_are_followed_per_process() -> None:
    fmt = AuditdFormat({"3004": "omar"}, {"k": "/srv/data"})
    lines = text_lines(
        [
            *_openat(1, 100, "ffffff9c", 3, "/srv/data/", "040750"),  # pid 100: fd 3 = dir
            *_openat(2, 100, "3", 4, "sub", "040750"),  # fd 4 = /srv/data/sub
            *_openat(3, 100, "4", 5, "a.csv", "0100640"),
            *_openat(4, 200, "3", 3, "b.csv", "0100640"),  # pid 200: fd 3 never seen
            *_openat(5, 100, "ffffff9c", 4, "/etc/hosts", "0100644"),  # fd 4 is now a file
            *_openat(6, 100, "4", 6, "c.csv", "0100640"),
            "type=LOGIN msg=audit(1796001100.000:7): pid=9 uid=0 old-auid=4294967295 auid=3004 "
            "tty=(none) old-ses=4294967295 ses=9 res=1",
            "type=USER_LOGIN msg=audit(1796001100.000:8): pid=9 uid=0 auid=3004 ses=9 "
            "msg='op=login id=3004 exe=\"/usr/sbin/sshd\" addr=192.0.2.9 res=success'",
        ]
    )
    results = [fmt.parse(r, "ops") for r in frame(fmt, lines)]
    events = [e for r in results if isinstance(r, list) for e in r]
    assert len(results) == 8
    objects = [e.objects for e in events if e.command == "openat"]
    assert objects == [
        ("/srv/data",),
        ("/srv/data/sub",),
        ("/srv/data/sub/a.csv",),
        ("/srv/data", "b.csv"),  # another process: its descriptor 3 is unknown
        ("/etc/hosts",),
        ("/srv/data", "c.csv"),  # descriptor 4 was reused for a file: no longer the directory
    ]
    assert ["path_unresolved" in e.tags for e in events if e.command == "openat"] == [
        False,
        False,
        False,
        True,
        False,
        True,
    ]
    (login,) = [e for e in events if e.action is Action.LOGIN]  # PAM's, not the kernel's
    assert (login.actor, login.client) == ("omar", "192.0.2.9")
