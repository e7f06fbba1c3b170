"""Sending a request up a tier for the data plane: within what its budget leaves, held a moment
to go up with others under the power governor's ``coalesce`` step, and counted: its bytes in the
metrics, its messages and bytes each way in the energy ledger. Transport-free (the upstream is
an ``UpstreamLink``)."""

from __future__ import annotations

from collections.abc import Callable

from mesh import wire
from mesh.energy.coalesce import Coalescer
from mesh.energy.governor import Savings
from mesh.energy.ledger import EnergyLedger
from mesh.node.policy import DegradedReason
from mesh.node.upstream import UpstreamFailure, UpstreamLink, UpstreamReply
from mesh.observability.metrics import MeshMetrics

#: failures that refused the request before it was sent: no radio was spent on them.
_NOT_SENT = (DegradedReason.BUDGET, DegradedReason.BREAKER_OPEN)


class Escalator:
    def __init__(
        self,
        tier: str,
        metrics: MeshMetrics,
        energy: EnergyLedger | None,
        savings: Savings,
        metric_model: Callable[[str], str],
    ) -> None:
        self.tier = tier
        self.metrics = metrics
        self.energy = energy
        self.savings = savings
        self.coalescer = Coalescer()
        self._metric_model = metric_model

    async def escalate(
        self,
        upstream: UpstreamLink,
        request: wire.InferRequest,
        budget_ms: float,
        model: str,
        share: float = 1.0,
    ) -> wire.InferResponse:
        """``request`` sent up with ``budget_ms`` left; ``share`` is its part of the write it
        went in (``hold``). Raises ``UpstreamFailure``."""
        try:
            reply = await upstream.escalate(request, budget_ms)
        except UpstreamFailure as failure:
            if failure.reason not in _NOT_SENT:
                self.unanswered(model, share)
            raise
        self.metrics.upstream_bytes.add(reply.request_bytes, self.tier, upstream.tier)
        self.exchanged(model, reply, share)
        return reply.response

    async def hold(self, upstream: UpstreamLink, budget_ms: float) -> float:
        """Under the ``coalesce`` step, wait for other escalations to go up with, never longer
        than the budget leaves after the upstream's p95 and the reserve; the share of the write
        this one took (1 when it went alone)."""
        window = self.savings.coalesce_s
        if not window:
            return 1.0
        left_ms = budget_ms - upstream.reserve_ms - (upstream.latency.p95 or 0.0)
        return await self.coalescer.hold(window, left_ms / 1000.0)

    def exchanged(self, model: str, reply: UpstreamReply, share: float = 1.0) -> None:
        if self.energy is not None:
            self.energy.exchanged(
                self._metric_model(model), reply.request_bytes, reply.reply_bytes, share
            )

    def unanswered(self, model: str, share: float = 1.0) -> None:
        if self.energy is not None:
            self.energy.unanswered(self._metric_model(model), share)
