"""Int8 quantization and threshold calibration on the real demo models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mesh.dev.models.demo import DemoArtifacts
from mesh.models.calibrate import (
    CurvePoint,
    TierOutputs,
    calibrate,
    choose,
    pessimistic_drop,
    plot_curves,
    run_cascade,
)
from mesh.models.manifest import load_manifest, sha256_of, verify_artifact
from mesh.models.quantize import quantization_report, quantize_model


@pytest.fixture
def demo_copy(demo: DemoArtifacts, tmp_path: Path) -> DemoArtifacts:
    """A private copy of the demo build, so calibration can write into its manifests."""
    root = tmp_path / "demo"
    shutil.copytree(demo.root, root)
    return DemoArtifacts.at(root)


def test_int8_edge_is_at_most_half_the_size_within_one_point(demo: DemoArtifacts) -> None:
    data = np.load(demo.test)
    report = quantization_report(
        demo.root / load_manifest(demo.edge).artifact,
        demo.root / load_manifest(demo.edge_int8).artifact,
        data["x"],
        data["y"],
        latency_runs=100,
    )
    print(report.summary())
    assert report.size_ratio <= 0.5
    assert abs(report.accuracy_drop) <= 0.01
    assert report.int8_model.latency_p50_us > 0


def test_quantize_model_is_reproducible(demo: DemoArtifacts, tmp_path: Path) -> None:
    rows = np.load(demo.calib)["x"].astype(np.float32)
    out = quantize_model(
        demo.root / load_manifest(demo.edge).artifact, tmp_path / "int8.onnx", calibration=rows
    )
    assert sha256_of(out) == load_manifest(demo.edge_int8).sha256


def test_a_statically_quantized_model_answers_a_row_the_same_in_any_batch(
    demo: DemoArtifacts,
) -> None:
    from mesh.node.runtime import OnnxModel

    model = OnnxModel.load(verify_artifact(load_manifest(demo.edge_int8), demo.edge_int8))
    x = np.load(demo.test)["x"].astype(np.float32)
    alone = np.concatenate(
        [model.run({"input": x[i : i + 1]})["probabilities"] for i in range(len(x))]
    )
    assert len(x) == 450
    for size in (7, 32, len(x)):
        batched = np.concatenate(
            [model.run({"input": x[i : i + size]})["probabilities"] for i in range(0, len(x), size)]
        )
        np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-6, err_msg=f"batches of {size}")


def test_cascade_routes_unsure_and_novel_rows_up() -> None:
    edge = TierOutputs(
        confidence=np.array([0.99, 0.5, 0.99]),
        prediction=np.array([1, 1, 1]),
        novel=np.array([False, False, True]),
    )
    cloud = TierOutputs(np.ones(3), np.array([2, 2, 2]), np.zeros(3, dtype=bool))
    outcome = run_cascade([edge, cloud], [0.9])
    assert outcome.prediction.tolist() == [1, 2, 2]
    assert outcome.tier_index.tolist() == [0, 1, 1]
    assert outcome.share_at(0) == pytest.approx(1 / 3)


def test_choose_takes_the_lowest_stable_threshold() -> None:
    curve = [
        CurvePoint(0.1, 1.0, 0.90, 10),
        CurvePoint(0.5, 0.9, 1.00, 0),
        CurvePoint(0.7, 0.8, 0.95, 5),
        CurvePoint(0.8, 0.7, 1.00, 0),
        CurvePoint(0.9, 0.6, 1.00, 0),
    ]
    assert choose(curve, top_errors=0, rows=100, max_drop=0.02).threshold == 0.8


def test_pessimistic_drop_refuses_one_extra_error_on_a_small_split() -> None:
    assert pessimistic_drop(2, 2, 269) <= 0.005
    assert pessimistic_drop(3, 2, 269) > 0.005


def test_calibrate_three_tiers_writes_thresholds_and_meets_the_target(
    demo_copy: DemoArtifacts, tmp_path: Path
) -> None:
    calib = np.load(demo_copy.calib)
    result = calibrate(
        demo_copy.edge_int8, [demo_copy.gateway, demo_copy.cloud], calib["x"], calib["y"], 0.005
    )
    print(result.summary())
    print(result.curve_table("edge", every=20))
    assert set(result.thresholds) == {"edge", "gateway"}
    assert result.cascade_accuracy >= result.top_accuracy - 0.005
    assert result.shares["edge"] >= 0.8
    assert load_manifest(demo_copy.edge_int8).thresholds["edge"] == result.thresholds["edge"]
    gateway = load_manifest(demo_copy.gateway).thresholds["gateway"]
    assert gateway == result.thresholds["gateway"]
    for tier in result.tiers:
        shares = [p.share_local for p in sorted(tier.curve, key=lambda p: p.threshold)]
        assert shares == sorted(shares, reverse=True)
    png = plot_curves(result, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_two_tiers_against_the_cloud(demo_copy: DemoArtifacts) -> None:
    calib = np.load(demo_copy.calib)
    result = calibrate(
        demo_copy.edge, [demo_copy.cloud], calib["x"], calib["y"], 0.005, write=False
    )
    assert set(result.thresholds) == {"edge"}
    assert 0.0 < result.thresholds["edge"] <= 1.0
    assert result.cascade_accuracy >= result.top_accuracy - 0.005


def test_calibrate_needs_an_upstream(demo_copy: DemoArtifacts) -> None:
    calib = np.load(demo_copy.calib)
    with pytest.raises(ValueError, match="upstream"):
        calibrate(demo_copy.edge, [], calib["x"], calib["y"])
