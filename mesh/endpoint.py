"""The NATS adapter of a tier node: messages in, ``DataPlane`` calls, replies out.

It decides nothing. It subscribes the tier's subjects in the tier's queue group (and the entry
subjects on the entry tier), runs each request as its own task so one slow escalation does not
hold up the subscription, answers every request (a malformed one gets an error reply), and
carries the trace context from the message headers into the request's span.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Self

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace

from mesh import subjects, tracing, wire
from mesh.dataplane import DataPlane
from mesh.errors import (
    HTTP_STATUS,
    InternalError,
    InvalidArgumentError,
    MeshError,
    ResourceExhaustedError,
)
from mesh.metrics import MeshMetrics, default_metrics

log = logging.getLogger("mesh.endpoint")


class NatsEndpoint:
    def __init__(
        self,
        nc: NATS,
        dataplane: DataPlane,
        *,
        entry: bool = False,
        max_inflight: int = 1024,
        metrics: MeshMetrics | None = None,
    ) -> None:
        self._nc = nc
        self._dataplane = dataplane
        self._entry = entry
        self._max_inflight = max_inflight
        self._metrics = metrics or default_metrics()
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._identity = dataplane.identity

    async def start(self) -> None:
        tier = self._identity.tier
        self._subs.append(
            await self._nc.subscribe(
                subjects.tier_wildcard(tier), queue=subjects.tier_queue(tier), cb=self._on_message
            )
        )
        if self._entry:
            self._subs.append(
                await self._nc.subscribe(
                    subjects.ENTRY_WILDCARD, queue=subjects.ENTRY_QUEUE, cb=self._on_message
                )
            )
        await self._nc.flush()

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Stop taking requests, then let those in flight finish (idempotent)."""
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_seconds)
            while pending:
                # Cancel again until done: a cancel can be lost inside a 3.11 wait_for.
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=0.5)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    async def _on_message(self, msg: Msg) -> None:
        received_at = time.monotonic()
        if len(self._tasks) >= self._max_inflight:
            await self._reply_error(
                msg,
                wire.peek_id(msg.data),
                ResourceExhaustedError(
                    f"node {self._identity.node} has {self._max_inflight} requests in flight; "
                    "retry with backoff or add replicas"
                ),
            )
            return
        task = asyncio.create_task(self._handle(msg, received_at))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg, received_at: float) -> None:
        tier = self._identity.tier
        span_scope: AbstractContextManager[trace.Span] = (
            tracing.TRACER.start_as_current_span(
                f"process {msg.subject}",
                context=tracing.extract(msg.headers),
                kind=tracing.SpanKind.CONSUMER,
                attributes={
                    tracing.MESSAGING_SYSTEM: "nats",
                    tracing.DESTINATION: msg.subject,
                    tracing.OPERATION_TYPE: "process",
                    tracing.OPERATION_NAME: "process",
                    tracing.BODY_SIZE: len(msg.data),
                    tracing.CONSUMER_GROUP: subjects.tier_queue(tier),
                    tracing.TIER: tier,
                    tracing.NODE: self._identity.node,
                },
            )
            if tracing.wanted(msg.headers)
            else contextlib.nullcontext(trace.INVALID_SPAN)
        )
        with span_scope as span:
            request_id = ""
            model = subjects.model_of(msg.subject)
            try:
                request = wire.decode_request(msg.data)
                request_id, model = request.id, request.model
                span.set_attribute(tracing.MESSAGE_ID, request_id)
                span.set_attribute(tracing.MODEL, model)
                if model != subjects.model_of(msg.subject):
                    raise InvalidArgumentError(
                        f"request for model {model!r} sent to subject {msg.subject!r}"
                    )
                response = await self._dataplane.infer(request, received_at)
            except MeshError as error:
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
                span.set_attribute("error.type", error.code.value)
                await self._reply_error(msg, request_id, error)
                self._count(model, "error", received_at, code=error.code.value)
                return
            except Exception as exc:
                log.exception("request %s failed inside node %s", request_id, self._identity.node)
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, repr(exc)))
                internal = InternalError(f"{type(exc).__name__}: {exc}")
                await self._reply_error(msg, request_id, internal)
                self._count(model, "error", received_at, code="INTERNAL")
                return
            span.set_attributes(
                {
                    tracing.MODEL_VERSION: response.model_version,
                    tracing.CONFIDENCE: response.confidence,
                    tracing.ESCALATED: response.tier != tier,
                    tracing.ANSWERED_BY: response.tier,
                    tracing.DEGRADED: response.degraded,
                }
            )
            if response.reason is not None:
                span.set_attribute(tracing.DEGRADED_REASON, response.reason)
            await self._respond(msg, wire.encode_response(response))
            self._count(model, _outcome(response, tier), received_at)

    def _count(self, model: str, outcome: str, received_at: float, code: str = "") -> None:
        # Recorded on the next pass of the loop, after the reply has been flushed: the metrics
        # SDK costs ~15 us a request, which the caller should not wait for.
        elapsed_ms = (time.monotonic() - received_at) * 1000.0
        asyncio.get_running_loop().call_soon(self._record, model, outcome, elapsed_ms, code)

    def _record(self, model: str, outcome: str, elapsed_ms: float, code: str) -> None:
        attributes = {"tier": self._identity.tier, "model": model, "outcome": outcome}
        self._metrics.latency.record(elapsed_ms, attributes)
        if code:
            attributes = {**attributes, "code": code}
        self._metrics.requests.add(1, attributes)

    async def _reply_error(self, msg: Msg, request_id: str, error: MeshError) -> None:
        reply = wire.ErrorReply(
            id=request_id,
            code=error.code,
            message=error.message,
            tier=self._identity.tier,
            node=self._identity.node,
        )
        headers = {
            "Nats-Service-Error": error.message[:256].replace("\r", " ").replace("\n", " "),
            "Nats-Service-Error-Code": str(HTTP_STATUS[error.code]),
        }
        await self._respond(msg, wire.encode_error(reply), headers)

    async def _respond(self, msg: Msg, data: bytes, headers: dict[str, str] | None = None) -> None:
        if not msg.reply:
            log.warning("request on %s has no reply subject; answer dropped", msg.subject)
            return
        try:
            await self._nc.publish(msg.reply, data, headers=headers)
        except Exception:
            log.exception("could not reply on %s", msg.reply)


def _outcome(response: wire.InferResponse, tier: str) -> str:
    if response.degraded:
        return "degraded"
    if response.tier != tier:
        return "escalated"
    return "answered"
