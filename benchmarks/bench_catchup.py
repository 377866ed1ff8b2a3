"""Catch-up after downtime: how fast the real daemon reads a backlog while new lines arrive.

    .venv/bin/python benchmarks/bench_catchup.py [--log FILE[.gz]] [--rate 1000]

The log (default: the large pgaudit sample, 296,694 lines) is written whole into a fresh
daemon's source file, as if the daemon had been down while it grew; then ``breachwatch run``
starts (shipped config and policy, SQLite store, mail folder) and, while it reads, a writer
appends ``--rate`` lines per second more (the same log's lines again). Printed: the time from
the start to the backlog read (``breachwatch_lines_read_total`` on /metrics, scraped every
0.2 s), lines per second over that time, and the findings recorded; the daemon then has to
keep up with the writer (its lag is printed after 5 more seconds).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.daemon_harness import (  # noqa: E402
    DaemonProcess,
    free_port,
    metric_value,
    scrape,
    write_config,
)

LARGE = REPO.parent / "shared" / "samples" / "pgaudit_large" / "postgresql.log.gz"


def _read(port: int, name: str) -> float:
    try:
        return metric_value(scrape(port), name, source="pg-main") or 0.0
    except OSError:
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", type=Path, default=LARGE)
    parser.add_argument("--rate", type=int, default=1000, help="new lines per second meanwhile")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bw-catchup-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        config = write_config(tmp, smtp_port=None, metrics_port=port, hold="1h")
        target = tmp / "logs" / "postgresql.log"
        opener = gzip.open if args.log.suffix == ".gz" else open
        with opener(args.log, "rb") as src, target.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        lines = target.read_bytes().splitlines(keepends=True)
        backlog = len(lines)
        print(f"command: {' '.join(sys.argv)}\nbacklog: {backlog:,} lines of {args.log}")
        appended = 0
        stop = threading.Event()

        def writer() -> None:
            nonlocal appended
            with target.open("ab") as out:
                while not stop.is_set():
                    chunk = [lines[(appended + i) % backlog] for i in range(args.rate // 10)]
                    out.write(b"".join(chunk))
                    out.flush()
                    appended += len(chunk)
                    time.sleep(0.1)

        daemon = DaemonProcess(config, tmp / "daemon.log").start()
        started = time.monotonic()
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            while _read(port, "breachwatch_lines_read_total") < backlog:
                if time.monotonic() - started > args.timeout:
                    sys.exit("timed out: the daemon did not read the backlog")
                if not daemon.alive():
                    sys.exit("the daemon exited:\n" + (tmp / "daemon.log").read_text()[-3000:])
                time.sleep(0.2)
            took = time.monotonic() - started
            print(
                f"backlog read in {took:.1f} s: {backlog / took:,.0f} lines/s "
                f"(and {appended:,} new lines appended meanwhile at {args.rate}/s)"
            )
            time.sleep(5)
            read = _read(port, "breachwatch_lines_read_total")
            print(
                f"5 s later: {read:,.0f} lines read of {backlog + appended:,} written "
                f"(lag {backlog + appended - read:,.0f} lines); findings recorded: "
                f"{metric_value(scrape(port), 'breachwatch_findings_total') or 0:,.0f}"
            )
        finally:
            stop.set()
            thread.join()
            daemon.stop()


if __name__ == "__main__":
    main()
