"""`breachwatch scan --policy NEW [--compare OLD]` and `breachwatch sigma check FILE…`.

``scan --compare OLD`` replays the logs under two policies and lists the findings that appear
(only under the new policy) and disappear (only under the old one), keyed by rule, actor and
position (file:line), plus those whose severity changed: what a policy change would do before
it goes live. Exit 0 when both give the same findings, 1 when they differ.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from breachwatch.cli import EPILOG, print_json
from breachwatch.config import load_config
from breachwatch.detection.findings import Finding
from breachwatch.detection.policy import Policy, load_policy
from breachwatch.detection.sigma import SigmaError, load_sigma
from breachwatch.errors import ConfigError

EXIT_SAME, EXIT_DIFFERENT = 0, 1

Key = tuple[str, str, str, int]


def register(sub: Any) -> None:
    scan = sub.choices.get("scan")
    if scan is not None:
        scan.add_argument(
            "--policy",
            type=Path,
            help="scan under this policy file instead of the configured one",
        )
        scan.add_argument(
            "--compare",
            type=Path,
            metavar="OLD_POLICY",
            help="also scan under OLD_POLICY and show which findings appear and disappear "
            "(exit 0 identical, 1 different)",
        )
        scan.set_defaults(handler=scan_command)
    sigma = sub.add_parser("sigma", help="Sigma rules: check rule files", epilog=EPILOG)
    ssub = sigma.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = ssub.add_parser("check", help="parse and check Sigma rule files")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=sigma_check)


def _scan_findings(args: argparse.Namespace, policy: Policy) -> list[Finding]:
    """The findings of every file under one policy (fresh detector state per file, as scan)."""
    from breachwatch.commands import _Progress, _record_batches, _source_for
    from breachwatch.parsers.registry import build_format
    from breachwatch.pipeline import Pipeline

    config = load_config(args.config)
    found: list[Finding] = []
    for path in args.paths:
        if not path.is_file():
            raise ConfigError(str(path), "", "an existing log file")
        source = _source_for(config, path, args.format)
        pipeline = Pipeline(policy)
        fmt = build_format(source.format, source.options)
        progress = _Progress(False, path.name, 0)
        for records in _record_batches(path, source, progress):
            found += pipeline.process(records, fmt, source.name).findings
    return found


def finding_key(finding: Finding) -> Key:
    first = finding.evidence[0] if finding.evidence else None
    where = first.path if first else ""
    line = first.line if first else 0
    return (finding.rule, finding.actor, where, line)


def compare_findings(old: list[Finding], new: list[Finding]) -> dict[str, Any]:
    """Appeared, disappeared and changed findings, keyed by (rule, actor, file, line)."""
    from breachwatch.commands import finding_json

    old_by: dict[Key, list[Finding]] = {}
    new_by: dict[Key, list[Finding]] = {}
    for f in old:
        old_by.setdefault(finding_key(f), []).append(f)
    for f in new:
        new_by.setdefault(finding_key(f), []).append(f)
    appeared: list[dict[str, Any]] = []
    disappeared: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    unchanged = 0
    for key in sorted(set(old_by) | set(new_by), key=lambda k: (k[2], k[3], k[0], k[1])):
        before, after = old_by.get(key, []), new_by.get(key, [])
        pairs = min(len(before), len(after))
        for a, b in zip(before[:pairs], after[:pairs], strict=True):
            if a.severity is b.severity:
                unchanged += 1
            else:
                changed.append({**finding_json(b), "old_severity": a.severity.value})
        appeared += [finding_json(f) for f in after[pairs:]]
        disappeared += [finding_json(f) for f in before[pairs:]]
    by_rule: Counter[str] = Counter()
    for item in appeared:
        by_rule[f"+{item['rule']}"] += 1
    for item in disappeared:
        by_rule[f"-{item['rule']}"] += 1
    return {
        "identical": not (appeared or disappeared or changed),
        "appeared": appeared,
        "disappeared": disappeared,
        "changed": changed,
        "unchanged": unchanged,
        "by_rule": dict(sorted(by_rule.items())),
    }


def scan_command(args: argparse.Namespace) -> int:
    from breachwatch import commands

    if args.policy is None and args.compare is None:
        return commands.scan(args)
    new_path = args.policy or load_config(args.config).policy
    new = _scan_findings(args, load_policy(new_path))
    if args.compare is None:
        for finding in new:
            if args.json:
                print_json(commands.finding_json(finding))
            else:
                print(_line(" ", commands.finding_json(finding)))
        print(f"{len(new)} finding(s)", file=sys.stderr)
        return commands.EXIT_FOUND if new else commands.EXIT_OK
    old = _scan_findings(args, load_policy(args.compare))
    report = compare_findings(old, new)
    report["old_policy"], report["new_policy"] = str(args.compare), str(new_path)
    if args.json:
        print_json(report)
    else:
        for item in report["appeared"]:
            print(_line("+", item))
        for item in report["disappeared"]:
            print(_line("-", item))
        for item in report["changed"]:
            print(_line("~", item) + f" (was {item['old_severity']})")
        print(
            f"{len(report['appeared'])} appear, {len(report['disappeared'])} disappear, "
            f"{len(report['changed'])} change severity, {report['unchanged']} unchanged "
            f"({args.compare} -> {new_path})",
            file=sys.stderr,
        )
    return EXIT_SAME if report["identical"] else EXIT_DIFFERENT


def _line(mark: str, item: dict[str, Any]) -> str:
    source = item.get("source") or {}
    where = f"{Path(source.get('path', '')).name}:{source.get('line', '')}" if source else ""
    return (
        f"{mark} {item['severity']:<8} {item['rule']:<28} {item['actor']:<18} "
        f"{item['time'][:19]}  {where}"
    )


def sigma_check(args: argparse.Namespace) -> int:
    try:
        rules = load_sigma(args.files)
    except SigmaError as exc:
        raise ConfigError(str(args.files[0]), "sigma", str(exc)) from exc
    items: list[dict[str, Any]] = [
        {
            "rule": r.rule_id,
            "title": r.title,
            "level": r.level.value,
            "tags": list(r.tags),
            "kind": "detection",
            "logsource": r.logsource,
        }
        for r in rules.rules
    ]
    items += [
        {
            "rule": c.rule_id,
            "title": c.title,
            "level": c.level.value,
            "tags": list(c.tags),
            "kind": c.kind,
            "rules": list(c.rules),
            "group_by": list(c.group_by),
            "timespan_seconds": int(c.timespan.total_seconds()),
        }
        for c in rules.correlations
    ]
    if args.json:
        print_json({"ok": True, "rules": items})
    else:
        for item in items:
            print(f"ok  {item['rule']:<40} {item['level']:<8} {item['kind']:<12} {item['title']}")
        print(f"{len(items)} rule(s) ok", file=sys.stderr)
    return 0
