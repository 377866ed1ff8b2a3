"""Incident case work, the legal documents and the history chain on the command line.

Registered through cli.COMMAND_MODULES. Adds to `breachwatch incidents`: reopen, assign,
comment, merge, split, severity, notice, exempt, verify, draft, evidence; and the top-level
commands `register` and `evidence-verify`.

Exit status as for every command (0 ok, 2 usage/config, 3 refused change or unknown incident,
4 runtime failure), and **1** when `incidents verify` finds the history chain broken or
`evidence-verify` finds the pack altered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from breachwatch.clock import SystemClock
from breachwatch.config import DaemonConfig, load_config
from breachwatch.errors import StateError
from breachwatch.incidents import chain, documents, evidence, regimes, views
from breachwatch.incidents.casework import EXEMPTIONS, PHASES, Casework
from breachwatch.incidents.lifecycle import IncidentState
from breachwatch.incidents.service import IncidentService, get_incident
from breachwatch.incidents.severity import RiskBand
from breachwatch.store.database import Database
from breachwatch.store.schema import Incident

EXIT_OK, EXIT_BROKEN = 0, 1
VERIFY_EPILOG = "exit status: 0 chain intact, 1 chain broken (first broken row reported), 2 usage"
PACK_EPILOG = "exit status: 0 pack intact, 1 pack altered or unreadable, 2 usage"


def _emit(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False, default=str))


def _db(config: DaemonConfig) -> Database:
    db = Database(config.db_url)
    db.create_schema()
    return db


def _by(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--by",
        default=os.environ.get("SUDO_USER") or os.environ.get("USER") or "staff",
        help="who does it (kept in the history)",
    )


def _incident_actions(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    for action in sub.choices["incidents"]._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("the incidents command has no actions")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from breachwatch.cli import _config_arg

    isub = _incident_actions(sub)

    def action(name: str, text: str, handler: Any, epilog: str | None = None) -> Any:
        p = isub.add_parser(name, help=text, description=text, epilog=epilog)
        _config_arg(p, nested=True)
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.set_defaults(handler=handler)
        return p

    p = action("reopen", "reopen a closed or dismissed incident (back to suspected)", _reopen)
    p.add_argument("ref")
    p.add_argument("--reason", required=True)
    _by(p)
    p = action("assign", "assign an incident to a person", _assign)
    p.add_argument("ref")
    p.add_argument("--to", required=True, help="who handles it")
    _by(p)
    p = action("comment", "add a comment to the history", _comment)
    p.add_argument("ref")
    p.add_argument("--text", required=True)
    _by(p)
    p = action("merge", "merge incident B into incident A", _merge)
    p.add_argument("ref", metavar="A", help="the incident that stays")
    p.add_argument("other", metavar="B", help="the incident merged into A")
    p.add_argument("--reason", default="same breach")
    _by(p)
    p = action("split", "move one finding into a new incident", _split)
    p.add_argument("ref")
    p.add_argument("--finding", type=int, required=True, help="finding id (incidents show)")
    p.add_argument("--reason", default="separate breach")
    _by(p)
    p = action("severity", "show the ENISA assessment, or override it with a reason", _severity)
    p.add_argument("ref")
    p.add_argument("--set", choices=[b.value for b in RiskBand], help="override the band")
    p.add_argument(
        "--unintelligible",
        choices=("yes", "no"),
        help="declare the data unintelligible (e.g. encrypted, key safe) or not",
    )
    p.add_argument("--reason", help="justification (required with --set / --unintelligible)")
    _by(p)
    p = action("notice", "record a notice given under a regime (phase, late reasons)", _notice)
    p.add_argument("ref")
    p.add_argument("--regime", required=True, choices=sorted(regimes.CLOCK_BASIS))
    p.add_argument(
        "--phase",
        choices=PHASES,
        default="complete",
        help="initial: more follows (611: starts the 3-day follow-up)",
    )
    p.add_argument("--reason", default="notice sent")
    p.add_argument("--late-reason", help="reasons for the delay (required past the deadline)")
    _by(p)
    p = action("exempt", "record an exemption (Art. 33 risk unlikely, Art. 34(3))", _exempt)
    p.add_argument("ref")
    p.add_argument("--regime", required=True, choices=sorted(EXEMPTIONS))
    p.add_argument(
        "--ground", required=True, choices=sorted({g for gs in EXEMPTIONS.values() for g in gs})
    )
    p.add_argument("--reason", required=True)
    _by(p)
    action("verify", "recompute the history hash chain", _verify, VERIFY_EPILOG)
    p = action("draft", "draft an authority notice (Markdown or JSON)", _draft)
    p.add_argument("ref")
    p.add_argument("--regime", required=True, choices=documents.DRAFT_REGIMES)
    p.add_argument("--lang", choices=documents.LANGS, default="fr")
    p.add_argument("--format", choices=("md", "json"), default="md")
    p = action("evidence", "write the evidence pack of an incident (.tar.gz)", _evidence)
    p.add_argument("ref")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.tar.gz")

    reg = sub.add_parser("register", help="the GDPR Art. 33(5) breach register for a period")
    _config_arg(reg)
    reg.add_argument("--from", dest="start", type=date.fromisoformat, metavar="DATE")
    reg.add_argument("--to", dest="end", type=date.fromisoformat, metavar="DATE", help="inclusive")
    reg.add_argument("--format", choices=("csv", "json"), default="csv")
    reg.add_argument("--all", action="store_true", help="include dismissed and merged incidents")
    reg.set_defaults(handler=_register)

    ver = sub.add_parser(
        "evidence-verify", help="verify an evidence pack offline", epilog=PACK_EPILOG
    )
    _config_arg(ver)  # accepted for symmetry; the check needs nothing but the file
    ver.add_argument("file", type=Path)
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(handler=_evidence_verify)


# ---- handlers ----------------------------------------------------------------------------
def _now() -> datetime:
    return SystemClock().now()


def _done(args: argparse.Namespace, incident: Incident, **extra: object) -> int:
    data = {"ref": incident.ref, "state": incident.state, **extra}
    if args.json:
        _emit(data)
    else:
        print(" ".join(f"{k}={v}" if k != "ref" else str(v) for k, v in data.items()))
    return EXIT_OK


def _reopen(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _db(config).transaction() as session:
        incident = IncidentService(config).transition(
            session, args.ref, IncidentState.SUSPECTED, args.by, args.reason, _now()
        )
        return _done(args, incident)


def _assign(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _db(config).transaction() as session:
        incident = Casework(config).assign(session, args.ref, args.to, args.by, _now())
        return _done(args, incident, assignee=incident.assignee)


def _comment(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _db(config).transaction() as session:
        incident = Casework(config).comment(session, args.ref, args.text, args.by, _now())
        return _done(args, incident, comment="recorded")


def _merge(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _db(config).transaction() as session:
        incident = Casework(config).merge(
            session, args.ref, args.other, args.by, args.reason, _now()
        )
        return _done(args, incident, merged=args.other)


def _split(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _db(config).transaction() as session:
        part = Casework(config).split(session, args.ref, args.finding, args.by, args.reason, _now())
        return _done(args, part, split_from=args.ref, finding=args.finding)


def _severity(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    changing = args.set is not None or args.unintelligible is not None
    if changing and not (args.reason or "").strip():
        raise StateError("a justification is required (--reason)")
    with _db(config).transaction() as session:
        if changing:
            incident = Casework(config).override_risk(
                session,
                args.ref,
                RiskBand(args.set) if args.set else None,
                None if args.unintelligible is None else args.unintelligible == "yes",
                args.by,
                args.reason,
                _now(),
            )
        else:
            incident = get_incident(session, args.ref)
        data = {"ref": incident.ref, "band": incident.risk_band, **(incident.risk_assessment or {})}
    if args.json:
        _emit(data)
        return EXIT_OK
    print(
        f"{data['ref']}: {data.get('band')} (computed {data.get('band')!s}, "
        f"SE {data.get('formula', 'not assessed')})"
    )
    for factor in [data.get("dpc"), data.get("ei"), *data.get("circumstances", [])]:
        if factor:
            print(f"  {factor['name']:>15} {factor['value']:<5g} {factor['reason']}")
    if data.get("override"):
        o = data["override"]
        print(f"  override: {o['band']} by {o['by']} at {o['at']}: {o['reason']}")
    print(f"  flags: {json.dumps(data.get('flags', {}))}")
    return EXIT_OK


def _notice(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _db(config).transaction() as session:
        obligation = Casework(config).notice_given(
            session,
            args.ref,
            args.regime,
            args.phase,
            args.by,
            args.reason,
            _now(),
            args.late_reason,
        )
        incident = get_incident(session, args.ref)
        return _done(args, incident, regime=obligation.regime, obligation=obligation.state)


def _exempt(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _db(config).transaction() as session:
        obligation = Casework(config).exempt(
            session, args.ref, args.regime, args.ground, args.by, args.reason, _now()
        )
        incident = get_incident(session, args.ref)
        return _done(args, incident, regime=obligation.regime, obligation=obligation.state)


def _verify(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _db(config).transaction() as session:
        report = chain.verify_store(session)
    if args.json:
        _emit(report.to_json())
    elif report.ok:
        print(f"history chain intact: {report.rows} row(s), head {report.head}")
    else:
        brk = report.first_break
        assert brk is not None
        print(f"history chain BROKEN at row {brk.row_id} ({brk.kind}): {brk.explanation}")
    return EXIT_OK if report.ok else EXIT_BROKEN


def _draft(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _db(config).transaction() as session:
        doc = views.draft_notice(session, config, args.ref, args.regime, args.lang, _now())
    if args.format == "json" or args.json:
        _emit(doc)
    else:
        sys.stdout.write(documents.draft_markdown(doc))
    return EXIT_OK


def _evidence(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _db(config).transaction() as session:
        incident = get_incident(session, args.ref)
        d = documents.dossier(session, incident, config)
        report = chain.verify_store(session)
    result = evidence.build_pack(args.out, d, report, _now())
    if args.json:
        _emit(result)
    else:
        print(
            f"{result['path']}: {result['records']} log record(s), "
            f"{result['unavailable']} unavailable; manifest sha256 {result['manifest_sha256']}"
        )
    return EXIT_OK


def _register(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    query = select(Incident).order_by(Incident.detected_at, Incident.id)
    if args.start:
        query = query.where(Incident.detected_at >= datetime.combine(args.start, time(), UTC))
    if args.end:
        end = datetime.combine(args.end + timedelta(days=1), time(), UTC)
        query = query.where(Incident.detected_at < end)
    if not args.all:
        query = query.where(Incident.state.notin_(("dismissed", "merged")))
    with _db(config).transaction() as session:
        rows = [
            documents.register_row(documents.dossier(session, i, config))
            for i in session.scalars(query)
        ]
    if args.format == "json":
        _emit(
            {
                "register": "GDPR Art. 33(5)",
                "from": args.start.isoformat() if args.start else None,
                "to": args.end.isoformat() if args.end else None,
                "breaches": rows,
            }
        )
    else:
        sys.stdout.write(documents.register_csv(rows))
    return EXIT_OK


def _evidence_verify(args: argparse.Namespace) -> int:
    report = evidence.verify_pack(args.file)
    if args.json:
        _emit(report.to_json())
    elif report.ok:
        print(f"{args.file}: intact ({report.checked}); manifest sha256 {report.manifest_sha256}")
    else:
        print(f"{args.file}: ALTERED")
        for problem in report.problems:
            print(f"  {problem}")
    return EXIT_OK if report.ok else EXIT_BROKEN
