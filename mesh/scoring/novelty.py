"""Novelty: how unlike the training inputs a request is. Pure numpy, no I/O.

The score is Hotelling's T^2 on the leading principal components of the training inputs, divided
by their count, plus the mean squared z-score of the reconstruction residual (the part of the
input those components cannot express), each feature's residual scaled by its training standard
deviation floored at ``RESIDUAL_STD_FLOOR``. Both terms average about 1 on training data. Noise
lands far off the principal subspace (large residual); inverted images land far along it (large
T^2); blank and flat grey images light up the border pixels that are almost always 0 in digits,
which is why the residual is scaled per feature rather than summed. The threshold is a high
quantile of the training scores, fitted at build time and stored in the manifest, so a few
in-distribution rows are flagged by design.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from mesh.typedefs import Floats

DEFAULT_COMPONENTS = 10
DEFAULT_QUANTILE = 0.995
RESIDUAL_STD_FLOOR = 0.1
_MIN_VARIANCE = 1e-8


class NoveltyParams(Protocol):
    """The fields of a stored novelty reference (``mesh.models.manifest.NoveltyReference``)."""

    @property
    def mean(self) -> list[float]: ...
    @property
    def components(self) -> list[list[float]]: ...
    @property
    def variances(self) -> list[float]: ...
    @property
    def residual_std(self) -> list[float]: ...
    @property
    def threshold(self) -> float: ...
    @property
    def quantile(self) -> float: ...


class HasNovelty(Protocol):
    @property
    def novelty(self) -> NoveltyParams: ...


@dataclass(frozen=True)
class NoveltyScorer:
    """Scores inputs against a fitted training distribution; higher is more novel."""

    mean: Floats
    components: Floats
    variances: Floats
    residual_std: Floats
    threshold: float
    quantile: float = DEFAULT_QUANTILE

    @classmethod
    def fit(
        cls,
        x: npt.ArrayLike,
        n_components: int = DEFAULT_COMPONENTS,
        quantile: float = DEFAULT_QUANTILE,
    ) -> NoveltyScorer:
        """Fit on training rows (N, F); the threshold is the ``quantile`` of their scores."""
        rows = np.asarray(x, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] < 2:
            raise ValueError(f"need at least two training rows (N, F), got shape {rows.shape}")
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        k = min(n_components, rows.shape[1], rows.shape[0] - 1)
        mean = rows.mean(axis=0)
        centred = rows - mean
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        components = _fix_signs(vt[:k])
        variances = np.maximum(singular[:k] ** 2 / (rows.shape[0] - 1), _MIN_VARIANCE)
        coords = centred @ components.T
        residual = centred - coords @ components
        residual_std = np.maximum(residual.std(axis=0), RESIDUAL_STD_FLOOR)
        unthresholded = cls(mean, components, variances, residual_std, np.inf, quantile)
        threshold = float(np.quantile(unthresholded.score(rows), quantile))
        return cls(mean, components, variances, residual_std, threshold, quantile)

    @classmethod
    def from_reference(cls, reference: HasNovelty | NoveltyParams) -> NoveltyScorer:
        """Rebuild from a manifest's ``reference`` (or its ``reference.novelty``)."""
        params: NoveltyParams = reference.novelty if hasattr(reference, "novelty") else reference
        return cls(
            mean=np.asarray(params.mean, dtype=np.float64),
            components=np.asarray(params.components, dtype=np.float64),
            variances=np.asarray(params.variances, dtype=np.float64),
            residual_std=np.asarray(params.residual_std, dtype=np.float64),
            threshold=float(params.threshold),
            quantile=float(params.quantile),
        )

    def to_reference(self) -> dict[str, Any]:
        """The fields of a manifest's ``reference.novelty``."""
        return {
            "method": "pca_t2_spe",
            "mean": [float(v) for v in self.mean],
            "components": [[float(v) for v in row] for row in self.components],
            "variances": [float(v) for v in self.variances],
            "residual_std": [float(v) for v in self.residual_std],
            "threshold": self.threshold,
            "quantile": self.quantile,
        }

    def score(self, x: npt.ArrayLike) -> Floats:
        """Per-row novelty of (N, F) inputs (a single (F,) row is treated as N=1)."""
        rows = np.asarray(x, dtype=np.float64)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[1] != self.mean.shape[0]:
            raise ValueError(f"inputs must be (N, {self.mean.shape[0]}), got shape {rows.shape}")
        centred = rows - self.mean
        out: Floats = ((centred @ self.quadratic_form) * centred).sum(axis=1)
        return out

    def explain(self, x: npt.ArrayLike) -> tuple[Floats, Floats]:
        """The two parts of the score, (T², SPE): distance inside the principal subspace and
        normalised residual outside it. ``score`` is their sum."""
        rows = np.atleast_2d(np.asarray(x, dtype=np.float64))
        centred = rows - self.mean
        coords = centred @ self.components.T
        t2: Floats = (coords**2 / self.variances).sum(axis=1) / self.components.shape[0]
        residual = centred - coords @ self.components
        spe: Floats = ((residual / self.residual_std) ** 2).mean(axis=1)
        return t2, spe

    @functools.cached_property
    def quadratic_form(self) -> Floats:
        """M with score = (x - mean) M (x - mean)' per row (also built into fused graphs)."""
        # T² + SPE is a quadratic form in the centred input, c' M c, with
        # M = C' diag(1/(k var)) C + P' diag(1/(F std²)) P and P = I - C'C the residual
        # projector: one matrix product a request instead of a dozen small numpy calls.
        c = self.components
        k, features = c.shape
        projector = np.eye(features) - c.T @ c
        inside = (c.T / (self.variances * k)) @ c
        outside = (projector.T / (self.residual_std**2 * features)) @ projector
        form: Floats = inside + outside
        return form

    def is_novel(self, x: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Per-row flag: the score is above the fitted threshold."""
        flags: npt.NDArray[np.bool_] = self.score(x) > self.threshold
        return flags


def _fix_signs(components: Floats) -> Floats:
    """Make each axis's largest-magnitude entry positive, so fits are reproducible across BLAS."""
    idx = np.abs(components).argmax(axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), idx])
    signs[signs == 0] = 1.0
    fixed: Floats = components * signs[:, None]
    return fixed
