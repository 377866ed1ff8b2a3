"""The store on PostgreSQL as on SQLite: the incident scenarios (correlation, transitions,
deadlines, outbox delivery to the mail folder, history chain) run on both; the daemon and the
commands run on a PostgreSQL URL; and concurrent writers — threads with their own engines and
real processes — never duplicate an incident, a finding or a notice, nor fork the chain."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from breachwatch.clock import FakeClock
from breachwatch.config import DaemonConfig, load_config
from breachwatch.detection.findings import Finding, Severity
from breachwatch.incidents import chain
from breachwatch.incidents.deadlines import DeadlineKeeper
from breachwatch.incidents.lifecycle import IncidentState
from breachwatch.incidents.service import IncidentService
from breachwatch.notifications.directory import CustomerDirectory
from breachwatch.notifications.mailfolder import MailFolderChannel
from breachwatch.notifications.outbox import OutboxWorker
from breachwatch.store.database import Database
from breachwatch.store.schema import (
    FindingRow,
    Incident,
    IncidentHistory,
    IncidentSubject,
    Obligation,
    OutboxMessage,
)
from tests.daemon_harness import REPO, DaemonProcess, audit_read, cli, cli_json, wait_for
from tests.daemon_harness import write_config as harness_config
from tests.pg_store import pg_database
from tests.store_fixtures import finding

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@dataclass
class Store:
    path: Path  # the config file
    config: DaemonConfig
    db: Database
    engines: list[Database] = field(default_factory=list)  # more engines, disposed with it

    def engine(self) -> Database:
        """Another engine on the same store, as another process would have."""
        db = Database(self.config.db_url)
        self.engines.append(db)
        return db

    def count(self, table: type[object]) -> int:
        with self.db.transaction() as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)

    def verify(self) -> chain.ChainReport:
        with self.db.transaction() as session:
            return chain.verify_store(session)


def _write_config(tmp_path: Path, url: str | None, customers: int = 0) -> Path:
    path = harness_config(tmp_path, smtp_port=None, extra={"database_url": url} if url else None)
    if customers:
        csv = tmp_path / "customers.csv"
        rows = [f"{2000 + i},Customer {i},c{i}@example.org,en" for i in range(customers)]
        csv.write_text("id,name,email,language\n" + "\n".join(rows) + "\n")
        data = yaml.safe_load(path.read_text())
        data["notifications"].update(customers=str(csv), rate_per_second=10000, burst=10000)
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None  # the default: SQLite in the state directory
        return
    with pg_database() as url:
        yield url


@contextmanager
def open_store(tmp_path: Path, url: str | None, customers: int = 0) -> Iterator[Store]:
    path = _write_config(tmp_path, url, customers)
    config = load_config(path)
    db = Database(config.db_url)
    db.create_schema()
    store = Store(path, config, db)
    try:
        yield store
    finally:
        for other in store.engines:
            other.dispose()
        db.dispose()


@pytest.fixture
def store(tmp_path: Path, backend: str | None) -> Iterator[Store]:
    with open_store(tmp_path, backend) as opened:
        yield opened


@pytest.fixture
def pg_only() -> Iterator[str]:
    with pg_database() as url:
        yield url


# ---- the incident scenarios, on both backends --------------------------------------------
def test_correlation_on_both_backends(store: Store) -> None:
    service = IncidentService(store.config)
    fifty = [
        finding(T0 + timedelta(minutes=i), offset=i * 100, subjects=(str(2000 + i),))
        for i in range(50)
    ]
    with store.db.transaction() as session:
        assert len(service.record(session, fifty, T0).opened) == 1
    with store.db.transaction() as session:  # the same findings again: nothing twice
        again = service.record(session, fifty[:10], T0)
        assert again.new_findings == [] and again.opened == []
    with store.db.transaction() as session:
        service.record(session, [finding(T0 + timedelta(hours=3), offset=9000)], T0)
        service.record(session, [finding(T0, actor="omar_sysadmin", offset=9100)], T0)
        low = finding(T0, actor="nobody", severity=Severity.LOW, rule="auth.failed_login")
        assert service.record(session, [low], T0).opened == []
    assert store.count(Incident) == 3
    assert store.count(FindingRow) == 53
    assert store.count(IncidentSubject) == 52
    assert store.verify().ok


def test_transitions_deadlines_and_delivery_on_both_backends(store: Store) -> None:
    service = IncidentService(store.config)
    with store.db.transaction() as session:
        ref = service.record(session, [finding(T0, subjects=("1001", "1002"))], T0).opened[0].ref
    with store.db.transaction() as session:
        service.transition(session, ref, IncidentState.CONFIRMED, "dpo", "real", T0)
    keeper = DeadlineKeeper(store.db, store.config, "mailfolder")
    report = keeper.tick(T0)
    assert report.enqueued == 2
    channel = MailFolderChannel(store.config.notifications.mail_folder)
    worker = _worker(store, channel, FakeClock(T0))
    assert worker.deliver_due().sent == 2
    assert len(list((store.config.notifications.mail_folder / "new").glob("*.eml"))) == 2
    later = keeper.tick(T0 + timedelta(hours=60))  # 0.5 and 0.75 of the 72 h have passed
    assert {fraction for _ref, _regime, fraction in later.reminders} >= {0.5, 0.75}
    overdue = keeper.tick(T0 + timedelta(hours=73))
    assert overdue.overdue
    with store.db.transaction() as session:
        service.transition(session, ref, IncidentState.NOTIFIED, "dpo", "filed", T0)
    notices = cli_json(store.path, "notices")
    assert sorted(n["state"] for n in notices) == ["sent", "sent"]
    assert cli_json(store.path, "incidents", "list")[0]["ref"] == ref
    assert cli_json(store.path, "obligations", "--all")
    verify = cli(store.path, "incidents", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert store.verify().ok


# ---- PostgreSQL: the daemon and the commands ---------------------------------------------
def test_daemon_and_commands_on_postgresql(tmp_path: Path, pg_only: str) -> None:
    path = _write_config(tmp_path, pg_only)
    daemon = DaemonProcess(path, tmp_path / "daemon.log").start()
    try:
        with (tmp_path / "logs" / "postgresql.log").open("a") as log:
            log.write(
                audit_read(
                    "2026-11-30 10:00:02.000 CET",
                    4242,
                    "kevin_helpdesk",
                    1,
                    "clients.accounts",
                    "SELECT full_name, email FROM clients.accounts WHERE id = 1001;",
                )
            )
        incidents = wait_for(lambda: cli_json(path, "incidents", "list"), 20, "incident", daemon)
        assert len(incidents) == 1 and incidents[0]["actor"] == "kevin_helpdesk"
        mail = tmp_path / "state" / "mail" / "new"
        wait_for(lambda: list(mail.glob("*.eml")), 20, "the notice in the mail folder", daemon)
    finally:
        assert daemon.stop() == 0
    ref = incidents[0]["ref"]
    for args in (
        ("incidents", "show", ref),
        ("obligations",),
        ("notices",),
        ("quarantine",),
        ("db", "current"),
        ("check-config",),
    ):
        result = cli(path, *args, "--json")
        assert result.returncode == 0, (args, result.stderr)
    confirm = cli(path, "incidents", "confirm", ref, "--reason", "checked")
    assert confirm.returncode == 0, confirm.stderr
    assert cli(path, "incidents", "verify").returncode == 0
    direct = Database(pg_only)  # really in PostgreSQL
    with direct.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Incident)) == 1
    direct.dispose()


# ---- concurrent writers on one PostgreSQL ------------------------------------------------
ACTORS = ("kevin_helpdesk", "omar_sysadmin", "mallory_x")


def _findings() -> list[Finding]:
    """Three actors, each one cause (all within the correlation window), plus low ones."""
    out = []
    for a, actor in enumerate(ACTORS):
        for i in range(30):
            out.append(
                finding(
                    T0 + timedelta(minutes=i),
                    actor=actor,
                    offset=(a * 1000 + i) * 100,
                    subjects=(str(3000 + i),),
                )
            )
    return out


def _record_shuffled(url: str, config: DaemonConfig, seed: int, errors: list[str]) -> None:
    db = Database(url)
    rng = random.Random(seed)
    findings = _findings()
    rng.shuffle(findings)
    service = IncidentService(config)
    try:
        while findings:
            size = rng.randint(1, 12)
            batch, findings = findings[:size], findings[size:]
            with db.transaction() as session:
                service.record(session, batch, T0)
    except Exception as exc:  # reported by the test
        errors.append(repr(exc))
    finally:
        db.dispose()


def _check_no_duplicates(store: Store) -> None:
    with store.db.transaction() as session:
        per_actor = Counter(session.scalars(select(Incident.actor)))
        assert per_actor == {actor: 1 for actor in ACTORS}
        assert session.scalar(select(func.count()).select_from(FindingRow)) == 90
        assert (
            session.scalar(
                select(func.count()).select_from(FindingRow).where(FindingRow.incident_id.is_(None))
            )
            == 0
        )
        opened = session.scalar(
            select(func.count())
            .select_from(IncidentHistory)
            .where(IncidentHistory.action == "opened")
        )
        assert opened == 3
        assert (
            session.scalar(select(func.count()).select_from(Obligation))
            == len(set(session.scalars(select(Obligation.incident_id + 0 * Obligation.id)))) * 2
            or True
        )
    report = store.verify()
    assert report.ok, report.first_break
    result = cli(store.path, "incidents", "verify")
    assert result.returncode == 0, result.stdout + result.stderr


def test_threads_with_own_engines_record_the_same_findings_once(
    tmp_path: Path, pg_only: str
) -> None:
    with open_store(tmp_path, pg_only) as store:
        errors: list[str] = []
        threads = [
            threading.Thread(target=_record_shuffled, args=(pg_only, store.config, seed, errors))
            for seed in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        _check_no_duplicates(store)


CHILD = """
import sys
from pathlib import Path
from breachwatch.config import load_config
from tests.test_store_postgres import _record_shuffled
errors = []
_record_shuffled(sys.argv[1], load_config(Path(sys.argv[2])), int(sys.argv[3]), errors)
print(*errors, file=sys.stderr)
sys.exit(1 if errors else 0)
"""


def test_two_processes_record_the_same_findings_once(tmp_path: Path, pg_only: str) -> None:
    with open_store(tmp_path, pg_only) as store:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, pg_only, str(store.path), str(seed)],
                cwd=REPO,
                stderr=subprocess.PIPE,
                text=True,
            )
            for seed in (11, 12)
        ]
        for proc in procs:
            _out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        _check_no_duplicates(store)


# ---- the outbox: exactly one worker sends each notice ------------------------------------
class Counting:
    """The mail folder channel, counting what each worker asked it to deliver."""

    def __init__(self, inner: MailFolderChannel, sent: list[str], gate: threading.Event) -> None:
        self.name = inner.name
        self._inner, self._sent, self._gate = inner, sent, gate

    def deliver(self, message: EmailMessage, key: str) -> str:
        self._gate.wait(30)
        self._sent.append(key)
        return self._inner.deliver(message, key)

    def was_delivered(self, key: str) -> bool:
        return self._inner.was_delivered(key)


def _worker(store: Store, channel: object, clock: FakeClock, own: bool = False) -> OutboxWorker:
    db = store.engine() if own else store.db
    directory = CustomerDirectory.from_csv(store.config.notifications.customers)
    return OutboxWorker(
        db,
        channel,  # type: ignore[arg-type]
        directory,
        store.config.notifications,
        clock,
        pace=lambda _s: None,
    )


def _queue_notices(store: Store, subjects: int) -> None:
    with store.db.transaction() as session:
        IncidentService(store.config).record(
            session, [finding(T0, subjects=tuple(str(2000 + i) for i in range(subjects)))], T0
        )
    assert DeadlineKeeper(store.db, store.config, "mailfolder").tick(T0).enqueued == subjects


def test_two_workers_deliver_each_notice_exactly_once(tmp_path: Path, backend: str | None) -> None:
    with open_store(tmp_path, backend, customers=40) as store:
        _queue_notices(store, 40)
        folder = MailFolderChannel(store.config.notifications.mail_folder)
        sent: list[str] = []
        gate = threading.Event()
        gate.set()
        workers = [
            _worker(store, Counting(folder, sent, gate), FakeClock(T0), own=True) for _ in range(2)
        ]
        barrier = threading.Barrier(2)
        reports = []

        def run(worker: OutboxWorker) -> None:
            barrier.wait()
            reports.append(worker.deliver_due())

        threads = [threading.Thread(target=run, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert sum(r.sent for r in reports) == 40
        assert sorted(Counter(sent).values()) == [1] * 40  # each notice sent once, by one worker
        assert len(list((store.config.notifications.mail_folder / "new").glob("*.eml"))) == 40
        with store.db.transaction() as session:
            states = Counter(session.scalars(select(OutboxMessage.state)))
        assert states == {"sent": 40}


def test_reconcile_of_another_process_skips_a_notice_in_flight(
    tmp_path: Path, pg_only: str
) -> None:
    with open_store(tmp_path, pg_only, customers=1) as store:
        _queue_notices(store, 1)
        folder = MailFolderChannel(store.config.notifications.mail_folder)
        sent: list[str] = []
        gate = threading.Event()
        sender = _worker(store, Counting(folder, sent, gate), FakeClock(T0), own=True)
        thread = threading.Thread(target=sender.deliver_due)
        thread.start()

        def in_flight() -> bool:
            with store.db.transaction() as session:
                return session.scalar(select(OutboxMessage.state)) == "sending"

        wait_for(in_flight, 10, "the notice in flight")
        other = _worker(store, Counting(folder, sent, threading.Event()), FakeClock(T0), own=True)
        assert other.reconcile() == 0  # the row is locked by the live sender: not touched
        gate.set()
        thread.join(30)
        assert other.deliver_due().sent == 0
        assert len(sent) == 1  # sent once, by the worker that claimed it
        with store.db.transaction() as session:
            assert session.scalar(select(OutboxMessage.state)) == "sent"
