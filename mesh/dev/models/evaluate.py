"""The cascade's figures on the held-out test split: issue 4's evidence.

:func:`evaluate_cascade` routes the test split through edge (int8), gateway and cloud with the
thresholds and novelty references written in the manifests, exactly as the nodes decide, and
reports what stays at the edge, what it costs in accuracy and in uplink bytes, and how many
out-of-distribution inputs (noise, blank, inverted digits) the edge escalates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mesh.dev.models.demo import DemoArtifacts
from mesh.models.calibrate import TierOutputs, answers_locally, run_cascade
from mesh.models.manifest import artifact_path
from mesh.models.session import LoadedModel
from mesh.scoring.novelty import NoveltyScorer

Floats32 = npt.NDArray[np.float32]


def ood_examples(x_in: npt.ArrayLike, seed: int = 0, per_kind: int = 200) -> dict[str, Floats32]:
    """Inputs that are not digits, in the digits' value range [0, 1], by kind.

    ``noise``: uniform pixels; ``salt_pepper``: each pixel 0 or 1; ``blank``: constant images
    (black, white and greys) with a little sensor noise; ``inverted``: 1 - x of real digits.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x_in, dtype=np.float32)
    n_features = x.shape[1]
    levels = np.linspace(0.0, 1.0, per_kind, dtype=np.float32)[:, None]
    blank = np.clip(levels + rng.normal(0.0, 0.02, (per_kind, n_features)), 0.0, 1.0)
    return {
        "noise": rng.random((per_kind, n_features), dtype=np.float32),
        "salt_pepper": (rng.random((per_kind, n_features)) < 0.5).astype(np.float32),
        "blank": blank.astype(np.float32),
        "inverted": (1.0 - x[:per_kind]).astype(np.float32),
    }


def _outputs(model: LoadedModel, x: Floats32, novelty: bool) -> TierOutputs:
    reference = model.manifest.reference
    flags = None
    if novelty and reference is not None:
        flags = NoveltyScorer.from_reference(reference).is_novel(x)
    return TierOutputs.of(model.probabilities(x), model.manifest.confidence, flags)


def evaluate_cascade(artifacts: DemoArtifacts, edge_variant: str = "edge-int8") -> dict[str, Any]:
    """Figures of the three-tier cascade on the test split (see the module docstring)."""
    data = np.load(artifacts.test)
    x = np.asarray(data["x"], dtype=np.float32)
    y = np.asarray(data["y"], dtype=np.int64)
    edge = LoadedModel.load(artifacts.manifests[edge_variant])
    float_edge = LoadedModel.load(artifacts.edge)
    gateway = LoadedModel.load(artifacts.gateway)
    cloud = LoadedModel.load(artifacts.cloud)
    thresholds = [
        edge.manifest.threshold_for("edge"),
        gateway.manifest.threshold_for("gateway"),
    ]
    tiers = [_outputs(edge, x, True), _outputs(gateway, x, True), _outputs(cloud, x, False)]
    outcome = run_cascade(tiers, thresholds)
    row_bytes = x.shape[1] * x.dtype.itemsize
    escalated = int((outcome.tier_index > 0).sum())
    cloud_only_accuracy = float((tiers[2].prediction == y).mean())

    ood = ood_examples(x)
    ood_escalated = {
        kind: float((~answers_locally(_outputs(edge, rows, True), thresholds[0])).mean())
        for kind, rows in ood.items()
    }
    ood_rows = sum(len(rows) for rows in ood.values())
    ood_share = sum(ood_escalated[k] * len(r) for k, r in ood.items()) / ood_rows

    float_size = artifact_path(float_edge.manifest, artifacts.edge).stat().st_size
    edge_size = Path(edge.artifact).stat().st_size
    float_edge_accuracy = float((float_edge.probabilities(x).argmax(axis=1) == y).mean())
    edge_accuracy = float((tiers[0].prediction == y).mean())
    return {
        "rows": len(y),
        "thresholds": {"edge": thresholds[0], "gateway": thresholds[1]},
        "accuracy": {
            "edge": edge_accuracy,
            "edge_float": float_edge_accuracy,
            "gateway": float((tiers[1].prediction == y).mean()),
            "cloud": cloud_only_accuracy,
        },
        "share_at_edge": outcome.share_at(0),
        "share_at_gateway": outcome.share_at(1),
        "share_at_cloud": outcome.share_at(2),
        "cascade_accuracy": outcome.accuracy(y),
        "cloud_only_accuracy": cloud_only_accuracy,
        "upstream_bytes": escalated * row_bytes,
        "cloud_only_bytes": len(y) * row_bytes,
        "upstream_bytes_ratio": escalated / len(y),
        "int8": {
            "float_bytes": float_size,
            "int8_bytes": edge_size,
            "size_ratio": edge_size / float_size,
            "accuracy_drop": float_edge_accuracy - edge_accuracy,
        },
        "ood_escalated_share": ood_share,
        "ood_escalated_by_kind": ood_escalated,
        "test_novel_share": float(tiers[0].novel.mean()),
    }


def edge_figures(manifest: Path, x: npt.ArrayLike, y: npt.ArrayLike) -> dict[str, float]:
    """What an edge version does on labelled rows, as a node decides: the share it answers
    itself (confident at its threshold, not novel), the accuracy of its classes on every row,
    and of the answers it keeps. Blocking."""
    model = LoadedModel.load(manifest)
    rows = np.asarray(x, dtype=np.float32)
    labels = np.asarray(y, dtype=np.int64)
    outputs = _outputs(model, rows, novelty=True)
    threshold = model.manifest.threshold_for(model.manifest.tier_hint)
    kept = answers_locally(outputs, threshold)
    right = outputs.prediction == labels
    return {
        "share": round(float(kept.mean()), 4),
        "accuracy": round(float(right.mean()), 4),
        "answered_accuracy": round(float(right[kept].mean()), 4) if kept.any() else 0.0,
        "threshold": round(threshold, 4),
    }
