"""The Open Inference Protocol (KServe v2) as data: requests in, responses out, no transport.

Both ways in (REST with JSON tensors and the binary tensor data extension, gRPC with typed or raw
contents) end here as an ``OipRequest`` of numpy arrays, checked against the model's manifest
before anything reaches the mesh; an answer goes back as an ``OipResponse`` the transport
renders (the REST body is read and written by ``oip_rest``). Errors are the mesh's typed errors:
``InvalidArgumentError`` (400, INVALID_ARGUMENT), ``NotFoundError`` (404, NOT_FOUND),
``TooLargeError`` (413, RESOURCE_EXHAUSTED), each saying what is wrong. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mesh.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from mesh.ingress.steps import STEP_VALUES, Steps
from mesh.models.manifest import ModelManifest, TensorSpec

#: protocol datatype to numpy dtype; BYTES has none that the mesh's wire carries.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}
#: parameters a caller may set that the ingress reads itself.
BUDGET_PARAMETER = "mesh_budget_ms"
RESIDENCY_PARAMETER = "mesh_residency"
BINARY_HEADER = "Inference-Header-Content-Length"
#: most elements one request may carry, whatever the body limit.
MAX_ELEMENTS = 16 * 1024 * 1024


class TooLargeError(ResourceExhaustedError):
    """A request larger than the ingress or the mesh takes (413 over REST): no retry helps."""


def datatype_of(dtype: np.dtype[Any] | str) -> str:
    """The protocol datatype of a numpy dtype (or of a manifest's dtype name)."""
    found = _NAMES.get(np.dtype(dtype))
    if found is None:
        raise InvalidArgumentError(f"dtype {dtype} has no Open Inference Protocol datatype here")
    return found


@dataclass
class OipTensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None


@dataclass
class OipRequest:
    model: str
    version: str | None
    id: str
    inputs: list[OipTensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    #: ``binary_data_output`` of the request's parameters: outputs in binary unless said.
    binary_default: bool = False


@dataclass
class OipResponse:
    model: str
    version: str
    id: str
    outputs: list[OipTensor]
    parameters: dict[str, Any]
    #: per output, whether it goes as binary data (REST only; gRPC always sends raw).
    binary: list[bool] = field(default_factory=list)


# --- checks shared by both transports -------------------------------------------------------


def check_shape(shape: Sequence[Any], what: str) -> list[int]:
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidArgumentError(f"{what} shape must be a list of non-negative integers")
    if len(shape) > 8:
        raise InvalidArgumentError(f"{what} has {len(shape)} dimensions; at most 8")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise TooLargeError(f"{what} has {count} elements, over the limit of {MAX_ELEMENTS}")
    return [int(d) for d in shape]


def dtype_for(datatype: object, what: str) -> np.dtype[Any]:
    if datatype == "BYTES":
        raise InvalidArgumentError(
            f"{what} is BYTES: no model served here takes strings (the mesh's tensors are numeric)"
        )
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidArgumentError(
            f"{what} datatype {str(datatype)[:40]!r} is not one of {sorted(DATATYPES)}"
        )
    return DATATYPES[datatype]


def from_raw(
    raw: bytes | memoryview, dtype: np.dtype[Any], shape: list[int], what: str
) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgumentError(
            f"{what} has {len(raw)} bytes of data; shape {shape} of {datatype_of(dtype)} "
            f"takes {expected}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def values_steps(
    values: Sequence[Any], dtype: np.dtype[Any], shape: list[int], what: str
) -> Steps[np.ndarray]:
    """Typed values (a gRPC tensor's ``contents``) as an array of ``shape``, converted
    ``STEP_VALUES`` at a time."""
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidArgumentError(f"{what} has {len(values)} values; shape {shape} takes {count}")
    out = np.empty(count, dtype=dtype)
    source = iter(values)
    for start in range(0, count, STEP_VALUES):
        n = min(STEP_VALUES, count - start)
        try:
            out[start : start + n] = np.fromiter(source, dtype=dtype, count=n)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidArgumentError(f"{what} data is not {datatype_of(dtype)}: {exc}") from None
        yield
    return out.reshape(shape)


def check_against(request: OipRequest, manifest: ModelManifest | None) -> None:
    """The inputs and requested outputs against the model's manifest: names, datatypes and
    every dimension but the batch. Raises before anything is sent."""
    names = [t.name for t in request.inputs]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"inputs {names} name one tensor twice")
    if not request.inputs:
        raise InvalidArgumentError("the request has no inputs")
    if manifest is None:
        return
    specs = {s.name: s for s in manifest.inputs}
    for tensor in request.inputs:
        spec = specs.get(tensor.name)
        if spec is None and len(specs) == 1 and len(request.inputs) == 1:
            spec = next(iter(specs.values()))
        if spec is None:
            raise InvalidArgumentError(
                f"model {manifest.name} has no input {tensor.name!r}; it takes {sorted(specs)}"
            )
        _check_spec(tensor, spec)
    if len(request.inputs) != len(specs):
        raise InvalidArgumentError(
            f"model {manifest.name} takes {len(specs)} inputs {sorted(specs)}, "
            f"got {len(request.inputs)}"
        )
    known = {s.name for s in manifest.outputs}
    for out in request.outputs:
        if out.name not in known:
            raise InvalidArgumentError(
                f"model {manifest.name} has no output {out.name!r}; it has {sorted(known)}"
            )


def _check_spec(tensor: OipTensor, spec: TensorSpec) -> None:
    want = datatype_of(spec.dtype)
    if tensor.datatype != want:
        raise InvalidArgumentError(
            f"input {tensor.name!r} is {tensor.datatype}; the model takes {want}"
        )
    if len(tensor.shape) != len(spec.shape):
        raise InvalidArgumentError(
            f"input {tensor.name!r} has shape {tensor.shape}; the model takes "
            f"{tensor_shape(spec)} ({len(spec.shape)} dimensions)"
        )
    for got, dim in zip(tensor.shape[1:], spec.shape[1:], strict=True):
        if dim is not None and got != dim:
            want_shape = tensor_shape(spec)
            raise InvalidArgumentError(
                f"input {tensor.name!r} has shape {tensor.shape}; the model takes {want_shape}"
            )


def tensor_shape(spec: TensorSpec) -> list[int]:
    """A manifest's shape in the protocol's terms: -1 for a variable dimension."""
    return [-1 if d is None else int(d) for d in spec.shape]


def metadata(manifest: ModelManifest, versions: Sequence[str]) -> dict[str, Any]:
    """The model metadata response (REST body; gRPC fills the same fields)."""
    return {
        "name": manifest.name,
        "versions": list(versions),
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": s.name, "datatype": datatype_of(s.dtype), "shape": tensor_shape(s)}
            for s in manifest.inputs
        ],
        "outputs": [
            {"name": s.name, "datatype": datatype_of(s.dtype), "shape": tensor_shape(s)}
            for s in manifest.outputs
        ],
    }


def select_outputs(
    request: OipRequest, produced: Mapping[str, np.ndarray]
) -> tuple[list[OipTensor], list[bool]]:
    """The outputs to return, in the order asked (all the model produced when none was)."""
    wanted = request.outputs or [RequestedOutput(name) for name in produced]
    tensors: list[OipTensor] = []
    binary: list[bool] = []
    for out in wanted:
        array = produced.get(out.name)
        if array is None:
            raise InvalidArgumentError(
                f"the model produced no output {out.name!r}; it produced {sorted(produced)}"
            )
        array = np.asarray(array)
        tensors.append(OipTensor(out.name, datatype_of(array.dtype), list(array.shape), array))
        binary.append(request.binary_default if out.binary is None else out.binary)
    return tensors, binary


def not_found(model: str, version: str | None, known: Sequence[str]) -> NotFoundError:
    if version:
        return NotFoundError(f"model {model} has no version {version!r} here; it has {list(known)}")
    return NotFoundError(f"no model {model!r} is served here")
