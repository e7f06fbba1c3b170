"""Drift: how far recent inputs and confidences have moved from the training split. Pure numpy.

The score is the population stability index (PSI) of a sliding window of the last ``window`` rows
against the manifest's reference histograms: ``sum((a - e) * ln(a / e))`` over bins, ``a`` the
window's share of a bin and ``e`` the reference's. Two signals: ``input`` (each row's mean input
value, the manifest's ``intensity_histogram``) and ``confidence`` (each row's confidence, the
``confidence_histogram``). Usual reading: under 0.1 stable, 0.1 to 0.25 moderate, over 0.25 major.

PSI over a finite window is biased upwards by about ``(bins - 1) / rows``, so the reference bins
are merged until each holds at least ``min_share`` of the training rows (10 bins or fewer): with
500 rows the in-distribution score stays near 0.02 instead of the 0.08 of 40 raw bins. Nothing is
reported before ``min_rows`` rows.

``observe`` costs O(rows) (a ``searchsorted`` and a ring buffer of bin indices); ``scores`` costs
O(bins). ``crossed`` has hysteresis: a signal is reported once when it rises over the threshold
and again only after it has fallen under ``rearm`` times the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from mesh.typedefs import Floats

INPUT = "input"
CONFIDENCE = "confidence"
SIGNALS = (INPUT, CONFIDENCE)

PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
DEFAULT_THRESHOLD = PSI_MAJOR
DEFAULT_WINDOW = 500
DEFAULT_MIN_ROWS = 100
DEFAULT_MIN_SHARE = 0.01
DEFAULT_REARM = 0.8
_EPSILON = 1e-4


class HistogramParams(Protocol):
    """A stored histogram (``mesh.models.manifest.Histogram``)."""

    @property
    def edges(self) -> list[float]: ...
    @property
    def proportions(self) -> list[float]: ...


class DriftReference(Protocol):
    """The fields of ``mesh.models.manifest.ReferenceStats`` drift needs."""

    @property
    def intensity_histogram(self) -> HistogramParams: ...
    @property
    def confidence_histogram(self) -> HistogramParams: ...


def population_stability_index(actual: npt.ArrayLike, expected: npt.ArrayLike) -> float:
    """PSI of two distributions over the same bins (shares or counts; both are normalised)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    a = np.maximum(a / max(float(a.sum()), 1e-300), _EPSILON)
    e = np.maximum(e / max(float(e.sum()), 1e-300), _EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def coarsen(
    edges: Sequence[float], proportions: Sequence[float], min_share: float = DEFAULT_MIN_SHARE
) -> tuple[Floats, Floats]:
    """Merge adjacent bins until each holds at least ``min_share`` (a short tail joins the last)."""
    e = np.asarray(edges, dtype=np.float64)
    p = np.asarray(proportions, dtype=np.float64)
    if e.ndim != 1 or p.ndim != 1 or len(e) != len(p) + 1 or len(p) == 0:
        raise ValueError(
            f"a histogram needs len(edges) == len(proportions) + 1 > 1, got "
            f"{len(e)} edges and {len(p)} proportions"
        )
    if np.any(np.diff(e) <= 0):
        raise ValueError("histogram edges must be strictly ascending")
    total = float(p.sum())
    if total <= 0:
        raise ValueError("a histogram needs some mass")
    p = p / total
    new_edges = [float(e[0])]
    new_props: list[float] = []
    acc = 0.0
    for i, share in enumerate(p):
        acc += float(share)
        if acc >= min_share:
            new_edges.append(float(e[i + 1]))
            new_props.append(acc)
            acc = 0.0
    if acc > 0 or not new_props:
        if new_props:
            new_props[-1] += acc
            new_edges[-1] = float(e[-1])
        else:
            new_edges.append(float(e[-1]))
            new_props.append(acc)
    return np.asarray(new_edges), np.asarray(new_props)


@dataclass
class RollingHistogram:
    """Counts of the last ``window`` values in fixed bins, against a reference distribution."""

    edges: Floats
    expected: Floats
    window: int = DEFAULT_WINDOW
    counts: npt.NDArray[np.int64] = field(init=False)
    _ring: npt.NDArray[np.int64] = field(init=False)
    _next: int = field(default=0, init=False)
    rows: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be at least 1 row, got {self.window}")
        self.counts = np.zeros(len(self.expected), dtype=np.int64)
        self._ring = np.zeros(self.window, dtype=np.int64)

    def add(self, values: npt.ArrayLike) -> None:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size > self.window:
            v = v[-self.window :]
        n = int(v.size)
        if n == 0:
            return
        # Interior edges only: values outside the range are counted in the end bins.
        bins = np.searchsorted(self.edges[1:-1], v, side="right").astype(np.int64)
        positions = (self._next + np.arange(n)) % self.window
        if self.rows >= self.window:
            np.subtract.at(self.counts, self._ring[positions], 1)
        elif self.rows + n > self.window:
            evicted = positions[self.window - self.rows :]
            np.subtract.at(self.counts, self._ring[evicted], 1)
        self._ring[positions] = bins
        np.add.at(self.counts, bins, 1)
        self._next = (self._next + n) % self.window
        self.rows = min(self.rows + n, self.window)

    def psi(self) -> float:
        return population_stability_index(self.counts, self.expected)


class DriftMonitor:
    """Rolling PSI of a model's inputs and confidences against its training reference."""

    def __init__(
        self,
        histograms: dict[str, RollingHistogram],
        *,
        min_rows: int = DEFAULT_MIN_ROWS,
        rearm: float = DEFAULT_REARM,
    ) -> None:
        self.histograms = histograms
        self.min_rows = min_rows
        self.rearm = rearm
        self._raised: set[str] = set()
        self._pending: list[tuple[npt.ArrayLike, npt.ArrayLike]] = []

    @classmethod
    def from_reference(
        cls,
        reference: DriftReference,
        *,
        window: int = DEFAULT_WINDOW,
        min_rows: int = DEFAULT_MIN_ROWS,
        min_share: float = DEFAULT_MIN_SHARE,
        rearm: float = DEFAULT_REARM,
    ) -> DriftMonitor:
        if not 1 <= min_rows <= window:
            raise ValueError(f"min_rows must be in [1, window={window}], got {min_rows}")
        histograms: dict[str, RollingHistogram] = {}
        for signal, hist in (
            (INPUT, reference.intensity_histogram),
            (CONFIDENCE, reference.confidence_histogram),
        ):
            edges, expected = coarsen(hist.edges, hist.proportions, min_share)
            histograms[signal] = RollingHistogram(edges, expected, window)
        return cls(histograms, min_rows=min_rows, rearm=rearm)

    #: requests kept before they are folded into the histograms in one vectorised pass.
    fold_every = 256

    def observe(self, x_rows: npt.ArrayLike, confidences: npt.ArrayLike) -> None:
        """Add a request's input rows (one row per sample) and their per-row confidences.

        Cheap on the request path: the rows are kept and folded in later, all at once, when
        the scores are read or enough requests are waiting."""
        # Kept as given: shaping and converting them is the fold's, once for many requests.
        self._pending.append((x_rows, confidences))
        if len(self._pending) >= self.fold_every:
            self.fold()

    def fold(self) -> None:
        """Fold the kept rows into the rolling histograms."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        xs: list[npt.NDArray[Any]] = []
        confidences: list[npt.NDArray[np.float64]] = []
        for x_rows, scores in pending:
            x = np.asarray(x_rows)
            xs.append(x.reshape(x.shape[0] if x.ndim > 1 else 1, -1))
            confidences.append(np.asarray(scores, dtype=np.float64).reshape(-1))
        x_all = xs[0] if len(xs) == 1 else np.concatenate(xs)
        self.histograms[INPUT].add(x_all.mean(axis=1, dtype=np.float64))
        self.histograms[CONFIDENCE].add(
            confidences[0] if len(confidences) == 1 else np.concatenate(confidences)
        )

    def scores(self) -> dict[str, float]:
        """PSI per signal; a signal is absent until it has ``min_rows`` rows."""
        self.fold()
        return {
            signal: hist.psi()
            for signal, hist in self.histograms.items()
            if hist.rows >= self.min_rows
        }

    def crossed(self, threshold: float = DEFAULT_THRESHOLD) -> list[str]:
        """Signals that rose over ``threshold`` since the last call (each crossing once)."""
        risen: list[str] = []
        for signal, psi in self.scores().items():
            if signal in self._raised:
                if psi < threshold * self.rearm:
                    self._raised.discard(signal)
            elif psi > threshold:
                self._raised.add(signal)
                risen.append(signal)
        return risen

    @property
    def raised(self) -> frozenset[str]:
        """Signals over the threshold now (crossed and not yet fallen back)."""
        return frozenset(self._raised)
