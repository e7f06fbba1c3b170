"""The upstream tier as the data plane uses it: circuit breaker, latency record, budget.

Transport-free: the request travels through an ``UpstreamTransport`` (NATS in production), which
classifies what came back as an answer or an ``UpstreamFailure`` with its degraded reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from mesh import wire
from mesh.errors import UnavailableError
from mesh.node.breaker import BreakerState, CircuitBreaker
from mesh.node.latency import HedgePolicy, LatencyTracker
from mesh.node.policy import DegradedReason, UpstreamView


class UpstreamFailure(UnavailableError):
    """Escalation did not produce an answer; ``reason`` is the degraded reason to report."""

    def __init__(
        self,
        reason: DegradedReason,
        detail: str,
        *,
        counts_against_link: bool = True,
        error: wire.ErrorReply | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        #: whether the breaker should count it (a caller's fault is not the link's).
        self.counts_against_link = counts_against_link
        #: the upstream's error reply, when it sent one.
        self.error = error


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    response: wire.InferResponse
    elapsed_ms: float
    request_bytes: int
    #: size of the reply as it came back (the energy ledger's radio figures).
    reply_bytes: int = 0


class UpstreamTransport(Protocol):
    """How a request reaches the upstream tier (``mesh.transport.upstream.NatsUpstream`` over NATS).

    ``send`` raises ``UpstreamFailure`` with the degraded reason when no answer comes back;
    given a ``HedgePolicy``, it sends the request again while its answer is late (the reply's
    ``elapsed_ms`` is then that of the copy that brought it)."""

    tier: str

    async def send(
        self, request: wire.InferRequest, timeout_s: float, hedge: HedgePolicy | None = None
    ) -> UpstreamReply: ...


class UpstreamLink:
    """The upstream tier as this tier uses it: transport, circuit breaker and latency record."""

    def __init__(
        self,
        transport: UpstreamTransport,
        *,
        zone: str,
        timeout_ms: float,
        reserve_ms: float,
        breaker: CircuitBreaker,
        latency: LatencyTracker,
    ) -> None:
        self.transport = transport
        self.tier = transport.tier
        self.zone = zone
        self.timeout_ms = timeout_ms
        self.reserve_ms = reserve_ms
        self.breaker = breaker
        self.latency = latency
        #: when a late escalation is asked again of another member of the tier's queue group.
        self.hedging = HedgePolicy(latency)

    def view(self) -> UpstreamView:
        return UpstreamView(
            zone=self.zone,
            breaker_open=self.breaker.state is BreakerState.OPEN,
            p95_ms=self.latency.p95,
        )

    async def escalate(self, request: wire.InferRequest, budget_ms: float) -> UpstreamReply:
        """Send ``request`` up with what is left of its budget, keeping a reserve to answer."""
        send_budget = min(budget_ms - self.reserve_ms, self.timeout_ms)
        if send_budget <= 0:
            raise UpstreamFailure(
                DegradedReason.BUDGET,
                f"{budget_ms:.1f} ms left is not enough to ask the {self.tier} tier",
                counts_against_link=False,
            )
        if not self.breaker.allow():
            raise UpstreamFailure(
                DegradedReason.BREAKER_OPEN,
                f"circuit to the {self.tier} tier is open",
                counts_against_link=False,
            )
        onward = replace(request, budget_ms=send_budget, hops=request.hops + 1)
        try:
            reply = await self.transport.send(onward, send_budget / 1000, self.hedging)
        except UpstreamFailure as failure:
            # Failures go to the breaker, not to the latency record: the budget rule is for a
            # link that answers slowly, the breaker for one that does not answer.
            if failure.counts_against_link:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            raise
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.record_success()
        path = reply.response.path
        self.hedging.observe(reply.elapsed_ms, path[0].node if path else reply.response.node)
        return reply
