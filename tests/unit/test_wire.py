"""The wire codec (mesh.wire): messages, tensors and the node records."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import ErrorCode, InvalidArgumentError, NotFoundError
from mesh.wire import (
    DTYPES,
    ErrorReply,
    HardExample,
    Hop,
    InferRequest,
    InferResponse,
    NodeStatus,
    RecordedAnswer,
    decode_hard_example,
    decode_node_status,
    decode_reply,
    decode_request,
    encode_error,
    encode_hard_example,
    encode_node_status,
    encode_request,
    encode_response,
    encode_tensor,
    peek_id,
)
from mesh.wire.codec import packb
from mesh.wire.messages import decode_reply_checked, decode_request_checked

Obj = dict[str, Any]


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _request(**overrides: Any) -> InferRequest:
    fields: Obj = {
        "id": "req-1",
        "model": "digits",
        "inputs": {"x": np.arange(12, dtype=np.float32).reshape(3, 4)},
        "budget_ms": 250.0,
        "residency": "site",
        "hops": 1,
        "parameters": {"top_k": 3, "note": "hi"},
    }
    fields.update(overrides)
    return InferRequest(**fields)


def _request_map() -> Obj:
    obj: Obj = msgpack.unpackb(encode_request(_request()), raw=False)
    return obj


def _response(**overrides: Any) -> InferResponse:
    fields: Obj = {
        "id": "req-1",
        "model": "digits",
        "model_version": "3",
        "tier": "gateway",
        "node": "gw-1",
        "outputs": {"probabilities": np.full((2, 10), 0.1, dtype=np.float32)},
        "labels": [7, 1],
        "confidence": 0.91,
        "confidence_kind": "max_softmax",
        "path": [
            Hop("device", "dev-1", "escalated", 12.5, "1", 0.4),
            Hop("gateway", "gw-1", "answered", 3.0, "3", 0.91),
        ],
        "degraded": False,
        "reason": None,
    }
    fields.update(overrides)
    return InferResponse(**fields)


def _response_map() -> Obj:
    obj: Obj = msgpack.unpackb(encode_response(_response()), raw=False)
    return obj


def _hard_example(**overrides: Any) -> HardExample:
    fields: Obj = {
        "id": "req-1",
        "model": "digits",
        "tier": "device",
        "node": "dev-1",
        "reason": "breaker_open",
        "created_at": 1_700_000_000.25,
        "request": _request(),
        "answer": RecordedAnswer(labels=[3, 3, 8], confidence=0.42, model_version="1"),
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    fields.update(overrides)
    return HardExample(**fields)


def _node_status() -> NodeStatus:
    return NodeStatus(
        node="dev-1",
        tier="device",
        models={"digits": "1", "mlp": "4"},
        breakers={"gateway": "open"},
        backlog=17,
        ready=True,
        time=1_700_000_001.5,
    )


def _root_buffer(array: np.ndarray[Any, Any]) -> object:
    base: object = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_request_round_trip_keeps_every_dtype_shape_and_value(dtype: str) -> None:
    array = (np.arange(24) % 2).astype(dtype).reshape(2, 3, 4)
    req = _request(inputs={"x": array, "empty": np.zeros((0, 5), dtype=dtype)})

    out = decode_request(encode_request(req))

    assert out.inputs["x"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out.inputs["x"], array)
    assert out.inputs["empty"].shape == (0, 5)
    assert (out.id, out.model, out.budget_ms, out.residency, out.hops, out.parameters) == (
        req.id,
        req.model,
        req.budget_ms,
        req.residency,
        req.hops,
        req.parameters,
    )


def test_scalar_tensor_round_trips_with_empty_shape() -> None:
    out = decode_request(encode_request(_request(inputs={"s": np.array(2.5, dtype=np.float64)})))
    assert out.inputs["s"].shape == ()
    assert float(out.inputs["s"]) == 2.5


def test_decoded_tensor_is_a_read_only_view_without_a_numpy_copy() -> None:
    payload = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = decode_request(encode_request(_request(inputs={"x": payload}))).inputs["x"]

    assert out.base is not None
    assert not out.flags.owndata
    assert not out.flags.writeable
    with pytest.raises(ValueError):
        out[0, 0] = 1.0
    # The array views the bytes msgpack unpacked for the bin field, exactly the tensor payload.
    root = _root_buffer(out)
    assert isinstance(root, bytes)
    assert root == payload.tobytes()
    assert np.shares_memory(out, np.frombuffer(root, dtype=np.uint8))


def test_response_round_trip_keeps_answer_path_and_degraded_flag() -> None:
    resp = _response(degraded=True, reason="breaker_open")

    out = decode_reply(encode_response(resp))

    assert isinstance(out, InferResponse)
    assert (out.id, out.model, out.model_version, out.tier, out.node) == (
        "req-1",
        "digits",
        "3",
        "gateway",
        "gw-1",
    )
    np.testing.assert_array_equal(out.outputs["probabilities"], resp.outputs["probabilities"])
    assert not out.outputs["probabilities"].flags.writeable
    assert out.labels == [7, 1]
    assert out.confidence == pytest.approx(0.91)
    assert out.confidence_kind == "max_softmax"
    assert out.path == resp.path
    assert out.degraded is True
    assert out.reason == "breaker_open"


def test_error_round_trip_becomes_the_typed_exception() -> None:
    err = ErrorReply("req-9", ErrorCode.NOT_FOUND, "model 'x' is not served", "cloud", "c-1")

    out = decode_reply(encode_error(err))

    assert out == err
    assert isinstance(out, ErrorReply)
    exc = out.to_exception()
    assert isinstance(exc, NotFoundError)
    assert exc.message == "model 'x' is not served"


def test_error_reply_with_unknown_code_decodes_as_internal() -> None:
    data = _pack({"v": 1, "kind": "error", "id": "r", "code": "TEAPOT", "message": "m"})
    out = decode_reply(data)
    assert isinstance(out, ErrorReply)
    assert out.code is ErrorCode.INTERNAL


def test_big_endian_input_is_sent_little_endian_and_decodes_to_the_same_values() -> None:
    big = np.array([[1, -2], [300, 40000]], dtype=">i4")

    wire = encode_tensor(big)
    out = decode_request(encode_request(_request(inputs={"x": big}))).inputs["x"]

    assert wire["dtype"] == "int32"
    assert wire["data"] == big.astype("<i4").tobytes()
    assert out.dtype.byteorder in ("<", "=")
    np.testing.assert_array_equal(out, big)


def test_non_contiguous_input_is_sent_in_c_order() -> None:
    transposed = np.arange(6, dtype=np.int16).reshape(2, 3).T
    out = decode_request(encode_request(_request(inputs={"x": transposed}))).inputs["x"]
    np.testing.assert_array_equal(out, transposed)


@pytest.mark.parametrize("dtype", ["complex64", "object", "datetime64[s]", "U3"])
def test_encode_tensor_rejects_a_dtype_that_cannot_travel(dtype: str) -> None:
    with pytest.raises(InvalidArgumentError, match="cannot travel"):
        encode_tensor(np.zeros(2, dtype=dtype))


# --- open world ----------------------------------------------------------------------------


def test_request_decoder_ignores_unknown_fields() -> None:
    obj = _request_map()
    obj["priority"] = "high"
    obj["extensions"] = {"a": [1, 2, b"\x00"]}
    obj["inputs"]["x"]["layout"] = "NCHW"

    out = decode_request(_pack(obj))

    np.testing.assert_array_equal(out.inputs["x"], _request().inputs["x"])
    assert out.id == "req-1"


def test_reply_decoder_ignores_unknown_fields_in_response_and_hops() -> None:
    obj = _response_map()
    obj["cost_units"] = 3
    obj["path"][0]["region"] = "eu-west"
    out = decode_reply(_pack(obj))
    assert isinstance(out, InferResponse)
    assert out.path == _response().path


def test_request_without_optional_fields_gets_the_defaults() -> None:
    obj = _request_map()
    for key in ("residency", "hops", "parameters", "kind"):
        del obj[key]
    out = decode_request(_pack(obj))
    assert (out.residency, out.hops, out.parameters) == ("any", 0, {})


def test_older_contract_version_is_accepted() -> None:
    obj = _request_map()
    obj["v"] = 0
    assert decode_request(_pack(obj)).id == "req-1"


# --- bad input: every rejection path of decode_request ---------------------------------------


def _set(path: tuple[str, ...], value: object) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(*path: str) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


BAD_REQUESTS: dict[str, tuple[Callable[[Obj], None], str]] = {
    "missing version": (_delete("v"), "integer contract version 'v'"),
    "version not an integer": (_set(("v",), "1"), "integer contract version 'v'"),
    "version is a bool": (_set(("v",), True), "integer contract version 'v'"),
    "future version": (_set(("v",), 2), "contract version 2; this node speaks 1"),
    "missing id": (_delete("id"), "missing the field 'id'"),
    "missing model": (_delete("model"), "missing the field 'model'"),
    "missing inputs": (_delete("inputs"), "missing the field 'inputs'"),
    "missing budget": (_delete("budget_ms"), "missing the field 'budget_ms'"),
    "id of wrong type": (_set(("id",), 42), "field 'id' has the wrong type int"),
    "empty id": (_set(("id",), ""), "id must have 1 to"),
    "model of wrong type": (_set(("model",), ["digits"]), "field 'model' has the wrong type list"),
    "inputs of wrong type": (_set(("inputs",), [1]), "field 'inputs' has the wrong type list"),
    "no inputs": (_set(("inputs",), {}), "inputs must be a non-empty map"),
    "tensor is nil": (_set(("inputs", "x"), None), "must be a map with dtype"),
    "tensor not a map": (_set(("inputs", "x"), [1, 2]), "tensor 'x' must be a map"),
    "unknown dtype": (_set(("inputs", "x", "dtype"), "complex64"), "has dtype 'complex64'"),
    "missing dtype": (_delete("inputs", "x", "dtype"), "has dtype None"),
    "negative dimension": (_set(("inputs", "x", "shape"), [-3, 4]), "shape of non-negative"),
    "non-integer dimension": (_set(("inputs", "x", "shape"), [3.0, 4]), "shape of non-negative"),
    "bool dimension": (_set(("inputs", "x", "shape"), [True, 12]), "shape of non-negative"),
    "shape not a list": (_set(("inputs", "x", "shape"), 12), "shape of non-negative"),
    "data as str": (_set(("inputs", "x", "data"), "abcd"), "data as raw bytes"),
    "missing data": (_delete("inputs", "x", "data"), "data as raw bytes"),
    "shape and bytes disagree": (
        _set(("inputs", "x", "shape"), [2, 4]),
        "shape [2, 4] of float32 needs 32 bytes, got 48",
    ),
    "over 64 dimensions": (
        lambda obj: obj["inputs"].update(x={"dtype": "uint8", "shape": [1] * 65, "data": b"\x00"}),
        "dimensions; at most",
    ),
    "zero-size shape with a huge dimension": (
        lambda obj: obj["inputs"].update(x={"dtype": "uint8", "shape": [0, 2**63], "data": b""}),
        "non-negative integers up to",
    ),
    "negative budget": (_set(("budget_ms",), -1.0), "budget_ms must be a finite, non-negative"),
    "NaN budget": (_set(("budget_ms",), float("nan")), "budget_ms must be a finite, non-negative"),
    "infinite budget": (_set(("budget_ms",), float("inf")), "budget_ms must be a finite"),
    "another kind": (_set(("kind",), "infer_response"), "expected an infer_request"),
    "budget as string": (_set(("budget_ms",), "100"), "field 'budget_ms' has the wrong type str"),
    "budget as bool": (_set(("budget_ms",), True), "field 'budget_ms' has the wrong type bool"),
    "unknown residency": (_set(("residency",), "mars"), "residency 'mars' is not one of"),
    "residency not hashable": (_set(("residency",), ["site"]), "residency ['site'] is not one of"),
    "negative hops": (_set(("hops",), -1), "hops must be a non-negative integer"),
    "hops as bool": (_set(("hops",), True), "hops must be a non-negative integer"),
    "parameters not a map": (_set(("parameters",), [1]), "parameters must be a map"),
}


@pytest.mark.parametrize(("mutate", "fragment"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_decode_request_rejects_bad_field_naming_the_problem(
    mutate: Callable[[Obj], None], fragment: str
) -> None:
    obj = _request_map()
    mutate(obj)

    with pytest.raises(InvalidArgumentError) as info:
        decode_request(_pack(obj))

    assert fragment in info.value.message
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_decode_request_rejects_input_name_that_is_not_a_string() -> None:
    obj = _request_map()
    obj["inputs"] = {b"x": obj["inputs"]["x"]}
    with pytest.raises(InvalidArgumentError, match="names must be strings"):
        decode_request(_pack(obj))


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x82\xa1v", _pack({"v": 1})[:-1], _pack({"v": 1}) + b"\x00"],
    ids=["empty", "reserved byte", "truncated map", "truncated value", "trailing bytes"],
)
def test_decode_request_rejects_bytes_that_are_not_msgpack(data: bytes) -> None:
    with pytest.raises(InvalidArgumentError, match="not valid msgpack"):
        decode_request(data)


@pytest.mark.parametrize("value", [[1, 2], "text", 7, None, b"bin"])
def test_decode_request_rejects_msgpack_that_is_not_a_map(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="must be a msgpack map"):
        decode_request(_pack(value))


def test_decode_request_rejects_map_with_integer_keys() -> None:
    with pytest.raises(InvalidArgumentError, match="not valid msgpack"):
        decode_request(_pack({1: "a"}))


def test_decode_reply_rejects_unknown_kind() -> None:
    obj = _response_map()
    obj["kind"] = "infer_request"
    with pytest.raises(InvalidArgumentError, match="neither infer_response nor error"):
        decode_reply(_pack(obj))


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (_delete("path"), "missing the field 'path'"),
        (_set(("labels",), [1, "2"]), "labels must be a list of integers"),
        (_set(("path",), [{"tier": "device"}]), "malformed path hop"),
        (_set(("path",), ["device"]), "a path hop must be a map"),
        (_set(("confidence",), "high"), "field 'confidence' has the wrong type str"),
        (_set(("outputs",), {}), "outputs must be a non-empty map"),
    ],
)
def test_decode_reply_rejects_bad_response_naming_the_problem(
    mutate: Callable[[Obj], None], fragment: str
) -> None:
    obj = _response_map()
    mutate(obj)
    with pytest.raises(InvalidArgumentError) as info:
        decode_reply(_pack(obj))
    assert fragment in info.value.message


def test_peek_id_reads_the_id_of_an_undecodable_request() -> None:
    obj = _request_map()
    obj["budget_ms"] = -5
    assert peek_id(_pack(obj)) == "req-1"
    assert peek_id(b"\xc1garbage") == ""
    assert peek_id(_pack([1, 2])) == ""


# --- records -------------------------------------------------------------------------------


def test_hard_example_round_trip_keeps_request_answer_and_trace_link() -> None:
    example = _hard_example()

    out = decode_hard_example(encode_hard_example(example))

    assert (out.id, out.model, out.tier, out.node, out.reason) == (
        "req-1",
        "digits",
        "device",
        "dev-1",
        "breaker_open",
    )
    assert out.created_at == example.created_at
    assert out.answer == example.answer
    assert out.traceparent == example.traceparent
    assert out.request.id == "req-1"
    assert out.request.residency == "site"
    np.testing.assert_array_equal(out.request.inputs["x"], example.request.inputs["x"])


def test_hard_example_of_a_local_answer_takes_tier_node_and_answer_from_it() -> None:
    answer = _response(tier="device", node="dev-1", model_version="1", labels=[2], confidence=0.3)

    example = HardExample.of(_request(), answer, "timeout", created_at=5.0)

    assert (example.id, example.model, example.tier, example.node) == (
        "req-1",
        "digits",
        "device",
        "dev-1",
    )
    assert example.answer == RecordedAnswer(labels=[2], confidence=0.3, model_version="1")
    assert decode_hard_example(encode_hard_example(example)).reason == "timeout"


def test_hard_example_carries_the_request_map_as_encoded_on_the_wire() -> None:
    raw = msgpack.unpackb(encode_hard_example(_hard_example()), raw=False)
    assert raw["request"] == _request_map()


def test_hard_example_without_traceparent_decodes() -> None:
    obj = msgpack.unpackb(encode_hard_example(_hard_example(traceparent=None)), raw=False)
    del obj["traceparent"]
    assert decode_hard_example(_pack(obj)).traceparent is None


def test_hard_example_whose_id_differs_from_its_request_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="differs from its request id"):
        encode_hard_example(_hard_example(id="other"))
    obj = msgpack.unpackb(encode_hard_example(_hard_example()), raw=False)
    obj["id"] = "other"
    with pytest.raises(InvalidArgumentError, match="differs from its request id"):
        decode_hard_example(_pack(obj))


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (_set(("kind",), "node_status"), "must have kind 'hard_example'"),
        (_delete("reason"), "missing the field 'reason'"),
        (_set(("created_at",), float("inf")), "'created_at' must be a finite number"),
        (_set(("request", "budget_ms"), -1), "carries a bad request: budget_ms"),
        (_set(("answer", "labels"), [True]), "labels must be a list of integers"),
        (_delete("answer", "model_version"), "missing the field 'model_version'"),
        (_set(("traceparent",), 5), "traceparent must be a string"),
    ],
)
def test_decode_hard_example_rejects_bad_field_naming_the_problem(
    mutate: Callable[[Obj], None], fragment: str
) -> None:
    obj = msgpack.unpackb(encode_hard_example(_hard_example()), raw=False)
    mutate(obj)
    with pytest.raises(InvalidArgumentError) as info:
        decode_hard_example(_pack(obj))
    assert fragment in info.value.message


def test_node_status_round_trip() -> None:
    status = _node_status()
    obj = msgpack.unpackb(encode_node_status(status), raw=False)
    obj["load"] = 0.5  # a field from a newer node
    assert decode_node_status(_pack(obj)) == status


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (_set(("kind",), "hard_example"), "must have kind 'node_status'"),
        (_set(("backlog",), -1), "backlog must be non-negative"),
        (_set(("ready",), 1), "field 'ready' has the wrong type int"),
        (_set(("models",), {"digits": 1}), "'models' must map strings to strings"),
        (_delete("breakers"), "missing the field 'breakers'"),
    ],
)
def test_decode_node_status_rejects_bad_field_naming_the_problem(
    mutate: Callable[[Obj], None], fragment: str
) -> None:
    obj = msgpack.unpackb(encode_node_status(_node_status()), raw=False)
    mutate(obj)
    with pytest.raises(InvalidArgumentError) as info:
        decode_node_status(_pack(obj))
    assert fragment in info.value.message


# --- fuzz: a malformed message raises InvalidArgumentError and nothing else -------------------

DECODERS: list[Callable[[bytes], object]] = [
    decode_request,
    decode_reply,
    decode_hard_example,
    decode_node_status,
]

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=16)
    | st.sampled_from(["any", "site", "float32", "uint8", "error", "infer_response", "x"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _decodes_or_rejects(data: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(InvalidArgumentError):
            decode(data)


@FUZZ
@given(st.binary(max_size=256))
def test_arbitrary_bytes_only_raise_invalid_argument(data: bytes) -> None:
    _decodes_or_rejects(data)


@FUZZ
@given(msgpack_values)
def test_arbitrary_msgpack_structures_only_raise_invalid_argument(value: object) -> None:
    _decodes_or_rejects(_pack(value))
    if isinstance(value, dict):
        _decodes_or_rejects(_pack({**value, "v": 1}))


def _valid_maps() -> list[Obj]:
    error_map: Obj = msgpack.unpackb(
        encode_error(ErrorReply("r", ErrorCode.UNAVAILABLE, "m")), raw=False
    )
    return [
        _request_map(),
        _response_map(),
        error_map,
        msgpack.unpackb(encode_hard_example(_hard_example()), raw=False),
        msgpack.unpackb(encode_node_status(_node_status()), raw=False),
    ]


def _paths(obj: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.append((*prefix, key))
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            out.append((*prefix, index))
            out.extend(_paths(value, (*prefix, index)))
    return out


def _parent(obj: Obj, path: tuple[Any, ...]) -> Any:
    """The map or list that holds ``path``'s last key."""
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    return target


def _corrupted(maps: list[Obj], noise: bytes, data: st.DataObject) -> bytes:
    """One of ``maps`` packed, with ``noise`` written over its bytes somewhere."""
    message = bytearray(_pack(data.draw(st.sampled_from(maps))))
    start = data.draw(st.integers(min_value=0, max_value=len(message) - 1))
    message[start : start + len(noise)] = noise
    return bytes(message)


@FUZZ
@given(st.data())
def test_valid_messages_with_one_field_replaced_only_raise_invalid_argument(
    data: st.DataObject,
) -> None:
    obj = data.draw(st.sampled_from(_valid_maps()))
    path = data.draw(st.sampled_from(_paths(obj)))
    _parent(obj, path)[path[-1]] = data.draw(msgpack_values)
    _decodes_or_rejects(_pack(obj))


@FUZZ
@given(st.binary(min_size=1, max_size=64), st.data())
def test_valid_messages_with_bytes_corrupted_only_raise_invalid_argument(
    noise: bytes, data: st.DataObject
) -> None:
    _decodes_or_rejects(_corrupted(_valid_maps(), noise, data))


def test_a_shape_of_sixty_thousand_huge_dimensions_is_refused_at_once() -> None:
    obj = _request_map()
    obj["inputs"]["x"]["shape"] = [2**64 - 1] * 60_000
    started = time.perf_counter()
    with pytest.raises(InvalidArgumentError):
        decode_request(_pack(obj))
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    "parameters",
    [
        {"k": "v" * 5000},
        {f"k{i}": i for i in range(65)},
        {"nested": {"a": 1}},
        {"list": [1, 2, 3]},
        {"k" * 200: 1},
    ],
    ids=["long text", "too many", "nested map", "list", "long name"],
)
def test_parameters_beyond_flat_scalars_are_refused(parameters: dict[str, Any]) -> None:
    obj = _request_map()
    obj["parameters"] = parameters
    with pytest.raises(InvalidArgumentError):
        decode_request(_pack(obj))


def test_flat_scalar_parameters_pass_through() -> None:
    obj = _request_map()
    obj["parameters"] = {"priority": 2, "tag": "line4", "strict": True, "scale": 0.5, "x": None}
    assert decode_request(_pack(obj)).parameters == obj["parameters"]


# --- the typed first pass against the checked decoders -----------------------------------------
#
# ``decode_request`` and ``decode_reply`` try msgspec's typed decoding first and fall back to the
# checked decoders. Whatever the first pass accepts, the checked decoder must accept as the same
# message; what it declines is the checked decoder's by construction.


def _tensors_key(
    tensors: dict[str, np.ndarray[Any, Any]],
) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    return [(name, a.dtype.str, a.shape, a.tobytes()) for name, a in tensors.items()]


def _message_key(message: object) -> object:
    """A message as plain comparable values (arrays as bytes; floats as packed, so NaN equals
    NaN)."""
    if isinstance(message, InferRequest):
        return (
            "request",
            message.id,
            message.model,
            _tensors_key(message.inputs),
            _pack(message.budget_ms),
            message.residency,
            message.hops,
            _pack(message.parameters),
        )
    if isinstance(message, InferResponse):
        return (
            "response",
            message.id,
            message.model,
            message.model_version,
            message.tier,
            message.node,
            _tensors_key(message.outputs),
            message.labels,
            _pack(message.confidence),
            message.confidence_kind,
            [_pack(hop.to_wire()) for hop in message.path],
            message.degraded,
            message.reason,
        )
    return message


def _outcome(decode: Callable[[bytes], object], data: bytes) -> object:
    try:
        return _message_key(decode(data))
    except InvalidArgumentError as exc:
        return ("refused", str(exc))


def _same_either_way(data: bytes) -> None:
    assert _outcome(decode_request, data) == _outcome(decode_request_checked, data)
    assert _outcome(decode_reply, data) == _outcome(decode_reply_checked, data)


def _typed_maps() -> list[Obj]:
    minimal = _request_map()
    for key in ("kind", "residency", "hops", "parameters"):
        del minimal[key]
    return [_request_map(), minimal, _response_map()]


@FUZZ
@given(st.data())
def test_typed_first_pass_equals_the_checked_decoder_with_a_field_replaced(
    data: st.DataObject,
) -> None:
    obj = data.draw(st.sampled_from(_typed_maps()))
    path = data.draw(st.sampled_from(_paths(obj)))
    value = data.draw(
        msgpack_values
        | st.integers(min_value=-3, max_value=3)
        | st.floats(allow_nan=False, min_value=-1.0, max_value=1e3)
        | st.sampled_from([[1, 64], [1, 10], [2, 5], [0, 64], [], "float32", "int64", "any"])
    )
    target = _parent(obj, path)
    if data.draw(st.booleans()) and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = value
    _same_either_way(_pack(obj))


@FUZZ
@given(st.binary(min_size=1, max_size=16), st.data())
def test_typed_first_pass_equals_the_checked_decoder_on_corrupted_bytes(
    noise: bytes, data: st.DataObject
) -> None:
    _same_either_way(_corrupted(_typed_maps(), noise, data))


@FUZZ
@given(msgpack_values)
def test_typed_first_pass_equals_the_checked_decoder_on_arbitrary_maps(value: object) -> None:
    _same_either_way(_pack(value))
    if isinstance(value, dict):
        _same_either_way(_pack({**_request_map(), **value}))
        _same_either_way(_pack({**_response_map(), **value}))


@pytest.mark.parametrize(
    "change",
    [
        {"budget_ms": 250},
        {"budget_ms": 2**64 - 1},
        {"budget_ms": True},
        {"hops": 1.0},
        {"hops": False},
        {"v": 0},
        {"v": -5},
        {"v": 2},
        {"parameters": None},
        {"parameters": 0},
        {"parameters": {"k": "é" * 4096}},
        {"model": ""},
        {"model": "m" * 20_000},
        {"id": b"req-1"},
        {"inputs": {"x": {"dtype": "float32", "shape": [0, 4], "data": b""}}},
        {"inputs": {"x": {"dtype": ">f4", "shape": [1], "data": b"1234"}}},
        {"inputs": {"é" * 17_000: {"dtype": "uint8", "shape": [1], "data": b"1"}}},
        {"inputs": {"x": {"dtype": "uint8", "shape": [1], "data": b"1", "extra": 1}}},
        {"inputs": {"x": {"dtype": "uint8", "shape": [1.0], "data": b"1"}}},
        {"inputs": {"x": {"dtype": "uint8", "shape": [1], "data": "1"}}},
        {"unknown": [1] * 200},
    ],
    ids=repr,
)
def test_typed_first_pass_and_checked_decoder_agree_at_the_edges(change: Obj) -> None:
    _same_either_way(_pack({**_request_map(), **change}))


@pytest.mark.parametrize(
    "change",
    [
        {"confidence": 1},
        {"labels": None},
        {"labels": [True]},
        {"degraded": 1},
        {"path": [{"tier": "t", "node": "n", "action": "answered", "latency_ms": 2}]},
        {"path": [{"tier": "t", "node": "n", "action": "answered", "latency_ms": "2"}]},
        {"outputs": {}},
        {"kind": "error", "code": "UNAVAILABLE", "message": "m"},
    ],
    ids=repr,
)
def test_typed_first_pass_and_checked_reply_decoder_agree_at_the_edges(change: Obj) -> None:
    _same_either_way(_pack({**_response_map(), **change}))


def test_the_typed_first_pass_takes_what_our_encoders_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mesh.wire.messages as messages

    checked: list[bytes] = []

    def counting(decode: Callable[[bytes], object]) -> Callable[[bytes], object]:
        def counted(data: bytes) -> object:
            checked.append(data)
            return decode(data)

        return counted

    monkeypatch.setattr(messages, "decode_request_checked", counting(decode_request_checked))
    monkeypatch.setattr(messages, "decode_reply_checked", counting(decode_reply_checked))
    decode_request(encode_request(_request()))
    decode_request(_pack({k: v for k, v in _request_map().items() if k != "parameters"}))
    decode_reply(encode_response(_response()))
    assert checked == []
    decode_reply(encode_error(ErrorReply("r", ErrorCode.UNAVAILABLE, "m")))
    assert len(checked) == 1


def test_encoders_write_what_msgpack_writes() -> None:
    for obj in _valid_maps():
        assert packb(obj) == _pack(obj)


def _map_with_pairs(pairs: list[tuple[str, object]]) -> bytes:
    """A msgpack map written pair by pair, so that a key may repeat (a map16 header)."""
    out = bytearray(b"\xde") + len(pairs).to_bytes(2, "big")
    for key, value in pairs:
        out += _pack(key) + _pack(value)
    return bytes(out)


def test_a_repeated_key_keeps_its_last_value_either_way() -> None:
    pairs = list(_request_map().items())
    pairs.insert(0, ("model", "other"))
    fixmap = bytearray(_map_with_pairs(pairs))
    # the same pairs behind a fixmap header, which is what the typed pass reads
    data = bytes([0x80 | len(pairs)]) + bytes(fixmap[3:])
    assert decode_request(data).model == "digits"
    _same_either_way(data)
    inputs = _request_map()["inputs"]["x"]
    nested = _pack({**_request_map(), "inputs": {}})
    # a tensor map that names "x" twice: the second one is the tensor
    twice = b"\x82" + _pack("x") + _pack({**inputs, "shape": [12]}) + _pack("x") + _pack(inputs)
    data = nested.replace(b"\xa6inputs\x80", b"\xa6inputs" + twice)
    assert decode_request(data).inputs["x"].shape == (3, 4)
    _same_either_way(data)
