"""The `breachwatch` command. Only this module turns errors into exit codes.

Exit codes: 0 success (scan: nothing found), 1 scan printed findings, 2 usage or
configuration error, 3 refused state change or unknown incident, 4 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from breachwatch import __version__
from breachwatch.errors import BreachwatchError, ConfigError, StateError
from breachwatch.parsers.registry import FORMAT_NAMES

EXIT_OK, EXIT_FOUND, EXIT_USAGE, EXIT_STATE, EXIT_RUNTIME = 0, 1, 2, 3, 4

# Command groups that live in their own module: each has `register(subparsers)`, which adds its
# parsers and sets `handler=` (a function taking the parsed arguments, returning an exit code).
COMMAND_MODULES: tuple[str, ...] = (
    "breachwatch.commands_incidents",
    "breachwatch.commands_notify",
    "breachwatch.commands_demo",
    "breachwatch.commands_detect",
    "breachwatch.commands_db",
    "breachwatch.commands_distributed",
    "breachwatch.commands_policy",
)
DEFAULT_CONFIG = os.environ.get("BREACHWATCH_CONFIG", "/etc/breachwatch/breachwatch.yml")

EPILOG = """exit status: 0 ok (scan: no finding), 1 scan found something, 2 usage or config
error, 3 refused state change or unknown incident, 4 runtime failure."""


def _config_arg(parser: argparse.ArgumentParser, *, nested: bool = False) -> None:
    # Nested action parsers accept --config too (`incidents list --config F`); SUPPRESS keeps
    # them from overwriting a value given before the action.
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=argparse.SUPPRESS if nested else Path(DEFAULT_CONFIG),
        help=f"daemon config file (default: $BREACHWATCH_CONFIG or {DEFAULT_CONFIG})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="breachwatch",
        epilog=EPILOG,
        description="Need-to-know monitoring of personal-data access logs, breach incidents "
        "and their legal notification deadlines.",
    )
    parser.add_argument("--version", action="version", version=f"breachwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the daemon (foreground; systemd notify aware)", epilog=EPILOG
    )
    _config_arg(run)

    check = sub.add_parser(
        "check-config", help="validate config, policy and customer directory", epilog=EPILOG
    )
    _config_arg(check)
    check.add_argument("--json", action="store_true", help="print the result as JSON")

    scan = sub.add_parser("scan", help="run the pipeline over existing log files", epilog=EPILOG)
    _config_arg(scan)
    scan.add_argument(
        "--format",
        choices=FORMAT_NAMES,
        help="log format (default: that of the configured source with the same "
        "file name, else of the first source)",
    )
    scan.add_argument("--json", action="store_true", help="one JSON object per finding")
    scan.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    scan.add_argument("paths", nargs="+", type=Path, metavar="PATH")

    inc = sub.add_parser("incidents", help="list, show and handle incidents", epilog=EPILOG)
    _config_arg(inc)
    isub = inc.add_subparsers(dest="action", required=True, metavar="ACTION")
    lst = isub.add_parser("list", help="list incidents")
    _config_arg(lst, nested=True)
    lst.add_argument("--state", help="only incidents in this state")
    lst.add_argument("--json", action="store_true")
    show = isub.add_parser("show", help="one incident with findings, obligations and history")
    _config_arg(show, nested=True)
    show.add_argument("ref", help="reference (BW-2026-0001) or number")
    show.add_argument("--json", action="store_true")
    for name, text in (
        ("confirm", "confirm: a breach (sets awareness time)"),
        ("dismiss", "dismiss a false positive (cancels pending notices)"),
        ("notified", "record that the authority was notified"),
        ("close", "close a handled incident"),
    ):
        action = isub.add_parser(name, help=text)
        _config_arg(action, nested=True)
        action.add_argument("ref")
        action.add_argument("--reason", required=True, help="why (kept in the history)")
        action.add_argument(
            "--by",
            default=os.environ.get("SUDO_USER") or os.environ.get("USER") or "staff",
            help="who decides",
        )
        action.add_argument("--json", action="store_true")

    obl = sub.add_parser("obligations", help="legal deadlines and their state", epilog=EPILOG)
    _config_arg(obl)
    obl.add_argument("--all", action="store_true", help="include done and cancelled")
    obl.add_argument("--json", action="store_true")

    notices = sub.add_parser("notices", help="the notification outbox", epilog=EPILOG)
    _config_arg(notices)
    notices.add_argument(
        "action",
        nargs="?",
        choices=("list", "retry"),
        default="list",
        help="list (default), or retry: queue failed notices again once the cause is fixed",
    )
    notices.add_argument("--state", help="queued, sending, sent, failed or cancelled")
    notices.add_argument("--json", action="store_true")

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)

    rules = sub.add_parser("rules", help="the rule catalogue with its controls", epilog=EPILOG)
    rules.add_argument("--json", action="store_true")

    quarantine = sub.add_parser(
        "quarantine", help="records that could not be parsed", epilog=EPILOG
    )
    _config_arg(quarantine)
    quarantine.add_argument("--source", help="only this source")
    quarantine.add_argument("--limit", type=int, default=50)
    quarantine.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"breachwatch: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StateError as exc:
        print(f"breachwatch: {exc}", file=sys.stderr)
        return EXIT_STATE
    except BreachwatchError as exc:
        print(f"breachwatch: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from breachwatch import commands

    if getattr(args, "handler", None) is not None:
        return int(args.handler(args))
    if args.command == "run":
        from breachwatch.config import load_config
        from breachwatch.daemon import run_daemon
        from breachwatch.logs import configure_logging

        configure_logging(load_config(args.config).log_level)
        return run_daemon(args.config)
    handler = {
        "check-config": commands.check_config,
        "scan": commands.scan,
        "incidents": commands.incidents,
        "obligations": commands.obligations,
        "notices": commands.notices,
        "quarantine": commands.quarantine,
        "rules": commands.rules,
    }[args.command]
    return handler(args)


def print_json(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False, default=str))


if __name__ == "__main__":
    sys.exit(main())
