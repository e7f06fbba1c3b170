"""`mesh models import` on real exports (issue 12): skl2onnx's default ZipMap export converted,
a logits classifier given a Softmax, ambiguous outputs refused with the fix, small labelled sets
explained, and every imported version loaded as a node loads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mesh.cli import main
from mesh.models.importer import import_model
from mesh.models.manifest import load_manifest
from mesh.models.store import ModelRepository, model_settings_for
from mesh.node.repository import ModelConfigError


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LogisticRegression]:
    folder = tmp_path_factory.mktemp("iris")
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    np.savez(folder / "iris.npz", x=x, y=y)
    np.savez(folder / "small.npz", x=x[::5], y=y[::5])
    model = LogisticRegression(max_iter=1000).fit(x, y)
    (folder / "zipmap.onnx").write_bytes(to_onnx(model, x[:1]).SerializeToString())
    plain = to_onnx(model, x[:1], options={id(model): {"zipmap": False}})
    (folder / "plain.onnx").write_bytes(plain.SerializeToString())
    return folder, model


def logits_model(path: Path, outputs: int = 1) -> Path:
    """A PyTorch-style export: input ``input`` [N, 4], Gemm-Relu-Gemm, logits ``output``."""
    rng = np.random.default_rng(0)
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [4, 8], rng.normal(size=32).tolist())
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [8, 3], rng.normal(size=24).tolist())
    nodes = [
        helper.make_node("Gemm", ["input", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["output"]),
    ]
    outs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 3])]
    if outputs == 2:
        nodes.append(helper.make_node("Identity", ["output"], ["other"]))
        outs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [None, 3]))
    graph = helper.make_graph(
        nodes,
        "torchlike",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        outs,
        [w1, w2],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(proto, str(path))
    return path


def test_the_default_zipmap_export_is_converted_and_answers_as_scikit_learn(
    iris: tuple[Path, LogisticRegression], tmp_path: Path
) -> None:
    folder, model = iris
    result = import_model(folder / "zipmap.onnx", name="iris", tier="cloud", repo=tmp_path)
    assert result.version == 1 and result.scored_output == "probabilities"
    assert any("ZipMap" in note for note in result.notes)
    manifest = load_manifest(result.manifest_path)
    assert manifest.labels == ["0", "1", "2"] and manifest.thresholds == {"cloud": 0.0}
    x = np.load(folder / "iris.npz")["x"]
    session = ort.InferenceSession(str(result.manifest_path.parent / "model.onnx"))
    (probabilities,) = session.run(["probabilities"], {"X": x})
    np.testing.assert_allclose(probabilities, model.predict_proba(x), atol=1e-5)


def test_a_logits_classifier_gets_a_softmax(tmp_path: Path) -> None:
    result = import_model(
        logits_model(tmp_path / "torch.onnx"), name="net", tier="edge", repo=tmp_path / "repo"
    )
    assert result.scored_output == "probabilities"
    assert any("Softmax" in note for note in result.notes)
    session = ort.InferenceSession(str(result.manifest_path.parent / "model.onnx"))
    (p,) = session.run(["probabilities"], {"input": np.ones((5, 4), np.float32)})
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_two_candidate_outputs_ask_for_scored_output(tmp_path: Path) -> None:
    path = logits_model(tmp_path / "two.onnx", outputs=2)
    with pytest.raises(ModelConfigError, match="--scored-output"):
        import_model(path, name="net", tier="edge", repo=tmp_path / "repo")
    assert not (tmp_path / "repo" / "net").exists()
    result = import_model(
        path, name="net", tier="edge", repo=tmp_path / "repo", scored_output="output"
    )
    assert result.scored_output == "probabilities"


def test_labelled_data_calibrates_the_edge_against_the_cloud_and_small_sets_say_why(
    iris: tuple[Path, LogisticRegression], tmp_path: Path
) -> None:
    folder, _ = iris
    repo = tmp_path / "repo"
    import_model(folder / "plain.onnx", name="iris", tier="cloud", repo=repo)
    small = import_model(
        folder / "plain.onnx", name="iris", tier="edge", repo=repo, data=folder / "small.npz"
    )
    assert any("cannot show a drop" in n and "Label at least" in n for n in small.notes)
    assert load_manifest(small.manifest_path).thresholds == {"edge": 0.9}
    calibrated = import_model(
        folder / "plain.onnx",
        name="iris",
        tier="edge",
        repo=repo,
        data=folder / "iris.npz",
        max_drop=0.02,
    )
    manifest = load_manifest(calibrated.manifest_path)
    assert manifest.reference is not None and manifest.reference.rows == 150
    assert any("calibrated on 150 labelled rows" in n for n in calibrated.notes)
    assert manifest.thresholds["edge"] != 0.9
    repository = ModelRepository(repo)
    assert [e.version for e in repository.served_on("edge")] == ["3"]
    assert [s.name for s in model_settings_for(repository, "cloud")] == ["iris"]


def test_the_cli_prints_the_contract_line_and_numbers_versions(
    iris: tuple[Path, LogisticRegression], tmp_path: Path
) -> None:
    folder, _ = iris
    args = ["models", "import", str(folder / "zipmap.onnx"), "--name", "iris"]
    args += ["--tier", "edge", "--repo", str(tmp_path), "--data", str(folder / "iris.npz")]
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.output.startswith(f"imported iris version 1 for tier edge: {tmp_path}")
    assert "imported iris version 2 for tier edge" in second.output
    bad = CliRunner().invoke(main, [*args[:2], str(folder / "iris.npz"), *args[3:]])
    assert bad.exit_code == 2 and "not an ONNX model" in bad.output
