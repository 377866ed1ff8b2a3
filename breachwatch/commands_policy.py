"""`breachwatch policy schema|check`: the policy format as JSON Schema, and a policy check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from breachwatch.detection.policy import Policy, load_policy


def register(sub: Any) -> None:
    policy = sub.add_parser("policy", help="the detection policy: its JSON Schema, or check a file")
    actions = policy.add_subparsers(dest="policy_action", required=True, metavar="ACTION")
    schema = actions.add_parser("schema", help="print the policy's JSON Schema")
    schema.set_defaults(handler=_schema)
    check = actions.add_parser("check", help="validate a policy file (file, line and key on error)")
    check.add_argument("path", type=Path)
    check.set_defaults(handler=_check)


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(Policy.model_json_schema(mode="validation"), indent=2, ensure_ascii=False))
    return 0


def _check(args: argparse.Namespace) -> int:
    policy = load_policy(args.path)
    print(
        f"ok: {args.path}: {len(policy.staff)} staff, {len(policy.service_accounts)} service "
        f"accounts, {len(policy.data_map)} data-map entries, {len(policy.grants)} grants"
    )
    return 0
