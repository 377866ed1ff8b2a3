"""The statistics under the baselines, checked with hypothesis."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from breachwatch.detection.stats import (
    MAD_SCALE,
    DecayingReservoir,
    summarize,
    weighted_quantile,
)

values = st.lists(st.integers(0, 10_000).map(float), min_size=1, max_size=80)
quantiles = st.floats(0.01, 1.0)


@given(values, quantiles)
def test_equal_weights_give_the_order_statistic(xs: list[float], q: float) -> None:
    expected = sorted(xs)[max(math.ceil(q * len(xs)) - 1, 0)]
    assert weighted_quantile(xs, [1.0] * len(xs), q) == expected


@given(values, st.data())
def test_quantiles_are_observed_values_and_monotone(xs: list[float], data: st.DataObject) -> None:
    weights = data.draw(st.lists(st.floats(0.01, 100.0), min_size=len(xs), max_size=len(xs)))
    q1, q2 = sorted(data.draw(st.tuples(quantiles, quantiles)))
    low, high = weighted_quantile(xs, weights, q1), weighted_quantile(xs, weights, q2)
    assert low in xs and high in xs
    assert min(xs) <= low <= high <= max(xs)


@given(values, st.floats(0.0, 10_000.0))
def test_median_and_mad_are_robust_to_one_outlier(xs: list[float], outlier: float) -> None:
    base = summarize(xs + xs + xs)
    spoiled = summarize([*xs, *xs, *xs, outlier])
    # One more value moves the median by at most one rank: it stays inside the data's range.
    assert min(xs) <= spoiled.median <= max(xs)
    assert base.mad >= 0 and spoiled.mad >= 0


@given(values, st.floats(1.0, 5.0), st.floats(0.0, 10.0), st.floats(0.0, 50.0))
def test_the_limit_is_above_floor_quantile_and_spread(
    xs: list[float], ratio: float, k: float, floor: float
) -> None:
    s = summarize(xs, q=0.99)
    limit = s.limit(ratio, k, floor)
    assert limit >= floor and limit >= ratio * s.high
    assert limit >= s.median + k * MAD_SCALE * s.mad


@given(
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 100)), max_size=200), st.integers(1, 50)
)
def test_the_reservoir_is_bounded_and_round_trips(items: list[tuple[int, int]], size: int) -> None:
    reservoir = DecayingReservoir(size, 10.0)
    reservoir.extend((o, float(v)) for o, v in items)
    assert len(reservoir) == min(size, len(items))
    copy = DecayingReservoir(size, 10.0)
    copy.load(reservoir.dump())
    assert copy.dump() == reservoir.dump()
    if items:
        assert copy.summary(600, 0.99) == reservoir.summary(600, 0.99)


def test_decay_lets_the_baseline_follow_a_change_of_work() -> None:
    reservoir = DecayingReservoir(100, half_life=5.0)
    reservoir.extend((day, 40.0) for day in range(50))  # a busy past
    reservoir.extend((day, 10.0) for day in range(50, 80))  # a quieter job since
    summary = reservoir.summary(80, 0.5)
    assert summary is not None and summary.median == 10.0
    flat = DecayingReservoir(100, half_life=1e9)
    flat.extend((day, 40.0) for day in range(50))
    flat.extend((day, 10.0) for day in range(50, 80))
    flat_summary = flat.summary(80, 0.5)
    assert flat_summary is not None and flat_summary.median == 40.0


def test_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        weighted_quantile([], [], 0.5)
    with pytest.raises(ValueError):
        weighted_quantile([1.0], [1.0], 0.0)
    with pytest.raises(ValueError):
        DecayingReservoir(0, 1.0)
    assert summarize([1.0, 2.0, 3.0]).label == "p99"


def test_a_far_future_now_does_not_underflow_every_weight() -> None:
    """Found by fuzzing: a line stamped decades ahead made every weight 0.5**age underflow to
    0.0, and the weighted quantile raised. The weights keep their ratios instead."""
    reservoir = DecayingReservoir(size=8, half_life=2.0)
    for ordinal, value in [(0, 3.0), (1, 5.0), (2, 8.0), (3, 40.0)]:
        reservoir.add(ordinal, value)
    near = reservoir.summary(3, 0.5)
    far = reservoir.summary(10**9, 0.5)
    assert near is not None and far == near
