"""Throughput of breachwatch's pipeline against fail2ban-regex and a bare Python loop.

    .venv/bin/python benchmarks/bench_pipeline.py [--log FILE[.gz]] [--passes 2]

(a) fail2ban-regex with one failregex for the AUDIT READ lines of clients.accounts;
(b) a bare loop: split the prefix off each line and CSV-parse the AUDIT payload;
(c) breachwatch: read lines → frame → parse → SqlEnricher → detectors (config/policy.yml) →
    findings collected, the file fed ``--passes`` times through one pipeline so that memory
    can be watched as the log grows.

Rates are given per CPU second of the measured process (one core; the machine may be busy)
and per wall second; the ratio (c)/(a) uses CPU seconds.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from breachwatch.detection.policy import load_policy
from breachwatch.parsers.base import Record
from breachwatch.parsers.registry import build_format
from breachwatch.pipeline import Pipeline
from breachwatch.sources.files import read_lines

REPO = Path(__file__).resolve().parents[1]
LARGE = REPO.parent / "shared" / "samples" / "pgaudit_large" / "postgresql.log.gz"
PREFIX = "%m [%p] %q%u@%d %a %h "
# The date is cut off by datepattern; the zone abbreviation (CET) is left for the regex.
FAILREGEX = (
    r"^\s*[A-Z]+ \[\d+\] <F-USER>[^@\s]+</F-USER>@\S+ .*? <HOST> "
    r"LOG:  AUDIT: SESSION,\d+,\d+,READ,SELECT,TABLE,clients\.accounts,"
)
FILTER = rf"""[Definition]
failregex = {FAILREGEX}
ignoreregex =
[Init]
datepattern = ^%%Y-%%m-%%d %%H:%%M:%%S\.%%f
"""


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fail2ban(log: Path, work: Path) -> dict[str, float]:
    exe = shutil.which("fail2ban-regex")
    if exe is None:
        sys.exit("fail2ban-regex not found: apt-get install fail2ban")
    conf = work / "bw-clients-read.conf"
    conf.write_text(FILTER)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run([exe, str(log), str(conf)], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m = re.search(r"Lines: (\d+) lines, \d+ ignored, (\d+) matched", out.stdout)
    processed = re.search(r"processed in ([\d.]+) sec", out.stdout)
    if m is None:
        sys.exit(f"unexpected fail2ban-regex output:\n{out.stdout[-2000:]}")
    lines = int(m.group(1))
    return {
        "lines": lines,
        "matched": int(m.group(2)),
        "wall": wall,
        "cpu": cpu,
        "own": float(processed.group(1)) if processed else wall,
    }


def bare_loop(log: Path) -> dict[str, float]:
    started, cpu0 = time.perf_counter(), time.process_time()
    lines = matched = 0
    with log.open(encoding="utf-8", errors="replace") as stream:
        for text in stream:
            lines += 1
            head, sep, payload = text.partition(" LOG:  AUDIT: ")
            if not sep:
                continue
            prefix = head.split(" ", 5)  # date, time, zone, [pid], user@db, app + host
            fields = next(csv.reader((payload,)))
            if fields[3] == "READ" and fields[6] == "clients.accounts" and prefix[4]:
                matched += 1
    return {
        "lines": lines,
        "matched": matched,
        "wall": time.perf_counter() - started,
        "cpu": time.process_time() - cpu0,
    }


def pipeline(log: Path, passes: int, batch: int = 5000) -> dict[str, float]:
    pipe = Pipeline(load_policy(REPO / "config" / "policy.yml"))
    fmt = build_format("pgaudit_stderr", {"log_line_prefix": PREFIX, "timezone": "Europe/Berlin"})
    lines = events = findings = 0
    rss: dict[int, float] = {}
    marks = [50_000, 300_000, 500_000]
    started, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(passes):
        framer = fmt.new_framer(str(log))
        records: list[Record] = []
        for line in read_lines(log):
            lines += 1
            records.extend(framer.push(line))
            if len(records) >= batch:
                result = pipe.process(records, fmt, "pg-main")
                events, findings = events + result.events, findings + len(result.findings)
                records = []
            if marks and lines >= marks[0]:
                rss[marks.pop(0)] = rss_mb()
        records.extend(framer.flush())
        result = pipe.process(records, fmt, "pg-main")
        events, findings = events + result.events, findings + len(result.findings)
    rss[lines] = rss_mb()
    return {
        "lines": lines,
        "events": events,
        "findings": findings,
        "wall": time.perf_counter() - started,
        "cpu": time.process_time() - cpu0,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{f"rss@{n}": v for n, v in rss.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", type=Path, default=LARGE)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--only", choices=["fail2ban", "bare", "pipeline"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bw-bench-") as tmp:
        work = Path(tmp)
        log = work / "postgresql.log"
        opener = gzip.open if args.log.suffix == ".gz" else open
        with opener(args.log, "rb") as src, log.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        print(f"log: {args.log} ({sum(1 for _ in log.open('rb')):,} lines)")
        results = {}
        if args.only in (None, "fail2ban"):
            results["a"] = a = fail2ban(log, work)
            print(
                f"(a) fail2ban-regex: {a['lines'] / a['cpu']:,.0f} lines/s CPU, "
                f"{a['lines'] / a['wall']:,.0f} lines/s wall ({a['lines'] / a['own']:,.0f} "
                f"by its own 'processed in'), {a['matched']:,.0f} matched"
            )
        if args.only in (None, "bare"):
            b = bare_loop(log)
            print(
                f"(b) bare Python loop: {b['lines'] / b['cpu']:,.0f} lines/s CPU, "
                f"{b['lines'] / b['wall']:,.0f} lines/s wall, {b['matched']:,.0f} matched"
            )
        if args.only in (None, "pipeline"):
            results["c"] = c = pipeline(log, args.passes)
            memory = ", ".join(f"{k} {v:.0f} MB" for k, v in c.items() if k.startswith("rss@"))
            print(
                f"(c) breachwatch pipeline: {c['lines'] / c['cpu']:,.0f} lines/s CPU, "
                f"{c['lines'] / c['wall']:,.0f} lines/s wall, {c['events'] / c['cpu']:,.0f} "
                f"events/s per core; {c['lines']:,.0f} lines, {c['events']:,.0f} events, "
                f"{c['findings']:,.0f} findings; peak RSS {c['peak_rss']:.0f} MB; {memory}"
            )
        if "a" in results and "c" in results:
            a, c = results["a"], results["c"]
            ratio = (c["lines"] / c["cpu"]) / (a["lines"] / a["cpu"])
            wall = (c["lines"] / c["wall"]) / (a["lines"] / a["wall"])
            print(
                f"ratio (c)/(a): {ratio:.2f} per CPU second, {wall:.2f} per wall second "
                "(target >= 2.5)"
            )


if __name__ == "__main__":
    main()
