"""`breachwatch demo`: see breachwatch work in a minute, on a scratch directory."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from breachwatch.demo import DemoSummary, DemoWorld, prepare, run_demo, tally

__all__ = ["register"]


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the daemon on a scratch directory with generated pgaudit activity",
        description="Start the real daemon on a temporary directory (or --dir), append "
        "realistic PostgreSQL/pgaudit lines (helpdesk and web-shop reads, a departed "
        "employee's account, an export, a bulk read) and show events, findings, incidents "
        "and customer notices as they happen. The mail folder, the daemon log and the "
        "config are left in the directory.",
    )
    demo.add_argument("--duration", type=float, default=45.0, help="seconds of activity (45)")
    demo.add_argument("--rate", type=float, default=4.0, help="log lines per second (4)")
    demo.add_argument("--dir", type=Path, help="directory to use (default: a new temp dir)")
    demo.add_argument("--metrics-port", type=int, default=0, help="default: a free port")
    demo.add_argument("--seed", type=int, help="random seed for the benign activity")
    demo.add_argument("--json", action="store_true", help="no live view: print a summary")
    demo.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    if args.duration <= 0 or args.rate <= 0:
        print("breachwatch: --duration and --rate must be positive", file=sys.stderr)
        return 2
    directory = args.dir or Path(tempfile.mkdtemp(prefix="breachwatch-demo-"))
    world = prepare(directory.resolve(), args.metrics_port)
    if args.json:
        summary = run_demo(world, args.duration, args.rate, args.seed)
        print(json.dumps(summary.as_json(world), ensure_ascii=False))
        return 0
    return _live(world, args)


def _live(world: DemoWorld, args: argparse.Namespace) -> int:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.panel import Panel
    from rich.table import Table

    console = Console()

    def view(s: DemoSummary) -> Group:
        head = Table.grid(padding=(0, 2))
        head.add_row(
            f"[bold]lines written[/] {s.lines_written}",
            f"[bold]events parsed[/] {int(s.events)}",
            f"[bold]metrics[/] {world.metrics_url}",
        )
        recent = Table(title="log lines (newest last)", expand=True, show_header=False)
        for label in s.recent:
            recent.add_row(label)
        findings = Table(title="findings", expand=True)
        findings.add_column("rule")
        findings.add_column("n", justify="right")
        for rule, count in sorted(s.findings.items()):
            findings.add_row(rule, str(count))
        incidents = Table(title="incidents", expand=True)
        for col in ("ref", "state", "severity", "actor"):
            incidents.add_column(col)
        for inc in s.incidents:
            colour = {"critical": "red", "high": "dark_orange"}.get(inc["severity"], "yellow")
            incidents.add_row(
                inc["ref"], inc["state"], f"[{colour}]{inc['severity']}[/]", inc["actor"]
            )
        notices = Table(title="customer notices", expand=True)
        for col in ("customer", "state", "channel", "not before (UTC)"):
            notices.add_column(col)
        for notice in s.notices:
            notices.add_row(
                notice["recipient"], notice["state"], notice["channel"], notice["not_before"][11:19]
            )
        return Group(Panel(head, title="breachwatch demo"), recent, findings, incidents, notices)

    with Live(view(DemoSummary()), console=console, refresh_per_second=4) as live:

        def linger(s: DemoSummary) -> None:
            live.update(view(s))
            live.stop()
            console.print(
                f"\n[bold]Mail folder[/]  {world.mail_folder}\n"
                f"[bold]Metrics[/]      {world.metrics_url}\n"
                f"[bold]Daemon log[/]   {world.daemon_log}\n"
                f"[bold]CLI[/]          breachwatch incidents list --config {world.config}\n"
                f"incidents: {len(s.incidents)}, notices: {tally(s.notices, 'state')}\n"
                "The daemon keeps running so you can look at the metrics: press Ctrl-C to stop."
            )
            if not sys.stdin.isatty():
                return
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                console.print("stopping the daemon")

        run_demo(
            world,
            args.duration,
            args.rate,
            args.seed,
            on_tick=lambda s: live.update(view(s)),
            linger=linger,
        )
    return 0
