"""The model manifest: round trip, open-world decoding, artifact checks, schema agreement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from mesh.errors import InvalidArgumentError, NotFoundError
from mesh.models.manifest import (
    HardwareProfile,
    Histogram,
    ModelManifest,
    NoveltyReference,
    QualityTarget,
    ReferenceStats,
    TensorSpec,
    load_manifest,
    manifest_json_schema,
    save_manifest,
    sha256_of,
    verify_artifact,
)
from mesh.scoring.novelty import NoveltyScorer

SCHEMA_PATH = Path(__file__).parents[2] / "schemas" / "model-manifest.schema.json"


def make_manifest(artifact: Path) -> ModelManifest:
    rng = np.random.default_rng(0)
    x = rng.random((50, 64))
    return ModelManifest(
        name="digits",
        version="1-edge",
        tier_hint="edge",
        inputs=[TensorSpec(name="input", dtype="float32", shape=[None, 64])],
        outputs=[
            TensorSpec(name="label", dtype="int64", shape=[None]),
            TensorSpec(name="probabilities", dtype="float32", shape=[None, 10]),
        ],
        labels=[str(i) for i in range(10)],
        preprocessing="8x8 grayscale, pixels scaled to [0,1]",
        artifact=artifact.name,
        sha256=sha256_of(artifact),
        thresholds={"edge": 0.9},
        reference=ReferenceStats(
            feature_mean=list(x.mean(axis=0)),
            feature_std=list(x.std(axis=0)),
            confidence_histogram=Histogram(edges=[0.0, 0.5, 1.0], proportions=[0.2, 0.8]),
            intensity_histogram=Histogram(edges=[0.0, 0.5, 1.0], proportions=[0.6, 0.4]),
            novelty=NoveltyReference.model_validate(NoveltyScorer.fit(x, 5).to_reference()),
            rows=50,
        ),
        profile=HardwareProfile(latency_p99_ms=2.0, memory_mb=64.0),
        quality=QualityTarget(min_accuracy=0.95),
    )


@pytest.fixture
def saved(tmp_path: Path) -> tuple[ModelManifest, Path]:
    artifact = tmp_path / "digits-edge.onnx"
    artifact.write_bytes(b"not really onnx, but bytes with a hash")
    manifest = make_manifest(artifact)
    path = tmp_path / "digits-edge.manifest.json"
    save_manifest(manifest, path)
    return manifest, path


def test_save_then_load_gives_the_same_manifest(saved: tuple[ModelManifest, Path]) -> None:
    manifest, path = saved
    assert load_manifest(path) == manifest


def test_decoding_ignores_unknown_fields(saved: tuple[ModelManifest, Path]) -> None:
    manifest, path = saved
    data = json.loads(path.read_text())
    data["added_by_a_newer_producer"] = {"x": 1}
    data["profile"]["gpu"] = "none"
    path.write_text(json.dumps(data))
    assert load_manifest(path) == manifest


def test_dynamic_dims_are_null(saved: tuple[ModelManifest, Path]) -> None:
    _, path = saved
    data = json.loads(path.read_text())
    assert data["inputs"][0]["shape"] == [None, 64]


def test_invalid_manifest_is_an_invalid_argument(tmp_path: Path) -> None:
    path = tmp_path / "bad.manifest.json"
    path.write_text(json.dumps({"name": "digits"}))
    with pytest.raises(InvalidArgumentError, match=r"bad\.manifest\.json is invalid"):
        load_manifest(path)


def test_missing_manifest_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load_manifest(tmp_path / "nope.manifest.json")


def test_verify_artifact_returns_the_path_when_the_hash_matches(
    saved: tuple[ModelManifest, Path],
) -> None:
    manifest, path = saved
    assert verify_artifact(manifest, path) == path.parent / "digits-edge.onnx"


def test_verify_artifact_rejects_a_changed_file(saved: tuple[ModelManifest, Path]) -> None:
    manifest, path = saved
    (path.parent / manifest.artifact).write_bytes(b"tampered")
    with pytest.raises(InvalidArgumentError, match=r"does not match manifest digits@1-edge"):
        verify_artifact(manifest, path)


def test_verify_artifact_reports_a_missing_file(saved: tuple[ModelManifest, Path]) -> None:
    manifest, path = saved
    (path.parent / manifest.artifact).unlink()
    with pytest.raises(NotFoundError, match="does not exist"):
        verify_artifact(manifest, path)


def test_threshold_for_a_tier_falls_back_to_the_default(
    saved: tuple[ModelManifest, Path],
) -> None:
    manifest, _ = saved
    assert manifest.threshold_for("edge") == 0.9
    assert manifest.threshold_for("gateway", 0.7) == 0.7
    with pytest.raises(NotFoundError, match="no threshold for tier 'gateway'"):
        manifest.threshold_for("gateway")


def test_schema_file_matches_the_model() -> None:
    stored = json.loads(SCHEMA_PATH.read_text())
    assert stored == manifest_json_schema()
    Draft202012Validator.check_schema(stored)
    assert stored["$id"].endswith("/model-manifest.schema.json")


def test_every_field_has_a_description() -> None:
    schema = manifest_json_schema()
    for name, definition in [("ModelManifest", schema), *schema["$defs"].items()]:
        for field, spec in definition["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"


def test_a_saved_manifest_validates_against_the_schema(
    saved: tuple[ModelManifest, Path],
) -> None:
    _, path = saved
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator(schema).validate(json.loads(path.read_text()))


def test_schema_rejects_a_manifest_without_sha256(saved: tuple[ModelManifest, Path]) -> None:
    _, path = saved
    data = json.loads(path.read_text())
    del data["sha256"]
    errors = list(Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).iter_errors(data))
    assert any("sha256" in e.message for e in errors)
