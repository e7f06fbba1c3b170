"""A statically quantized model answers a row the same whatever batch it runs in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mesh.models.quantize import quantize_model
from mesh.node.runtime import OnnxModel

FEATURES, HIDDEN, CLASSES = 64, 32, 10
BATCH_SIZES = (7, 32, 450)


def _float_mlp(path: Path, seed: int = 0) -> Path:
    """A 64-32-10 MLP with softmax output, shaped like the demo's edge model."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0, 0.3, (FEATURES, HIDDEN)).astype(np.float32),
        "b1": rng.normal(0, 0.1, HIDDEN).astype(np.float32),
        "w2": rng.normal(0, 0.3, (HIDDEN, CLASSES)).astype(np.float32),
        "b2": rng.normal(0, 0.1, CLASSES).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["h3"]),
        helper.make_node("MatMul", ["h3", "w2"], ["o1"]),
        helper.make_node("Add", ["o1", "b2"], ["o2"]),
        helper.make_node("Softmax", ["o2"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, CLASSES])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _rows(n: int, seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).uniform(0, 1, (n, FEATURES)).astype(np.float32)


def _alone_and_batched(
    path: Path, x: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], dict[int, npt.NDArray[np.float32]]]:
    model = OnnxModel.load(path)

    def run(rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out: npt.NDArray[np.float32] = model.run({"input": rows})["probabilities"]
        return out

    alone = np.concatenate([run(x[i : i + 1]) for i in range(len(x))])
    batched = {
        size: np.concatenate([run(x[i : i + size]) for i in range(0, len(x), size)])
        for size in BATCH_SIZES
    }
    return alone, batched


def test_static_int8_answers_each_row_alike_in_batches_of_7_32_and_450(tmp_path: Path) -> None:
    src = _float_mlp(tmp_path / "float.onnx")
    int8 = quantize_model(src, tmp_path / "int8.onnx", calibration=_rows(200, seed=1))
    alone, batched = _alone_and_batched(int8, _rows(450, seed=2))
    for size, outputs in batched.items():
        assert np.allclose(outputs, alone, rtol=0, atol=1e-6), f"batches of {size}"


def test_static_int8_is_qdq_with_fixed_scales(tmp_path: Path) -> None:
    src = _float_mlp(tmp_path / "float.onnx")
    int8 = quantize_model(src, tmp_path / "int8.onnx", calibration=_rows(200, seed=1))
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "DynamicQuantizeLinear" not in ops


def test_the_check_catches_dynamic_quantization(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = _float_mlp(tmp_path / "float.onnx")
    dynamic = tmp_path / "dynamic.onnx"
    quantize_dynamic(src, dynamic, weight_type=QuantType.QInt8)
    alone, batched = _alone_and_batched(dynamic, _rows(450, seed=2))
    assert not np.allclose(batched[450], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rows", [np.zeros((0, FEATURES)), np.zeros(FEATURES)])
def test_quantize_model_refuses_missing_calibration_rows(
    tmp_path: Path, rows: npt.NDArray[np.float64]
) -> None:
    src = _float_mlp(tmp_path / "float.onnx")
    with pytest.raises(ValueError, match="calibration rows"):
        quantize_model(src, tmp_path / "int8.onnx", calibration=rows)
