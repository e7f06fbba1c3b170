"""An edge tier inside the application's own process (``MeshClient.connect(url, local=...)``).

The application hosts a ``TierNode`` without its NATS endpoint: a request for a model it serves
goes straight to its data plane, with no network hop and no encoding. What the data plane
answers with confidence is the answer; what it is unsure of escalates over NATS exactly as an
edge node's requests do (same budgets, breaker, residency, hard examples, review feed), on the
hosted node's own connection and identity (``Role.LOCAL_EDGE``: an edge node's rights, without
taking requests or events over NATS). The fleet agent keeps its models current from the same
signed desired state, and its metrics, drift and discovery are an edge node's. The answer names
the tier and node that gave it, as every answer does.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mesh import wire
from mesh.errors import InternalError, MeshError
from mesh.lifecycle import Service
from mesh.node.dataplane import DataPlane
from mesh.node.outcomes import Outcome
from mesh.node.tier import TierNode
from mesh.observability import tracing
from mesh.observability.metrics import MeshMetrics, default_metrics
from mesh.settings import NodeSettings
from mesh.topology import parameters

#: what ``local=`` may name: an edge node's settings, or the YAML file they are read from.
LocalSettings = NodeSettings | Path | str


class LocalEdge(Service):
    """An edge tier hosted in this process: ``infer`` asks its data plane directly."""

    def __init__(
        self,
        settings: LocalSettings,
        *,
        caller: str = "",
        metrics: MeshMetrics | None = None,
    ) -> None:
        if not isinstance(settings, NodeSettings):
            settings = NodeSettings.load(Path(settings))
        self.node = TierNode(settings, metrics=metrics or default_metrics(), hosted=True)
        #: the application's identity name: a label given to one of its requests is told to it.
        self.caller = caller
        self.tier = settings.tier
        self._dataplane: DataPlane | None = None

    async def _start(self) -> None:
        await self.node.start()
        self._dataplane = self.node.dataplane

    async def _stop(self) -> None:
        self._dataplane = None
        await self.node.stop()

    def serves(self, model: str) -> bool:
        """Whether a request for ``model`` is answered here first (the fleet may add models)."""
        return self._dataplane is not None and self.node.models.get(model) is not None

    def version_of(self, model: str) -> str | None:
        """The version of ``model`` answered here now, if any."""
        served = self.node.models.get(model) if self._dataplane is not None else None
        return served.version if served is not None else None

    def serving(self) -> bool:
        """Whether it answers any model now."""
        return self._dataplane is not None and bool(self.node.models.models)

    async def infer(self, request: wire.InferRequest) -> wire.InferResponse:
        """The hosted tier's answer, as its NATS endpoint would have given it."""
        dataplane = self._dataplane
        if dataplane is None:
            raise InternalError("the in-process edge is not running")
        if self.caller:
            request.parameters[parameters.CALLER] = self.caller
        # An answer made in place (or a refusal) never suspends its caller: the loop runs once
        # per request, or a caller asking in a loop would starve every other task it has.
        await asyncio.sleep(0)
        received_at = time.monotonic()
        if tracing.wanted_here():
            return await self._traced(dataplane, request, received_at)
        (outcome,) = await dataplane.answer_batch_async([(request, received_at)])
        response = outcome.response
        if response is not None:
            asyncio.get_running_loop().call_soon(self._count, outcome, response)
            return response
        return await self._finish(dataplane, outcome)

    async def _finish(self, dataplane: DataPlane, outcome: Outcome) -> wire.InferResponse:
        try:
            response = await dataplane.finish(outcome)
        except MeshError as error:
            self._count_error(outcome, error.code.value)
            raise
        except Exception as exc:
            self._count_error(outcome, "INTERNAL")
            raise InternalError(f"request {outcome.request.id}: {type(exc).__name__}") from None
        self._count(outcome, response)
        return response

    async def _traced(
        self, dataplane: DataPlane, request: wire.InferRequest, received_at: float
    ) -> wire.InferResponse:
        tier = self.tier
        with tracing.TRACER.start_as_current_span(
            f"process local {request.model}",
            kind=tracing.SpanKind.INTERNAL,
            attributes={
                tracing.TIER: tier,
                tracing.NODE: self.node.settings.node,
                tracing.MESSAGE_ID: request.id,
                tracing.MODEL: request.model,
            },
        ) as span:
            (outcome,) = await dataplane.answer_batch_async([(request, received_at)])
            if outcome.escalation_reason is not None:
                span.set_attribute(tracing.ESCALATION_REASON, outcome.escalation_reason.value)
            response = await self._finish(dataplane, outcome)
            tracing.record_answer(span, response, tier)
            return response

    def _count(self, outcome: Outcome, response: wire.InferResponse) -> None:
        """The request's latency and outcome, under the same metrics as an edge node's."""
        tier = self.tier
        kind = (
            "degraded"
            if response.degraded
            else "escalated"
            if response.tier != tier
            else "answered"
        )
        self._observe(outcome, kind, "")

    def _count_error(self, outcome: Outcome, code: str) -> None:
        self._observe(outcome, "error", code)

    def _observe(self, outcome: Outcome, kind: str, code: str) -> None:
        metrics, dataplane = self.node.metrics, self._dataplane
        if dataplane is None:
            return
        label = dataplane.metric_model(outcome.request.model)
        elapsed_ms = (time.monotonic() - outcome.received_at) * 1000.0
        metrics.latency.observe(elapsed_ms, self.tier, label, kind)
        metrics.requests.add(1, self.tier, label, kind, code)


__all__ = ["LocalEdge", "LocalSettings"]
