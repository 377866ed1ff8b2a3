"""Cold passes over statements with distinct literals: the shape cache against exact texts.

    .venv/bin/python benchmarks/bench_sql_shapes.py [--distinct 50000] [--cycles 1]

``--distinct`` statements, in the shapes of the sample workload, each with its own customer id
(so no text repeats within a cycle), go through a fresh ``SqlEnricher.sql_fields`` and through
``analyze`` (what the detectors call), once with the statement-shape cache and once the way it
was before (every distinct text parsed by pglast, ``use_shapes = False`` and
``analyze_exact``). Both runs start with every cache empty and are measured in the same process,
in CPU seconds; the results of the two runs must be equal. ``--cycles 10 --distinct 5000``
cycles more distinct texts than ``analyze``'s exact-text cache (4,096) holds.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable
from pathlib import Path

from breachwatch.detection.policy import load_policy
from breachwatch.events import Action
from breachwatch.sql import SqlEnricher, StatementShape
from breachwatch.sql.subjects import _closure

REPO_POLICY = Path(__file__).resolve().parents[1] / "config" / "policy.yml"
analysis = importlib.import_module("breachwatch.sql.analyze")
SHAPES = (
    "SELECT a.client_ref, a.full_name, a.email FROM clients.accounts a WHERE a.id = {n}",
    "SELECT b.bill_no, b.net_cents, b.issued_on FROM finance.bills b "
    "WHERE b.account_id = {n} ORDER BY b.issued_on DESC LIMIT 5",
    "UPDATE webmail.accounts SET last_login_ip = '198.51.100.{m}' WHERE account_id = {n}",
    "SELECT c.subject, c.status FROM helpdesk.cases c JOIN clients.accounts a "
    "ON a.id = c.account_id WHERE a.id IN ({n}, {k}) AND c.status <> 'closed'",
)
OBJECTS = ("clients.accounts", "finance.bills", "webmail.accounts", "clients.accounts")
Fields = tuple[Action, tuple[str, ...], tuple[str, ...], bool]


def workload(distinct: int) -> list[tuple[str, str]]:
    out = []
    for n in range(distinct):
        i = n % len(SHAPES)
        out.append((SHAPES[i].format(n=10_000 + n, m=n % 250, k=90_000 + n), OBJECTS[i]))
    return out


def run(
    statements: list[tuple[str, str]], cycles: int, shapes: bool
) -> tuple[float, list[Fields], list[StatementShape]]:
    analysis.analyze.cache_clear()
    analysis.analyze_exact.cache_clear()
    analysis._TEMPLATES.clear()
    _closure.cache_clear()
    policy = load_policy(REPO_POLICY)
    enricher = SqlEnricher(
        policy.subject_columns(), 100, identifying_columns=policy.identifying_columns()
    )
    enricher.use_shapes = shapes
    analyze: Callable[[str], StatementShape] = (
        analysis.analyze if shapes else analysis.analyze_exact
    )
    fields: list[Fields] = []
    parsed: list[StatementShape] = []
    started = time.process_time()
    for _ in range(cycles):
        fields = [enricher.sql_fields(Action.READ, (obj,), sql, ()) for sql, obj in statements]
        parsed = [analyze(sql) for sql, _ in statements]
    return time.process_time() - started, fields, parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--distinct", type=int, default=50_000)
    parser.add_argument("--cycles", type=int, default=1)
    args = parser.parse_args()
    statements = workload(args.distinct)
    exact_cpu, exact_fields, exact_shapes = run(statements, args.cycles, shapes=False)
    shaped_cpu, shaped_fields, shaped_shapes = run(statements, args.cycles, shapes=True)
    same = exact_fields == shaped_fields and exact_shapes == shaped_shapes
    total = len(statements) * args.cycles
    print(f"{args.distinct:,} distinct statements x {args.cycles} cycle(s), {len(SHAPES)} shapes")
    for name, cpu in (("exact texts (before)", exact_cpu), ("shape cache", shaped_cpu)):
        print(
            f"  {name:22s} {cpu:6.2f} s CPU  {cpu / total * 1e6:7.1f} µs/statement  "
            f"{total / cpu:9,.0f} statements/s"
        )
    print(
        f"  ratio shape cache / exact: {exact_cpu / shaped_cpu:.1f}x faster; "
        f"results {'equal' if same else 'DIFFERENT'}"
    )
    if not same:
        raise SystemExit("the shape cache does not give the exact analysis")


if __name__ == "__main__":
    main()
