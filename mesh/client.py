"""The application SDK: ``result = await client.infer("digits", x, budget_ms=200)``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import nats
import nats.errors
import numpy as np
from nats.aio.client import Client as NATS

from mesh import subjects, tracing, wire
from mesh.errors import DeadlineExceededError, UnavailableError
from mesh.typedefs import Array

#: name a single array is sent under; a single-input model takes it whatever its input's name.
DEFAULT_INPUT = "input"


@dataclass(frozen=True, slots=True)
class InferResult:
    id: str
    model: str
    outputs: dict[str, Array]
    labels: list[int]
    confidence: float
    confidence_kind: str
    tier: str
    node: str
    model_version: str
    path: list[wire.Hop]
    degraded: bool
    reason: str | None
    #: bytes of the request as sent.
    request_bytes: int

    @property
    def label(self) -> int | None:
        """The predicted class of the first row."""
        return self.labels[0] if self.labels else None

    @classmethod
    def from_response(cls, resp: wire.InferResponse, request_bytes: int) -> InferResult:
        return cls(
            id=resp.id,
            model=resp.model,
            outputs=resp.outputs,
            labels=resp.labels,
            confidence=resp.confidence,
            confidence_kind=resp.confidence_kind,
            tier=resp.tier,
            node=resp.node,
            model_version=resp.model_version,
            path=resp.path,
            degraded=resp.degraded,
            reason=resp.reason,
            request_bytes=request_bytes,
        )


class MeshClient:
    """A connection to the mesh through the application's local NATS server."""

    def __init__(self, nc: NATS, *, owns_connection: bool = True, grace_ms: float = 250.0) -> None:
        self._nc = nc
        self._owns = owns_connection
        #: extra wait past the budget before giving up: the mesh answers within the budget,
        #: so a reply later than this means something broke, not that the tier was slow.
        self.grace_ms = grace_ms

    @classmethod
    async def connect(cls, servers: str | list[str], **options: Any) -> MeshClient:
        options.setdefault("name", "mesh-client")
        options.setdefault("max_reconnect_attempts", -1)
        nc = await nats.connect(servers, **options)
        return cls(nc)

    @property
    def nats(self) -> NATS:
        return self._nc

    async def infer(
        self,
        model: str,
        inputs: Array | Mapping[str, Any],
        *,
        budget_ms: float = 1000.0,
        residency: str = "any",
        request_id: str | None = None,
        tier: str | None = None,
    ) -> InferResult:
        """Ask the mesh; ``tier`` addresses one tier directly instead of the entry tier."""
        if isinstance(inputs, Mapping):
            tensors = {name: np.asarray(value) for name, value in inputs.items()}
        else:
            tensors = {DEFAULT_INPUT: np.asarray(inputs)}
        request = wire.InferRequest(
            id=request_id or uuid.uuid4().hex,
            model=subjects.check_token(model, "model name"),
            inputs=tensors,
            budget_ms=float(budget_ms),
            residency=residency,
        )
        payload = wire.encode_request(request)
        subject = subjects.entry(model) if tier is None else subjects.tier_infer(tier, model)
        timeout = (budget_ms + self.grace_ms) / 1000.0
        with tracing.TRACER.start_as_current_span(
            f"send {subject}",
            kind=tracing.SpanKind.PRODUCER,
            attributes={
                tracing.MESSAGING_SYSTEM: "nats",
                tracing.DESTINATION: subject,
                tracing.OPERATION_TYPE: "send",
                tracing.OPERATION_NAME: "request",
                tracing.MESSAGE_ID: request.id,
                tracing.BODY_SIZE: len(payload),
                tracing.MODEL: model,
            },
        ) as span:
            try:
                msg = await self._nc.request(
                    subject, payload, timeout=timeout, headers=tracing.inject()
                )
            except nats.errors.NoRespondersError:
                raise UnavailableError(
                    f"no tier serves {subject} on this NATS server (no responders): "
                    "is a node running and connected?"
                ) from None
            except nats.errors.TimeoutError:
                raise DeadlineExceededError(
                    f"no answer for request {request.id} within {budget_ms:.0f} ms "
                    f"(+{self.grace_ms:.0f} ms grace)"
                ) from None
            reply = wire.decode_reply(msg.data)
            if isinstance(reply, wire.ErrorReply):
                span.set_attribute("error.type", reply.code.value)
                raise reply.to_exception()
            span.set_attributes(
                {
                    tracing.ANSWERED_BY: reply.tier,
                    tracing.CONFIDENCE: reply.confidence,
                    tracing.DEGRADED: reply.degraded,
                }
            )
            return InferResult.from_response(reply, len(payload))

    async def close(self) -> None:
        if self._owns and not self._nc.is_closed:
            await self._nc.drain()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
