"""`breachwatch notify`: preview renders what delivery sends; hold, approve and cancel move
the outbox and write the incident history; reminders, the overdue alarm and the escalation
go to the security team's signed webhook once each."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from breachwatch.cli import main
from breachwatch.incidents.deadlines import DeadlineKeeper
from breachwatch.notifications import workflow
from breachwatch.notifications.channels import MailFolderChannel
from breachwatch.notifications.http import WebhookChannel, signature
from breachwatch.store.schema import IncidentHistory
from tests.test_channels_http import FakeProvider, provider  # noqa: F401  (fixture)
from tests.test_outbox_retries import T0, Store, make_store


def run(capsys: pytest.CaptureFixture[str], store: Store, *args: str) -> list[dict[str, object]]:
    capsys.readouterr()  # drop the log lines of earlier steps
    assert main([*args, "--config", str(store.path), "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    return [json.loads(line) for line in out if line.startswith("{")]


def history(store: Store) -> list[tuple[str, str]]:
    with store.db.transaction() as session:
        return [(h.by, h.action) for h in session.scalars(select(IncidentHistory))]


def test_preview_is_what_delivery_sends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = make_store(tmp_path, subjects=("1001", "1002", "1004"))
    items = run(capsys, store, "notify", "preview", "BW-2026-0001")
    assert [(i["recipient"], i["language"]) for i in items] == [
        ("1001", "fr"),
        ("1002", "nl"),
        ("1004", "nl"),
    ]
    assert items[2]["problem"] == "no usable address"
    [dutch] = run(
        capsys, store, "notify", "preview", "BW-2026-0001", "--recipient", "1001", "--lang", "nl"
    )
    assert "datalek" in str(dutch["subject"]).lower()

    folder = MailFolderChannel(tmp_path / "mail")
    store.worker(folder).deliver_due()
    sent = BytesParser(policy=policy.default).parsebytes(
        next((tmp_path / "mail" / "new").glob("ob*-1001.eml")).read_bytes()
    )
    assert str(sent["Subject"]) == items[0]["subject"]
    body = sent.get_body(("plain",))
    assert body is not None and body.get_content().strip() == str(items[0]["text"]).strip()
    [letter] = run(capsys, store, "notify", "preview", "BW-2026-0001", "--authority")
    assert "article 33" in str(letter["text"]).lower() and ": 3" in str(letter["text"])


def test_hold_approve_and_cancel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = make_store(tmp_path, subjects=("1001", "1002"))
    [held] = run(
        capsys,
        store,
        "notify",
        "hold",
        "BW-2026-0001",
        "--reason",
        "checking logs",
        "--by",
        "yasmine",
    )
    assert held == {"ref": "BW-2026-0001", "action": "held", "notices": 2}
    folder = MailFolderChannel(tmp_path / "mail")
    assert store.worker(folder).deliver_due().sent == 0
    assert {r.state for r in store.rows().values()} == {"held"}
    [approved] = run(capsys, store, "notify", "approve", "BW-2026-0001", "--by", "dpo")
    assert approved["notices"] == 2
    store.clock.set(datetime.now(T0.tzinfo))  # the CLI used the real clock for not_before
    assert store.worker(folder).deliver_due().sent == 2
    assert ("yasmine", "notices_held") in history(store)
    assert ("dpo", "notices_approved") in history(store)
    # everything sent: a cancel still records, and moves nothing
    [cancelled] = run(capsys, store, "notify", "cancel", "BW-2026-0001", "--reason", "done")
    assert cancelled["notices"] == 0
    assert (
        main(["notify", "hold", "BW-2026-0001", "--reason", "x", "--config", str(store.path)]) == 3
    )  # cancelled notices cannot be held


def test_hold_before_release_queues_as_held_and_cancel_stops_them(tmp_path: Path) -> None:
    store = make_store(
        tmp_path,
        subjects=("1001",),
    )
    workflow.cancel(store.db, "BW-2026-0001", "dpo", "false positive", T0)
    assert {r.state for r in store.rows().values()} == {"cancelled"}
    assert ("dpo", "notices_cancelled") in history(store)


def test_status_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = make_store(tmp_path, subjects=("1001", "1004"))
    store.worker(MailFolderChannel(tmp_path / "mail")).deliver_due()
    [status] = run(capsys, store, "notify", "status", "BW-2026-0001")
    assert status["counts"] == {"sent": 1, "failed": 1} and status["total"] == 2


def test_reminders_overdue_and_escalation_through_the_signed_webhook(
    tmp_path: Path,
    provider: tuple[FakeProvider, str],  # noqa: F811
) -> None:
    state, base = provider
    secret = tmp_path / "hook.secret"
    secret.write_text("hook-secret\n")
    team = {
        "webhook": {"url": f"{base}/hook", "secret_file": str(secret)},
        "contact": "Security <security@hosting.example>",
        "escalation_contact": "CISO <ciso@hosting.example>",
        "escalate_within": "24h",
    }
    store = make_store(tmp_path, subjects=("1001",), security_team=team)
    workflow.hold(store.db, "BW-2026-0001", "yasmine", "legal review", T0)
    keeper = DeadlineKeeper(store.db, store.config, "smtp")
    hook = WebhookChannel(f"{base}/hook", "hook-secret", timeout=5)
    worker = store.worker(MailFolderChannel(tmp_path / "mail"), staff_channel=hook)

    for hours in (36, 36.1, 49, 50):  # 50 %, again, escalation window (72 h - 24 h), again
        store.clock.set(T0 + timedelta(hours=hours))
        keeper.tick(store.clock.now())
        worker.deliver_due()
    kinds = [json.loads(r.body)["kind"] for r in state.requests]
    assert sorted(kinds) == ["escalation", "reminder-50", "reminder-50"]  # art33 + art34
    escalation = next(r for r in state.requests if b'"escalation"' in r.body)
    assert escalation.headers["X-Breachwatch-Signature"] == signature(
        b"hook-secret", escalation.body
    )
    payload = json.loads(escalation.body)
    assert payload["to"] == ["ciso@hosting.example"] and "legal review" in payload["text"]
    store.clock.set(T0 + timedelta(hours=73))
    keeper.tick(store.clock.now())
    worker.deliver_due()
    kinds = [json.loads(r.body)["kind"] for r in state.requests]
    assert kinds.count("overdue") == 2 and kinds.count("reminder-90") == 2
    assert len(kinds) == len(
        set(zip(kinds, [json.loads(r.body)["key"] for r in state.requests], strict=True))
    )  # nothing twice
    assert ("breachwatch", "notice_escalated") in history(store)
    assert {r.state for r in store.rows().values() if r.recipient_id == "1001"} == {"held"}


def test_security_team_config_refuses_inline_secret(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = yaml.safe_load(store.path.read_text())
    data["notifications"]["security_team"] = {
        "webhook": {"url": "https://chat.example/hook", "secret": "inline"},
        "contact": "x",
    }
    store.path.write_text(yaml.safe_dump(data))
    assert main(["check-config", "--config", str(store.path)]) == 2


def test_held_notices_of_a_dismissed_incident_are_cancelled(tmp_path: Path) -> None:
    from breachwatch.incidents.lifecycle import IncidentState
    from breachwatch.incidents.service import IncidentService

    store = make_store(tmp_path, subjects=("1001", "1002"))
    workflow.hold(store.db, "BW-2026-0001", "yasmine", "checking", T0)
    with store.db.transaction() as session:
        IncidentService(store.config).transition(
            session, "BW-2026-0001", IncidentState.DISMISSED, "dpo", "false positive", T0
        )
    report = store.worker(MailFolderChannel(tmp_path / "mail")).deliver_due()
    assert report.sent == 0
    assert {r.state for r in store.rows().values()} == {"cancelled"}
