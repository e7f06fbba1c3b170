"""The wire codec: msgpack maps, versioned, pure functions over bytes.

Every message is a msgpack map with ``v`` (the contract version) and ``kind``. Decoders ignore
fields they do not know, so a newer sender can add fields without breaking an older receiver.
Tensors travel as ``{"dtype", "shape", "data"}`` with raw little-endian bytes, decoded with
``numpy.frombuffer``: the array is a read-only view of the ``bytes`` msgpack unpacked for the
``bin`` field, with no further copy (msgpack itself copies bin payloads out of the message).
The JSON Schema of each message kind is in ``schemas/``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from mesh.errors import ErrorCode, InvalidArgumentError, MeshError, error_for

VERSION = 1

#: dtypes a tensor may carry on the wire, by their numpy names.
DTYPES: frozenset[str] = frozenset(
    {
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)

#: Residency labels, from most to least restrictive: the highest zone raw input may reach.
RESIDENCY_ZONES: tuple[str, ...] = ("device", "site", "cloud")
RESIDENCY_LABELS: frozenset[str] = frozenset({*RESIDENCY_ZONES, "any"})


def zone_rank(label: str) -> int:
    """Rank of a zone or residency label: ``any`` allows every zone."""
    if label == "any":
        return len(RESIDENCY_ZONES)
    return RESIDENCY_ZONES.index(label)


Array = npt.NDArray[Any]


# --- tensors -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _little_endian(name: str) -> np.dtype[Any]:
    return np.dtype(name).newbyteorder("<")


@functools.lru_cache(maxsize=64)
def dtype_name(dtype: np.dtype[Any]) -> str:
    """``dtype.name``, cached: numpy computes it in Python on every access (~1 us)."""
    return dtype.name


def encode_tensor(array: Array) -> dict[str, Any]:
    arr = np.asarray(array)
    name = dtype_name(arr.dtype)
    if name not in DTYPES:
        raise InvalidArgumentError(f"dtype {name} cannot travel; use one of {sorted(DTYPES)}")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return {
        "dtype": name,
        "shape": list(arr.shape),
        "data": np.ascontiguousarray(arr).tobytes(),
    }


def decode_tensor(obj: object, name: str) -> Array:
    if not isinstance(obj, dict):
        raise InvalidArgumentError(f"tensor {name!r} must be a map with dtype, shape and data")
    dtype = obj.get("dtype")
    shape = obj.get("shape")
    data = obj.get("data")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidArgumentError(
            f"tensor {name!r} has dtype {dtype!r}; expected one of {sorted(DTYPES)}"
        )
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidArgumentError(
            f"tensor {name!r} needs a shape of non-negative integers, got {shape!r}"
        )
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArgumentError(f"tensor {name!r} needs its data as raw bytes (msgpack bin)")
    dt = _little_endian(dtype)
    count = 1
    for d in shape:
        count *= d
    if count * dt.itemsize != len(data):
        raise InvalidArgumentError(
            f"tensor {name!r}: shape {list(shape)} of {dtype} needs {count * dt.itemsize} bytes, "
            f"got {len(data)}"
        )
    try:
        return np.frombuffer(data, dtype=dt).reshape(shape)
    except ValueError as exc:  # over 64 dimensions, or a zero-size shape with a huge dimension
        raise InvalidArgumentError(
            f"tensor {name!r} has an unusable shape {list(shape)}: {exc}"
        ) from None


def _encode_tensors(tensors: dict[str, Array]) -> dict[str, Any]:
    return {name: encode_tensor(arr) for name, arr in tensors.items()}


def _decode_tensors(obj: object, what: str) -> dict[str, Array]:
    if not isinstance(obj, dict) or not obj:
        raise InvalidArgumentError(f"{what} must be a non-empty map of name to tensor")
    out: dict[str, Array] = {}
    for name, tensor in obj.items():
        if not isinstance(name, str):
            raise InvalidArgumentError(f"{what} names must be strings, got {name!r}")
        out[name] = decode_tensor(tensor, name)
    return out


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hop:
    """One tier's part in answering a request."""

    tier: str
    node: str
    #: what the tier did: ``answered``, ``escalated`` or ``fallback`` (answered after a failed
    #: escalation), or ``forwarded`` (not served here, passed up).
    action: str
    #: time from receipt at this tier to its reply, upstream wait included.
    latency_ms: float
    model_version: str | None = None
    confidence: float | None = None
    #: why it escalated (``low_confidence``, ``novel``, ``not_served``) or, on a fallback, why
    #: its answer is degraded.
    reason: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "node": self.node,
            "action": self.action,
            "latency_ms": self.latency_ms,
            "model_version": self.model_version,
            "confidence": self.confidence,
            "reason": self.reason,
        }

    @classmethod
    def from_wire(cls, obj: object) -> Hop:
        if not isinstance(obj, dict):
            raise InvalidArgumentError("a path hop must be a map")
        try:
            return cls(
                tier=str(obj["tier"]),
                node=str(obj["node"]),
                action=str(obj["action"]),
                latency_ms=float(obj["latency_ms"]),
                model_version=_opt_str(obj.get("model_version")),
                confidence=_opt_float(obj.get("confidence")),
                reason=_opt_str(obj.get("reason")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"malformed path hop: {exc}") from None


@dataclass(frozen=True, slots=True)
class InferRequest:
    id: str
    model: str
    inputs: dict[str, Array]
    #: time the caller still grants, in milliseconds; each hop subtracts what it spent.
    budget_ms: float
    #: the highest zone the raw input may reach: ``device``, ``site``, ``cloud`` or ``any``.
    residency: str = "any"
    #: how many tiers this request has already passed through.
    hops: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferResponse:
    id: str
    model: str
    model_version: str
    tier: str
    node: str
    outputs: dict[str, Array]
    #: predicted class per row (argmax of the scored output), when the model is a classifier.
    labels: list[int]
    #: confidence of the answer: the lowest over the rows, in the model's chosen measure.
    confidence: float
    confidence_kind: str
    path: list[Hop]
    degraded: bool = False
    #: why the answer is degraded, from ``mesh.policy.DEGRADED_REASONS``.
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    id: str
    code: ErrorCode
    message: str
    tier: str = ""
    node: str = ""

    def to_exception(self) -> MeshError:
        return error_for(self.code.value, self.message)


Message = InferResponse | ErrorReply


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _packb(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise InvalidArgumentError(f"{what} is not valid msgpack: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidArgumentError(f"{what} must be a msgpack map, got {type(obj).__name__}")
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidArgumentError(f"{what} is missing its integer contract version 'v'")
    if version > VERSION:
        raise InvalidArgumentError(
            f"{what} has contract version {version}; this node speaks {VERSION}"
        )
    return obj


def _require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in obj:
        raise InvalidArgumentError(f"{what} is missing the field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise InvalidArgumentError(
            f"{what} field {key!r} has the wrong type {type(value).__name__}"
        )
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def encode_request(req: InferRequest) -> bytes:
    return _packb(
        {
            "v": VERSION,
            "kind": "infer_request",
            "id": req.id,
            "model": req.model,
            "inputs": _encode_tensors(req.inputs),
            "budget_ms": float(req.budget_ms),
            "residency": req.residency,
            "hops": req.hops,
            "parameters": req.parameters,
        }
    )


def decode_request(data: bytes) -> InferRequest:
    obj = _unpack_map(data, "inference request")
    what = "inference request"
    kind = obj.get("kind", "infer_request")
    if kind != "infer_request":
        raise InvalidArgumentError(f"expected an infer_request, got a message of kind {kind!r}")
    residency = obj.get("residency", "any")
    if not isinstance(residency, str) or residency not in RESIDENCY_LABELS:
        raise InvalidArgumentError(
            f"residency {residency!r} is not one of {sorted(RESIDENCY_LABELS)}"
        )
    budget = _require(obj, "budget_ms", (int, float), what)
    if not math.isfinite(budget) or budget < 0:
        raise InvalidArgumentError(
            f"budget_ms must be a finite, non-negative number, got {budget!r}"
        )
    hops = obj.get("hops", 0)
    if not isinstance(hops, int) or isinstance(hops, bool) or hops < 0:
        raise InvalidArgumentError(f"hops must be a non-negative integer, got {hops!r}")
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidArgumentError("parameters must be a map")
    req_id = _require(obj, "id", str, what)
    if not req_id:
        raise InvalidArgumentError("inference request id must not be empty")
    return InferRequest(
        id=req_id,
        model=_require(obj, "model", str, what),
        inputs=_decode_tensors(_require(obj, "inputs", dict, what), "inputs"),
        budget_ms=float(budget),
        residency=residency,
        hops=hops,
        parameters=parameters,
    )


def encode_response(resp: InferResponse) -> bytes:
    return _packb(
        {
            "v": VERSION,
            "kind": "infer_response",
            "id": resp.id,
            "model": resp.model,
            "model_version": resp.model_version,
            "tier": resp.tier,
            "node": resp.node,
            "outputs": _encode_tensors(resp.outputs),
            "labels": list(resp.labels),
            "confidence": float(resp.confidence),
            "confidence_kind": resp.confidence_kind,
            "path": [hop.to_wire() for hop in resp.path],
            "degraded": resp.degraded,
            "reason": resp.reason,
        }
    )


def encode_error(err: ErrorReply) -> bytes:
    return _packb(
        {
            "v": VERSION,
            "kind": "error",
            "id": err.id,
            "code": err.code.value,
            "message": err.message,
            "tier": err.tier,
            "node": err.node,
        }
    )


def decode_reply(data: bytes) -> Message:
    """Decode what a tier replied: an ``InferResponse`` or an ``ErrorReply``."""
    obj = _unpack_map(data, "reply")
    kind = obj.get("kind")
    if kind == "error":
        code = obj.get("code")
        try:
            error_code = ErrorCode(str(code))
        except ValueError:
            error_code = ErrorCode.INTERNAL
        return ErrorReply(
            id=str(obj.get("id", "")),
            code=error_code,
            message=str(obj.get("message", "")),
            tier=str(obj.get("tier", "")),
            node=str(obj.get("node", "")),
        )
    if kind != "infer_response":
        raise InvalidArgumentError(f"reply kind {kind!r} is neither infer_response nor error")
    what = "inference response"
    path = _require(obj, "path", list, what)
    labels = obj.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, int) for x in labels):
        raise InvalidArgumentError("labels must be a list of integers")
    return InferResponse(
        id=_require(obj, "id", str, what),
        model=_require(obj, "model", str, what),
        model_version=str(_require(obj, "model_version", str, what)),
        tier=_require(obj, "tier", str, what),
        node=_require(obj, "node", str, what),
        outputs=_decode_tensors(_require(obj, "outputs", dict, what), "outputs"),
        labels=labels,
        confidence=float(_require(obj, "confidence", (int, float), what)),
        confidence_kind=str(obj.get("confidence_kind", "")),
        path=[Hop.from_wire(h) for h in path],
        degraded=bool(obj.get("degraded", False)),
        reason=_opt_str(obj.get("reason")),
    )


def peek_id(data: bytes) -> str:
    """Best-effort request id of a message that failed to decode, for the error reply."""
    try:
        obj = msgpack.unpackb(data, raw=False)
    except Exception:
        return ""
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        return str(obj["id"])
    return ""


def unpack_raw(data: bytes) -> Any:
    """The plain msgpack structure of a message (schema validation, debugging)."""
    return msgpack.unpackb(data, raw=False)


__all__ = [
    "DTYPES",
    "RESIDENCY_LABELS",
    "RESIDENCY_ZONES",
    "VERSION",
    "Array",
    "ErrorReply",
    "Hop",
    "InferRequest",
    "InferResponse",
    "Message",
    "decode_reply",
    "decode_request",
    "decode_tensor",
    "encode_error",
    "encode_request",
    "encode_response",
    "encode_tensor",
    "peek_id",
    "unpack_raw",
    "zone_rank",
]
