"""What a training run produced, made a version the fleet can take: imported as ``mesh models
import`` does (the graph read, loaded and scored as a node loads it), named and budgeted as the
version it replaces, its escalation threshold recalibrated, put through the evidence gate and
signed. Blocking (ONNX Runtime, files): the job runs it in a worker thread.

The threshold is calibrated as ``mesh models calibrate`` does, against the top tier's version on
labelled rows: the reference data (the tier's calibration split) plus the labelled hard cases
the trainer did not see (``export.split``); a model is never calibrated on rows it trained on,
where it is surest of itself. The evidence gate is the one ``mesh models push`` runs: latency
and memory against the budget of the version replaced (the same devices run it), accuracy on the
reference data against the accuracy that version had to reach.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mesh.errors import InvalidArgumentError, MeshError
from mesh.fleet import registry
from mesh.fleet.release import signed_artifact
from mesh.fleet.signing import SigningKey, verify
from mesh.models.calibrate import calibrate
from mesh.models.manifest import ModelManifest, load_manifest

#: the gate's single-row runs (``mesh models push`` runs 200).
GATE_RUNS = 200


@dataclass(frozen=True)
class CandidateSpec:
    """The version to make and what it is measured against."""

    model: str
    version: str
    #: the manifest of the version it replaces, as the registry holds it.
    base: dict[str, Any]
    #: labelled rows of the tier's serving distribution (``x``, ``y``), never trained on.
    reference: Path
    #: the manifest of the top tier's version (the answers the threshold keeps up with).
    upstream: Path
    max_drop: float = 0.005


@dataclass(frozen=True)
class Candidate:
    manifest: Path
    artifact: registry.Artifact
    threshold: float
    #: rows the threshold was calibrated on (reference plus held-back labels).
    calibration_rows: int
    #: accuracy on the reference data, and the bar it had to reach.
    accuracy: float
    min_accuracy: float
    notes: list[str] = field(default_factory=list)


def make_candidate(
    onnx_path: Path,
    spec: CandidateSpec,
    held: tuple[npt.NDArray[Any], npt.NDArray[np.int64]] | None,
    work: Path,
    key: SigningKey,
    trusted: dict[str, Any],
) -> Candidate:
    """The signed version; a typed error naming why when the model does not load, does not
    fit what the version it replaces takes and gives, or fails its evidence gate."""
    base = _base(spec)
    manifest_path, notes = _imported(onnx_path, spec, base, work)
    manifest = load_manifest(manifest_path)
    _check_fits(manifest, base)
    x, y = _calibration_rows(spec.reference, held)
    result = calibrate(manifest_path, [spec.upstream], x, y, spec.max_drop)
    threshold = result.tiers[0].chosen.threshold
    notes.append(result.summary())
    _finish_manifest(manifest_path, spec, base)
    report = _gate(manifest_path, spec.reference)
    artifact = signed_artifact(manifest_path, key)
    verify(artifact.signature, artifact.manifest, artifact.onnx, trusted)
    return Candidate(
        manifest=manifest_path,
        artifact=artifact,
        threshold=threshold,
        calibration_rows=len(y),
        accuracy=float(report.accuracy or 0.0),
        min_accuracy=base.quality.min_accuracy,
        notes=notes,
    )


def _base(spec: CandidateSpec) -> ModelManifest:
    try:
        return ModelManifest.model_validate(spec.base)
    except ValueError as exc:
        raise InvalidArgumentError(
            f"the manifest of the version replaced is invalid: {exc}"
        ) from None


def _imported(
    onnx_path: Path, spec: CandidateSpec, base: ModelManifest, work: Path
) -> tuple[Path, list[str]]:
    """The model imported as ``mesh models import`` does; a typed error when it does not load
    or takes other inputs than the version it replaces (told before it is run on any)."""
    from mesh.models.importer import import_model
    from mesh.node.runtime import OnnxModel

    try:
        graph = OnnxModel.load(onnx_path)
    except Exception as exc:  # ONNX Runtime's own errors on a file it cannot read
        raise _unloadable(spec, exc) from None
    _check_inputs([(t.dtype, list(t.shape[1:])) for t in graph.inputs], base)
    try:
        result = import_model(
            onnx_path,
            name=spec.model,
            tier=base.tier_hint,
            repo=work / "repository",
            labels=list(base.labels),
            data=spec.reference,
            max_drop=spec.max_drop,
        )
    except Exception as exc:  # the import's typed errors, and ONNX Runtime's on a bad graph
        raise _unloadable(spec, exc) from None
    return result.manifest_path, list(result.notes)


def _unloadable(spec: CandidateSpec, exc: Exception) -> InvalidArgumentError:
    why = exc.message if isinstance(exc, MeshError) else f"{type(exc).__name__}: {exc}"
    return InvalidArgumentError(
        f"the training command wrote a model that does not load as {spec.model}: {why}; "
        "nothing was pushed"
    )


def _check_inputs(mine: list[tuple[str, list[int | None]]], base: ModelManifest) -> None:
    """A node refuses a version taking other inputs than the one it serves: its callers would
    break."""
    theirs = [(t.dtype, list(t.shape[1:])) for t in base.inputs]
    if mine != theirs:
        raise InvalidArgumentError(
            f"the trained model takes inputs {mine}; {base.name}@{base.version} takes {theirs}: "
            "callers would break; nothing was pushed"
        )


def _check_fits(manifest: ModelManifest, base: ModelManifest) -> None:
    """What a node checks of a version (its inputs), and a label a person gave must mean the
    same class in both."""
    _check_inputs([(t.dtype, list(t.shape[1:])) for t in manifest.inputs], base)
    if len(manifest.labels) != len(base.labels):
        raise InvalidArgumentError(
            f"the trained model has {len(manifest.labels)} classes, {base.name} has "
            f"{len(base.labels)}; nothing was pushed"
        )


def _calibration_rows(
    reference: Path, held: tuple[npt.NDArray[Any], npt.NDArray[np.int64]] | None
) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
    try:
        data = np.load(reference)
        x, y = np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"], dtype=np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidArgumentError(
            f"reference data {reference}: need an .npz with x, y: {exc}"
        ) from None
    if held is not None and len(held[1]):
        x = np.concatenate([x, np.asarray(held[0], dtype=np.float32).reshape(len(held[1]), -1)])
        y = np.concatenate([y, held[1]])
    return x, y


def _finish_manifest(path: Path, spec: CandidateSpec, base: ModelManifest) -> None:
    """The imported manifest as the next version of the one replaced: its name, budget,
    preprocessing and accuracy bar, and its rollout gates (signed with it)."""
    data = json.loads(path.read_text("utf-8"))
    data["version"] = spec.version
    data["profile"] = base.profile.model_dump(mode="json")
    data["preprocessing"] = base.preprocessing
    data["quality"]["min_accuracy"] = base.quality.min_accuracy
    if isinstance(spec.base.get("rollout"), dict):
        data["rollout"] = spec.base["rollout"]
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _gate(manifest: Path, reference: Path) -> Any:
    from mesh.models.validate import validate_model

    report = validate_model(manifest, reference, runs=GATE_RUNS)
    if not report.passed:
        raise InvalidArgumentError(
            f"the trained model fails its evidence gate; nothing was pushed:\n{report.summary()}"
        )
    return report


__all__ = ["Candidate", "CandidateSpec", "make_candidate"]
