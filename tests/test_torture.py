"""Crash torture (proof suite): 100,000 real pgaudit lines (the first lines of the pgaudit_large
sample) are replayed into the watched file by a separate writer process at a steady rate, in
chunks cut at random bytes (so the daemon often sees half a line), with the file rotated
logrotate-style (``log.N`` shifted to ``log.N+1``, ``log`` renamed to ``log.1``, a new ``log``
created) several times, while the daemon is killed with SIGKILL at random moments 20 times and
restarted each time. At the end the findings (by key), the incidents (count, actors, subjects)
and the outbox rows must equal those of an uninterrupted daemon run over the same bytes.

The policy is written by the test so that thousands of lines are findings: tom and kevin have
left (ntk.departed_account), yasmine's role does not cover mailboxes (ntk.outside_grants on
every webmail.accounts read), plus the volume detector. Finding keys name the file by
device:inode; both runs map them to the generation (0 = oldest) whose bytes the file holds, so
keys compare across runs.

Knobs for longer runs (benchmarks/torture_long.py): BW_TORTURE_LINES, BW_TORTURE_KILLS,
BW_TORTURE_ROTATIONS, BW_TORTURE_RATE (lines/s), BW_TORTURE_SEED.

The module is also the writer process: ``python -m tests.test_torture write ...``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import SAMPLES, skip_or_fail
from tests.daemon_harness import REPO, DaemonProcess, wait_for, write_config

pytestmark = pytest.mark.slow

LARGE = SAMPLES / "pgaudit_large" / "postgresql.log.gz"
LOG_NAME = "postgresql.log"


@dataclass(frozen=True)
class TortureParams:
    # CI variant (issue 7: 100,000+ lines, 20+ kills); benchmarks/torture_long.py runs
    # 300,000 lines and 100 kills
    lines: int = 100_000
    kills: int = 20
    rotations: int = 5
    rate: float = 5_000.0  # lines/s written
    seed: int = 7
    max_gap: float = 1.5  # seconds between a restart and the next kill: uniform(0, max_gap)
    settle_timeout: float = 600.0

    @staticmethod
    def from_env(**defaults: Any) -> TortureParams:
        base = TortureParams(**defaults)
        return TortureParams(
            lines=int(os.environ.get("BW_TORTURE_LINES", base.lines)),
            kills=int(os.environ.get("BW_TORTURE_KILLS", base.kills)),
            rotations=int(os.environ.get("BW_TORTURE_ROTATIONS", base.rotations)),
            rate=float(os.environ.get("BW_TORTURE_RATE", base.rate)),
            seed=int(os.environ.get("BW_TORTURE_SEED", base.seed)),
            max_gap=float(os.environ.get("BW_TORTURE_MAX_GAP", base.max_gap)),
            settle_timeout=base.settle_timeout,
        )


# ---- the input ---------------------------------------------------------------------------


def sample_lines(count: int) -> list[bytes]:
    """The first ``count`` lines of the large sample; past its end, repeated with shifted
    pids and statement ids so that every line stays distinct."""
    if not LARGE.is_file():
        skip_or_fail(f"sample log not found at {LARGE}")
    with gzip.open(LARGE, "rb") as src:
        base = src.read().splitlines(keepends=True)
    out = base[:count]
    round_no = 1
    while len(out) < count:
        shift = round_no * 100_000
        for line in base[: count - len(out)]:
            out.append(_shift_ids(line, shift))
        round_no += 1
    assert len(set(out)) == len(out), "lines must be distinct"
    assert not any(line.startswith(b"\t") for line in out[:1]), "starts mid-record"
    return out


def _shift_ids(line: bytes, shift: int) -> bytes:
    text = line.decode("utf-8")
    head, sep, rest = text.partition("] ")
    date_pid, _, pid = head.rpartition("[")
    if sep and pid.isdigit():
        text = f"{date_pid}[{int(pid) + shift}{sep}{rest}"
    marker = "AUDIT: SESSION,"
    if marker in text:
        before, after = text.split(marker, 1)
        stmt, _, tail = after.partition(",")
        if stmt.isdigit():
            text = f"{before}{marker}{int(stmt) + shift},{tail}"
    return text.encode("utf-8")


def split_generations(lines: list[bytes], rotations: int) -> list[bytes]:
    per = -(-len(lines) // (rotations + 1))
    return [b"".join(lines[i : i + per]) for i in range(0, len(lines), per)]


def write_policy(tmp: Path) -> Path:
    doc = yaml.safe_load((REPO / "config" / "policy.yml").read_text())
    for person in doc["staff"]:
        if person["person"] in ("tom", "kevin"):
            person["status"] = "left"
        if person["person"] == "yasmine":
            person["roles"] = ["helpdesk_junior"]
    doc["grants"].append(
        {
            "role": "helpdesk_junior",
            "categories": ["identity", "contact", "contract", "support"],
            "actions": ["read", "write"],
        }
    )
    doc["anomaly"]["unbounded_reads"] = False
    path = tmp / "policy.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_customers(tmp: Path) -> Path:
    """Customers 1-1500 have an address (their notices land in the mail folder); the others
    are not in the directory (their notices fail as a task for staff): both kinds of row."""
    path = tmp / "customers.csv"
    rows = ["id,name,email,language"]
    rows += [
        f"{i},Customer {i},c{i}@example.org,{('en', 'fr', 'nl')[i % 3]}" for i in range(1, 1501)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def configure(tmp: Path, policy: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    config = write_config(tmp, smtp_port=None, hold="0s", extra={"policy": str(policy)})
    doc = yaml.safe_load(config.read_text())
    doc["notifications"]["rate_per_second"] = 1000
    doc["notifications"]["customers"] = str(write_customers(tmp))
    # batches of 1,000 lines commit within a second even on a busy 2-core runner, so the
    # random kills land between commits as well as in the middle of them
    doc["batch_lines"] = 1000
    config.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return config


def rotate(log: Path) -> None:
    """logrotate `create`: log.N -> log.N+1, ..., log -> log.1, then a new empty log."""
    olds = sorted(
        (int(p.name.rsplit(".", 1)[1]), p)
        for p in log.parent.glob(f"{log.name}.*")
        if p.name.rsplit(".", 1)[1].isdigit()
    )
    for n, path in reversed(olds):
        path.rename(log.with_name(f"{log.name}.{n + 1}"))
    log.rename(log.with_name(f"{log.name}.1"))
    log.touch()


# ---- the writer process -----------------------------------------------------------------


def writer_main(argv: list[str]) -> int:
    """Appends the generation files to ``--log`` at ``--rate`` lines/s, in chunks cut at
    random bytes, rotating between generations."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--gens", type=Path, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    gens = sorted(args.gens.glob("gen*.log"), key=lambda p: int(p.stem[3:]))
    started = time.monotonic()
    written_lines = 0
    for index, gen in enumerate(gens):
        if index:
            rotate(args.log)
        data = gen.read_bytes()
        ends = [i + 1 for i, byte in enumerate(data) if byte == 0x0A]
        pos = 0
        done = 0  # complete lines of this generation written
        with args.log.open("ab", buffering=0) as out:
            while pos < len(data):
                due = int((time.monotonic() - started) * args.rate) - written_lines
                if due <= 0:
                    time.sleep(0.005)
                    continue
                upto = min(done + due, len(ends))
                cut = ends[upto - 1]
                if upto < len(ends) and rng.random() < 0.3:
                    cut = rng.randint(cut, ends[upto] - 1)  # stop inside the next line
                out.write(data[pos:cut])
                written_lines += upto - done
                pos, done = cut, upto
    return 0


# ---- observing a run -------------------------------------------------------------------


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def generation_of_inode(logs: Path, gens: list[bytes]) -> dict[str, int]:
    by_content = {data: i for i, data in enumerate(gens)}
    out: dict[str, int] = {}
    for path in logs.iterdir():
        st = path.stat()
        index = by_content.get(path.read_bytes())
        if index is not None:
            out[f"{st.st_dev}:{st.st_ino}"] = index
    return out


def _normal_key(key: str, gen_of: dict[str, int]) -> str:
    rule, store, where = key.split("|", 2)
    file_id, _, offset = where.rpartition("@")
    return f"{rule}|{store}|gen{gen_of.get(file_id, file_id)}@{offset}"


@dataclass
class Outcome:
    findings: dict[str, tuple[Any, ...]]  # normalised key -> (rule, severity, actor, subjects)
    incidents: list[tuple[Any, ...]]  # (actor, severity, first event, subjects)
    outbox: list[tuple[Any, ...]]  # (actor, first event, regime, recipient, channel, state)
    mails: int


def observe(state: Path, logs: Path, gens: list[bytes]) -> Outcome:
    db = state / "breachwatch.db"
    gen_of = generation_of_inode(logs, gens)
    findings: dict[str, tuple[Any, ...]] = {}
    for key, rule, severity, actor, subjects in _rows(
        db, "SELECT key, rule, severity, actor, subjects FROM findings"
    ):
        normal = _normal_key(key, gen_of)
        assert normal not in findings, f"finding twice: {normal}"
        findings[normal] = (rule, severity, actor, tuple(sorted(json.loads(subjects))))
    subjects: dict[int, list[str]] = {}
    for incident_id, subject in _rows(db, "SELECT incident_id, subject FROM incident_subjects"):
        subjects.setdefault(incident_id, []).append(subject)
    incidents = sorted(
        (actor, severity, first, tuple(sorted(subjects.get(iid, []))))
        for iid, actor, severity, first in _rows(
            db, "SELECT id, actor, severity, first_event_at FROM incidents"
        )
    )
    outbox = sorted(
        _rows(
            db,
            "SELECT i.actor, i.first_event_at, o.regime, m.recipient_id, m.channel, m.state "
            "FROM outbox m JOIN obligations o ON o.id = m.obligation_id "
            "JOIN incidents i ON i.id = o.incident_id",
        )
    )
    mail_new = state / "mail" / "new"
    mails = len(list(mail_new.iterdir())) if mail_new.is_dir() else 0
    return Outcome(findings, incidents, outbox, mails)


def settled(state: Path, logs: Path) -> bool:
    """Every byte of every log file handled (committed offset = size, or the checkpoint of a
    drained rotated file already forgotten) and no notice waiting to be delivered."""
    db = state / "breachwatch.db"
    if not db.exists():
        return False
    checkpoints = {
        f"{dev}:{ino}": offset
        for dev, ino, offset in _rows(db, "SELECT dev, inode, offset FROM checkpoints")
    }
    for path in logs.iterdir():
        st = path.stat()
        key = f"{st.st_dev}:{st.st_ino}"
        if path.name == LOG_NAME and st.st_size and key not in checkpoints:
            return False
        if key in checkpoints and checkpoints[key] != st.st_size:
            return False
    waiting = _rows(db, "SELECT count(*) FROM outbox WHERE state IN ('queued', 'sending')")
    return waiting[0][0] == 0


def wait_settled(
    state: Path, logs: Path, gens: list[bytes], daemon: DaemonProcess, timeout: float
) -> Outcome:
    """Settled, and nothing changes for a while (a doubled line would show up by then)."""
    deadline = time.monotonic() + timeout
    previous: Outcome | None = None
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise AssertionError(f"daemon died:\n{daemon.log_path.read_text()[-4000:]}")
        if settled(state, logs):
            current = observe(state, logs, gens)
            if previous is not None and current == previous:
                return current
            previous = current
            time.sleep(1.5)
        else:
            previous = None
            time.sleep(0.3)
    return observe(state, logs, gens)  # compared anyway: the diff says what is missing


# ---- the two runs ------------------------------------------------------------------------


def reference_run(work: Path, policy: Path, gens: list[bytes], timeout: float) -> Outcome:
    """One daemon, never interrupted; each generation appended whole and fully handled
    before the rotation."""
    config = configure(work, policy)
    logs = work / "logs"
    log = logs / LOG_NAME
    log.write_bytes(b"")
    daemon = DaemonProcess(config, work / "reference.out").start()
    db = work / "state" / "breachwatch.db"
    try:
        for index, data in enumerate(gens):
            if index:
                rotate(log)
            with log.open("ab") as out:
                out.write(data)
            st = log.stat()
            probe = (
                "SELECT 1 FROM checkpoints WHERE "
                f"dev = {st.st_dev} AND inode = {st.st_ino} AND offset = {st.st_size}"
            )
            wait_for(
                lambda probe=probe: bool(_rows(db, probe)) or None,  # type: ignore[misc]
                timeout,
                f"reference: generation {index} handled",
                daemon,
            )
        return wait_settled(work / "state", logs, gens, daemon, timeout)
    finally:
        assert daemon.stop() == 0


def torture_run(
    work: Path, policy: Path, gens: list[bytes], params: TortureParams
) -> tuple[Outcome, list[float]]:
    config = configure(work, policy)
    logs = work / "logs"
    log = logs / LOG_NAME
    log.write_bytes(b"")
    gen_dir = work / "gens"
    gen_dir.mkdir()
    for index, data in enumerate(gens):
        (gen_dir / f"gen{index}.log").write_bytes(data)
    rng = random.Random(params.seed)
    daemon = DaemonProcess(config, work / "daemon-0.out").start()
    writer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.test_torture",
            "write",
            "--log",
            str(log),
            "--gens",
            str(gen_dir),
            "--rate",
            str(params.rate),
            "--seed",
            str(params.seed),
        ],
        cwd=REPO,
    )
    kill_times: list[float] = []
    started = time.monotonic()
    try:
        for n in range(params.kills):
            time.sleep(rng.uniform(0.0, params.max_gap))
            assert daemon.alive(), daemon.log_path.read_text()[-4000:]
            daemon.kill9()
            kill_times.append(round(time.monotonic() - started, 2))
            daemon = DaemonProcess(config, work / f"daemon-{n + 1}.out").start()
        assert writer.wait(params.settle_timeout) == 0, "writer failed"
        outcome = wait_settled(work / "state", logs, gens, daemon, params.settle_timeout)
    finally:
        if writer.poll() is None:
            writer.send_signal(signal.SIGKILL)
            writer.wait(10)
        daemon.stop()
    return outcome, kill_times


def _diff(name: str, got: Any, want: Any) -> str:
    if isinstance(got, dict):
        missing = sorted(set(want) - set(got))[:10]
        extra = sorted(set(got) - set(want))[:10]
        changed = sorted(k for k in set(got) & set(want) if got[k] != want[k])[:10]
        return (
            f"{name}: {len(got)} vs {len(want)} in the reference; missing {missing}, "
            f"extra {extra}, changed {changed}"
        )
    return f"{name}: got {str(got)[:1500]}\nwant {str(want)[:1500]}"


def run_torture(tmp: Path, params: TortureParams) -> dict[str, Any]:
    lines = sample_lines(params.lines)
    gens = split_generations(lines, params.rotations)
    policy = write_policy(tmp)
    reference: list[Outcome] = []
    errors: list[BaseException] = []

    def run_reference() -> None:
        try:
            reference.append(reference_run(tmp / "reference", policy, gens, params.settle_timeout))
        except BaseException as exc:
            errors.append(exc)

    t0 = time.monotonic()
    thread = threading.Thread(target=run_reference)
    thread.start()  # its own daemon process, side by side with the tortured one
    try:
        got, kill_times = torture_run(tmp / "torture", policy, gens, params)
    finally:
        thread.join(params.settle_timeout * 2)
    if errors:
        raise errors[0]
    want = reference[0]
    elapsed = time.monotonic() - t0
    problems = [
        _diff(name, getattr(got, name), getattr(want, name))
        for name in ("findings", "incidents", "outbox", "mails")
        if getattr(got, name) != getattr(want, name)
    ]
    assert not problems, "\n".join(problems) + f"\nkills at {kill_times}, seed {params.seed}"
    return {
        "lines": len(lines),
        "rotations": len(gens) - 1,
        "kills": len(kill_times),
        "kill_times_s": kill_times,
        "findings": len(want.findings),
        "incidents": len(want.incidents),
        "subjects": sum(len(i[3]) for i in want.incidents),
        "outbox_rows": len(want.outbox),
        "mails": want.mails,
        "elapsed_s": round(elapsed, 1),
    }


@pytest.mark.timeout(900)  # ~2 min on an idle 2-core runner; far more on a shared, busy one
def test_kill_9_twenty_times_while_writing_and_rotating_changes_nothing(tmp_path: Path) -> None:
    params = TortureParams.from_env()
    summary = run_torture(tmp_path, params)
    print(json.dumps(summary))
    assert summary["kills"] >= 20 or params.kills < 20
    assert summary["findings"] > params.lines // 50, "the policy must make many findings"
    assert summary["incidents"] >= 2 and summary["outbox_rows"] and summary["mails"]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "write":
        sys.exit(writer_main(sys.argv[2:]))
    sys.exit("usage: python -m tests.test_torture write --log L --gens DIR --rate R [--seed S]")
