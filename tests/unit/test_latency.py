from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.node.latency import LatencyTracker


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_quantile_is_none_until_min_samples() -> None:
    tracker = LatencyTracker(clock=FakeClock())
    for ms in (1.0, 2.0, 3.0, 4.0):
        tracker.observe(ms)
    assert tracker.count == 4
    assert tracker.p95 is None
    tracker.observe(5.0)
    assert tracker.p95 is not None


def test_quantiles_interpolate_between_samples() -> None:
    tracker = LatencyTracker(clock=FakeClock())
    for ms in range(100, 0, -1):
        tracker.observe(float(ms))
    assert tracker.quantile(0.0) == 1.0
    assert tracker.quantile(1.0) == 100.0
    assert tracker.p50 == pytest.approx(50.5)
    assert tracker.p95 == pytest.approx(95.05)


def test_window_keeps_only_the_latest_samples() -> None:
    tracker = LatencyTracker(window=10, clock=FakeClock())
    for _ in range(50):
        tracker.observe(1000.0)
    for _ in range(10):
        tracker.observe(5.0)
    assert tracker.count == 10
    assert tracker.p95 == 5.0


def test_old_samples_age_out() -> None:
    clock = FakeClock()
    tracker = LatencyTracker(max_age_seconds=60, clock=clock)
    for _ in range(10):
        tracker.observe(300.0)
    clock.now += 30
    for _ in range(5):
        tracker.observe(10.0)
    assert tracker.p95 == 300.0
    clock.now += 30.5
    assert tracker.count == 5
    assert tracker.p95 == 10.0
    clock.now += 31
    assert tracker.count == 0
    assert tracker.p95 is None


def test_a_new_sample_invalidates_the_cached_order() -> None:
    tracker = LatencyTracker(clock=FakeClock(), min_samples=1)
    tracker.observe(1.0)
    assert tracker.p95 == 1.0
    tracker.observe(9.0)
    assert tracker.quantile(1.0) == 9.0
    tracker.clear()
    assert tracker.count == 0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_invalid_latencies_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError):
        LatencyTracker().observe(bad)


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        LatencyTracker(window=0)
    with pytest.raises(ValueError):
        LatencyTracker(min_samples=0)
    with pytest.raises(ValueError):
        LatencyTracker().quantile(1.5)


@given(st.lists(st.floats(0, 1e6), min_size=5, max_size=300), st.floats(0, 1))
def test_quantile_lies_within_the_observed_range(samples: list[float], q: float) -> None:
    tracker = LatencyTracker(window=200, clock=FakeClock())
    for ms in samples:
        tracker.observe(ms)
    kept = samples[-200:]
    value = tracker.quantile(q)
    assert value is not None
    assert min(kept) <= value <= max(kept)
