"""The REST body of the Open Inference Protocol, read and written in steps, within bounds.

A request is JSON, or, with ``Inference-Header-Content-Length``, that many bytes of JSON followed
by the binary data of the inputs that say ``binary_data_size``. Reading it:

1. its JSON may nest arrays and objects at most ``MAX_DEPTH`` levels (a request needs about 12;
   a deeper one is refused naming the limit before any parser recurses into it);
2. the JSON is decoded against the protocol's schema (msgspec), each tensor's ``data`` kept as
   its text, so that the one step that scans the whole text creates no object per value;
3. each tensor's values are converted a slice at a time into a preallocated array.

Every stage runs in steps (``mesh.ingress.steps``), so a 64 MB body holds the event loop for
milliseconds at a time, and a caller's mistake is an ``InvalidArgumentError`` saying what is
wrong, never a crash. Answers are written the same way. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec
import numpy as np

from mesh.errors import InvalidArgumentError
from mesh.ingress import oip
from mesh.ingress.steps import STEP_BYTES, STEP_VALUES, Steps, finish

#: deepest nesting of arrays and objects a request's JSON may have.
MAX_DEPTH = 32
Body = bytes | bytearray | memoryview

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
#: every byte but the brackets, braces and quotes: what ``bytes.translate`` deletes.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_OPENING = (ord("["), ord("{"))
_CLOSING = (ord("]"), ord("}"))
_QUOTE = ord('"')

Scalar = str | int | float | bool


class _Tensor(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    parameters: dict[str, Scalar] | None = None


class _Output(msgspec.Struct):
    name: str
    parameters: dict[str, Scalar] | None = None


class _Request(msgspec.Struct):
    inputs: list[_Tensor]
    id: str = ""
    parameters: dict[str, Scalar] | None = None
    outputs: list[_Output] | None = None


_REQUEST = msgspec.json.Decoder(_Request)
# as lenient as numpy's own conversion: an integer tensor takes 1.0, a boolean one 0 and 1
_FLOATS = msgspec.json.Decoder(list[float])
_INTS = msgspec.json.Decoder(list[int | float])
_BOOLS = msgspec.json.Decoder(list[bool | int])


def _values_decoder(datatype: str) -> msgspec.json.Decoder[Any]:
    if datatype == "BOOL":
        return _BOOLS
    return _FLOATS if datatype.startswith("FP") else _INTS


# --- nesting depth -------------------------------------------------------------------------


def check_depth(text: memoryview, limit: int = MAX_DEPTH) -> Steps[None]:
    """Refuse JSON that nests arrays and objects deeper than ``limit``, a slice at a time:
    escapes dropped, then everything but brackets, braces and quotes, then the levels counted
    outside strings."""
    if len(text) <= STEP_BYTES:
        # nesting is at most the opening marks, counted in C: most requests stop here
        small = text.tobytes()
        if small.count(b"[") + small.count(b"{") <= limit:
            return
    depth, inside, carry = 0, 0, b""
    for start in range(0, len(text), STEP_BYTES):
        chunk = _ESCAPE.sub(b"", carry + bytes(text[start : start + STEP_BYTES]))
        carry = b""
        if chunk.endswith(b"\\"):  # an escape cut in two by the slice: finish it next time
            chunk, carry = chunk[:-1], b"\\"
        structure = chunk.translate(None, _NOT_STRUCTURE)
        if structure:
            depth, inside = _levels(structure, depth, inside, limit)
        yield


def _levels(structure: bytes, depth: int, inside: int, limit: int) -> tuple[int, int]:
    marks = np.frombuffer(structure, dtype=np.uint8)
    # 1 after a character inside a string; a bracket keeps the state it found
    in_string = (np.cumsum(marks == _QUOTE, dtype=np.int64) + inside) & 1
    steps = np.isin(marks, _OPENING).astype(np.int64) - np.isin(marks, _CLOSING)
    steps[in_string == 1] = 0
    levels = depth + np.cumsum(steps)
    if int(levels.max()) > limit:
        raise InvalidArgumentError(
            f"the request nests arrays and objects deeper than the limit of {limit} levels"
        )
    return int(levels[-1]), int(in_string[-1])


# --- requests ------------------------------------------------------------------------------


def parse_rest(
    body: Body, header_length: int | None, model: str, version: str | None
) -> oip.OipRequest:
    """A REST infer request at once; ``parse_rest_steps`` in steps."""
    return finish(parse_rest_steps(body, header_length, model, version))


def parse_rest_steps(
    body: Body, header_length: int | None, model: str, version: str | None
) -> Steps[oip.OipRequest]:
    view = memoryview(body)
    if header_length is not None:
        if header_length < 0 or header_length > len(view):
            raise InvalidArgumentError(
                f"{oip.BINARY_HEADER} is {header_length}, the body has {len(view)} bytes"
            )
        head, tail = view[:header_length], view[header_length:]
    else:
        head, tail = view, view[len(view) :]
    yield from check_depth(head)
    request = _decode(head)
    yield
    inputs: list[oip.OipTensor] = []
    offset = 0
    for i, tensor in enumerate(request.inputs):
        if not tensor.name:
            raise InvalidArgumentError(f"input {i} needs a name")
        what = f"input {tensor.name!r}"
        dtype = oip.dtype_for(tensor.datatype, what)
        shape = oip.check_shape(tensor.shape, what)
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgumentError(f"{what} binary_data_size must be a byte count")
            if offset + size > len(tail):
                raise InvalidArgumentError(
                    f"{what} binary_data_size {size} runs past the body: "
                    f"{len(tail) - offset} bytes of binary data left"
                )
            array = oip.from_raw(tail[offset : offset + size], dtype, shape, what)
            offset += size
        else:
            array = yield from _values(tensor.data, tensor.datatype, dtype, shape, what)
        inputs.append(oip.OipTensor(tensor.name, oip.datatype_of(dtype), shape, array))
    if offset != len(tail):
        raise InvalidArgumentError(
            f"{len(tail) - offset} bytes of binary data after the last input's"
        )
    outputs = []
    for out in request.outputs or []:
        binary = (out.parameters or {}).get("binary_data")
        outputs.append(oip.RequestedOutput(out.name, binary if isinstance(binary, bool) else None))
    parameters = request.parameters or {}
    return oip.OipRequest(
        model=model,
        version=version,
        id=request.id,
        inputs=inputs,
        outputs=outputs,
        parameters=dict(parameters),
        binary_default=parameters.get("binary_data_output") is True,
    )


def _decode(head: memoryview) -> _Request:
    lead = bytes(head[:4096]).lstrip()[:1]
    if lead and lead != b"{":
        raise InvalidArgumentError("the request must be a JSON object")
    try:
        return _REQUEST.decode(head)
    except msgspec.ValidationError as exc:
        raise InvalidArgumentError(f"the request does not follow the protocol: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidArgumentError(f"the request is not JSON: {exc}") from None
    except RecursionError:  # cannot happen past ``check_depth``; still never a 500
        raise InvalidArgumentError(
            f"the request nests arrays and objects deeper than the limit of {MAX_DEPTH} levels"
        ) from None


def _values(
    raw: msgspec.Raw, datatype: str, dtype: np.dtype[Any], shape: list[int], what: str
) -> Steps[np.ndarray]:
    """A tensor's JSON ``data`` (flat or nested) as an array of ``shape``, a slice of text at a
    time: each slice ends at a comma, its brackets dropped, its values decoded into place."""
    text = memoryview(raw)
    if not len(text) or bytes(text[:1]) != b"[":
        raise InvalidArgumentError(f"{what} needs 'data' as a list (or binary_data_size)")
    decoder = _values_decoder(datatype)
    count = math.prod(shape)
    out = np.empty(count, dtype=dtype)
    filled, pos, end = 0, 0, len(text)
    while pos < end:
        chunk, cut = _slice(text, pos)
        pos += cut + 1
        piece = chunk[:cut].translate(None, b"[]")
        if piece.strip(b", \t\r\n"):  # a slice of empty lists holds no values
            try:
                values = decoder.decode(b"[" + piece + b"]")
            except msgspec.ValidationError as exc:
                reason = str(exc).split(" - at ")[0]
                raise InvalidArgumentError(f"{what} data is not {datatype}: {reason}") from None
            except msgspec.DecodeError:
                raise InvalidArgumentError(
                    f"{what} data must be lists of numbers, nested as its shape {shape}"
                ) from None
            if filled + len(values) <= count:  # past it, only counted for the message
                try:
                    out[filled : filled + len(values)] = values
                except (OverflowError, ValueError, TypeError) as exc:
                    raise InvalidArgumentError(f"{what} data is not {datatype}: {exc}") from None
            filled += len(values)
        yield
    if filled != count:
        raise InvalidArgumentError(f"{what} has {filled} values; shape {shape} takes {count}")
    return out.reshape(shape)


def _slice(text: memoryview, pos: int) -> tuple[bytes, int]:
    """About ``STEP_BYTES`` of ``text`` from ``pos``, and where it ends at a comma (or at the
    end of the text); a slice with no comma grows until it has one."""
    window = STEP_BYTES
    while True:
        chunk = bytes(text[pos : pos + window])
        if pos + window >= len(text):
            return chunk, len(chunk)
        cut = chunk.rfind(b",")
        if cut >= 0:
            return chunk, cut
        window *= 2


# --- answers -------------------------------------------------------------------------------


def render_rest(response: oip.OipResponse) -> tuple[bytes, int | None]:
    """The REST body at once; ``render_rest_steps`` in steps."""
    return finish(render_rest_steps(response))


def render_rest_steps(response: oip.OipResponse) -> Steps[tuple[bytes, int | None]]:
    """The REST body, and the JSON header's length when outputs travel as binary data."""
    outputs: list[dict[str, Any]] = []
    tails: list[bytes] = []
    for tensor, binary in zip(response.outputs, response.binary, strict=True):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if binary:
            little = tensor.data.dtype.newbyteorder("<")
            raw = np.ascontiguousarray(tensor.data).astype(little).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
        else:
            flat = tensor.data.reshape(-1)
            pieces: list[bytes] = []
            for start in range(0, flat.size, STEP_VALUES):
                pieces.append(msgspec.json.encode(flat[start : start + STEP_VALUES].tolist())[1:-1])
                yield
            entry["data"] = msgspec.Raw(b"[" + b",".join(pieces) + b"]")
        outputs.append(entry)
    head = msgspec.json.encode(
        {
            "model_name": response.model,
            "model_version": response.version,
            "id": response.id,
            "parameters": response.parameters,
            "outputs": outputs,
        }
    )
    if not tails:
        return head, None
    return head + b"".join(tails), len(head)
