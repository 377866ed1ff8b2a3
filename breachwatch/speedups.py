"""The optional C twins of the per-line hot path (``breachwatch/_speedups.c``).

``native`` is the compiled module, or None when it was not built (no C compiler or Python
headers at install time) or when ``BREACHWATCH_PURE_PYTHON=1`` is set; the Python code it
mirrors then runs, with the same results (the tests compare the two on the same input).
"""

from __future__ import annotations

import gc
import os
from dataclasses import fields
from types import ModuleType
from typing import Any

native: ModuleType | None
try:
    if os.environ.get("BREACHWATCH_PURE_PYTHON", "") not in ("", "0"):
        raise ImportError("BREACHWATCH_PURE_PYTHON is set")
    from breachwatch import _speedups as native
except ImportError:
    native = None


def builder(cls: type) -> Any:
    """A callable ``(*values) -> instance`` of a frozen, slotted dataclass taking every field
    positionally, in order, without running ``__init__``; the class itself without the C
    module."""
    if native is None:
        return cls
    return native.Builder(cls, tuple(f.name for f in fields(cls)))


# Collect the youngest generation every 50,000 container allocations instead of every 700:
# a log line allocates a dozen containers (line, record, event, tuples) that live until the
# batch is done, so at 700 the collector ran several times per batch and walked every young
# line each time (a sixth of the scan's time, measured with benchmarks/bench_pipeline.py).
# Garbage cycles wait a little longer; there are few (the pipeline makes none per line).
# (gc.freeze() of what is alive after startup was measured too: no difference within noise,
# and a policy reload would leave the old pipeline's cycles frozen, so it is not done.)
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Collector settings for a long run over many lines (the daemon, ``scan``)."""
    gc.set_threshold(*GC_THRESHOLDS)
