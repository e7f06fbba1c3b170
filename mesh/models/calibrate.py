"""Escalation thresholds chosen from evidence: sweep a tier's threshold on a labelled calibration
split and keep the lowest one whose cascade still meets the quality target.

The cascade rule is the node's: a tier answers a row when its confidence is at least the tier's
threshold and the row is not novel; otherwise the row goes up; the top tier answers everything.
The target is relative: cascade accuracy at least the top model's accuracy minus ``max_drop``.
Lower thresholds answer more locally, so among thresholds that meet the target the lowest is
chosen, with two guards against a small calibration split (the demo's has 269 rows, where half a
point is 1.3 rows):

- the drop is estimated pessimistically, add-one smoothed: (cascade errors - top errors + 1) /
  (rows + 2), so a threshold that costs no extra error on 269 rows passes and one that costs a
  single extra error does not;
- the choice must be stable: every higher threshold on the curve meets the target too, so one
  lucky row at a low threshold does not decide.

Beside accuracy each point can state the swept tier's device energy per answer (``TierEnergy``):
every row reaching the tier runs its model (its CPU time priced on the tier's device profile), and
every row it sends up costs a request and its reply over the device's link. Where escalating
costs the device more than answering (a radio against a small model), a lower threshold saves
energy as well as traffic; where the model costs more, the reverse; the table shows which.

The sweep and the choice are pure (numpy only); :func:`calibrate` and :func:`plot_curves` do the
I/O (ONNX Runtime, manifests, matplotlib).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mesh.scoring.confidence import score as confidence_score
from mesh.typedefs import Floats

DEFAULT_MAX_DROP = 0.005

Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TierOutputs:
    """One tier's view of every row: its confidence, its predicted class, its novelty flag."""

    confidence: Floats
    prediction: Ints
    novel: Bools

    @classmethod
    def of(
        cls,
        probabilities: npt.ArrayLike,
        confidence_kind: str = "max_prob",
        novel: npt.ArrayLike | None = None,
    ) -> TierOutputs:
        """From (N, C) probabilities; ``novel`` defaults to no row novel."""
        p = np.asarray(probabilities)
        flags = np.zeros(len(p), dtype=bool) if novel is None else np.asarray(novel, dtype=bool)
        return cls(
            confidence=np.asarray(confidence_score(p, confidence_kind), dtype=np.float64),
            prediction=p.argmax(axis=1).astype(np.int64),
            novel=flags,
        )


@dataclass(frozen=True)
class CascadeOutcome:
    """What the cascade answered and where: ``tier_index`` 0 is the lowest tier."""

    prediction: Ints
    tier_index: Ints

    def share_at(self, tier: int) -> float:
        """Share of rows answered by tier ``tier``."""
        return float((self.tier_index == tier).mean()) if len(self.tier_index) else 0.0

    def accuracy(self, y: npt.ArrayLike) -> float:
        """Share of rows answered correctly."""
        return float((self.prediction == np.asarray(y)).mean())


def answers_locally(tier: TierOutputs, threshold: float) -> Bools:
    """Rows the tier keeps: confident enough and not novel."""
    keep: Bools = (tier.confidence >= threshold) & ~tier.novel
    return keep


def run_cascade(tiers: Sequence[TierOutputs], thresholds: Sequence[float]) -> CascadeOutcome:
    """Route every row up the tiers; ``thresholds`` has one value per tier but the top one."""
    if not tiers:
        raise ValueError("a cascade needs at least one tier")
    if len(thresholds) != len(tiers) - 1:
        raise ValueError(f"need {len(tiers) - 1} thresholds for {len(tiers)} tiers")
    top = tiers[-1]
    prediction = top.prediction.copy()
    tier_index = np.full(len(prediction), len(tiers) - 1, dtype=np.int64)
    pending = np.ones(len(prediction), dtype=bool)
    for i, (tier, threshold) in enumerate(zip(tiers[:-1], thresholds, strict=True)):
        keep = pending & answers_locally(tier, threshold)
        prediction[keep] = tier.prediction[keep]
        tier_index[keep] = i
        pending &= ~keep
    return CascadeOutcome(prediction=prediction, tier_index=tier_index)


@dataclass(frozen=True)
class CurvePoint:
    """One threshold of a sweep: the share the swept tier answers and the cascade's accuracy."""

    threshold: float
    share_local: float
    accuracy: float
    errors: int
    #: the swept tier's device energy per request reaching the cascade, in joules (None: not
    #: measured).
    joules_per_answer: float | None = None


@dataclass(frozen=True)
class TierEnergy:
    """What a tier's device spends: one row through its model, and one escalation (a request
    and its reply over its link), in joules."""

    device: str
    model_j: float
    escalation_j: float

    def per_answer(self, outcome: CascadeOutcome, tier: int) -> float:
        """Joules per request of the cascade spent by tier ``tier``'s device."""
        rows = len(outcome.tier_index)
        if not rows:
            return 0.0
        reached = int((outcome.tier_index >= tier).sum())
        sent_up = int((outcome.tier_index > tier).sum())
        return (reached * self.model_j + sent_up * self.escalation_j) / rows


@dataclass(frozen=True)
class TierCalibration:
    """The sweep of one tier's threshold and the point chosen on it."""

    tier: str
    chosen: CurvePoint
    curve: list[CurvePoint]
    target_accuracy: float
    #: why the choice is what it is, when the labelled set limits it (None otherwise).
    note: str | None = None


def candidate_thresholds(confidence: npt.ArrayLike) -> Floats:
    """Every distinct confidence (each changes the decision for some row), plus 0 and above-1."""
    values = np.unique(np.asarray(confidence, dtype=np.float64))
    out: Floats = np.unique(np.concatenate([[0.0], values, [np.nextafter(1.0, 2.0)]]))
    return out


def sweep(
    tiers: Sequence[TierOutputs],
    fixed: Sequence[float],
    swept: int,
    y: npt.ArrayLike,
    thresholds: npt.ArrayLike | None = None,
    energy: TierEnergy | None = None,
) -> list[CurvePoint]:
    """Cascade accuracy and the swept tier's local share for each candidate threshold (and its
    device energy per answer, given the tier's ``energy``).

    ``fixed`` holds a threshold for every non-top tier; the one at index ``swept`` is replaced.
    """
    labels = np.asarray(y)
    grid = (
        candidate_thresholds(tiers[swept].confidence)
        if thresholds is None
        else np.asarray(thresholds, dtype=np.float64)
    )
    points = []
    for t in grid:
        values = list(fixed)
        values[swept] = float(t)
        outcome = run_cascade(tiers, values)
        errors = int((outcome.prediction != labels).sum())
        joules = energy.per_answer(outcome, swept) if energy is not None else None
        points.append(
            CurvePoint(float(t), outcome.share_at(swept), outcome.accuracy(labels), errors, joules)
        )
    return points


def pessimistic_drop(errors: int, top_errors: int, rows: int) -> float:
    """Add-one smoothed accuracy drop of a cascade against the top model alone."""
    return (errors - top_errors + 1) / (rows + 2)


def smallest_provable_drop(rows: int) -> float:
    """The lowest drop ``rows`` labelled rows can show: no extra error at all, smoothed."""
    return pessimistic_drop(0, 0, rows)


def rows_needed(max_drop: float) -> int:
    """Labelled rows needed before a cascade with no extra error can show ``max_drop``."""
    return max(0, math.ceil(1.0 / max_drop - 2 - 1e-9))


def small_set_note(rows: int, max_drop: float) -> str | None:
    """What to do when ``rows`` are too few to prove ``max_drop`` (None when they suffice)."""
    floor = smallest_provable_drop(rows)
    if floor <= max_drop + 1e-12:
        return None
    achievable = math.ceil(floor * 1000) / 1000
    return (
        f"{rows} labelled rows cannot show a drop within {max_drop:.2%}: even with no extra "
        f"error the smoothed estimate is {floor:.2%}, so no threshold qualifies and the tier "
        f"answers nothing locally. Label at least {rows_needed(max_drop)} rows, or allow "
        f"--max-drop {achievable:.3f}."
    )


def choose(curve: Sequence[CurvePoint], top_errors: int, rows: int, max_drop: float) -> CurvePoint:
    """The lowest threshold from which every higher threshold keeps the pessimistic drop within
    ``max_drop``; the highest threshold (the tier answers nothing) when none does."""
    ordered = sorted(curve, key=lambda p: p.threshold)
    chosen = ordered[-1]
    for point in reversed(ordered):
        if pessimistic_drop(point.errors, top_errors, rows) > max_drop + 1e-12:
            break
        chosen = point
    return chosen


def calibrate_tiers(
    tiers: Sequence[TierOutputs],
    tier_names: Sequence[str],
    y: npt.ArrayLike,
    max_drop: float = DEFAULT_MAX_DROP,
    energy: Sequence[TierEnergy | None] | None = None,
) -> list[TierCalibration]:
    """Pick each non-top tier's threshold, lowest tier first, against the top tier's accuracy.

    Each tier is swept with the tiers below it at their chosen thresholds and the tiers above it
    (but the top) not answering, then fixed before the next one is swept, so the lowest tier gets
    the most local answers and the whole cascade still meets the target.
    """
    if len(tier_names) != len(tiers):
        raise ValueError("one name per tier")
    labels = np.asarray(y)
    top_errors = int((tiers[-1].prediction != labels).sum())
    target = 1.0 - top_errors / len(labels) - max_drop
    never = float(np.nextafter(1.0, 2.0))
    fixed = [never] * (len(tiers) - 1)
    results = []
    note = small_set_note(len(labels), max_drop)
    for i in range(len(tiers) - 1):
        tier_energy = energy[i] if energy is not None and i < len(energy) else None
        curve = sweep(tiers, fixed, i, labels, energy=tier_energy)
        chosen = choose(curve, top_errors, len(labels), max_drop)
        fixed[i] = chosen.threshold
        results.append(TierCalibration(tier_names[i], chosen, curve, target, note))
    return results


@dataclass(frozen=True)
class CalibrationResult:
    """The thresholds written, per tier, and the curves they were chosen from."""

    top_accuracy: float
    cascade_accuracy: float
    tiers: list[TierCalibration]
    shares: dict[str, float] = field(default_factory=dict)
    #: per non-top tier, what its device spends (None: energy not measured).
    energy: dict[str, TierEnergy] = field(default_factory=dict)

    @property
    def thresholds(self) -> dict[str, float]:
        """Chosen threshold per tier name."""
        return {t.tier: t.chosen.threshold for t in self.tiers}

    def summary(self) -> str:
        """The chosen points and shares, in words."""
        lines = [f"top-tier accuracy {self.top_accuracy:.4f}; cascade {self.cascade_accuracy:.4f}"]
        for t in self.tiers:
            lines.append(
                f"{t.tier}: threshold {t.chosen.threshold:.4f} answers "
                f"{self.shares.get(t.tier, t.chosen.share_local):.1%} locally "
                f"(target accuracy {t.target_accuracy:.4f})"
            )
            if t.note is not None:
                lines.append(f"  {t.note}")
            spent = self.energy.get(t.tier)
            if spent is not None and t.chosen.joules_per_answer is not None:
                lines.append(
                    f"  energy on {spent.device}: {t.chosen.joules_per_answer * 1e3:.4f} mJ an "
                    f"answer at this threshold; sending every request up with no model here "
                    f"{spent.escalation_j * 1e3:.4f} mJ, answering all of them here "
                    f"{spent.model_j * 1e3:.4f} mJ"
                )
        return "\n".join(lines)

    def curve_table(self, tier: str, every: int = 1) -> str:
        """The sweep of ``tier`` as text: threshold, share local, cascade accuracy."""
        calib = next(t for t in self.tiers if t.tier == tier)
        energy = tier in self.energy
        rows = ["threshold  share_local  cascade_accuracy" + ("  mJ_per_answer" if energy else "")]
        for p in calib.curve[::every]:
            row = f"{p.threshold:9.4f}  {p.share_local:11.3f}  {p.accuracy:16.4f}"
            if energy and p.joules_per_answer is not None:
                row += f"  {p.joules_per_answer * 1e3:13.4f}"
            rows.append(row)
        return "\n".join(rows)


def calibrate(
    edge_manifest: Path | str,
    upstream_manifests: Sequence[Path | str],
    calib_x: npt.ArrayLike,
    calib_y: npt.ArrayLike,
    target: float = DEFAULT_MAX_DROP,
    *,
    write: bool = True,
    devices: Mapping[str, str] | None = None,
    energy: bool = True,
) -> CalibrationResult:
    """Calibrate the edge threshold (and the gateway's, given [gateway, cloud]) on a labelled
    split, and write each chosen threshold into its manifest's ``thresholds[tier_hint]``.

    ``target`` is the largest accuracy drop allowed against the top (last) upstream model alone.
    With ``energy``, each tier's device energy per answer is measured and stated beside its
    curve, on the device profile ``devices`` names for its tier (by default a Pi 4 for the edge,
    the x86 gateway for the others).
    """
    from mesh.models.energy import tier_energy
    from mesh.models.manifest import save_manifest
    from mesh.models.session import LoadedModel
    from mesh.scoring.novelty import NoveltyScorer

    if not upstream_manifests:
        raise ValueError("calibration needs at least one upstream model")
    models = [LoadedModel.load(p) for p in [edge_manifest, *upstream_manifests]]
    x = np.asarray(calib_x, dtype=np.float32)
    outputs = []
    for i, model in enumerate(models):
        reference = model.manifest.reference
        novel = None
        if reference is not None and i < len(models) - 1:
            novel = NoveltyScorer.from_reference(reference).is_novel(x)
        outputs.append(TierOutputs.of(model.probabilities(x), model.manifest.confidence, novel))
    names = [m.manifest.tier_hint for m in models]
    spent = (
        [tier_energy(m, up, x, (devices or {}).get(m.manifest.tier_hint))
         for m, up in itertools.pairwise(models)]
        if energy
        else None
    )  # fmt: skip
    tiers = calibrate_tiers(outputs, names, calib_y, target, energy=spent)
    chosen = [t.chosen.threshold for t in tiers]
    outcome = run_cascade(outputs, chosen)
    result = CalibrationResult(
        top_accuracy=float((outputs[-1].prediction == np.asarray(calib_y)).mean()),
        cascade_accuracy=outcome.accuracy(calib_y),
        tiers=tiers,
        shares={name: outcome.share_at(i) for i, name in enumerate(names)},
        energy={name: e for name, e in zip(names, spent or [], strict=False)},
    )
    if write:
        for model, calib in zip(models, tiers, strict=False):
            model.manifest.thresholds[calib.tier] = calib.chosen.threshold
            save_manifest(model.manifest, model.manifest_path)
    return result


def plot_curves(result: CalibrationResult, path: Path | str) -> Path:
    """Plot each tier's sweep (share answered locally against cascade accuracy) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        for calib in result.tiers:
            share = [p.share_local for p in calib.curve]
            accuracy = [p.accuracy for p in calib.curve]
            ax.plot(share, accuracy, label=f"{calib.tier} threshold sweep", linewidth=1.4)
            ax.scatter(
                [calib.chosen.share_local],
                [calib.chosen.accuracy],
                zorder=3,
                label=f"{calib.tier} chosen: {calib.chosen.threshold:.3f}",
            )
        if result.tiers:
            ax.axhline(
                result.tiers[0].target_accuracy,
                color="grey",
                linestyle="--",
                label="quality target",
            )
        ax.set_xlabel("share answered locally by the swept tier")
        ax.set_ylabel("cascade accuracy (calibration split)")
        ax.set_title("Escalation threshold calibration")
        ax.legend(loc="lower left", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path
