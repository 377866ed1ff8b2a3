"""Throughput of breachwatch's pipeline against fail2ban-regex and a bare Python loop.

    .venv/bin/python benchmarks/bench_pipeline.py [--log FILE[.gz]] [--passes 2]

(a) fail2ban-regex with one failregex for the AUDIT READ lines of clients.accounts;
(b) a bare loop: split the prefix off each line and CSV-parse the AUDIT payload;
(c) breachwatch: read lines → frame → parse → SqlEnricher → detectors (config/policy.yml) →
    findings written to a file as ``breachwatch scan --json`` prints them, the file fed
    ``--passes`` times through one pipeline so that memory can be watched as the log grows;
    with the collector settings the daemon and ``scan`` use (``speedups.tune_gc``) and the C
    twins of the hot path when they are built (``speedups.native``; the command line prints
    which, and ``BREACHWATCH_PURE_PYTHON=1`` measures the pure-Python code).

Rates are given per CPU second of the measured process (one core; the machine may be busy)
and per wall second; the ratio (c)/(a) uses CPU seconds. Both are measured in the same run,
so a loaded machine slows both; compare ratios, not absolute rates, between runs. (a) and (c)
run ``--rounds`` times (default 3), alternating, and the ratio printed last is the median of
the rounds' ratios (each is printed too): the speed of this shared machine drifts.

(c) is then checked against a reference run of the same pipeline with the fast paths and
caches of the parser and the SQL enricher switched off (the prefix regex on every line, no
statement templates, no enrichment plans, no statement-shape cache (every statement parsed
as written, in the enricher and in the detectors), each event parsed and then enriched instead of
built once already enriched): the event count, the findings count and a digest of every
finding (rule, key, subjects) must be equal, so speed never comes from dropped work. That
digest is computed outside the measured time (its CPU and wall time are subtracted).
``--no-verify`` skips it; ``--stages`` adds a CPU breakdown per stage.
"""

from __future__ import annotations

import argparse
import csv
import gc
import gzip
import hashlib
import importlib
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from breachwatch.commands import finding_line
from breachwatch.detection.findings import Finding
from breachwatch.detection.policy import load_policy
from breachwatch.parsers import pg_events
from breachwatch.parsers.base import LogFormat, Record
from breachwatch.parsers.pgaudit import PgauditStderrFormat
from breachwatch.parsers.registry import build_format
from breachwatch.pipeline import BatchResult, Pipeline
from breachwatch.sources.files import read_line_batches, read_lines
from breachwatch.speedups import native, tune_gc

# The module, not the function the package exports under the same name.
sql_analysis = importlib.import_module("breachwatch.sql.analyze")

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


class _PlainFormat:
    """The format without ``parse_enriched``: the pipeline parses, then enriches."""

    def __init__(self, fmt: LogFormat) -> None:
        self.name = fmt.name
        self.new_framer = fmt.new_framer
        self.parse = fmt.parse


class _NoCache(dict):  # type: ignore[type-arg]
    """A dict that forgets every insertion: a cache that always misses."""

    def __setitem__(self, key: object, value: object) -> None:
        pass


def _no_shape(sql: str) -> None:
    return None


def _digest(findings: list[Finding], digest: hashlib._Hash) -> tuple[float, float]:
    """Add the findings to the digest; (CPU, wall) seconds it took, which the caller leaves
    out of the pipeline's time: the digest checks the work, it is not part of it."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for f in findings:
        digest.update(f"{f.rule}|{f.key}|{','.join(f.subjects)}\n".encode())
    return time.process_time() - cpu0, time.perf_counter() - wall0


def pipeline(
    log: Path, passes: int, batch: int = 500, reference: bool = False
) -> dict[str, float | str]:
    """Read, frame, parse, enrich and detect, ``passes`` times through one pipeline.

    ``reference``: the slow path of the same code (see the module docstring), for checking."""
    pipe = Pipeline(load_policy(REPO / "config" / "policy.yml"))
    fmt = build_format("pgaudit_stderr", {"log_line_prefix": PREFIX, "timezone": "Europe/Berlin"})
    tune_gc()  # as the daemon and `breachwatch scan` run
    saved = pg_events._TEMPLATES, pg_events._TAGS, pg_events._FAST
    saved_normalise = sql_analysis.normalise
    if reference:
        pg_events._TEMPLATES, pg_events._TAGS, pg_events._FAST = _NoCache(), _NoCache(), _NoCache()
        pipe._sql._plans = _NoCache()
        pipe._sql.use_shapes = False
        # analyze() (need-to-know, casework) then parses each exact text, as before shapes
        sql_analysis.normalise = _no_shape
        sql_analysis.analyze.cache_clear()
        fmt = _PlainFormat(fmt)
    lines = events = findings = 0
    digest = hashlib.sha256()
    checking_cpu = checking_wall = 0.0  # spent on the digest, left out of the rates
    rss: dict[int, float] = {}
    marks = [50_000, 300_000, 500_000]
    # the findings written as `breachwatch scan --json` prints them, one JSON document a line
    written = (log.parent / "findings.jsonl").open("w", encoding="utf-8")

    def handle(result: BatchResult) -> None:
        nonlocal events, findings, checking_cpu, checking_wall
        events, findings = events + result.events, findings + len(result.findings)
        for finding in result.findings:
            written.write(finding_line(finding))
            written.write("\n")
        spent = _digest(result.findings, digest)
        checking_cpu, checking_wall = checking_cpu + spent[0], checking_wall + spent[1]

    started, cpu0 = time.perf_counter(), time.process_time()
    try:
        for _ in range(passes):
            framer = fmt.new_framer(str(log))
            if reference:
                framer._split._fast = False  # the prefix regex on every line
                source = ([line] for line in read_lines(log))
            else:
                source = read_line_batches(log)
            records: list[Record] = []
            for block in source:
                lines += len(block)
                if reference:  # plain records: the general parse path
                    for line in block:
                        records.extend(Record(r.path, r.lines) for r in framer.push(line))
                else:
                    records.extend(framer.push_many(block))
                if len(records) >= batch:
                    handle(pipe.process(records, fmt, "pg-main"))
                    records = []
                while marks and lines >= marks[0]:
                    rss[marks.pop(0)] = rss_mb()
            records.extend(framer.flush())
            handle(pipe.process(records, fmt, "pg-main"))
        written.close()
    finally:
        written.close()
        pg_events._TEMPLATES, pg_events._TAGS, pg_events._FAST = saved
        sql_analysis.normalise = saved_normalise
        sql_analysis.analyze.cache_clear()
    cpu = time.process_time() - cpu0 - checking_cpu
    wall = time.perf_counter() - started - checking_wall
    rss[lines] = rss_mb()
    return {
        "lines": lines,
        "events": events,
        "findings": findings,
        "digest": digest.hexdigest(),
        "wall": wall,
        "cpu": cpu,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{f"rss@{n}": v for n, v in rss.items()},
    }


def stages(log: Path) -> dict[str, float]:
    """CPU seconds of each stage over one pass. The stages run one after the other, on lists
    of a whole pass, with the garbage collector off as the pipeline has it in its batches
    (with it on, the lists would be walked again and again); so they are not part of the
    rate above. Parsing and SQL enrichment are one stage, as in the pipeline (each event
    built once, already enriched), timed on its second run over the records: that is, with
    the statement templates and the enrichment plans warm, as in a running daemon. Before
    that, two cold first runs (every cache empty), with the statement-shape cache off and on,
    are reported apart (keys starting with ``cold``), not in the stage total."""
    pipe = Pipeline(load_policy(REPO / "config" / "policy.yml"))
    fmt = build_format("pgaudit_stderr", {"log_line_prefix": PREFIX, "timezone": "Europe/Berlin"})
    assert isinstance(fmt, PgauditStderrFormat)
    out: dict[str, float] = {}
    cpu = time.process_time
    gc.disable()
    try:
        t = cpu()
        blocks = list(read_line_batches(log))
        out["read"] = cpu() - t
        t = cpu()
        framer = fmt.new_framer(str(log))
        records = [r for block in blocks for r in framer.push_many(block)] + framer.flush()
        out["frame"] = cpu() - t
        del blocks
        parse = fmt.parse_enriched
        for shapes in (False, True):
            cold = Pipeline(load_policy(REPO / "config" / "policy.yml"))._enricher
            cold.sql.use_shapes = shapes
            for cache in (pg_events._TEMPLATES, pg_events._TAGS, pg_events._FAST):
                cache.clear()
            sql_analysis.analyze.cache_clear()
            sql_analysis.analyze_exact.cache_clear()
            sql_analysis._TEMPLATES.clear()
            t = cpu()
            for r in records:
                parse(r, "pg-main", cold)
            out[f"cold parse + SQL enrich, shapes {'on' if shapes else 'off'}"] = cpu() - t
        enricher = pipe._enricher
        for _ in range(2):  # (the events are not kept: a pass of them in memory costs more)
            t = cpu()
            for r in records:
                parse(r, "pg-main", enricher)
            out["parse + SQL enrich (one build)"] = cpu() - t
        parsed = [parse(r, "pg-main", enricher) for r in records]
        enriched = [e for p in parsed if isinstance(p, list) for e in p]
        del records, parsed
        for name, detector in pipe.detectors().items():
            t = cpu()
            for e in enriched:
                detector(e)
            out[f"detector {name}"] = cpu() - t
    finally:
        gc.enable()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", type=Path, default=LARGE)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--only", choices=["fail2ban", "bare", "pipeline"])
    parser.add_argument("--no-verify", action="store_true", help="skip the reference run")
    parser.add_argument("--stages", action="store_true", help="CPU seconds per stage")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of (a) and (c); the median ratio counts"
    )
    args = parser.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    print(
        "hot path: "
        + ("C twins (breachwatch._speedups)" if native is not None else "pure Python")
        + f"; Python {sys.version.split()[0]}"
    )
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
            if not args.no_verify:
                r = pipeline(log, args.passes, reference=True)
                same = all(r[k] == c[k] for k in ("lines", "events", "findings", "digest"))
                print(
                    f"    verified against the reference path (caches and fast paths off, "
                    f"{r['lines'] / r['cpu']:,.0f} lines/s CPU): {r['events']:,.0f} events, "
                    f"{r['findings']:,.0f} findings, digest {str(r['digest'])[:12]}: "
                    f"{'OK, equal' if same else 'MISMATCH'}"
                )
                if not same:
                    sys.exit("the fast path does not give the reference's events and findings")
            if args.stages:
                parts = stages(log)
                colds = {k: parts.pop(k) for k in list(parts) if k.startswith("cold")}
                total = sum(parts.values())
                lines = c["lines"] / args.passes
                print(f"    stages, CPU s for {lines:,.0f} lines:")
                for name, seconds in parts.items():
                    print(
                        f"      {name:32s} {seconds:6.2f} s  {seconds / total:4.0%}  "
                        f"{seconds / lines * 1e6:5.2f} µs/line"
                    )
                front = sum(v for k, v in parts.items() if not k.startswith("detector"))
                print(f"      front half (read → event)        {front / lines * 1e6:5.2f} µs/line")
                for name, seconds in colds.items():
                    print(
                        f"      {name:38s} {seconds:6.2f} s  {seconds / lines * 1e6:5.2f} µs/line"
                    )
        if "a" in results and "c" in results:
            # More rounds of (a) then (c), alternating: the machine's speed drifts by 10-20 %
            # over a minute here, and the median of the per-round ratios is what is reported.
            pairs = [(results["a"], results["c"])]
            for n in range(2, args.rounds + 1):
                a, c = fail2ban(log, work), pipeline(log, args.passes)
                if c["findings"] != results["c"]["findings"]:
                    sys.exit("a later round gave other findings than the first")
                pairs.append((a, c))
                print(
                    f"round {n}: (a) {a['lines'] / a['cpu']:,.0f}, (c) "
                    f"{c['lines'] / c['cpu']:,.0f} lines/s CPU"
                )
            ratios = sorted((c["lines"] / c["cpu"]) / (a["lines"] / a["cpu"]) for a, c in pairs)
            walls = sorted((c["lines"] / c["wall"]) / (a["lines"] / a["wall"]) for a, c in pairs)
            ratio, wall = statistics.median(ratios), statistics.median(walls)
            verdict = "met" if ratio >= 2.5 else "NOT met"
            print(
                f"RATIO (c)/(a) = {ratio:.2f} lines per CPU second, one core each, median of "
                f"{len(pairs)} round(s) ({', '.join(f'{r:.2f}' for r in ratios)}) "
                f"(target >= 2.5: {verdict}); {wall:.2f} per wall second"
            )


if __name__ == "__main__":
    main()
