"""Confidence measures over class probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from mesh.scoring.confidence import ConfidenceKind, labels_of, score

PROBS = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])


def test_max_prob_is_the_top_probability() -> None:
    assert np.allclose(score(PROBS, "max_prob"), [0.7, 1 / 3, 1.0])


def test_margin_is_top_minus_second() -> None:
    assert np.allclose(score(PROBS, ConfidenceKind.MARGIN), [0.5, 0.0, 1.0])


def test_entropy_confidence_is_one_when_certain_and_zero_when_uniform() -> None:
    values = score(PROBS, ConfidenceKind.ENTROPY)
    assert values[2] == pytest.approx(1.0)
    assert values[1] == pytest.approx(0.0, abs=1e-9)
    assert 0 < values[0] < 1


def test_a_single_row_is_scored_as_one_row() -> None:
    assert score(np.array([0.1, 0.9]), "max_prob").shape == (1,)
    assert labels_of(np.array([0.1, 0.9])) == [1]


def test_labels_are_the_argmax_of_each_row() -> None:
    assert labels_of(PROBS) == [0, 0, 0]


def test_a_single_class_cannot_be_scored() -> None:
    with pytest.raises(ValueError, match="C >= 2"):
        score(np.ones((2, 1)), "max_prob")


def test_an_unknown_measure_is_refused() -> None:
    with pytest.raises(ValueError):
        score(PROBS, "vibes")
