"""The request path of a tier, top to bottom, independent of any transport.

validate -> infer (micro-batched ONNX Runtime) -> score -> policy -> answer here, or escalate to
the upstream tier and relay its answer; when escalation is refused or fails, answer here marked
degraded and keep the case as a hard example for store-and-forward. The NATS adapter
(``mesh.endpoint``) and any other transport only translate to and from this class.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry import trace

from mesh import policy, tracing, wire
from mesh.errors import InvalidArgumentError, NotFoundError, UnavailableError
from mesh.metrics import MeshMetrics, default_metrics
from mesh.policy import Action, Assessment, DegradedReason
from mesh.served import LocalAnswer, ServedModel
from mesh.upstream import UpstreamFailure, UpstreamLink

log = logging.getLogger("mesh.dataplane")


class HardExampleSink(Protocol):
    """Where cases go that were meant for upstream but answered here (store-and-forward)."""

    async def record(
        self, request: wire.InferRequest, answer: wire.InferResponse, reason: str
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class TierIdentity:
    tier: str
    node: str
    zone: str
    max_hops: int = 8


@dataclass
class ModelTable:
    """The models a tier serves, by name; a version swap replaces an entry atomically."""

    models: dict[str, ServedModel] = field(default_factory=dict)

    def get(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    def put(self, model: ServedModel) -> ServedModel | None:
        """Serve ``model``; returns the one it replaced. Requests already running keep theirs."""
        previous = self.models.get(model.name)
        self.models[model.name] = model
        return previous

    def versions(self) -> dict[str, str]:
        return {name: m.version for name, m in self.models.items()}


class DataPlane:
    def __init__(
        self,
        identity: TierIdentity,
        models: ModelTable,
        upstream: UpstreamLink | None = None,
        hard_examples: HardExampleSink | None = None,
        metrics: MeshMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self.models = models
        self.upstream = upstream
        self.hard_examples = hard_examples
        self.metrics = metrics or default_metrics()
        self._clock = clock
        self._recording: set[asyncio.Task[None]] = set()

    async def infer(self, request: wire.InferRequest, received_at: float) -> wire.InferResponse:
        """Answer ``request``, received at ``received_at`` (this tier's clock)."""
        if request.hops >= self.identity.max_hops:
            raise InvalidArgumentError(
                f"request {request.id} has passed {request.hops} tiers; the mesh allows "
                f"{self.identity.max_hops}: check the upstream chain for a loop"
            )
        model = self.models.get(request.model)
        if model is None:
            return await self._forward(request, received_at)

        feeds = model.validate(request.inputs)
        outputs = await model.infer(feeds)
        local = model.assess(feeds, outputs)
        model.observe_drift(feeds, local)

        decision = policy.decide(
            Assessment(local.confidence, local.novelty),
            model.thresholds,
            budget_ms=self._budget_left(request, received_at),
            residency=request.residency,
            upstream=self.upstream.view() if self.upstream is not None else None,
        )
        span = trace.get_current_span()
        if decision.escalation is not None:
            self.metrics.escalations.add(
                1,
                {
                    "tier": self.identity.tier,
                    "model": model.name,
                    "reason": decision.escalation.value,
                },
            )
            span.set_attribute(tracing.ESCALATION_REASON, decision.escalation.value)

        degraded = decision.degraded
        if decision.action is Action.ESCALATE and self.upstream is not None:
            try:
                reply = await self._escalate(self.upstream, request, received_at)
            except UpstreamFailure as failure:
                degraded = failure.reason
                log.info(
                    "request %s answered at %s: escalation failed (%s)",
                    request.id,
                    self.identity.tier,
                    failure.detail,
                )
            else:
                return self._relay(
                    reply, received_at, "escalated", model, local.confidence, decision.escalation
                )

        answer = self._answer(request, model, local, degraded, received_at)
        if degraded is not None:
            self.metrics.degraded.add(
                1, {"tier": self.identity.tier, "model": model.name, "reason": degraded.value}
            )
            self._keep_hard_example(request, answer, degraded)
        return answer

    async def _forward(self, request: wire.InferRequest, received_at: float) -> wire.InferResponse:
        """A model not served here: the "complex" case, passed up with no local answer."""
        self.metrics.escalations.add(
            1, {"tier": self.identity.tier, "model": request.model, "reason": "not_served"}
        )
        if self.upstream is None:
            raise NotFoundError(
                f"model {request.model!r} is not served at tier {self.identity.tier}, "
                "the top of the chain"
            )
        if wire.zone_rank(self.upstream.zone) > wire.zone_rank(request.residency):
            raise NotFoundError(
                f"model {request.model!r} is not served within residency "
                f"{request.residency!r} (tier {self.identity.tier} does not serve it)"
            )
        try:
            reply = await self._escalate(self.upstream, request, received_at)
        except UpstreamFailure as failure:
            if failure.error is not None:
                raise failure.error.to_exception() from None
            raise UnavailableError(
                f"model {request.model!r} is served only above tier {self.identity.tier}, "
                f"which cannot reach it: {failure.detail}"
            ) from None
        return self._relay(
            reply, received_at, "forwarded", None, None, policy.EscalationReason.NOT_SERVED
        )

    async def _escalate(
        self, upstream: UpstreamLink, request: wire.InferRequest, received_at: float
    ) -> wire.InferResponse:
        subject = upstream.transport.subject(request.model)
        with tracing.TRACER.start_as_current_span(
            f"send {subject}",
            kind=tracing.SpanKind.CLIENT,
            attributes={
                tracing.MESSAGING_SYSTEM: "nats",
                tracing.DESTINATION: subject,
                tracing.OPERATION_TYPE: "send",
                tracing.OPERATION_NAME: "request",
                tracing.MESSAGE_ID: request.id,
                tracing.TIER: self.identity.tier,
                tracing.MODEL: request.model,
            },
        ) as span:
            try:
                reply = await upstream.escalate(
                    request, self._budget_left(request, received_at), tracing.inject()
                )
            except UpstreamFailure as failure:
                span.set_attribute(tracing.DEGRADED_REASON, failure.reason.value)
                span.set_status(trace.Status(trace.StatusCode.ERROR, failure.detail))
                raise
            span.set_attribute(tracing.BODY_SIZE, reply.request_bytes)
            span.set_attribute(tracing.ANSWERED_BY, reply.response.tier)
        self.metrics.upstream_bytes.add(
            reply.request_bytes, {"tier": self.identity.tier, "upstream": upstream.tier}
        )
        return reply.response

    def _relay(
        self,
        response: wire.InferResponse,
        received_at: float,
        action: str,
        model: ServedModel | None,
        local_confidence: float | None,
        reason: policy.EscalationReason | None,
    ) -> wire.InferResponse:
        hop = wire.Hop(
            tier=self.identity.tier,
            node=self.identity.node,
            action=action,
            latency_ms=self._elapsed_ms(received_at),
            model_version=model.version if model is not None else None,
            confidence=local_confidence,
            reason=reason.value if reason is not None else None,
        )
        return wire.InferResponse(
            id=response.id,
            model=response.model,
            model_version=response.model_version,
            tier=response.tier,
            node=response.node,
            outputs=response.outputs,
            labels=response.labels,
            confidence=response.confidence,
            confidence_kind=response.confidence_kind,
            path=[hop, *response.path],
            degraded=response.degraded,
            reason=response.reason,
        )

    def _answer(
        self,
        request: wire.InferRequest,
        model: ServedModel,
        local: LocalAnswer,
        degraded: DegradedReason | None,
        received_at: float,
    ) -> wire.InferResponse:
        hop = wire.Hop(
            tier=self.identity.tier,
            node=self.identity.node,
            action="answered" if degraded is None else "fallback",
            latency_ms=self._elapsed_ms(received_at),
            model_version=model.version,
            confidence=local.confidence,
            reason=degraded.value if degraded is not None else None,
        )
        return wire.InferResponse(
            id=request.id,
            model=model.name,
            model_version=model.version,
            tier=self.identity.tier,
            node=self.identity.node,
            outputs=local.outputs,
            labels=local.labels,
            confidence=local.confidence,
            confidence_kind=model.confidence_kind.value,
            path=[hop],
            degraded=degraded is not None,
            reason=degraded.value if degraded is not None else None,
        )

    def _keep_hard_example(
        self, request: wire.InferRequest, answer: wire.InferResponse, reason: DegradedReason
    ) -> None:
        """Record the case beside the reply, not before it: a degraded answer is needed most
        when things are slow, and must not wait for the store. ``close`` waits for them."""
        if self.hard_examples is None or reason is DegradedReason.RESIDENCY:
            # Residency forbids the raw input leaving this zone, later as much as now.
            return
        task = asyncio.create_task(self._record(self.hard_examples, request, answer, reason))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    @staticmethod
    async def _record(
        sink: HardExampleSink,
        request: wire.InferRequest,
        answer: wire.InferResponse,
        reason: DegradedReason,
    ) -> None:
        try:
            await sink.record(request, answer, reason.value)
        except Exception:
            log.exception("could not keep hard example %s", request.id)

    async def close(self, timeout: float = 5.0) -> None:
        """Wait for hard examples still being recorded."""
        if self._recording:
            await asyncio.wait(set(self._recording), timeout=timeout)

    def _elapsed_ms(self, received_at: float) -> float:
        return (self._clock() - received_at) * 1000.0

    def _budget_left(self, request: wire.InferRequest, received_at: float) -> float:
        return request.budget_ms - self._elapsed_ms(received_at)
