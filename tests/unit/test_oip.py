"""The Open Inference Protocol as data: parsing, checks against a manifest, rendering."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mesh.errors import InvalidArgumentError, ResourceExhaustedError
from mesh.ingress import oip, oip_rest
from mesh.ingress.grpc_server import to_request, to_response
from mesh.ingress.proto import grpc_predict_v2_pb2 as pb
from mesh.models.manifest import HardwareProfile, ModelManifest, QualityTarget, TensorSpec

MANIFEST = ModelManifest(
    name="digits",
    version="3",
    tier_hint="edge",
    inputs=[TensorSpec(name="input", dtype="float32", shape=[None, 4])],
    outputs=[
        TensorSpec(name="label", dtype="int64", shape=[None]),
        TensorSpec(name="probabilities", dtype="float32", shape=[None, 3]),
    ],
    labels=["a", "b", "c"],
    preprocessing="none",
    artifact="m.onnx",
    sha256="0" * 64,
    profile=HardwareProfile(latency_p99_ms=1, memory_mb=1),
    quality=QualityTarget(min_accuracy=0.5),
)


def body(**tensor: Any) -> bytes:
    base: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": [2, 4]}
    base.update(tensor)
    return json.dumps({"id": "r", "inputs": [base]}).encode()


def test_flat_and_nested_json_data_give_the_same_array() -> None:
    flat = oip_rest.parse_rest(body(data=list(range(8))), None, "digits", None)
    nested = oip_rest.parse_rest(body(data=[[0, 1, 2, 3], [4, 5, 6, 7]]), None, "digits", None)
    for parsed in (flat, nested):
        [tensor] = parsed.inputs
        assert tensor.data.dtype == np.float32 and tensor.data.shape == (2, 4)
        assert tensor.data.ravel().tolist() == list(range(8))
        oip.check_against(parsed, MANIFEST)
    assert flat.id == "r"


def test_binary_tensor_data_follows_the_json_header() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    head = body(parameters={"binary_data_size": x.nbytes})
    parsed = oip_rest.parse_rest(head + x.tobytes(), len(head), "digits", "3")
    assert np.array_equal(parsed.inputs[0].data, x)
    assert parsed.version == "3"


@pytest.mark.parametrize(
    ("raw", "length", "says"),
    [
        (body(data=list(range(7))), None, "takes 8"),
        (body(datatype="FP99", data=[0] * 8), None, "datatype"),
        (body(datatype="BYTES", data=["a"] * 8), None, "BYTES"),
        (body(shape=[2, -4], data=[0] * 8), None, "non-negative"),
        (body(data="nope"), None, "needs 'data'"),
        (body(data=["x"] * 8), None, "not FP32"),
        (b"[1, 2]", None, "JSON object"),
        (b"{", None, "not JSON"),
        (body(parameters={"binary_data_size": 32}), 10_000, "the body has"),
    ],
)
def test_malformed_rest_requests_say_what_is_wrong(
    raw: bytes, length: int | None, says: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=says):
        oip_rest.parse_rest(raw, length, "digits", None)


def test_binary_data_shorter_than_announced_is_refused() -> None:
    head = body(parameters={"binary_data_size": 32})
    with pytest.raises(InvalidArgumentError, match="runs past the body"):
        oip_rest.parse_rest(head + b"\0" * 31, len(head), "digits", None)


def test_bytes_after_the_last_binary_input_are_refused() -> None:
    head = body(parameters={"binary_data_size": 32})
    with pytest.raises(InvalidArgumentError, match="after the last input"):
        oip_rest.parse_rest(head + b"\0" * 40, len(head), "digits", None)


def test_too_many_elements_is_resource_exhausted() -> None:
    with pytest.raises(ResourceExhaustedError):
        oip.check_shape([1 << 13, 1 << 13], "input x")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"datatype": "FP64", "data": [0] * 8}, "takes FP32"),
        ({"shape": [2, 2], "data": [0] * 4}, "[-1, 4]"),
        ({"shape": [8], "data": [0] * 8}, "2 dimensions"),
    ],
)
def test_inputs_the_model_does_not_take_are_refused(change: dict[str, Any], says: str) -> None:
    parsed = oip_rest.parse_rest(body(**change), None, "digits", None)
    with pytest.raises(InvalidArgumentError, match=says):
        oip.check_against(parsed, MANIFEST)


def test_an_unknown_requested_output_is_refused() -> None:
    raw = json.loads(body(data=[0] * 8))
    raw["outputs"] = [{"name": "logits"}]
    parsed = oip_rest.parse_rest(json.dumps(raw).encode(), None, "digits", None)
    with pytest.raises(InvalidArgumentError, match="no output 'logits'"):
        oip.check_against(parsed, MANIFEST)


def test_outputs_are_rendered_as_json_or_binary_as_asked() -> None:
    raw = json.loads(body(data=[0] * 8))
    raw["outputs"] = [
        {"name": "probabilities", "parameters": {"binary_data": True}},
        {"name": "label"},
    ]
    parsed = oip_rest.parse_rest(json.dumps(raw).encode(), None, "digits", None)
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], dtype=np.float32)
    tensors, binary = oip.select_outputs(
        parsed, {"label": np.array([2, 0]), "probabilities": probs}
    )
    assert [t.name for t in tensors] == ["probabilities", "label"] and binary == [True, False]
    payload, length = oip_rest.render_rest(
        oip.OipResponse("digits", "3", "r", tensors, {"tier": "edge"}, binary)
    )
    assert length is not None
    head = json.loads(payload[:length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": probs.nbytes}
    assert head["outputs"][1]["data"] == [2, 0] and head["outputs"][1]["datatype"] == "INT64"
    assert np.array_equal(np.frombuffer(payload[length:], dtype="<f4").reshape(2, 3), probs)


def test_metadata_uses_protocol_datatypes_and_minus_one_for_the_batch() -> None:
    meta = oip.metadata(MANIFEST, ["3"])
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [-1]}


def test_grpc_typed_and_raw_contents_give_the_same_request() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    typed = pb.ModelInferRequest(model_name="digits", id="g")
    t = typed.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    t.contents.fp32_contents.extend(x.ravel().tolist())
    typed.parameters["mesh_budget_ms"].int64_param = 250
    raw = pb.ModelInferRequest(model_name="digits")
    raw.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    raw.raw_input_contents.append(x.tobytes())
    a, b = to_request(typed), to_request(raw)
    assert np.array_equal(a.inputs[0].data, b.inputs[0].data)
    assert a.parameters == {"mesh_budget_ms": 250} and a.id == "g"


def test_grpc_raw_and_typed_contents_together_or_short_are_refused() -> None:
    both = pb.ModelInferRequest(model_name="digits")
    t = both.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    t.contents.fp32_contents.extend([0.0] * 4)
    both.raw_input_contents.append(b"\0" * 16)
    with pytest.raises(InvalidArgumentError, match="choose one"):
        to_request(both)
    fp16 = pb.ModelInferRequest(model_name="digits")
    fp16.inputs.add(name="input", datatype="FP16", shape=[1, 4])
    with pytest.raises(InvalidArgumentError, match="raw contents"):
        to_request(fp16)
    missing = pb.ModelInferRequest(model_name="digits")
    missing.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    missing.inputs.add(name="other", datatype="FP32", shape=[1, 4])
    missing.raw_input_contents.append(b"\0" * 16)
    with pytest.raises(InvalidArgumentError, match="2 inputs"):
        to_request(missing)


def test_grpc_response_carries_raw_outputs_and_text_for_floats() -> None:
    probs = np.array([[0.5, 0.25, 0.25]], dtype=np.float32)
    answer = oip.OipResponse(
        "digits",
        "3",
        "r",
        [oip.OipTensor("probabilities", "FP32", [1, 3], probs)],
        {"tier": "edge", "confidence": 0.5, "degraded": False, "hops": 2},
        [False],
    )
    reply = to_response(answer)
    assert np.frombuffer(reply.raw_output_contents[0], dtype="<f4").tolist() == [0.5, 0.25, 0.25]
    assert reply.parameters["confidence"].string_param == "0.5"
    assert reply.parameters["degraded"].WhichOneof("parameter_choice") == "bool_param"
    assert reply.parameters["hops"].int64_param == 2
