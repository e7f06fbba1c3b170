"""A version's threshold recalibrated on its labelled hard cases plus its reference data, written
as a new signed version (``mesh models recalibrate``): the same bytes, a manifest whose
threshold for its tier is chosen again (``mesh.models.calibrate``, against the top tier's
version), under the model's next version name, signed and pushed. A version never saw the
labelled cases (they were answered by it, not trained on), so they calibrate it as they are."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from nats.js import JetStreamContext

from mesh.errors import InvalidArgumentError
from mesh.fleet import registry
from mesh.fleet.release import source_and_version, store_resigned
from mesh.fleet.signing import SigningKey
from mesh.models.bump import bumped
from mesh.models.calibrate import DEFAULT_MAX_DROP, CalibrationResult, calibrate


@dataclass(frozen=True)
class Recalibrated:
    model: str
    source: str
    version: str
    threshold_before: float | None
    threshold: float
    rows: int
    result: CalibrationResult


def _labelled(path: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    try:
        data = np.load(path)
        x = np.asarray(data["x"], dtype=np.float32)
        y = np.asarray(data["y"], dtype=np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidArgumentError(f"{path}: need an .npz with x and y: {exc}") from None
    if len(x) != len(y):
        raise InvalidArgumentError(f"{path}: x has {len(x)} rows, y {len(y)}")
    return x.reshape(len(x), -1), y


def recalibrated_manifest(
    artifact: registry.Artifact,
    labels: Path,
    reference: Path | None,
    upstream: Path,
    version: str,
    max_drop: float = DEFAULT_MAX_DROP,
) -> tuple[dict[str, Any], CalibrationResult, int]:
    """The manifest of ``artifact`` as ``version`` with its threshold chosen on ``labels``
    plus ``reference`` (each an ``.npz`` with x, y). Blocking."""
    x, y = _labelled(labels)
    if reference is not None:
        rx, ry = _labelled(reference)
        x, y = np.concatenate([rx, x]), np.concatenate([ry, y])
    if not len(y):
        raise InvalidArgumentError("no labelled rows to recalibrate on")
    manifest = dict(artifact.manifest)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        onnx = folder / "model.onnx"
        onnx.write_bytes(artifact.onnx)
        path = folder / "manifest.json"
        path.write_text(json.dumps({**manifest, "artifact": onnx.name}), encoding="utf-8")
        result = calibrate(path, [upstream], x, y, max_drop, write=False)
    tier = str(manifest.get("tier_hint") or "")
    thresholds = dict(manifest.get("thresholds") or {})
    thresholds[tier] = result.tiers[0].chosen.threshold
    return {**bumped(manifest, version), "thresholds": thresholds}, result, len(y)


async def recalibrate_version(
    js: JetStreamContext,
    model: str,
    source: str,
    key: SigningKey,
    *,
    labels: Path,
    reference: Path | None,
    upstream: Path,
    version: str | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
    trusted: Mapping[str, Any] | None = None,
) -> Recalibrated:
    """Recalibrate ``model@source`` and push it as ``version`` (the model's next by default)."""
    artifact, new = await source_and_version(js, model, source, version)
    manifest, result, rows = await asyncio.to_thread(
        recalibrated_manifest, artifact, labels, reference, upstream, new, max_drop
    )
    await store_resigned(js, artifact, manifest, key, trusted)
    tier = str(manifest.get("tier_hint") or "")
    before = (artifact.manifest.get("thresholds") or {}).get(tier)
    return Recalibrated(
        model, source, new, None if before is None else float(before),
        result.tiers[0].chosen.threshold, rows, result,
    )  # fmt: skip


__all__ = ["Recalibrated", "recalibrate_version", "recalibrated_manifest"]
