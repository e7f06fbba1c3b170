"""The model manifest: what a node needs to know to serve, score and check one ONNX artifact.

A manifest sits next to its artifact as ``<name>-<variant>.manifest.json``; ``artifact`` is the
file name relative to the manifest. Decoding ignores unknown fields so that newer producers can add
fields without breaking older nodes. ``schemas/model-manifest.schema.json`` is generated from these
classes by :func:`manifest_json_schema` and a test keeps the two equal.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mesh.errors import InvalidArgumentError, NotFoundError

SCHEMA_ID = "https://edge-mesh.dev/schemas/model-manifest.schema.json"
MANIFEST_SUFFIX = ".manifest.json"

ConfidenceName = Literal["max_prob", "margin", "entropy"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TensorSpec(_Open):
    """One named input or output tensor of the model."""

    name: str = Field(description="Tensor name in the ONNX graph.")
    dtype: str = Field(description='numpy dtype name, e.g. "float32" or "int64".')
    shape: list[int | None] = Field(
        description="Dimensions; null marks a dynamic dimension such as the batch."
    )


class Histogram(_Open):
    """A histogram of a scalar over the training split, for drift comparisons."""

    edges: list[float] = Field(description="Bin edges, ascending; one more than proportions.")
    proportions: list[float] = Field(description="Share of training rows in each bin; sums to 1.")


class NoveltyReference(_Open):
    """Parameters of the novelty score (see ``mesh.scoring.novelty``), fitted on the training split.

    The score is Hotelling's T^2 on the leading principal components, divided by their count,
    plus the mean squared z-score of the reconstruction residual.
    """

    method: Literal["pca_t2_spe"] = Field(
        default="pca_t2_spe",
        description="Score family: PCA Hotelling T^2 plus the residual's squared z-score.",
    )
    mean: list[float] = Field(description="Per-feature mean the inputs are centred on.")
    components: list[list[float]] = Field(
        description="Principal axes, one row of n_features per component."
    )
    variances: list[float] = Field(description="Training variance along each principal axis.")
    residual_std: list[float] = Field(
        description="Per-feature training standard deviation of the residual (floored)."
    )
    threshold: float = Field(
        description="Inputs scoring above this are novel (a high quantile of training scores)."
    )
    quantile: float = Field(description="Training quantile the threshold was taken at.")


class ReferenceStats(_Open):
    """Statistics of the training split, the baseline for drift and novelty."""

    feature_mean: list[float] = Field(description="Mean of each input feature.")
    feature_std: list[float] = Field(description="Standard deviation of each input feature.")
    confidence_histogram: Histogram = Field(
        description="Histogram of the model's confidence on the training rows."
    )
    intensity_histogram: Histogram = Field(
        description="Histogram of each training row's mean input value."
    )
    novelty: NoveltyReference = Field(description="Parameters of the novelty score.")
    rows: int = Field(description="Number of training rows the statistics come from.")


class HardwareProfile(_Open):
    """What the artifact may cost on the node that serves it."""

    latency_p99_ms: float = Field(description="Budget for one single-row request, at p99, in ms.")
    memory_mb: float = Field(description="Ceiling on resident memory added by loading and running.")
    energy_mj: float | None = Field(
        default=None,
        description="Ceiling on the energy of one single-row inference on the serving device, in "
        "millijoules: its CPU time times the device profile's power per busy core "
        "(mesh.energy.profiles); null: not judged.",
    )


class QualityTarget(_Open):
    """The accuracy the artifact must reach on the held-out split."""

    min_accuracy: float = Field(description="Lowest acceptable accuracy, a fraction in [0, 1].")
    max_accuracy_drop: float | None = Field(
        default=None,
        description="Largest acceptable drop below reference_accuracy, a fraction.",
    )
    drop_reference: str | None = Field(
        default=None,
        description="Model version the drop is measured against, e.g. the float model.",
    )
    reference_accuracy: float | None = Field(
        default=None, description="Held-out accuracy of drop_reference when this was built."
    )


class ModelManifest(_Open):
    """One deployable model artifact and everything needed to serve and judge it."""

    name: str = Field(description="Model name requests address, e.g. digits.")
    version: str = Field(description="Version of this artifact, unique within the name.")
    tier_hint: str = Field(description="Tier the artifact is sized for: edge, gateway or cloud.")
    inputs: list[TensorSpec] = Field(description="Input tensors of the graph.")
    outputs: list[TensorSpec] = Field(description="Output tensors of the graph.")
    labels: list[str] = Field(description="Class names, indexed by class id.")
    preprocessing: str = Field(description="What callers must do to raw data before sending it.")
    artifact: str = Field(description="ONNX file name, relative to the manifest's directory.")
    sha256: str = Field(description="Hex SHA-256 of the artifact file.")
    scored_output: str = Field(
        default="probabilities", description="Output holding the class probabilities."
    )
    confidence: ConfidenceName = Field(
        default="max_prob", description="How confidence is computed from the probabilities."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Per tier name: escalate when confidence is below this value.",
    )
    reference: ReferenceStats | None = Field(
        default=None, description="Training-split statistics for drift and novelty."
    )
    profile: HardwareProfile = Field(description="Hardware budget of the artifact.")
    quality: QualityTarget = Field(description="Accuracy target on the held-out split.")
    signature: str | None = Field(default=None, description="Reserved for a manifest signature.")

    def threshold_for(self, tier: str, default: float | None = None) -> float:
        """The escalation threshold at ``tier``; ``default`` when the manifest has none."""
        if tier in self.thresholds:
            return self.thresholds[tier]
        if default is None:
            raise NotFoundError(
                f"manifest {self.name}@{self.version} has no threshold for tier {tier!r} "
                f"(it has {sorted(self.thresholds)}); calibrate it or set one in the config"
            )
        return default


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a manifest file, as stored in ``schemas/``."""
    schema = ModelManifest.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "ModelManifest",
        **{k: v for k, v in schema.items() if k != "title"},
        "description": (
            "A deployable model artifact: a JSON file next to its ONNX file, written by "
            "mesh.models.manifest.save_manifest and read by load_manifest (unknown fields are "
            "ignored). Not a wire message: it has no v or kind."
        ),
    }


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(path: Path | str) -> ModelManifest:
    """Read and validate a manifest file; unknown fields are ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(f"model manifest {path} does not exist") from None
    try:
        return ModelManifest.model_validate_json(text)
    except ValidationError as exc:
        raise InvalidArgumentError(f"model manifest {path} is invalid: {exc}") from exc


def save_manifest(manifest: ModelManifest, path: Path | str) -> None:
    """Write a manifest as indented JSON, keys in declaration order, ending with a newline."""
    data = manifest.model_dump(mode="json")
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def artifact_path(manifest: ModelManifest, manifest_path: Path | str) -> Path:
    """Where the manifest's artifact lives on disk: inside the manifest's folder, always (a
    manifest cannot make a node read a file elsewhere, ``../`` or absolute paths included)."""
    folder = Path(manifest_path).resolve().parent
    path = (folder / manifest.artifact).resolve()
    if not path.is_relative_to(folder):
        raise InvalidArgumentError(
            f"manifest {manifest_path} names artifact {manifest.artifact!r}, outside its folder "
            f"{folder}: an artifact must lie beside its manifest or below it"
        )
    return path


def verify_artifact(manifest: ModelManifest, manifest_path: Path | str) -> Path:
    """The artifact's path, once its SHA-256 matches the manifest's; raises otherwise."""
    path = artifact_path(manifest, manifest_path)
    if not path.is_file():
        raise NotFoundError(f"artifact {path} named by manifest {manifest_path} does not exist")
    actual = sha256_of(path)
    if actual != manifest.sha256.lower():
        raise InvalidArgumentError(
            f"artifact {path} does not match manifest {manifest.name}@{manifest.version}: "
            f"sha256 is {actual}, the manifest expects {manifest.sha256}; "
            "the file is corrupt or belongs to another version"
        )
    return path


def copy_as_version(manifest_path: Path | str, version: str, out_dir: Path | str) -> Path:
    """Copy a manifest and its artifact into ``out_dir`` as version ``version`` (a release of
    the same bytes under a new version, or a start for a changed one); returns the new
    manifest's path. Blocking."""
    import shutil

    source = load_manifest(manifest_path)
    artifact = verify_artifact(source, manifest_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / artifact.name
    shutil.copyfile(artifact, target)
    manifest = source.model_copy(update={"version": version, "artifact": artifact.name})
    path = out / f"{source.name}-{version}{MANIFEST_SUFFIX}"
    save_manifest(manifest, path)
    return path
