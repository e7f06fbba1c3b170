"""Confidence scores of a classifier's probabilities: pure numpy, higher means surer.

Three measures, one picked per model: ``max_prob`` (the top probability), ``margin`` (top minus
second) and ``entropy`` (one minus the normalised entropy, so 1 is certain and 0 is uniform).
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import numpy.typing as npt

from mesh.typedefs import AnyFloats


class ConfidenceKind(StrEnum):
    MAX_PROB = "max_prob"
    MARGIN = "margin"
    ENTROPY = "entropy"


def score(probabilities: npt.ArrayLike, kind: ConfidenceKind | str) -> AnyFloats:
    """Per-row confidence of an (N, C) probability array."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 1:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, C) with C >= 2, got shape {p.shape}")
    kind = ConfidenceKind(kind)
    out: AnyFloats
    if kind is ConfidenceKind.MAX_PROB:
        out = p.max(axis=1)
    elif kind is ConfidenceKind.MARGIN:
        top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
        out = top2[:, 1] - top2[:, 0]
    else:
        clipped = np.clip(p, 1e-12, 1.0)
        entropy = -(clipped * np.log(clipped)).sum(axis=1)
        out = 1.0 - entropy / np.log(p.shape[1])
    return out


def labels_of(probabilities: npt.ArrayLike) -> list[int]:
    p = np.asarray(probabilities)
    if p.ndim == 1:
        p = p[None, :]
    return [int(i) for i in p.argmax(axis=1)]
