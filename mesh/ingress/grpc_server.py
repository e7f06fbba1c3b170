"""The ingress's gRPC transport: ``inference.GRPCInferenceService`` over ``Ingress``.

The service is registered by name with grpcio's generic handlers, over message classes built
from ``proto/grpc_predict_v2.proto`` (see there why their package is ``mesh_oip_v2``). Inputs
arrive as ``raw_input_contents`` or typed ``contents``; outputs leave as ``raw_output_contents``,
as Triton sends them. A client's mistake is INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED,
never INTERNAL.

Nothing is read before it is let in. ``TokenCheck``, a server interceptor, refuses a call
without a known bearer token (``authorization`` metadata) as UNAUTHENTICATED from its metadata
alone: grpcio has not received its message, so a stranger's 60 MB costs nothing. Each method is
registered as taking a stream of raw bytes, so that the handler decides when the one message is
read: after its caller has a place at the gate (``mesh.ingress.gate``), which, since gRPC never
says a message's length first, reserves the largest message (``max_receive_message_length``)
while it is read and keeps what it took. ServerLive and ServerReady take no token and never
read their (empty) request.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from mesh.errors import ErrorCode, InvalidArgumentError, MeshError
from mesh.ingress import oip
from mesh.ingress.callers import Callers, peer_address
from mesh.ingress.core import Ingress
from mesh.ingress.gate import BodyTimeoutError, Gate, GateLimits
from mesh.ingress.proto import grpc_predict_v2_pb2 as pb
from mesh.ingress.steps import Steps, drive, finish
from mesh.lifecycle import Service

SERVICE = "inference.GRPCInferenceService"
#: methods that take no token and never read their request.
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})
UNAUTHENTICATED = "missing or wrong bearer token (authorization: Bearer ...)"
BUDGET_KEY = "mesh-budget-ms"
RESIDENCY_KEY = "mesh-residency"

GRPC_STATUS: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
}

#: typed contents field of each datatype (FP16 travels raw only, BYTES is refused earlier).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def _parameter(p: Any) -> bool | int | str:
    which = p.WhichOneof("parameter_choice")
    if which is None:
        raise InvalidArgumentError("a parameter has no value")
    value: bool | int | str = getattr(p, which)
    return value


def _set_parameter(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    else:
        # The protocol's parameters hold no float: a confidence travels as its text.
        target.string_param = str(value)


def to_request(msg: Any) -> oip.OipRequest:
    """A ``ModelInferRequest`` as an ``OipRequest`` at once; ``to_request_steps`` in steps."""
    return finish(to_request_steps(msg))


def to_request_steps(msg: Any) -> Steps[oip.OipRequest]:
    """A ``ModelInferRequest`` as an ``OipRequest``; raises typed errors."""
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise InvalidArgumentError(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs"
        )
    inputs: list[oip.OipTensor] = []
    for i, tensor in enumerate(msg.inputs):
        if not tensor.name:
            raise InvalidArgumentError(f"input {i} needs a name")
        what = f"input {tensor.name!r}"
        dtype = oip.dtype_for(tensor.datatype, what)
        shape = oip.check_shape(list(tensor.shape), what)
        has_contents = tensor.HasField("contents")
        if raw:
            if has_contents:
                raise InvalidArgumentError(
                    f"{what} has contents while raw_input_contents is used: choose one"
                )
            array = oip.from_raw(raw[i], dtype, shape, what)
        else:
            field = CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                raise InvalidArgumentError(f"{what} is {tensor.datatype}: send it as raw contents")
            values = getattr(tensor.contents, field)
            array = yield from oip.values_steps(values, dtype, shape, what)
        inputs.append(oip.OipTensor(tensor.name, tensor.datatype, shape, array))
    parameters = {k: _parameter(v) for k, v in msg.parameters.items()}
    return oip.OipRequest(
        model=msg.model_name,
        version=msg.model_version or None,
        id=msg.id,
        inputs=inputs,
        outputs=[oip.RequestedOutput(o.name) for o in msg.outputs],
        parameters=parameters,
    )


def to_response(answer: oip.OipResponse) -> Any:
    out = pb.ModelInferResponse(model_name=answer.model, model_version=answer.version, id=answer.id)
    for key, value in answer.parameters.items():
        _set_parameter(out.parameters[key], value)
    for tensor in answer.outputs:
        entry = out.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        del entry  # the metadata is all the entry holds; the data goes raw
        little = tensor.data.dtype.newbyteorder("<")
        out.raw_output_contents.append(np.ascontiguousarray(tensor.data).astype(little).tobytes())
    return out


Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _metadata(pairs: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (pairs or ())}


async def _refuse_unauthenticated(requests: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)


class TokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses a call without a known token before grpcio receives its message: the handler
    it returns takes a stream, which grpcio reads only when asked, and never asks."""

    def __init__(self, callers: Callers) -> None:
        self.callers = callers
        self._refusal = grpc.stream_unary_rpc_method_handler(_refuse_unauthenticated)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = str(details.method).rpartition("/")[2]
        if method not in OPEN_METHODS and self.callers.required:
            given = _metadata(details.invocation_metadata).get("authorization", "")
            if self.callers.identify(given, "") is None:
                return self._refusal
        return await continuation(details)


class GrpcIngress(Service):
    """The gRPC server; ``port`` 0 picks a free one (read ``port`` after start). ``callers``
    and ``gate`` are shared with the REST transport (default: the ``token`` alone, and a gate
    of default limits with ``max_message`` as its largest body)."""

    def __init__(
        self,
        ingress: Ingress,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str = "",
        max_message: int = 64 << 20,
        callers: Callers | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.ingress = ingress
        self.host = host
        self.port = port
        self.callers = callers or Callers(token)
        self.gate = gate or Gate(GateLimits(max_body=max_message))
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _start(self) -> None:
        largest = self.gate.limits.max_body
        server = grpc.aio.server(
            interceptors=[TokenCheck(self.callers)],
            options=[
                ("grpc.max_receive_message_length", largest),
                ("grpc.max_send_message_length", largest),
            ],
        )
        handlers = {
            "ServerLive": self._rpc(self._server_live, None),
            "ServerReady": self._rpc(self._server_ready, None),
            "ModelReady": self._rpc(self._model_ready, pb.ModelReadyRequest),
            "ServerMetadata": self._rpc(self._server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": self._rpc(self._model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": self._rpc(self._model_infer, pb.ModelInferRequest),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        await server.start()
        self._server = server

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=2.0)
            # grpcio joins its poller thread when the last server and call state are freed: let
            # that happen off the event loop (a collection in a worker frees what is left).
            holder = [self._server]
            self._server = None
            await asyncio.to_thread(holder.clear)
            await asyncio.to_thread(gc.collect)

    def _rpc(self, fn: Unary, request_type: Any) -> grpc.RpcMethodHandler:
        """``fn`` behind the gate; ``request_type`` None: the request is never read."""

        async def call(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if request_type is None:
                    return await fn(None, context)
                return await self._admitted(fn, request_type, context)
            except MeshError as exc:
                await context.abort(
                    GRPC_STATUS.get(exc.code, grpc.StatusCode.INTERNAL), exc.message
                )

        return grpc.stream_unary_rpc_method_handler(
            call, response_serializer=lambda m: m.SerializeToString()
        )

    async def _admitted(
        self, fn: Unary, request_type: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        given = _metadata(context.invocation_metadata()).get("authorization", "")
        caller = self.callers.identify(given, peer_address(str(context.peer())))
        if caller is None:  # TokenCheck refused it already; never read what it sends
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
            return None
        with self.gate.enter(caller) as ticket:
            await ticket.reserve(self.gate.limits.max_body)
            raw = await self._receive(context)
            ticket.keep(len(raw))
            try:
                request = request_type.FromString(raw)
            except DecodeError:
                raise InvalidArgumentError(
                    f"the request is not a {request_type.__name__} message"
                ) from None
            del raw
            return await fn(request, context)

    async def _receive(self, context: grpc.aio.ServicerContext) -> bytes:
        timeout = self.gate.limits.body_timeout_s
        try:
            async with asyncio.timeout(timeout):
                raw = await context.read()
        except TimeoutError:
            raise BodyTimeoutError(
                f"the request message did not arrive within {timeout:g} s"
            ) from None
        if raw is grpc.aio.EOF:
            raise InvalidArgumentError("the call carries no request message")
        return raw if isinstance(raw, bytes) else bytes(raw)

    async def _server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self.ingress.live())

    async def _server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.ingress.ready())

    async def _model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.ingress.require_model(request.name, request.version or None)
        return pb.ModelReadyResponse(
            ready=self.ingress.model_ready(request.name, request.version or None)
        )

    async def _server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.ingress.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def _model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.ingress.model_metadata(request.name, request.version or None)
        out = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for key in ("inputs", "outputs"):
            for t in meta[key]:
                getattr(out, key).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return out

    async def _model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = {k: str(v) for k, v in (context.invocation_metadata() or ())}
        self.ingress.require_model(request.model_name, request.model_version or None)
        parsed = await drive(to_request_steps(request))
        budget = metadata.get(BUDGET_KEY)
        try:
            budget_ms = None if budget is None else float(budget)
        except ValueError:
            text = str(budget)[:20]
            raise InvalidArgumentError(f"{BUDGET_KEY} {text!r} is not a number") from None
        answer = await self.ingress.infer(
            parsed,
            traceparent=metadata if "traceparent" in metadata else None,
            budget_ms=budget_ms,
            residency=metadata.get(RESIDENCY_KEY),
            span_name="ModelInfer",
        )
        return to_response(answer)
