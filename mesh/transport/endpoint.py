"""The NATS adapter of a tier node: messages in, ``DataPlane`` calls, replies out.

It decides nothing. It subscribes the tier's subjects in the tier's queue group (and the entry
subjects on the entry tier) and takes every message already waiting on a subscription as one
batch: nats-py hands the subscription's queued messages to the callback one after another
without yielding to the event loop, so the callback collects them while
``Subscription.pending_msgs`` says more are queued, and runs the batch through the data plane's
local pass when the queue is empty (or the batch is full). Answered requests are replied to at
once; those that escalate, and those that carry a trace to continue (their spans need a context
of their own), continue on a task each. Every request is answered: a malformed one with an
error reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from contextlib import AbstractContextManager
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace

from mesh import wire
from mesh.errors import (
    HTTP_STATUS,
    InternalError,
    InvalidArgumentError,
    MeshError,
    ResourceExhaustedError,
)
from mesh.lifecycle import Service, cancel_and_wait
from mesh.node.admission import Admission, caller_name, caller_of
from mesh.node.answered import AnswerLedger
from mesh.node.dataplane import DataPlane
from mesh.node.outcomes import Outcome
from mesh.observability import tracing
from mesh.observability.metrics import MeshMetrics
from mesh.topology import parameters, subjects
from mesh.transport.guard import flush_in_order

log = logging.getLogger("mesh.endpoint")

#: seconds between two warnings about messages dropped for want of a reply subject.
DROP_WARNING_INTERVAL_S = 10.0

Batch = list[tuple[Msg, float]]


class _Collector:
    """Collects the messages queued on one subscription into a batch."""

    def __init__(self, endpoint: NatsEndpoint, limit: int) -> None:
        self.endpoint = endpoint
        self.limit = max(limit, 1)
        self.sub: Subscription | None = None
        self.batch: Batch = []

    async def on_message(self, msg: Msg) -> None:
        batch = self.batch
        batch.append((msg, time.monotonic()))
        sub = self.sub
        if len(batch) < self.limit and sub is not None and sub.pending_msgs > 0:
            return
        self.batch = []
        await self.endpoint.handle_batch(batch)


class NatsEndpoint(Service):
    def __init__(
        self,
        nc: NATS,
        dataplane: DataPlane,
        *,
        entry: bool = False,
        max_inflight: int = 1024,
        max_inflight_per_caller: int = 0,
        max_batch: int = 32,
        drain_seconds: float = 5.0,
        metrics: MeshMetrics,
    ) -> None:
        self._nc = nc
        self._dataplane = dataplane
        self._entry = entry
        self._admission = Admission(max_inflight, max_inflight_per_caller)
        #: escalations and audits answered for the tier below, per caller (the heartbeat's)
        self.answered = AnswerLedger()
        self._max_batch = max_batch
        self._drain_seconds = drain_seconds
        self._metrics = metrics
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._identity = dataplane.identity
        self._tier = dataplane.identity.tier
        self._last_drop_warning = 0.0

    async def _start(self) -> None:
        tier = self._tier
        queue = subjects.tier_queue(tier)
        # One subscription per model served here: a tier's nodes may serve different models
        # (and a new version may reach some replicas first), and a request for a model goes
        # only to the nodes that serve it. Requests for models no node of the tier serves come
        # on the forward subject, to be passed up.
        wanted = [
            (subjects.tier_infer(tier, name), queue) for name in self._dataplane.models.models
        ]
        wanted.append((subjects.tier_forward_wildcard(tier), queue))
        if self._entry:
            wanted.append((subjects.ENTRY_WILDCARD, subjects.ENTRY_QUEUE))
        for subject, queue in wanted:
            await self._subscribe(subject, queue)
        await flush_in_order(self._nc)

    async def serve_model(self, name: str) -> None:
        """Take the tier's requests for a model added while running."""
        await self._subscribe(
            subjects.tier_infer(self._tier, name), subjects.tier_queue(self._tier)
        )
        await flush_in_order(self._nc)

    async def _subscribe(self, subject: str, queue: str) -> None:
        collector = _Collector(self, self._max_batch)
        collector.sub = await self._nc.subscribe(subject, queue=queue, cb=collector.on_message)
        self._subs.append(collector.sub)

    async def _stop(self) -> None:
        """Stop taking requests, then let those in flight finish."""
        subs, self._subs = self._subs, []
        # Drain, not unsubscribe: a batch runs inside nats-py's delivery task, which unsubscribe
        # would cancel half-way; drain stops delivery, then lets the queued messages and the
        # batch under way finish.
        for sub in subs:
            try:
                async with asyncio.timeout(self._drain_seconds):
                    await sub.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
            except Exception:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._drain_seconds)
            await cancel_and_wait(pending)

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    @property
    def admission(self) -> Admission:
        return self._admission

    # --- a batch -----------------------------------------------------------------------------

    async def handle_batch(self, batch: Batch) -> None:
        requests: list[tuple[wire.InferRequest, float]] = []
        replies: list[Msg] = []
        admission = self._admission
        recording = tracing.recording()
        for msg, received_at in batch:
            reply = msg.reply
            if not reply:
                self._drop(msg)
                continue
            # a batch is answered here or goes on a task each; a caller is held to its share
            # of the requests that wait (a batch's own may pass it by at most a batch)
            refusal = admission.refusal(caller_of(reply))
            if refusal is not None:
                await self._refuse_busy(msg, refusal)
                continue
            headers = msg.headers
            if recording or (headers and "traceparent" in headers):
                self._spawn(self._handle_traced(msg, received_at), reply)
                continue
            try:
                request = self._decode(msg)
            except MeshError as error:
                await self._reply_error(msg, wire.peek_id(msg.data), error)
                self._count(subjects.model_of(msg.subject), "error", received_at, error.code.value)
                continue
            requests.append((request, received_at))
            replies.append(msg)
        if not requests:
            return
        try:
            outcomes = await self._dataplane.answer_batch_async(requests)
        except Exception as exc:
            log.exception("a batch of %d failed inside node %s", len(requests), self._identity.node)
            for msg, (request, received_at) in zip(replies, requests, strict=True):
                await self._reply_error(msg, request.id, InternalError(f"{type(exc).__name__}"))
                self._count(request.model, "error", received_at, "INTERNAL")
            return
        publish = self._nc.publish
        encode = wire.encode_response
        answered: list[Outcome] = []
        for msg, outcome in zip(replies, outcomes, strict=True):
            if outcome.response is not None:
                try:
                    await publish(msg.reply, encode(outcome.response))
                except Exception:
                    log.exception("could not reply on %s", msg.reply[:128])
                else:
                    if outcome.request.hops:  # from a tier below: an escalation or an audit
                        self.answered.count(msg.reply, outcome.request.model)
                answered.append(outcome)
            elif outcome.error is not None:
                await self._reply_error(msg, outcome.request.id, outcome.error)
                self._count(
                    outcome.request.model, "error", outcome.received_at, outcome.error.code.value
                )
            else:
                self._spawn(self._complete(msg, outcome), msg.reply)
        if answered:
            # After the replies go out: the connection's flusher task was woken by the first
            # publish, so it writes them before this runs.
            asyncio.get_running_loop().call_soon(self._count_answered, answered)

    def _decode(self, msg: Msg) -> wire.InferRequest:
        request = wire.decode_request(msg.data)
        if request.model != subjects.model_of(msg.subject):
            raise InvalidArgumentError(
                f"request for model {request.model[:64]!r} sent to subject {msg.subject[:128]!r}"
            )
        if not request.hops:
            # fresh from a client: whoever reads the reply is whom a label of it is told to,
            # and no tier has answered it yet (a client's own word for either is dropped); the
            # dict was made by the decoder just now
            params = request.parameters
            caller = caller_name(msg.reply or "")
            if caller:
                params[parameters.CALLER] = caller
            else:
                params.pop(parameters.CALLER, None)
            params.pop(parameters.ANSWERS, None)
        return request

    def _spawn(self, work: Coroutine[Any, Any, None], reply: str) -> None:
        caller = caller_of(reply)
        self._admission.acquire(caller)
        task = asyncio.create_task(work)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self._admission.release(caller)

        task.add_done_callback(done)

    async def _complete(self, msg: Msg, outcome: Outcome) -> None:
        request = outcome.request
        try:
            response = await self._dataplane.complete(outcome)
        except MeshError as error:
            await self._reply_error(msg, request.id, error)
            self._count(request.model, "error", outcome.received_at, error.code.value)
            return
        except Exception as exc:
            log.exception("request %s failed inside node %s", request.id, self._identity.node)
            await self._reply_error(msg, request.id, InternalError(f"{type(exc).__name__}: {exc}"))
            self._count(request.model, "error", outcome.received_at, "INTERNAL")
            return
        await self._respond(msg, wire.encode_response(response))
        self._count(request.model, _outcome(response, self._tier), outcome.received_at)
        if request.hops:
            self.answered.count(msg.reply, self._dataplane.metric_model(request.model))

    # --- a traced request, on its own task ---------------------------------------------------

    async def _handle_traced(self, msg: Msg, received_at: float) -> None:
        tier = self._tier
        span_scope: AbstractContextManager[trace.Span] = tracing.TRACER.start_as_current_span(
            f"process {msg.subject}",
            context=tracing.extract(msg.headers),
            kind=tracing.SpanKind.CONSUMER,
            attributes={
                tracing.MESSAGING_SYSTEM: "nats",
                tracing.DESTINATION: msg.subject,
                tracing.OPERATION_TYPE: "process",
                tracing.OPERATION_NAME: "process",
                tracing.BODY_SIZE: len(msg.data),
                tracing.CONSUMER_GROUP: _queue_of(msg.subject, tier),
                tracing.TIER: tier,
                tracing.NODE: self._identity.node,
            },
        )
        with span_scope as span:
            request_id = ""
            model = subjects.model_of(msg.subject)
            try:
                request = self._decode(msg)
                request_id, model = request.id, request.model
                span.set_attribute(tracing.MESSAGE_ID, request_id)
                span.set_attribute(tracing.MODEL, model)
                (outcome,) = await self._dataplane.answer_batch_async([(request, received_at)])
                if outcome.escalation_reason is not None:
                    span.set_attribute(tracing.ESCALATION_REASON, outcome.escalation_reason.value)
                response = await self._dataplane.finish(outcome)
            except MeshError as error:
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
                span.set_attribute("error.type", error.code.value)
                await self._reply_error(msg, request_id, error)
                self._count(model, "error", received_at, error.code.value)
                return
            except Exception as exc:
                log.exception("request %s failed inside node %s", request_id, self._identity.node)
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, repr(exc)))
                await self._reply_error(msg, request_id, InternalError(f"{type(exc).__name__}"))
                self._count(model, "error", received_at, "INTERNAL")
                return
            tracing.record_answer(span, response, tier)
            await self._respond(msg, wire.encode_response(response))
            self._count(model, _outcome(response, tier), received_at)
            if request.hops:
                self.answered.count(msg.reply, self._dataplane.metric_model(model))

    # --- replies and counts ------------------------------------------------------------------

    def _count_answered(self, outcomes: list[Outcome]) -> None:
        """Count a batch's answers (each has its response): one clock read for them all."""
        now = time.monotonic()
        tier = self._tier
        latency, requests = self._metrics.latency, self._metrics.requests
        for outcome in outcomes:
            response = outcome.response
            assert response is not None
            label = self._dataplane.metric_model(outcome.request.model)
            kind = _outcome(response, tier)
            latency.observe((now - outcome.received_at) * 1000.0, tier, label, kind)
            requests.add(1, tier, label, kind, "")

    def _count(self, model: str, outcome: str, received_at: float, code: str = "") -> None:
        elapsed_ms = (time.monotonic() - received_at) * 1000.0
        label = self._dataplane.metric_model(model)
        self._metrics.latency.observe(elapsed_ms, self._tier, label, outcome)
        self._metrics.requests.add(1, self._tier, label, outcome, code)

    def _drop(self, msg: Msg) -> None:
        """A request with no reply subject: nobody can receive an answer, so none is computed."""
        self._metrics.dropped.add(1, self._tier)
        now = time.monotonic()
        if now - self._last_drop_warning >= DROP_WARNING_INTERVAL_S:
            self._last_drop_warning = now
            log.warning(
                "dropped a request on %s with no reply subject (counted in "
                "mesh_dropped_messages_total; warned at most every %.0f s)",
                msg.subject[:128],
                DROP_WARNING_INTERVAL_S,
            )

    async def _refuse_busy(self, msg: Msg, refusal: str) -> None:
        await self._reply_error(
            msg,
            wire.peek_id(msg.data),
            ResourceExhaustedError(
                f"node {self._identity.node} has {refusal}; retry with backoff or add replicas"
            ),
        )

    async def _reply_error(self, msg: Msg, request_id: str, error: MeshError) -> None:
        reply = wire.ErrorReply(
            id=request_id[: wire.MAX_ID_LENGTH],
            code=error.code,
            message=error.message,
            tier=self._tier,
            node=self._identity.node,
        )
        headers = {
            "Nats-Service-Error": error.message[:256].replace("\r", " ").replace("\n", " "),
            "Nats-Service-Error-Code": str(HTTP_STATUS[error.code]),
        }
        await self._respond(msg, wire.encode_error(reply), headers)

    async def _respond(self, msg: Msg, data: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            await self._nc.publish(msg.reply, data, headers=headers)
        except Exception:
            log.exception("could not reply on %s", msg.reply[:128])


def _outcome(response: wire.InferResponse, tier: str) -> str:
    if response.degraded:
        return "degraded"
    if response.tier != tier:
        return "escalated"
    return "answered"


def _queue_of(subject: str, tier: str) -> str:
    if subject.startswith(subjects.ENTRY_PREFIX):
        return subjects.ENTRY_QUEUE
    return subjects.tier_queue(tier)
