"""Long crash torture: the CI test (tests/test_torture.py) with more lines, kills and rotations.

    .venv/bin/python benchmarks/torture_long.py [--lines 300000] [--kills 100] [--rotations 12]
        [--rate 3000] [--seed 1] [--max-gap 3]
    BW_TORTURE_LINES=100000 BW_TORTURE_RATE=5000 .venv/bin/python benchmarks/torture_long.py

The BW_TORTURE_* variables of tests/test_torture.py set the defaults here too (options win), so
one command line works for both.

Beyond the sample's 296,694 lines, lines are repeated with shifted pids and statement ids so
every line stays distinct. Exits non-zero (with the differences) if the findings, incidents,
outbox rows or mails differ from the uninterrupted reference run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_torture import TortureParams, run_torture  # noqa: E402


def main() -> int:
    base = TortureParams.from_env(
        lines=300_000, kills=100, rotations=12, rate=3_000.0, seed=1, max_gap=3.0
    )
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=base.lines)
    parser.add_argument("--kills", type=int, default=base.kills)
    parser.add_argument("--rotations", type=int, default=base.rotations)
    parser.add_argument("--rate", type=float, default=base.rate)
    parser.add_argument("--seed", type=int, default=base.seed)
    parser.add_argument("--max-gap", type=float, default=base.max_gap)
    args = parser.parse_args()
    params = TortureParams(
        lines=args.lines,
        kills=args.kills,
        rotations=args.rotations,
        rate=args.rate,
        seed=args.seed,
        max_gap=args.max_gap,
        settle_timeout=3600.0,
    )
    with tempfile.TemporaryDirectory(prefix="bw-torture-") as tmp:
        summary = run_torture(Path(tmp), params)  # raises AssertionError with the diff
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
