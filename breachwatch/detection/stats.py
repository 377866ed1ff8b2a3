"""Robust, bounded statistics for baselines: weighted quantiles over a decaying reservoir.

A :class:`DecayingReservoir` keeps the last ``size`` window values (e.g. distinct customers
per day) with the ordinal of the window they belong to. Summaries weight each value by
``0.5 ** (age / half_life)`` (age in windows), so a baseline follows a person whose work
changes, while memory stays fixed. Quantiles are *lower weighted quantiles*: always a value
that was actually observed, which keeps explanations honest ("usual p99 is 11").
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

_VERSIONS = itertools.count(1)
MAD_SCALE = 1.4826  # MAD x this estimates the standard deviation of normal data


def weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q`` of the total (0 < q <= 1).

    With equal weights this is ``sorted(values)[ceil(q * n) - 1]``."""
    if not values or len(values) != len(weights):
        raise ValueError("values and weights must be non-empty and of equal length")
    if not 0.0 < q <= 1.0:
        raise ValueError("q must be in (0, 1]")
    pairs = sorted(zip(values, weights, strict=True))
    total = math.fsum(w for _, w in pairs)
    if total <= 0.0:
        raise ValueError("weights must not all be zero")
    target = q * total
    running = 0.0
    for value, weight in pairs:
        running += weight
        # relative tolerance: equal weights summing to q * total must not miss by rounding
        if running >= target * (1.0 - 1e-12):
            return value
    return pairs[-1][0]


@dataclass(frozen=True, slots=True)
class Summary:
    """What a baseline says about past windows."""

    windows: int  # how many windows the summary rests on
    median: float
    mad: float  # median absolute deviation (unscaled)
    high: float  # the configured upper quantile (p99 by default)
    quantile: float

    def limit(self, ratio: float, mad_k: float, floor: float) -> float:
        """The count above which a window is unusual: above ``floor``, above ``ratio`` x the
        upper quantile and above ``median + mad_k * 1.4826 * MAD``."""
        return max(floor, ratio * self.high, self.median + mad_k * MAD_SCALE * self.mad)

    @property
    def label(self) -> str:
        """'p99' for 0.99, 'p95' for 0.95, 'p99.9' for 0.999."""
        return "p" + f"{self.quantile * 100:.3g}"


def summarize(
    values: Sequence[float], weights: Sequence[float] | None = None, q: float = 0.99
) -> Summary:
    if weights is None:
        weights = [1.0] * len(values)
    median = weighted_quantile(values, weights, 0.5)
    deviations = [abs(v - median) for v in values]
    mad = weighted_quantile(deviations, weights, 0.5)
    return Summary(len(values), median, mad, weighted_quantile(values, weights, q), q)


class DecayingReservoir:
    """The newest ``size`` (window ordinal, value) pairs; older ones fall out."""

    __slots__ = ("_items", "half_life", "size", "version")

    def __init__(self, size: int, half_life: float) -> None:
        if size < 1 or half_life <= 0:
            raise ValueError("size must be >= 1 and half_life > 0")
        self.size = size
        self.half_life = half_life
        self._items: deque[tuple[int, float]] = deque(maxlen=size)
        self.version = next(_VERSIONS)  # unique per content, for callers that cache summaries

    def __len__(self) -> int:
        return len(self._items)

    def add(self, ordinal: int, value: float) -> None:
        self._items.append((ordinal, float(value)))
        self.version = next(_VERSIONS)

    def extend(self, items: Iterable[tuple[int, float]]) -> None:
        for ordinal, value in items:
            self.add(ordinal, value)

    def summary(self, now: int, q: float) -> Summary | None:
        if not self._items:
            return None
        values = [v for _, v in self._items]
        # Ages are clamped at 0: a seed or a late window may carry an ordinal ahead of "now".
        weights = [0.5 ** (max(now - o, 0) / self.half_life) for o, _ in self._items]
        if not any(weights):
            # Every age so large that its weight underflowed to 0.0 (a log line stamped decades
            # ahead moves "now" that far): the same ratios, counted from the newest item.
            newest = max(o for o, _ in self._items)
            weights = [0.5 ** (max(newest - o, 0) / self.half_life) for o, _ in self._items]
        return summarize(values, weights, q)

    def dump(self) -> list[list[float]]:
        return [[o, v] for o, v in self._items]

    def load(self, data: Any) -> None:
        items = deque(((int(o), float(v)) for o, v in data), maxlen=self.size)
        self._items = items
        self.version = next(_VERSIONS)
