"""`breachwatch notify`: preview, approve, hold, cancel and follow the customer notices of an
incident. Preview renders through the same code as delivery (notifications/context.py)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from sqlalchemy import select

from breachwatch.cli import EPILOG, _config_arg, print_json
from breachwatch.clock import SystemClock
from breachwatch.config import load_config
from breachwatch.errors import StateError
from breachwatch.incidents.deadlines import message_key
from breachwatch.incidents.service import get_incident
from breachwatch.notifications import workflow
from breachwatch.notifications.context import compose_email, load_view, render_for
from breachwatch.notifications.directory import Customer
from breachwatch.notifications.render import NoticeRenderer
from breachwatch.notifications.wiring import build_directory
from breachwatch.store.database import Database
from breachwatch.store.schema import IncidentSubject


def register(sub: Any) -> None:
    notify = sub.add_parser(
        "notify", help="preview, approve, hold or cancel customer notices", epilog=EPILOG
    )
    _config_arg(notify)
    nsub = notify.add_subparsers(dest="action", required=True, metavar="ACTION")
    preview = nsub.add_parser("preview", help="exactly what will be sent, without sending")
    _config_arg(preview, nested=True)
    preview.add_argument("ref", help="incident reference (BW-2026-0001) or number")
    preview.add_argument("--recipient", help="only this customer id (default: all affected)")
    preview.add_argument("--lang", choices=("fr", "nl", "en"), help="render in this language")
    preview.add_argument("--authority", action="store_true", help="the authority cover letter")
    preview.add_argument("--html", action="store_true", help="also print the HTML part")
    preview.add_argument("--json", action="store_true")
    preview.set_defaults(handler=preview_command)
    by_default = os.environ.get("SUDO_USER") or os.environ.get("USER") or "staff"
    for name, text, required in (
        ("approve", "release the notices now, before the hold ends", False),
        ("hold", "keep the notices from going out until approved", True),
        ("cancel", "send no (further) customer notice for this incident", True),
    ):
        action = nsub.add_parser(name, help=text)
        _config_arg(action, nested=True)
        action.add_argument("ref")
        action.add_argument("--reason", required=required, default="", help="kept in history")
        action.add_argument("--by", default=by_default, help="who decides")
        action.add_argument("--json", action="store_true")
        action.set_defaults(handler=change_command)
    status = nsub.add_parser("status", help="delivery progress of customer notices")
    _config_arg(status, nested=True)
    status.add_argument("ref", nargs="?", help="one incident (default: all)")
    status.add_argument("--watch", action="store_true", help="refresh until nothing is pending")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=status_command)


def _db(args: argparse.Namespace) -> tuple[Any, Database]:
    config = load_config(args.config)
    db = Database(config.db_url)
    db.create_schema()
    return config, db


def change_command(args: argparse.Namespace) -> int:
    _config, db = _db(args)
    verb = {"approve": workflow.approve, "hold": workflow.hold, "cancel": workflow.cancel}
    change = verb[args.action](db, args.ref, args.by, args.reason, SystemClock().now())
    if args.json:
        print_json({"ref": change.ref, "action": change.action, "notices": change.notices})
    else:
        print(f"{change.ref}: notices {change.action} ({change.notices} in the outbox moved)")
    return 0


def preview_command(args: argparse.Namespace) -> int:
    config, db = _db(args)
    notifications = config.notifications
    renderer = NoticeRenderer()
    now = SystemClock().now()
    domain = notifications.sender.rsplit("@", 1)[-1].strip(" >") or "localhost"
    with db.transaction() as session:
        incident = get_incident(session, args.ref)
        obligation = workflow.customer_obligation(session, incident)
        view = load_view(session, obligation.id, notifications)
        subjects = list(
            session.scalars(
                select(IncidentSubject.subject)
                .where(IncidentSubject.incident_id == incident.id)
                .order_by(IncidentSubject.subject)
            )
        )
    if args.authority:
        rendered = renderer.render_context("authority", args.lang or "fr", view.contexts["en"])
        _show(
            [
                {
                    "recipient": "authority",
                    "subject": rendered.subject,
                    "text": rendered.text,
                    "html": rendered.html,
                    "language": rendered.language,
                }
            ],
            args,
        )
        return 0
    if args.recipient:
        if args.recipient not in subjects:
            raise StateError(f"{args.recipient!r} is not affected by {incident.ref}")
        subjects = [args.recipient]
    directory = build_directory(notifications, SystemClock())
    items = []
    for subject in subjects:
        found = directory.get(subject)
        customer = found or Customer(subject, "", "", "en")
        if args.lang:
            customer = Customer(
                customer.id, customer.name, customer.email, args.lang, customer.kind
            )
        item: dict[str, Any] = {
            "recipient": subject,
            "kind": customer.kind,
            "language": customer.language,
            "to": customer.email,
        }
        message_id = f"<{message_key(obligation.id, subject)}.{incident.ref}@{domain}>"
        try:
            email = compose_email(
                renderer,
                view,
                customer,
                sender=notifications.sender,
                message_id=message_id,
                now=now,
            )
            item["subject"] = str(email["Subject"])
        except ValueError as exc:
            item["problem"] = "no usable address" if not customer.deliverable else str(exc)
        rendered = render_for(renderer, view, customer)
        item.update(
            subject=item.get("subject", rendered.subject), text=rendered.text, html=rendered.html
        )
        items.append(item)
    _show(items, args)
    return 0


def _show(items: list[dict[str, Any]], args: argparse.Namespace) -> None:
    for item in items:
        if args.json:
            print_json(item)
            continue
        print(
            f"=== {item['recipient']} ({item.get('kind', '')}, {item['language']}) "
            f"{item.get('to', '')}"
        )
        if item.get("problem"):
            print(f"!!! {item['problem']}: this notice would be recorded as failed")
        print(f"Subject: {item['subject']}\n")
        print(item["text"])
        if args.html:
            print(item["html"])


def _bar(done: int, total: int, width: int = 30) -> str:
    share = done / total if total else 1.0
    filled = round(share * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {share:.0%}"


def status_command(args: argparse.Namespace) -> int:
    config, db = _db(args)
    rate = config.notifications.rate_per_second
    tty = sys.stdout.isatty() and not args.json
    while True:
        items = workflow.status(db, args.ref)
        for item in items:
            eta = item.pending / rate
            if args.json:
                print_json(
                    {
                        "incident": item.ref,
                        "obligation": item.obligation_state,
                        "held": item.held,
                        "total": item.total,
                        "counts": item.counts,
                        "eta_seconds": round(eta, 1),
                    }
                )
                continue
            counts = ", ".join(f"{s} {item.counts[s]}" for s in workflow.STATES if s in item.counts)
            line = (
                f"{item.ref}  {_bar(item.finished, item.total)}  {counts or 'nothing queued'}"
                f"{'  HELD' if item.held else ''}  eta {eta:.0f}s"
            )
            print(
                f"\r{line}" if tty and args.watch else line,
                end="" if tty and args.watch else "\n",
                flush=True,
            )
        if not args.watch or not any(i.pending for i in items):
            if tty and args.watch:
                print()
            return 0
        time.sleep(2.0)  # a person watching; no logic depends on it
