"""`breachwatch db`: the store's schema migrations (breachwatch/store/migrate.py).

`db current` reads where the store stands without changing it; `db upgrade` migrates it to the
newest schema — what the daemon and every command also do at start. Run it by hand to upgrade a
store shared by several daemons (PostgreSQL) before restarting them on a new version.
"""

from __future__ import annotations

import argparse
from typing import Any

from breachwatch.cli import EPILOG, _config_arg, print_json
from breachwatch.config import load_config
from breachwatch.store import migrate
from breachwatch.store.database import Database
from breachwatch.store.schema import SCHEMA_VERSION


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="the store's schema: current revision, upgrade", epilog=EPILOG)
    _config_arg(db)
    dsub = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    current = dsub.add_parser("current", help="the store's revision and the newest known")
    _config_arg(current, nested=True)
    current.add_argument("--json", action="store_true")
    current.set_defaults(handler=current_command)
    upgrade = dsub.add_parser("upgrade", help="migrate the store to the newest schema")
    _config_arg(upgrade, nested=True)
    upgrade.add_argument("--json", action="store_true")
    upgrade.set_defaults(handler=upgrade_command)


def _database(args: argparse.Namespace) -> Database:
    return Database(load_config(args.config).db_url)


def current_command(args: argparse.Namespace) -> int:
    db = _database(args)
    try:
        state = migrate.current(db.engine)
    finally:
        db.dispose()
    if args.json:
        print_json({**state.to_json(), "database": db.url.split("://")[0]})
        return 0
    revision = ", ".join(state.revisions) or (
        "none (created before migrations)" if state.legacy else "none (empty)"
    )
    print(f"current: {revision}")
    print(f"head:    {state.head}")
    print(f"schema:  {state.schema_version} (this breachwatch: {SCHEMA_VERSION})")
    if state.up_to_date:
        print("up to date")
    else:
        print("pending: run `breachwatch db upgrade` (the daemon also upgrades at start)")
    return 0


def upgrade_command(args: argparse.Namespace) -> int:
    db = _database(args)
    try:
        applied = db.create_schema()
        state = migrate.current(db.engine)
    finally:
        db.dispose()
    if args.json:
        print_json({"applied": applied, **state.to_json()})
    elif applied:
        print(f"upgraded to {state.head} (applied: {', '.join(applied)})")
    else:
        print(f"already at {state.head}")
    return 0
