"""Detection latency of the real daemon under load: line appended -> finding on /metrics.

    .venv/bin/python benchmarks/bench_latency.py [--probes 1000] [--rate 5000]
    .venv/bin/python benchmarks/bench_latency.py --smoke        # 50 probes, about a minute
    .venv/bin/python benchmarks/bench_latency.py --smoke --py-spy /tmp/daemon.svg

A background writer appends benign pgaudit lines (svc_shop reading accounts, the shipped
policy grants it) at ``--rate`` lines/s. ``--probes`` times, one violating line (kevin, who
left, reading a distinct customer) is appended and the metrics endpoint is polled every
``--every`` (20 ms, i.e. 50 scrapes/s: a resolution far below the 1 s target, without making
the scrapes the load) until ``breachwatch_findings_total{rule="ntk.departed_account"}`` has
grown: that time is one sample. Prints p50, p90, p99 and max, the daemon's CPU use, the mean
scrape time, and the machine's uptime and load average (other work on the machine shows up in
the figures). The daemon runs with the shipped poll_interval and flush_after unless --poll /
--flush are given. ``--py-spy OUT`` records a flame graph of the daemon during the probes (needs
``py-spy`` on PATH or in the venv; for measurement only, not a dependency; an OUT ending in
``.txt`` gets collapsed stacks instead of an SVG).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.daemon_harness import DaemonProcess, audit_read, free_port, write_config  # noqa: E402

METRIC = 'breachwatch_findings_total{rule="ntk.departed_account"'


def benign(i: int) -> str:
    return audit_read(
        "2026-11-30 10:00:01.000 CET",
        4100 + i % 50,
        "svc_shop",
        i,
        "clients.accounts",
        f"SELECT id, full_name FROM accounts WHERE id = {1 + i % 5000}",
    )


def violation(i: int) -> str:
    return audit_read(
        "2026-11-30 10:00:02.000 CET",
        4242,
        "kevin_helpdesk",
        i,
        "clients.accounts",
        f"SELECT full_name, email FROM clients.accounts WHERE id = {200000 + i};",
    )


SCRAPES: list[float] = []  # seconds per /metrics request, for the report


def findings(port: int) -> float:
    t0 = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    SCRAPES.append(time.monotonic() - t0)
    for line in body.splitlines():
        if line.startswith(METRIC):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    up = float(Path("/proc/uptime").read_text().split()[0])
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"uptime {up / 60:.0f} min, load average {load}, {os.cpu_count()} cpus"


def start_py_spy(pid: int, out: str) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    fmt = "raw" if out.endswith(".txt") else "flamegraph"  # raw: collapsed stacks, greppable
    command = [exe, "record", "--pid", str(pid), "--output", out, "--format", fmt]
    command += ["--rate", "100", "--nonblocking", "--threads"]
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true", help="50 probes (overrides --probes)")
    parser.add_argument("--every", type=float, default=0.020, help="seconds between scrapes")
    parser.add_argument("--py-spy", dest="py_spy", default=None, help="flame graph output")
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--poll", default=None, help="poll_interval, e.g. 250ms")
    parser.add_argument("--flush", default=None, help="flush_after, e.g. 500ms")
    args = parser.parse_args()
    if args.smoke:
        args.probes = 50
    with tempfile.TemporaryDirectory(prefix="bw-latency-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        config = write_config(tmp, smtp_port=None, hold="1h", metrics_port=port)
        doc = yaml.safe_load(config.read_text())
        shipped = yaml.safe_load((REPO / "config" / "breachwatch.yml").read_text())
        doc["poll_interval"] = args.poll or shipped.get("poll_interval", "250ms")
        doc["flush_after"] = args.flush or shipped.get("flush_after", "500ms")
        doc["tick_interval"] = "15s"
        config.write_text(yaml.safe_dump(doc, allow_unicode=True))
        log = tmp / "logs" / "postgresql.log"
        log.write_text("")
        daemon = DaemonProcess(config, tmp / "daemon.out").start()
        lock = threading.Lock()  # whole lines only: writer and probes share the file
        stop = threading.Event()
        written = [0]

        def writer() -> None:
            started, i = time.monotonic(), 0
            with log.open("a", encoding="utf-8") as out:
                while not stop.is_set():
                    due = int((time.monotonic() - started) * args.rate)
                    if due > i:
                        with lock:
                            out.write("".join(benign(n) for n in range(i, due)))
                            out.flush()
                        i = due
                    time.sleep(0.002)
            written[0] = i

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        samples: list[float] = []
        assert daemon.proc is not None
        pid = daemon.proc.pid
        spy: subprocess.Popen[bytes] | None = None
        try:
            time.sleep(2.0)  # steady state
            if args.py_spy:
                spy = start_py_spy(pid, args.py_spy)
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            with log.open("a", encoding="utf-8") as probe_out:
                for n in range(args.probes):
                    before = findings(port)
                    with lock:
                        probe_out.write(violation(n))
                        probe_out.flush()
                        t0 = time.monotonic()
                    while findings(port) <= before:
                        if time.monotonic() - t0 > 30:
                            raise SystemExit(f"probe {n}: no finding after 30 s")
                        time.sleep(args.every)
                    samples.append(time.monotonic() - t0)
            cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes the flame graph on SIGINT
                spy.wait(60)
            stop.set()
            thread.join(5)
            daemon.stop()
        samples.sort()
        q = statistics.quantiles(samples, n=100, method="inclusive")
        print(
            f"probes={len(samples)} background={args.rate:.0f} lines/s "
            f"(written {written[0]}) poll={doc['poll_interval']} flush={doc['flush_after']} "
            f"scrape every {args.every * 1000:.0f} ms"
        )
        print(
            f"daemon cpu {cpu * 100:.0f}% of one core; {len(SCRAPES)} scrapes, mean "
            f"{statistics.fmean(SCRAPES) * 1000:.1f} ms; {machine()}"
        )
        print(
            f"latency p50={q[49] * 1000:.0f} ms p90={q[89] * 1000:.0f} ms "
            f"p99={q[98] * 1000:.0f} ms max={samples[-1] * 1000:.0f} ms"
        )
        return 0 if q[98] < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
