"""The ingress's gRPC transport: ``inference.GRPCInferenceService`` over ``Ingress``.

The service is registered by name with grpcio's generic handlers, over message classes built
from ``proto/grpc_predict_v2.proto`` (see there why their package is ``mesh_oip_v2``). Inputs
arrive as ``raw_input_contents`` or typed ``contents``; outputs leave as ``raw_output_contents``,
as Triton sends them. A client's mistake is INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED,
never INTERNAL; a missing or wrong bearer token (``authorization`` metadata) UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from mesh.errors import ErrorCode, InvalidArgumentError, MeshError
from mesh.ingress import oip
from mesh.ingress.core import Ingress
from mesh.ingress.proto import grpc_predict_v2_pb2 as pb
from mesh.lifecycle import Service

SERVICE = "inference.GRPCInferenceService"
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
    """A ``ModelInferRequest`` as an ``OipRequest``; raises typed errors."""
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise InvalidArgumentError(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs"
        )
    inputs: list[oip.OipTensor] = []
    for i, tensor in enumerate(msg.inputs):
        what = f"input {tensor.name or i}"
        if not tensor.name:
            raise InvalidArgumentError(f"input {i} needs a name")
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
            array = oip.from_values(values, dtype, shape, what)
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


class GrpcIngress(Service):
    """The gRPC server; ``port`` 0 picks a free one (read ``port`` after start)."""

    def __init__(
        self,
        ingress: Ingress,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str = "",
        max_message: int = 64 << 20,
    ) -> None:
        self.ingress = ingress
        self.host = host
        self.port = port
        self.token = token
        self.max_message = max_message
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _start(self) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_message),
                ("grpc.max_send_message_length", self.max_message),
            ]
        )
        handlers = {
            "ServerLive": self._rpc(self._server_live, pb.ServerLiveRequest),
            "ServerReady": self._rpc(self._server_ready, pb.ServerReadyRequest),
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
        open_call = fn in (self._server_live, self._server_ready)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.token and not open_call:
                given = dict(context.invocation_metadata() or ()).get("authorization", "")
                if not hmac.compare_digest(str(given).encode(), f"Bearer {self.token}".encode()):
                    await context.abort(
                        grpc.StatusCode.UNAUTHENTICATED,
                        "missing or wrong bearer token (authorization: Bearer ...)",
                    )
            try:
                return await fn(request, context)
            except MeshError as exc:
                await context.abort(
                    GRPC_STATUS.get(exc.code, grpc.StatusCode.INTERNAL), exc.message
                )

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=request_type.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )

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
        parsed = to_request(request)
        budget = metadata.get(BUDGET_KEY)
        try:
            budget_ms = None if budget is None else float(budget)
        except ValueError:
            text = str(budget)[:20]
            raise InvalidArgumentError(f"{BUDGET_KEY} {text!r} is not a number") from None
        answer = await self.ingress.infer(
            parsed,
            traceparent=metadata,
            budget_ms=budget_ms,
            residency=metadata.get(RESIDENCY_KEY),
            span_name="ModelInfer",
        )
        return to_response(answer)
