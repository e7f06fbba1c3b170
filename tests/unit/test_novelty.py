"""The novelty score on digits and on inputs that are not digits."""

from __future__ import annotations

import numpy as np
import pytest

from mesh.dev.models.demo import load_digits_split
from mesh.dev.models.evaluate import ood_examples
from mesh.models.manifest import NoveltyReference
from mesh.scoring.novelty import NoveltyScorer


@pytest.fixture(scope="module")
def fitted() -> tuple[NoveltyScorer, np.ndarray, np.ndarray]:
    s = load_digits_split(0)
    return NoveltyScorer.fit(s.x_train), s.x_train, s.x_test


def test_at_most_two_percent_of_test_digits_are_novel(
    fitted: tuple[NoveltyScorer, np.ndarray, np.ndarray],
) -> None:
    scorer, _, x_test = fitted
    share = float(scorer.is_novel(x_test).mean())
    print(f"test digits flagged: {share:.2%}")
    assert share <= 0.02


def test_threshold_is_the_training_quantile(
    fitted: tuple[NoveltyScorer, np.ndarray, np.ndarray],
) -> None:
    scorer, x_train, _ = fitted
    assert float(scorer.is_novel(x_train).mean()) == pytest.approx(0.005, abs=0.003)


@pytest.mark.parametrize("kind", ["noise", "salt_pepper", "blank", "inverted"])
def test_non_digits_are_novel(
    fitted: tuple[NoveltyScorer, np.ndarray, np.ndarray], kind: str
) -> None:
    scorer, _, x_test = fitted
    rows = ood_examples(x_test)[kind]
    share = float(scorer.is_novel(rows).mean())
    print(f"{kind} flagged: {share:.2%}")
    assert share >= 0.95


def test_all_zero_and_all_one_images_are_novel(
    fitted: tuple[NoveltyScorer, np.ndarray, np.ndarray],
) -> None:
    scorer, _, _ = fitted
    assert scorer.is_novel(np.zeros((1, 64))).all()
    assert scorer.is_novel(np.ones((1, 64))).all()


def test_reference_round_trip_gives_the_same_scores(
    fitted: tuple[NoveltyScorer, np.ndarray, np.ndarray],
) -> None:
    scorer, _, x_test = fitted
    reference = NoveltyReference.model_validate(scorer.to_reference())
    again = NoveltyScorer.from_reference(reference)
    np.testing.assert_array_equal(again.score(x_test), scorer.score(x_test))
    assert again.threshold == scorer.threshold


def test_a_single_row_scores_like_a_batch_of_one(
    fitted: tuple[NoveltyScorer, np.ndarray, np.ndarray],
) -> None:
    scorer, _, x_test = fitted
    assert scorer.score(x_test[0]).shape == (1,)
    assert scorer.score(x_test[0])[0] == pytest.approx(scorer.score(x_test[:1])[0])


def test_wrong_feature_count_is_refused(
    fitted: tuple[NoveltyScorer, np.ndarray, np.ndarray],
) -> None:
    scorer, _, _ = fitted
    with pytest.raises(ValueError, match=r"\(N, 64\)"):
        scorer.score(np.zeros((2, 10)))


def test_fit_needs_rows_and_a_proper_quantile() -> None:
    with pytest.raises(ValueError):
        NoveltyScorer.fit(np.zeros((1, 4)))
    with pytest.raises(ValueError):
        NoveltyScorer.fit(np.zeros((5, 4)), quantile=1.0)


def test_the_quadratic_form_equals_t2_plus_spe_computed_the_long_way() -> None:
    rng = np.random.default_rng(3)
    scorer = NoveltyScorer.fit(rng.random((300, 64)))
    rows = np.concatenate([rng.random((20, 64)), rng.random((20, 64)) * 3, np.zeros((1, 64))])
    t2, spe = scorer.explain(rows)
    assert np.allclose(scorer.score(rows), t2 + spe, rtol=1e-9, atol=1e-9)
    assert (t2 >= 0).all() and (spe >= 0).all()
