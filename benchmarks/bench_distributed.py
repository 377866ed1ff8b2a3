"""Throughput of the scaled-out mode on this machine: the sample log (repeated N times into one
file) through 1 shipper → W workers (W = 1, 2) on a private nats-server and a scratch
PostgreSQL database, against one local daemon in file mode on the same file, with its store
on SQLite (the default) and on PostgreSQL (the shared store's cost without the stream).

    .venv/bin/python -m benchmarks.bench_distributed --copies 20

Prints lines/s end to end (process started on the written file → everything committed:
checkpoint at the end of the file, or the last stream sequence stable for 3 s, those 3 s
deducted) and the rate per worker relative to SQLite file mode."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from sqlalchemy import create_engine, text

from tests.distributed_harness import (
    SAMPLE,
    NatsServer,
    Proc,
    distributed_config,
    framed_records,
    local_config,
    scratch_database,
    stream_messages,
)


def _write(path: Path, copies: int) -> int:
    data = SAMPLE.read_bytes()
    with path.open("wb") as f:
        for _ in range(copies):
            f.write(data)
    return data.count(b"\n") * copies


def _wait_distributed(url: str, shipper_db: Path, timeout: float) -> None:
    engine = create_engine(url)
    ship = create_engine(f"sqlite:///{shipper_db}")
    deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
    try:
        while time.monotonic() < deadline:
            try:
                with engine.connect() as conn:
                    total = int(
                        conn.scalar(
                            text("SELECT coalesce(sum(last_seq), 0) FROM stream_partition_state")
                        )
                        or 0
                    )
            except Exception:
                total = -1
            if total != last:
                last, since = total, time.monotonic()
            elif total > 0 and time.monotonic() - since > 3:
                return
            time.sleep(0.2)
    finally:
        engine.dispose()
        ship.dispose()


def run_distributed(workers: int, copies: int) -> tuple[int, float]:
    with TemporaryDirectory() as tmp_s, scratch_database() as url:
        tmp = Path(tmp_s)
        nats = NatsServer(tmp / "nats" / "js").start()
        config = distributed_config(tmp / "d", database_url=url, nats_url=nats.url, partitions=8)
        lines = _write(tmp / "d" / "logs" / "postgresql.log", copies)
        procs = [Proc(config, "run", tmp / f"w{i}.log").start() for i in range(workers)]
        time.sleep(3)  # workers up, leases taken
        started = time.monotonic()
        procs.append(Proc(config, "ship", tmp / "ship.log").start())
        _wait_distributed(url, tmp / "d" / "state" / "shipper.db", 900)
        elapsed = time.monotonic() - started - 3  # minus the settle time
        for p in procs:
            p.stop()
        nats.stop()
        return lines, elapsed


def run_shipper_only(copies: int) -> tuple[int, float]:
    """The forwarder alone (no worker): tail, frame, parse for the partition key, publish and
    wait for JetStream's acks, until the stream holds every record of the file."""
    with TemporaryDirectory() as tmp_s, scratch_database() as url:
        tmp = Path(tmp_s)
        nats = NatsServer(tmp / "nats" / "js").start()
        config = distributed_config(tmp / "d", database_url=url, nats_url=nats.url, partitions=8)
        log = tmp / "d" / "logs" / "postgresql.log"
        lines = _write(log, copies)
        records = framed_records(log)
        started = time.monotonic()
        proc = Proc(config, "ship", tmp / "ship.log").start()
        while True:
            try:
                if stream_messages(nats.url) >= records:
                    break
            except Exception:  # stream not created yet
                pass
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        proc.stop()
        nats.stop()
        return lines, elapsed


def run_local(copies: int, database_url: str | None = None) -> tuple[int, float]:
    """One daemon in file mode; its store SQLite (default) or ``database_url`` (PostgreSQL:
    the shared store's cost without the stream)."""
    with TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "logs").mkdir()
        log = tmp / "logs" / "postgresql.log"
        lines = _write(log, copies)
        extra = {"database_url": database_url} if database_url else None
        config = local_config(tmp / "ref", log, extra)
        url = database_url or f"sqlite:///{tmp / 'ref' / 'state' / 'breachwatch.db'}"
        started = time.monotonic()
        proc = Proc(config, "run", tmp / "daemon.log").start()
        size = log.stat().st_size
        while True:
            try:
                engine = create_engine(url)
                with engine.connect() as conn:
                    done = conn.scalar(text('SELECT max("offset") FROM checkpoints')) or 0
                engine.dispose()
            except Exception:
                done = 0
            if done >= size:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        proc.stop()
        return lines, elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average; other jobs share the CPUs)")
    lines, secs = run_local(args.copies)
    base = lines / secs
    print(f"local file mode, SQLite, 1 process: {lines} lines in {secs:.1f}s = {base:.0f} lines/s")
    with scratch_database() as url:
        lines, secs = run_local(args.copies, url)
    rate = lines / secs
    print(
        f"local file mode, PostgreSQL, 1 process: {lines} lines in {secs:.1f}s = "
        f"{rate:.0f} lines/s ({rate / base:.2f}x SQLite file mode)"
    )
    lines, secs = run_shipper_only(args.copies)
    print(
        f"shipper alone (publish + acks): {lines} lines in {secs:.1f}s = {lines / secs:.0f} lines/s"
    )
    for workers in (1, 2):
        lines, secs = run_distributed(workers, args.copies)
        rate = lines / secs
        print(
            f"jetstream, 1 shipper + {workers} worker(s): {lines} lines in {secs:.1f}s = "
            f"{rate:.0f} lines/s ({rate / workers / base:.2f}x file mode per worker)"
        )
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
