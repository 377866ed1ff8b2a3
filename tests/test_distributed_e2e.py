"""Scaled-out mode end to end: 1 shipper → 3 workers on real NATS JetStream and PostgreSQL
give the same findings, incidents and notices as one daemon on the same file, through
kill -9 of a worker, of the shipper, of the scheduler leader, and a NATS outage."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from breachwatch.distributed.shipper import ACK_TIMEOUT
from tests.conftest import skip_or_fail
from tests.daemon_harness import VIOLATION, append
from tests.distributed_harness import (
    SAMPLE,
    NatsServer,
    Proc,
    WebhookRecorder,
    append_gradually,
    distributed_config,
    framed_records,
    labelled_sources,
    local_config,
    mail_files,
    missing_services,
    outcome,
    scratch_database,
    settled,
    stream_messages,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def services() -> None:
    reason = missing_services()
    if reason:
        skip_or_fail(reason)
    if not SAMPLE.is_file():
        skip_or_fail(f"sample log not found at {SAMPLE}")


def quiet_outcome(url: str, stable_for: float = 3.0, timeout: float = 120.0) -> dict[str, Any]:
    """The outcome once it stopped changing and no notice is still on its way."""
    state: dict[str, Any] = {"last": None, "since": 0.0}

    def check() -> dict[str, Any] | None:
        try:
            got = outcome(url)
        except SQLAlchemyError:  # not created yet
            return None
        pending = any(n[3] in {"queued", "sending"} for n in got["notices"])
        if got != state["last"] or pending or not got["findings"]:
            state["last"], state["since"] = got, time.monotonic()
            return None
        return got if time.monotonic() - state["since"] >= stable_for else None

    return dict(wait_until(check, timeout, what="a quiet store"))


@dataclass
class Cluster:
    """A scaled-out deployment under test: NATS, a scratch PostgreSQL database, the
    distributed config in ``dist`` and its (empty) log; every process started is stopped."""

    nats: NatsServer
    url: str
    dist: Path
    config: Path
    log_path: Path
    procs: list[Proc]  # stopped when the cluster is left

    def start(self, command: str, name: str) -> Proc:
        """``breachwatch <command>`` (``run``: a worker, ``ship``: the shipper), output in
        ``dist/<name>``."""
        proc = Proc(self.config, command, self.dist / name).start()
        self.procs.append(proc)
        return proc


@contextmanager
def cluster(tmp: Path, *, labelled: list[str] | None = None) -> Iterator[Cluster]:
    """``labelled``: the sources are these labelled sample logs, already written, with the
    example web-host policy (distributed_harness.labelled_sources); ``log_path`` is the
    first of them. Otherwise one empty pgaudit stderr log."""
    nats = NatsServer(tmp / "nats" / "js").start()
    procs: list[Proc] = []
    try:
        with scratch_database() as url:
            dist = tmp / "dist"
            extra = labelled_sources(dist, labelled) if labelled else None
            config = distributed_config(dist, database_url=url, nats_url=nats.url, extra=extra)
            if extra is not None:
                log_path = Path(extra["sources"][0]["path"])
            else:
                log_path = dist / "logs" / "postgresql.log"
                log_path.touch()
            yield Cluster(nats, url, dist, config, log_path, procs)
    finally:
        for proc in procs:
            proc.stop()
        nats.stop()


def reference(tmp: Path, log_path: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    config = local_config(tmp / "ref", log_path, extra)
    daemon = Proc(config, "run", tmp / "ref" / "daemon.log").start()
    try:
        return quiet_outcome(f"sqlite:///{tmp / 'ref' / 'state' / 'breachwatch.db'}")
    finally:
        daemon.stop()


def check_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    extra = sorted(set(got["findings"]) - set(want["findings"]))
    missing = sorted(set(want["findings"]) - set(got["findings"]))
    assert (extra, missing) == ([], [])
    assert got["findings"] == want["findings"]
    assert got["finding_subjects"] == want["finding_subjects"]
    assert got["incidents"] == want["incidents"]
    assert got["notices"] == want["notices"]
    assert got["quarantined"] == want["quarantined"]


def assert_mail_once(state_dir: Path, result: dict[str, Any]) -> None:
    sent = [n for n in result["notices"] if n[3] == "sent"]
    files = mail_files(state_dir)
    assert len(files) == len(sent), (len(files), len(sent))
    ids = Counter(
        m.group(1)
        for f in files
        if (m := re.search(r"^Message-ID: (.+)$", f.read_text(errors="replace"), re.M))
    )
    assert all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]


def test_three_workers_equal_one_daemon_through_worker_and_shipper_kills(
    services: None, tmp_path: Path
) -> None:
    with cluster(tmp_path) as c:
        workers = [c.start("run", f"worker{i}.log") for i in range(3)]
        shipper = c.start("ship", "ship.log")
        for i in append_gradually(SAMPLE, c.log_path, 10):
            time.sleep(0.7)
            if i == 3:
                workers[0].kill9()  # its partitions move to the two others
            if i == 5:
                shipper.kill9()
                shipper = c.start("ship", "ship.log")
        want = reference(tmp_path, c.log_path)
        assert want["findings"] and want["incidents"] and want["notices"]
        try:
            wait_until(settled(c.url, want), 120, what="the workers to catch up")
        finally:
            got = outcome(c.url)
            check_equal(got, want)
        check_equal(got, want)
        assert_mail_once(c.dist / "state", got)
        engine = create_engine(c.url)
        with engine.connect() as conn:
            owners = {
                o
                for (o,) in conn.execute(
                    text("SELECT owner FROM stream_partition_leases WHERE owner IS NOT NULL")
                )
            }
        engine.dispose()
        assert len(owners) == 2  # the killed worker's partitions went to the survivors


def test_nats_stopped_for_a_while_forwarder_and_workers_catch_up(
    services: None, tmp_path: Path
) -> None:
    """NATS goes away while the log keeps growing: the shipper commits nothing and publishes
    the same records again until acknowledged, the workers keep their leases (PostgreSQL) and
    resume; in the end the same outcome as one daemon, one stream message per record."""
    with cluster(tmp_path) as c:
        workers = [c.start("run", f"worker{i}.log") for i in range(2)]
        shipper = c.start("ship", "ship.log")
        for i in append_gradually(SAMPLE, c.log_path, 10):
            time.sleep(0.7)
            if i == 2:
                wait_until(lambda: committed(c.url) > 0, 60, what="records flowing")
                c.nats.stop()  # chunks 3..6 are written while NATS is down
            if i == 6:
                # longer than the shipper's ack timeout: its publishes fail, it commits
                # nothing and publishes the same records again
                time.sleep(ACK_TIMEOUT + 2)
                c.nats.start()  # same port, same store: the stream and consumers survive
        assert all(p.alive() for p in [*workers, shipper])
        out = shipper.output()
        assert "publish_failed" in out[out.index('"shipping"') :]  # it saw the outage
        want = reference(tmp_path, c.log_path)
        try:
            wait_until(settled(c.url, want), 180, what="the workers to catch up")
        finally:
            got = outcome(c.url)
            check_equal(got, want)
        assert stream_messages(c.nats.url) == framed_records(c.log_path)  # nothing doubled
        assert_mail_once(c.dist / "state", got)


# The pgaudit csvlog, jsonlog and MariaDB logs each hold failed logins from 127.0.0.1. In ONE
# daemon they meet in auth.brute_force's per-address window, and the count includes a known
# account's failure, which the scaled-out mode keeps with its person (README "Scaling out",
# limits): the two modes then differ on that rule. So each of those three has a deployment of
# its own.
GROUPS = [["pg-main-csv", "panel", "ops-files"], ["mariadb"], ["pg-main-json"]]


@pytest.mark.parametrize("sources", GROUPS, ids=["+".join(g) for g in GROUPS])
def test_labelled_logs_of_every_format_three_workers_equal_one_daemon(
    services: None, tmp_path: Path, sources: list[str]
) -> None:
    """Issue #8: one shipper over the other labelled sample logs (pgaudit csvlog, nginx panel
    access and auditd at once; MariaDB audit; pgaudit jsonlog; each its own source, the
    example web-host policy), three workers: the same findings (and their subjects),
    incidents, notices and quarantined records as one daemon on the same files. Kills are
    covered on pgaudit stderr above."""
    with cluster(tmp_path, labelled=sources) as c:
        data = yaml.safe_load(c.config.read_text())
        for worker in range(3):
            c.start("run", f"worker{worker}.log")
        c.start("ship", "ship.log")
        extra = {"sources": data["sources"], "policy": data["policy"]}
        want = reference(tmp_path, c.log_path, extra)
        # every format is in the reference: a source that yielded nothing would compare equal
        stores = {key.split("|")[1] for key in want["findings"]}
        assert stores == {s["name"] for s in data["sources"]}, stores
        assert want["incidents"] and want["notices"]
        try:
            wait_until(settled(c.url, want), 90, what="the workers to catch up")
        finally:
            got = outcome(c.url)
            # per source: (findings only the workers made, findings only the daemon made)
            workers_only = set(got["findings"]) - set(want["findings"])
            daemon_only = set(want["findings"]) - set(got["findings"])
            by_source = {
                name: (
                    sorted(k for k in workers_only if f"|{name}|" in k),
                    sorted(k for k in daemon_only if f"|{name}|" in k),
                )
                for name in stores
            }
            differing = {n: d for n, d in sorted(by_source.items()) if d != ([], [])}
            assert differing == {}
            check_equal(got, want)
        assert_mail_once(c.dist / "state", got)


def committed(url: str) -> int:
    """Stream sequences committed by the workers so far (0 before anything, or no table)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.scalar(text("SELECT coalesce(sum(last_seq), 0) FROM stream_partition_state"))
                or 0
            )
    except SQLAlchemyError:
        return 0
    finally:
        engine.dispose()


def _leader(workers: list[Proc]) -> Proc:
    def find() -> Proc | None:
        holding = [w for w in workers if "leadership_acquired" in w.output()]
        return holding[0] if len(holding) == 1 else None

    found: Proc = wait_until(find, 60, what="one scheduler leader")
    return found


def test_scheduler_leader_killed_just_before_a_reminder_it_goes_once(
    services: None, tmp_path: Path
) -> None:
    """kill -9 of the scheduler leader shortly before a reminder falls due: PostgreSQL ends
    its session and its advisory lock, the other worker becomes leader, and the reminder is
    recorded and sent to the security team's webhook once. Deadlines are shortened to 40 s
    (reminder at half time) so that the real clock gets there within the test."""
    import yaml

    hook = WebhookRecorder()
    try:
        with cluster(tmp_path) as c:
            config = c.config
            secret = c.dist / "hook.secret"
            secret.write_text("hook-secret\n")
            data = yaml.safe_load(config.read_text())
            obligations = data["obligations"]
            obligations["authority_deadline"] = obligations["customer_deadline"] = "40s"
            obligations["reminders"] = [0.5]
            obligations.setdefault("regimes", {})["processor_deadline"] = "40s"
            data["notifications"]["security_team"] = {
                "webhook": {"url": hook.url, "secret_file": str(secret)},
                "contact": "Security <security@hosting.example>",
            }
            config.write_text(yaml.safe_dump(data, allow_unicode=True))
            workers = [c.start("run", f"worker{i}.log") for i in range(2)]
            leader = _leader(workers)
            c.start("ship", "ship.log")
            append(c.log_path, VIOLATION)  # kevin (departed) reads customer 1001

            engine = create_engine(c.url)
            try:

                def obligations_due() -> list[tuple[int, str, Any, Any]] | None:
                    try:
                        with engine.connect() as conn:
                            rows = conn.execute(
                                text(
                                    "SELECT id, regime, clock_start, due_at FROM obligations "
                                    "WHERE state = 'open'"
                                )
                            ).all()
                    except SQLAlchemyError:
                        return None
                    return [tuple(r) for r in rows] or None  # type: ignore[misc]

                rows = wait_until(obligations_due, 60, what="the incident's obligations")
                first_due = min(start + (due - start) / 2 for _, _, start, due in rows)
                wait = first_due.timestamp() - time.time() - 1.5
                assert wait > 0, "the reminder fell due before the leader could be killed"
                time.sleep(wait)
                assert not hook.received  # nothing due yet: the reminder is still to come
                leader.kill9()
                killed_at = time.time()
                survivor = next(w for w in workers if w is not leader)
                wait_until(
                    lambda: "leadership_acquired" in survivor.output(),
                    30,
                    what="the survivor to become leader",
                )

                first = min(rows, key=lambda r: r[2] + (r[3] - r[2]) / 2)[0]
                first_key = f"ob{first}.staff.reminder-50"

                def reminded() -> bool:
                    return any(body.get("key") == first_key for _, body in hook.received)

                wait_until(reminded, 60, what="the first reminder")
                time.sleep(3.0)  # a second leader or a retry would send it again meanwhile
                sent = [r for r in hook.received if r[1].get("kind") == "reminder-50"]
                keys = Counter(body["key"] for _, body in sent)
                assert keys[first_key] == 1 and set(keys.values()) == {1}, keys
                assert all(at > killed_at for at, _ in sent)  # from the new leader
                with engine.connect() as conn:
                    history = Counter(
                        (int(incident), str(detail["regime"]), float(detail["elapsed"]))
                        for incident, detail in conn.execute(
                            text(
                                "SELECT incident_id, detail FROM incident_history "
                                "WHERE action = 'deadline_reminder'"
                            )
                        )
                    )
                    recorded = {
                        int(i): list(r)
                        for i, r in conn.execute(text("SELECT id, reminders_sent FROM obligations"))
                    }
                # recorded once in the store, sent once, for every obligation reminded
                assert set(history.values()) == {1} and len(history) == len(keys), history
                assert recorded[first] == [0.5]
                assert {f"ob{i}.staff.reminder-50" for i, r in recorded.items() if r} == set(keys)
            finally:
                engine.dispose()
    finally:
        hook.stop()
