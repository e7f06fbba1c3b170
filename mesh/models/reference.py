"""Reference statistics a manifest carries: what the training split looked like, for drift and
novelty (``mesh models import`` and the demo's builds write them)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from mesh.models.manifest import Histogram, NoveltyReference, ReferenceStats
from mesh.scoring.novelty import NoveltyScorer

Floats32 = npt.NDArray[np.float32]


def histogram(values: npt.ArrayLike, edges: npt.ArrayLike) -> Histogram:
    """A normalised histogram; values outside the edges are clipped into the end bins."""
    e = np.asarray(edges, dtype=np.float64)
    v = np.clip(np.asarray(values, dtype=np.float64), e[0], e[-1])
    counts, _ = np.histogram(v, bins=e)
    total = max(int(counts.sum()), 1)
    return Histogram(
        edges=[round(float(b), 6) for b in e],
        proportions=[float(c) / total for c in counts],
    )


def reference_stats(
    x_train: Floats32, train_confidence: npt.ArrayLike, novelty: NoveltyScorer
) -> ReferenceStats:
    """Training-split statistics stored in a manifest."""
    x = np.asarray(x_train, dtype=np.float64)
    return ReferenceStats(
        feature_mean=[float(v) for v in x.mean(axis=0)],
        feature_std=[float(v) for v in x.std(axis=0)],
        confidence_histogram=histogram(train_confidence, np.linspace(0.0, 1.0, 21)),
        intensity_histogram=histogram(x.mean(axis=1), np.linspace(0.0, 1.0, 41)),
        novelty=NoveltyReference.model_validate(novelty.to_reference()),
        rows=int(x.shape[0]),
    )
