"""The NATS adapter to the upstream tier: one request, its outcome classified for the policy."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import nats.errors
from nats.aio.client import Client as NATS

from mesh import subjects, wire
from mesh.breaker import BreakerState, CircuitBreaker
from mesh.errors import ErrorCode, InvalidArgumentError
from mesh.latency import LatencyTracker
from mesh.policy import DegradedReason, UpstreamView

#: error codes from upstream that say nothing about the link's health.
_CALLER_FAULTS = frozenset({ErrorCode.INVALID_ARGUMENT, ErrorCode.NOT_FOUND})


class UpstreamFailure(Exception):
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


class NatsUpstream:
    """Requests to ``mesh.<tier>.infer.<model>`` on an existing connection."""

    def __init__(self, nc: NATS, tier: str) -> None:
        self._nc = nc
        self.tier = tier

    def subject(self, model: str) -> str:
        return subjects.tier_infer(self.tier, model)

    async def infer(
        self, payload: bytes, model: str, timeout_s: float, headers: dict[str, str]
    ) -> UpstreamReply:
        started = time.monotonic()
        try:
            msg = await self._nc.request(
                self.subject(model), payload, timeout=timeout_s, headers=headers
            )
        except nats.errors.NoRespondersError:
            raise UpstreamFailure(
                DegradedReason.NO_RESPONDERS, f"no {self.tier} tier serves {model} right now"
            ) from None
        except nats.errors.TimeoutError:
            raise UpstreamFailure(
                DegradedReason.TIMEOUT,
                f"{self.tier} tier did not answer within {timeout_s * 1000:.0f} ms",
            ) from None
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.OutboundBufferLimitError,
            nats.errors.StaleConnectionError,
        ) as exc:
            raise UpstreamFailure(
                DegradedReason.UPSTREAM_ERROR, f"NATS connection not usable: {exc!r}"
            ) from None
        elapsed_ms = (time.monotonic() - started) * 1000.0
        try:
            reply = wire.decode_reply(msg.data)
        except InvalidArgumentError as exc:
            raise UpstreamFailure(
                DegradedReason.UPSTREAM_ERROR, f"{self.tier} tier sent an unreadable reply: {exc}"
            ) from None
        if isinstance(reply, wire.ErrorReply):
            raise UpstreamFailure(
                DegradedReason.UPSTREAM_ERROR,
                f"{self.tier} tier answered {reply.code.value}: {reply.message}",
                counts_against_link=reply.code not in _CALLER_FAULTS,
                error=reply,
            )
        return UpstreamReply(reply, elapsed_ms, len(payload))


class UpstreamLink:
    """The upstream tier as this tier uses it: transport, circuit breaker and latency record."""

    def __init__(
        self,
        transport: NatsUpstream,
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

    def view(self) -> UpstreamView:
        return UpstreamView(
            zone=self.zone,
            breaker_open=self.breaker.state is BreakerState.OPEN,
            p95_ms=self.latency.p95,
        )

    async def escalate(
        self, request: wire.InferRequest, budget_ms: float, headers: dict[str, str]
    ) -> UpstreamReply:
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
        payload = wire.encode_request(
            replace(request, budget_ms=send_budget, hops=request.hops + 1)
        )
        try:
            reply = await self.transport.infer(payload, request.model, send_budget / 1000, headers)
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
        self.latency.observe(reply.elapsed_ms)
        return reply
