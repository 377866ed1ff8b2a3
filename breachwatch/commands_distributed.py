"""`breachwatch ship`: the log shipper of the scaled-out mode (breachwatch/distributed)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = os.environ.get("BREACHWATCH_CONFIG", "/etc/breachwatch/breachwatch.yml")


def register(sub: Any) -> None:
    ship = sub.add_parser(
        "ship",
        help="tail the configured logs and publish their records to NATS JetStream",
        description="Tail the sources of the config (same tailer, framing and exactly-once "
        "checkpoints as the daemon, kept in <state_dir>/shipper.db) and publish each record "
        "to the JetStream stream of `stream:`, partitioned by actor, for `breachwatch run` "
        "workers with `mode: jetstream`.",
    )
    ship.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path(DEFAULT_CONFIG),
        help=f"daemon config file (default: $BREACHWATCH_CONFIG or {DEFAULT_CONFIG})",
    )
    ship.set_defaults(handler=ship_command)


def ship_command(args: argparse.Namespace) -> int:
    from breachwatch.config import load_config
    from breachwatch.distributed.shipper import run_shipper
    from breachwatch.logs import configure_logging

    config = load_config(args.config)
    configure_logging(config.log_level)
    return run_shipper(config)
