"""CPU cost of the detectors alone (the back half of the pipeline), per detector.

    .venv/bin/python benchmarks/bench_detectors.py [--log FILE[.gz]] [--limit N] [--profile]

The log is read, framed, parsed and enriched once (the front half, not measured); then each
detector of one fresh :class:`~breachwatch.pipeline.Pipeline` runs over every enriched event
in turn, timed in CPU seconds, and the whole back half (``Pipeline.detect``) runs once more on
a second fresh pipeline. Printed: µs per log line for each detector and for the whole back half,
the findings count and a digest of every finding (rule, key, subjects) — the digest must not
change when the detectors get faster (evidence names the log ``postgresql.log`` whatever the
temporary directory, so digests of two runs compare). ``--profile`` prints a cProfile of
the back half.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import hashlib
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

from breachwatch.detection.policy import StaffMember, load_policy
from breachwatch.events import AccessEvent
from breachwatch.parsers.registry import build_format
from breachwatch.pipeline import Pipeline
from breachwatch.sources.files import read_line_batches

REPO = Path(__file__).resolve().parents[1]
LARGE = REPO.parent / "shared" / "samples" / "pgaudit_large" / "postgresql.log.gz"
PREFIX = "%m [%p] %q%u@%d %a %h "


def new_pipeline() -> Pipeline:
    return Pipeline(load_policy(REPO / "config" / "policy.yml"))


def enriched_events(log: Path, limit: int | None) -> tuple[int, list[AccessEvent]]:
    """(lines read, enriched events) through the front half of a pipeline."""
    pipe = new_pipeline()
    fmt = build_format("pgaudit_stderr", {"log_line_prefix": PREFIX, "timezone": "Europe/Berlin"})
    # Evidence names the file as the framer is told: a fixed name keeps the digest (finding
    # keys hold the path) comparable between runs, whatever the temporary directory.
    framer = fmt.new_framer(log.name)
    lines = 0
    records = []
    for block in read_line_batches(log):
        if limit is not None and lines >= limit:
            break
        lines += len(block)
        records.extend(framer.push_many(block))
    records.extend(framer.flush())
    events: list[AccessEvent] = []
    view, enrich = pipe._view, pipe._sql.enrich
    for record in records:
        parsed = fmt.parse(record, "pg-main")
        if not isinstance(parsed, list):
            continue
        for e in parsed:
            actor = view.resolve_actor(e.actor)
            person = actor.person if isinstance(actor, StaffMember) else e.person
            events.append(enrich(e, person))
    return lines, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", type=Path, default=LARGE)
    parser.add_argument("--limit", type=int, default=None, help="read about N lines only")
    parser.add_argument("--profile", action="store_true", help="cProfile the back half")
    args = parser.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory(prefix="bw-bench-") as tmp:
        log = Path(tmp) / "postgresql.log"
        opener = gzip.open if args.log.suffix == ".gz" else open
        with opener(args.log, "rb") as src, log.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        lines, events = enriched_events(log, args.limit)
    print(f"log: {args.log}: {lines:,} lines, {len(events):,} events")
    cpu = time.process_time
    pipe = new_pipeline()
    total = 0.0
    for name, detector in pipe.detectors().items():
        t = cpu()
        count = 0
        for e in events:
            count += len(detector(e))
        seconds = cpu() - t
        total += seconds
        print(f"  detector {name:14s} {seconds:6.2f} s  {1e6 * seconds / lines:6.2f} µs/line")
    print(f"  sum of detectors       {total:6.2f} s  {1e6 * total / lines:6.2f} µs/line")
    pipe = new_pipeline()
    detect = pipe.detect
    found = []
    profiler = cProfile.Profile() if args.profile else None
    t = cpu()
    if profiler is not None:
        profiler.enable()
    for e in events:
        more = detect(e)
        if more:
            found += more
    if profiler is not None:
        profiler.disable()
    seconds = cpu() - t
    digest = hashlib.sha256()
    for f in found:
        digest.update(f"{f.rule}|{f.key}|{','.join(f.subjects)}\n".encode())
    print(
        f"  back half (detect)     {seconds:6.2f} s  {1e6 * seconds / lines:6.2f} µs/line; "
        f"{len(found):,} findings, digest {digest.hexdigest()[:16]}"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
