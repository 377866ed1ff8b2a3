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
    (tar,) = parsed.at(311)  # AUD-07: openat(dirfd, "webhostdb_nightly.dump")
    assert tar.objects == ("/var/lib/webhost-lab/auditd/srv/backups", "webhostdb_nightly.dump")
    assert "path_unresolved" in tar.tags
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
    logins = [e for e in parsed.events if e.action is Action.LOGIN]
    assert "kevin_helpdesk" in {e.actor for e in logins}


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
