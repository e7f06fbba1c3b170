"""Calibration on a labelled set too small to prove the target says so, and what would do."""

from __future__ import annotations

import numpy as np
import pytest

from mesh.models.calibrate import (
    TierOutputs,
    calibrate_tiers,
    rows_needed,
    small_set_note,
    smallest_provable_drop,
)


def _perfect_cascade(rows: int) -> tuple[list[TierOutputs], np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, rows)
    probabilities = np.full((rows, 3), 0.05)
    probabilities[np.arange(rows), y] = 0.9
    tier = TierOutputs.of(probabilities)
    return [tier, tier], y


def test_the_rows_needed_and_the_provable_drop_follow_the_smoothing() -> None:
    assert rows_needed(0.005) == 198
    assert smallest_provable_drop(198) == pytest.approx(0.005)
    assert small_set_note(198, 0.005) is None
    assert small_set_note(2000, 0.005) is None


def test_a_small_set_explains_why_the_tier_answers_nothing_and_what_to_do() -> None:
    tiers, y = _perfect_cascade(105)
    (edge,) = calibrate_tiers(tiers, ["edge", "cloud"], y)
    assert edge.chosen.share_local == 0.0
    assert edge.note is not None
    assert "105 labelled rows" in edge.note
    assert "at least 198 rows" in edge.note
    assert "--max-drop 0.010" in edge.note


def test_a_large_enough_set_chooses_a_threshold_without_a_note() -> None:
    tiers, y = _perfect_cascade(400)
    (edge,) = calibrate_tiers(tiers, ["edge", "cloud"], y)
    assert edge.note is None
    assert edge.chosen.share_local == 1.0
