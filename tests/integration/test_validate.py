"""The evidence gate on the real demo models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import InvalidArgumentError
from mesh.models.manifest import (
    HardwareProfile,
    QualityTarget,
    artifact_path,
    load_manifest,
    save_manifest,
)
from mesh.models.validate import judge, require_valid, validate_model


def test_the_int8_edge_model_passes_its_own_profile(demo: DemoArtifacts) -> None:
    report = validate_model(demo.edge_int8, demo.test)
    print(report.summary())
    assert report.passed, report.summary()
    assert report.runs == 500
    assert 0 < report.latency_p50_ms <= report.latency_p99_ms
    assert report.accuracy >= 0.95
    report.raise_if_failed()


def test_a_too_tight_profile_fails_with_the_figures(demo: DemoArtifacts) -> None:
    report = validate_model(
        demo.cloud,
        demo.test,
        HardwareProfile(latency_p99_ms=0.0001, memory_mb=64),
        QualityTarget(min_accuracy=0.999),
        runs=100,
    )
    print(report.summary())
    assert not report.passed
    assert any("p99 latency" in f and "over the budget of 0.0001 ms" in f for f in report.failures)
    assert any("under the minimum of 0.999" in f for f in report.failures)
    assert "FAIL" in report.summary()
    with pytest.raises(InvalidArgumentError, match="fails its evidence gate: p99 latency"):
        report.raise_if_failed()


def test_partial_overrides_keep_the_other_manifest_figures(demo: DemoArtifacts) -> None:
    report = validate_model(demo.edge, demo.test, {"latency_p99_ms": 0.0001}, runs=50)
    assert report.profile.memory_mb == 64.0
    assert [f.split(" ")[0] for f in report.failures] == ["p99"]


def test_an_unknown_override_is_refused(demo: DemoArtifacts) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown HardwareProfile fields"):
        validate_model(demo.edge, demo.test, {"latency_p95_ms": 1.0}, runs=10)


def test_judge_reports_memory_and_accuracy_drop() -> None:
    failures = judge(
        latency_p99_ms=0.1,
        memory_mb=80.0,
        accuracy=0.95,
        profile=HardwareProfile(latency_p99_ms=1.0, memory_mb=64.0),
        quality=QualityTarget(
            min_accuracy=0.9,
            max_accuracy_drop=0.01,
            drop_reference="1-edge",
            reference_accuracy=0.98,
        ),
    )
    assert failures == [
        "peak memory +80.0 MB is over the ceiling of 64 MB",
        "accuracy 0.9500 is 3.00 points under 1-edge (0.9800); at most 1.00 points allowed",
    ]


def test_the_gate_before_serving_refuses_a_model_whose_profile_is_too_tight(
    demo: DemoArtifacts, tmp_path: Path
) -> None:
    manifest = load_manifest(demo.edge_int8)
    shutil.copy(artifact_path(manifest, demo.edge_int8), tmp_path / manifest.artifact)
    manifest.profile = HardwareProfile(latency_p99_ms=0.0001, memory_mb=manifest.profile.memory_mb)
    tight = tmp_path / "tight.manifest.json"
    save_manifest(manifest, tight)
    assert len(require_valid([demo.edge_int8, demo.cloud], demo.test, runs=50)) == 2
    with pytest.raises(InvalidArgumentError, match="refusing to serve") as caught:
        require_valid([demo.edge_int8, tight], demo.test, runs=50)
    assert "p99 latency" in str(caught.value)
