"""What each CLI command does. Library errors propagate; cli.main maps them to exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from breachwatch.clock import SystemClock
from breachwatch.config import DaemonConfig, SourceConfig, load_config
from breachwatch.detection.findings import Finding
from breachwatch.detection.policy import load_policy
from breachwatch.errors import ConfigError
from breachwatch.incidents import views
from breachwatch.incidents.lifecycle import IncidentState
from breachwatch.incidents.service import IncidentService
from breachwatch.notifications.directory import CustomerDirectory
from breachwatch.parsers.base import Record, push_lines
from breachwatch.parsers.registry import build_format
from breachwatch.pipeline import Pipeline
from breachwatch.sources.files import read_line_batches
from breachwatch.speedups import tune_gc
from breachwatch.store.database import Database
from breachwatch.store.schema import QuarantinedRecord

EXIT_OK, EXIT_FOUND = 0, 1


# One encoder for every document printed: json.dumps with options builds a new one per call,
# which is a third of the cost of a finding's line in `scan --json`.
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


def _emit(value: object) -> None:
    print(_JSON.encode(value))


def finding_line(finding: Finding) -> str:
    """A finding as `scan --json` prints it: one compact JSON document, without the newline.
    orjson, because a replay can print tens of thousands of findings: 0.5 µs a document where
    the json module takes about 5 (benchmarks/bench_pipeline.py writes them this way too)."""
    return orjson.dumps(finding_json(finding), default=str).decode()


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _open_db(config: DaemonConfig) -> Database:
    db = Database(config.db_url)
    db.create_schema()
    return db


# ---- check-config ------------------------------------------------------------------------
def check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    policy = load_policy(config.policy)
    directory = CustomerDirectory.from_csv(config.notifications.customers)
    for source in config.sources:
        try:
            build_format(source.format, source.options)
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(args.config), f"sources.{source.name}.options", str(exc)) from exc
    summary = {
        "config": str(args.config),
        "policy": str(config.policy),
        "sources": [s.name for s in config.sources],
        "staff": len(policy.staff),
        "data_map_entries": len(policy.data_map),
        "grants": len(policy.grants),
        "customers": len(directory),
        "database": config.db_url.split("://")[0],
        "delivery": "smtp" if config.notifications.smtp else "mail_folder",
    }
    if args.json:
        _emit({"ok": True, **summary})
    else:
        print(f"ok: {args.config}")
        for key, value in summary.items():
            print(f"  {key}: {value}")
    return EXIT_OK


# ---- scan --------------------------------------------------------------------------------
def _source_for(config: DaemonConfig, path: Path, fmt: str | None) -> SourceConfig:
    by_name = [s for s in config.sources if s.path.name == path.name.removesuffix(".gz")]
    candidates = by_name + list(config.sources)
    if fmt:
        candidates = [s for s in candidates if s.format == fmt]
        if not candidates:
            return SourceConfig(name="scan", path=path, format=fmt)  # type: ignore[arg-type]
    return candidates[0]


def _record_batches(
    path: Path, source: SourceConfig, progress: _Progress
) -> Iterator[list[Record]]:
    """The file's records, a list per read of 128 KiB (the batch APIs: one framer
    call and one pipeline call per list, not one per line or record)."""
    fmt = build_format(source.format, source.options)
    framer = fmt.new_framer(str(path))
    for lines in read_line_batches(path, source.max_line_bytes):
        progress.advance(len(lines), lines[-1].end_offset)
        yield push_lines(framer, lines)
    yield framer.flush()


class _Progress:
    """Lines and bytes on stderr, only for a person at a terminal."""

    def __init__(self, enabled: bool, label: str, total_bytes: int) -> None:
        self.enabled = enabled
        self.label = label
        self.total = total_bytes
        self.lines = 0

    def advance(self, count: int, offset: int) -> None:
        before, self.lines = self.lines, self.lines + count
        if self.enabled and before // 20000 != self.lines // 20000:
            share = f" {min(offset / self.total, 1):.0%}" if self.total else ""
            print(
                f"\r{self.label}: {self.lines:,} lines{share}", end="", file=sys.stderr, flush=True
            )

    def done(self) -> None:
        if self.enabled and self.lines >= 20000:
            print(f"\r{self.label}: {self.lines:,} lines, done", file=sys.stderr)


def finding_json(finding: Finding) -> dict[str, Any]:
    first = finding.evidence[0] if finding.evidence else None
    return {
        "rule": finding.rule,
        "severity": finding.severity.value,
        "actor": finding.actor,
        "person": finding.person,
        "time": finding.time.isoformat(),
        "store": finding.store,
        "object": finding.objects[0] if finding.objects else None,
        "objects": list(finding.objects),
        "subjects": list(finding.subjects),
        "categories": list(finding.categories),
        "explanation": finding.explanation,
        "controls": list(finding.controls),
        "source": {"path": first.path, "line": first.line, "offset": first.offset}
        if first
        else None,
    }


def scan(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tune_gc()
    found = 0
    rows: list[list[object]] = []
    for path in args.paths:
        if not path.is_file():
            raise ConfigError(str(path), "", "an existing log file")
        source = _source_for(config, path, args.format)
        pipeline = Pipeline(load_policy(config.policy))  # fresh windows per file
        progress = _Progress(
            not args.no_progress and sys.stderr.isatty(), path.name, path.stat().st_size
        )
        fmt = build_format(source.format, source.options)
        for records in _record_batches(path, source, progress):
            result = pipeline.process(records, fmt, source.name)
            for failure_record, failure in result.failures:
                print(
                    f"{path}:{failure_record.line_no}: unparsed ({failure.reason})", file=sys.stderr
                )
            for finding in result.findings:
                found += 1
                if args.json:
                    print(finding_line(finding))
                else:
                    pos = finding.evidence[0] if finding.evidence else None
                    rows.append(
                        [
                            finding.severity.value,
                            finding.rule,
                            finding.actor,
                            finding.time.isoformat(timespec="seconds"),
                            ",".join(finding.objects)[:40],
                            f"{Path(pos.path).name}:{pos.line}" if pos else "",
                        ]
                    )
        progress.done()
    if not args.json:
        if rows:
            _table(["severity", "rule", "actor", "time", "object", "where"], rows)
        print(f"{found} finding(s)", file=sys.stderr)
    return EXIT_FOUND if found else EXIT_OK


# ---- incidents ---------------------------------------------------------------------------
def incidents(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    db = _open_db(config)
    if args.action == "list":
        return _list_incidents(db, args)
    if args.action == "show":
        return _show_incident(db, args)
    target = {
        "confirm": IncidentState.CONFIRMED,
        "dismiss": IncidentState.DISMISSED,
        "notified": IncidentState.NOTIFIED,
        "close": IncidentState.CLOSED,
    }[args.action]
    with db.transaction() as session:
        incident = IncidentService(config).transition(
            session, args.ref, target, args.by, args.reason, SystemClock().now()
        )
        ref, state = incident.ref, incident.state
    if args.json:
        _emit({"ref": ref, "state": state})
    else:
        print(f"{ref}: {state}")
    return EXIT_OK


def _list_incidents(db: Database, args: argparse.Namespace) -> int:
    with db.transaction() as session:
        items = views.list_incidents(session, args.state)
    if args.json:
        for item in items:
            _emit(item)
    else:
        _table(
            ["ref", "state", "severity", "actor", "subjects", "detected"],
            [
                [
                    i["ref"],
                    i["state"],
                    i["severity"],
                    i["actor"],
                    i["subjects"],
                    i["detected_at"][:19],
                ]
                for i in items
            ],
        )
    return EXIT_OK


def _show_incident(db: Database, args: argparse.Namespace) -> int:
    with db.transaction() as session:
        data = views.incident_detail(session, args.ref, SystemClock().now())
    if args.json:
        _emit(data)
        return EXIT_OK
    for key in (
        "ref",
        "state",
        "severity",
        "actor",
        "person",
        "store",
        "categories",
        "subjects",
        "detected_at",
        "aware_at",
        "risk_band",
        "assignee",
    ):
        print(f"{key:>12}: {data[key]}")
    print("\nfindings:")
    for f in data["findings"]:
        print(f"  [{f['severity']}] {f['rule']} {f['time']}: {f['explanation']}")
    print("\nobligations:")
    for o in data["obligations"]:
        print(f"  {o['regime']} -> {o['recipient']}: due {o['due_at']} ({o['state']})")
    print("\nhistory:")
    for h in data["history"]:
        print(f"  {h['at']} {h['by']}: {h['action']} {json.dumps(h['detail'])}")
    return EXIT_OK


# ---- obligations, notices, quarantine ----------------------------------------------------
def obligations(args: argparse.Namespace) -> int:
    db = _open_db(load_config(args.config))
    with db.transaction() as session:
        items = views.list_obligations(session, SystemClock().now(), include_closed=args.all)
    if args.json:
        for item in items:
            _emit(item)
    else:
        _table(
            ["incident", "regime", "state", "due", "left", "overdue"],
            [
                [
                    i["incident"],
                    i["regime"],
                    i["state"],
                    i["due_at"][:19],
                    f"{i['seconds_left'] / 3600:.1f}h",
                    "yes" if i["overdue"] else "",
                ]
                for i in items
            ],
        )
    return EXIT_OK


def notices(args: argparse.Namespace) -> int:
    db = _open_db(load_config(args.config))
    if args.action == "retry":
        from breachwatch.notifications.outbox import requeue

        count = requeue(db, SystemClock())
        _emit({"requeued": count}) if args.json else print(f"{count} notice(s) queued again")
        return EXIT_OK
    with db.transaction() as session:
        items = views.list_notices(session, args.state)
    if args.json:
        for item in items:
            _emit(item)
    else:
        _table(
            ["incident", "recipient", "state", "attempts", "sent", "error"],
            [
                [
                    i["incident"],
                    i["recipient"],
                    i["state"],
                    i["attempts"],
                    i["sent_at"][:19],
                    (i["error"] or "")[:50],
                ]
                for i in items
            ],
        )
    return EXIT_OK


def quarantine(args: argparse.Namespace) -> int:
    db = _open_db(load_config(args.config))
    with db.transaction() as session:
        query = select(QuarantinedRecord).order_by(QuarantinedRecord.id.desc()).limit(args.limit)
        if args.source:
            query = query.where(QuarantinedRecord.source == args.source)
        items: list[dict[str, Any]] = [
            {
                "source": q.source,
                "path": q.path,
                "line": q.line_no,
                "offset": q.offset,
                "reason": q.reason,
                "detail": q.detail,
                "text": q.text,
                "at": views.iso(q.at),
            }
            for q in session.scalars(query)
        ]
    if args.json:
        for item in items:
            _emit(item)
    else:
        _table(
            ["source", "where", "reason", "text"],
            [
                [
                    i["source"],
                    f"{Path(i['path']).name}:{i['line']}",
                    i["reason"],
                    i["text"][:60].replace("\n", " "),
                ]
                for i in items
            ],
        )
    return EXIT_OK


def rules(args: argparse.Namespace) -> int:
    from breachwatch.detection.rules import RULES

    items = [
        {
            "rule": spec.id,
            "severity": spec.default_severity.value,
            "title": spec.title,
            "controls": list(spec.controls),
            "iso27001": [c.split(" ", 1)[1] for c in spec.controls if c.startswith("ISO")],
            "gdpr": spec.gdpr,
        }
        for spec in RULES.values()
    ]
    if args.json:
        for item in items:
            _emit(item)
    else:
        _table(
            ["rule", "severity", "title"], [[i["rule"], i["severity"], i["title"]] for i in items]
        )
    return EXIT_OK
