"""Tensors on the wire: ``{"dtype", "shape", "data"}`` with raw little-endian bytes.

Decoding is ``numpy.frombuffer``: the array is a read-only view of the ``bytes`` msgpack
unpacked for the ``bin`` field, with no further copy.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
import numpy as np

from mesh.errors import InvalidArgumentError
from mesh.typedefs import Array

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

#: most dimensions a tensor may have (numpy's own limit is 64; no model here takes over 8).
MAX_RANK = 16
#: largest single dimension accepted: bounds the shape's product before it is computed.
MAX_DIMENSION = 2**31 - 1
#: most tensors, and longest name in characters, the typed decoders take: within the limits
#: ``codec.REQUEST_LIMITS`` sets in entries and bytes however a name is encoded (UTF-8 takes at
#: most 4 bytes a character), so what they accept the checked decoders accept too.
MAX_TENSORS = 128
MAX_NAME = 16 * 1024


@functools.lru_cache(maxsize=64)
def _little_endian(name: str) -> np.dtype[Any]:
    return np.dtype(name).newbyteorder("<")


@functools.lru_cache(maxsize=64)
def dtype_name(dtype: np.dtype[Any]) -> str:
    """``dtype.name``, cached: numpy computes it in Python on every access (~1 us)."""
    return dtype.name


#: wire dtype name to the little-endian numpy dtype it decodes to.
_WIRE_DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(name).newbyteorder("<") for name in DTYPES}
#: numpy dtypes that travel as they are (native little-endian here) to their wire names.
_NAMES: dict[np.dtype[Any], str] = {np.dtype(name): name for name in DTYPES}


def encode_tensor(array: Array) -> dict[str, Any]:
    name = _NAMES.get(array.dtype) if type(array) is np.ndarray else None
    if name is not None and array.dtype.byteorder != ">" and array.flags.c_contiguous:
        return {"dtype": name, "shape": list(array.shape), "data": array.tobytes()}
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
    # The common case in a few type checks; anything unusual takes the checked path below, which
    # says what is wrong.
    if type(obj) is dict:
        dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
        dt = _WIRE_DTYPES.get(dtype) if type(dtype) is str else None
        if (
            dt is not None
            and type(shape) is list
            and type(data) is bytes
            and len(shape) <= MAX_RANK
        ):
            count = 1
            for d in shape:
                if type(d) is not int or not 0 <= d <= MAX_DIMENSION:
                    break
                count *= d
            else:
                if count * dt.itemsize == len(data) and count:
                    return np.frombuffer(data, dtype=dt).reshape(shape)
    return _decode_tensor_checked(obj, name)


class TensorWire(msgspec.Struct, forbid_unknown_fields=True):
    """A tensor as the hot messages' typed decoders read it (``messages``): exactly these
    three fields, of these types; anything else is left to ``decode_tensor``."""

    dtype: str
    shape: list[int]
    data: bytes


def tensors_from_wire(tensors: dict[str, TensorWire]) -> dict[str, Array] | None:
    """The arrays of a typed decoder's tensors, when all are of the usual shape: a known dtype,
    at most ``MAX_RANK`` dimensions, a non-empty shape its data fills exactly. None otherwise,
    and the caller decodes the message the checked way, which says what is wrong."""
    if not tensors or len(tensors) > MAX_TENSORS:
        return None
    out: dict[str, Array] = {}
    for name, tensor in tensors.items():
        dt = _WIRE_DTYPES.get(tensor.dtype)
        shape = tensor.shape
        if dt is None or len(shape) > MAX_RANK or len(name) > MAX_NAME:
            return None
        count = 1
        for d in shape:
            if not 0 <= d <= MAX_DIMENSION:
                return None
            count *= d
        if not count or count * dt.itemsize != len(tensor.data):
            return None
        out[name] = np.frombuffer(tensor.data, dtype=dt).reshape(shape)
    return out


def _decode_tensor_checked(obj: object, name: str) -> Array:
    if not isinstance(obj, dict):
        raise InvalidArgumentError(f"tensor {name!r} must be a map with dtype, shape and data")
    dtype = obj.get("dtype")
    shape = obj.get("shape")
    data = obj.get("data")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidArgumentError(
            f"tensor {name!r} has dtype {dtype!r}; expected one of {sorted(DTYPES)}"
        )
    if not isinstance(shape, list | tuple):
        raise InvalidArgumentError(
            f"tensor {name!r} needs a shape of non-negative integers, got {shape!r:.80}"
        )
    # Rank is bounded before any arithmetic on the dimensions: a product over thousands of huge
    # integers is quadratic in their digits and would hold the event loop for seconds.
    if len(shape) > MAX_RANK:
        raise InvalidArgumentError(
            f"tensor {name!r} has {len(shape)} dimensions; at most {MAX_RANK} are accepted"
        )
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArgumentError(f"tensor {name!r} needs its data as raw bytes (msgpack bin)")
    dt = _little_endian(dtype)
    count = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= MAX_DIMENSION:
            raise InvalidArgumentError(
                f"tensor {name!r} needs a shape of non-negative integers up to {MAX_DIMENSION}, "
                f"got {_shape_text(shape)}"
            )
        count *= d
    if count * dt.itemsize != len(data):
        raise InvalidArgumentError(
            f"tensor {name!r}: shape {list(shape)} of {dtype} needs {count * dt.itemsize} bytes, "
            f"got {len(data)}"
        )
    try:
        return np.frombuffer(data, dtype=dt).reshape(shape)
    except ValueError as exc:  # a zero-size shape numpy cannot make
        raise InvalidArgumentError(
            f"tensor {name!r} has an unusable shape {list(shape)}: {exc}"
        ) from None


def _shape_text(shape: list[Any] | tuple[Any, ...]) -> str:
    text = repr(list(shape))
    return text if len(text) <= 120 else text[:117] + "..."


def encode_tensors(tensors: dict[str, Array]) -> dict[str, Any]:
    return {name: encode_tensor(arr) for name, arr in tensors.items()}


def decode_tensors(obj: object, what: str) -> dict[str, Array]:
    if not isinstance(obj, dict) or not obj:
        raise InvalidArgumentError(f"{what} must be a non-empty map of name to tensor")
    out: dict[str, Array] = {}
    for name, tensor in obj.items():
        if not isinstance(name, str):
            raise InvalidArgumentError(f"{what} names must be strings, got {name!r:.80}")
        out[name] = decode_tensor(tensor, name)
    return out
