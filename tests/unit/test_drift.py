"""Rolling PSI drift scores on synthetic data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from mesh.scoring.drift import (
    CONFIDENCE,
    INPUT,
    DriftMonitor,
    RollingHistogram,
    coarsen,
    population_stability_index,
)


@dataclass
class Hist:
    edges: list[float]
    proportions: list[float]


@dataclass
class Reference:
    intensity_histogram: Hist
    confidence_histogram: Hist


def histogram_of(values: np.ndarray, bins: int = 40) -> Hist:
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=edges)
    return Hist([float(e) for e in edges], [float(c) / counts.sum() for c in counts])


RNG_SEED = 7
FEATURES = 16


def training_inputs(rng: np.random.Generator, rows: int) -> np.ndarray:
    return np.clip(rng.normal(0.3, 0.15, size=(rows, FEATURES)), 0.0, 1.0)


def training_confidences(rng: np.random.Generator, rows: int) -> np.ndarray:
    return np.clip(rng.beta(8.0, 1.0, size=rows), 0.0, 1.0)


@pytest.fixture
def reference() -> Reference:
    rng = np.random.default_rng(RNG_SEED)
    x = training_inputs(rng, 20_000)
    return Reference(
        intensity_histogram=histogram_of(x.mean(axis=1)),
        confidence_histogram=histogram_of(training_confidences(rng, 20_000), bins=20),
    )


def feed(monitor: DriftMonitor, x: np.ndarray, confidences: np.ndarray, batch: int = 1) -> None:
    for i in range(0, len(x), batch):
        monitor.observe(x[i : i + batch], confidences[i : i + batch])


def test_psi_is_zero_for_equal_distributions_and_grows_with_the_shift() -> None:
    expected = [0.25, 0.25, 0.25, 0.25]
    assert population_stability_index(expected, expected) == pytest.approx(0.0)
    small = population_stability_index([0.3, 0.25, 0.25, 0.2], expected)
    large = population_stability_index([0.7, 0.2, 0.05, 0.05], expected)
    assert 0 < small < 0.1 < 0.25 < large


def test_coarsen_merges_sparse_bins_and_keeps_the_mass() -> None:
    edges, shares = coarsen([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [0.001, 0.004, 0.5, 0.49, 0.005], 0.01)
    assert list(edges) == [0.0, 0.3, 0.5]
    assert shares == pytest.approx([0.505, 0.495])
    assert np.all(shares >= 0.01)


def test_rolling_histogram_counts_only_the_last_window_rows() -> None:
    hist = RollingHistogram(np.array([0.0, 0.5, 1.0]), np.array([0.5, 0.5]), window=10)
    hist.add(np.full(7, 0.1))
    hist.add(np.full(6, 0.9))
    assert list(hist.counts) == [4, 6]
    hist.add(np.full(25, 0.2))
    assert list(hist.counts) == [10, 0]
    assert hist.rows == 10


def test_in_distribution_rows_stay_under_the_moderate_threshold(reference: Reference) -> None:
    rng = np.random.default_rng(RNG_SEED + 1)
    monitor = DriftMonitor.from_reference(reference)
    feed(monitor, training_inputs(rng, 600), training_confidences(rng, 600), batch=3)
    scores = monitor.scores()
    assert set(scores) == {INPUT, CONFIDENCE}
    assert scores[INPUT] < 0.1 and scores[CONFIDENCE] < 0.1
    assert monitor.crossed(0.25) == []


def test_no_score_before_the_minimum_rows(reference: Reference) -> None:
    rng = np.random.default_rng(RNG_SEED + 2)
    monitor = DriftMonitor.from_reference(reference, min_rows=100)
    feed(monitor, training_inputs(rng, 99) + 0.4, training_confidences(rng, 99))
    assert monitor.scores() == {}
    assert monitor.crossed() == []


def test_brightened_inputs_and_lower_confidences_cross_the_major_threshold(
    reference: Reference,
) -> None:
    rng = np.random.default_rng(RNG_SEED + 3)
    monitor = DriftMonitor.from_reference(reference)
    feed(monitor, training_inputs(rng, 300), training_confidences(rng, 300))
    bright = np.clip(training_inputs(rng, 500) + 0.15, 0.0, 1.0)
    unsure = rng.beta(3.0, 2.0, size=500)
    feed(monitor, bright, unsure, batch=5)
    scores = monitor.scores()
    assert scores[INPUT] > 0.25 and scores[CONFIDENCE] > 0.25


def test_a_crossing_is_reported_once_until_the_score_falls_back(reference: Reference) -> None:
    rng = np.random.default_rng(RNG_SEED + 4)
    monitor = DriftMonitor.from_reference(reference, window=200, min_rows=100)
    calm_c = training_confidences(rng, 1000)
    reports: list[list[str]] = []
    for i in range(0, 400, 4):
        monitor.observe(training_inputs(rng, 4) + 0.3, calm_c[i : i + 4])
        reports.append(monitor.crossed(0.25))
    assert [r for r in reports if r] == [[INPUT]]
    assert monitor.raised == {INPUT}

    for i in range(0, 400, 4):
        monitor.observe(training_inputs(rng, 4), calm_c[i : i + 4])
        assert monitor.crossed(0.25) == []
    assert monitor.raised == frozenset()

    for i in range(0, 400, 4):
        monitor.observe(training_inputs(rng, 4) + 0.3, calm_c[i : i + 4])
        reports.append(monitor.crossed(0.25))
    assert [r for r in reports if r] == [[INPUT], [INPUT]]


def test_a_malformed_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="edges"):
        coarsen([0.0, 1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="ascending"):
        coarsen([0.0, 0.5, 0.4], [0.5, 0.5])
