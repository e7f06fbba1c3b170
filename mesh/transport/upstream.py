"""The NATS adapter to the upstream tier: one request, its span, its outcome classified."""

from __future__ import annotations

import time

import nats.errors
from nats.aio.client import Client as NATS
from opentelemetry import trace

from mesh import wire
from mesh.errors import ErrorCode, InvalidArgumentError
from mesh.node.policy import DegradedReason
from mesh.node.upstream import UpstreamFailure, UpstreamReply
from mesh.observability import tracing
from mesh.topology import subjects

#: error codes from upstream that say nothing about the link's health.
_CALLER_FAULTS = frozenset({ErrorCode.INVALID_ARGUMENT, ErrorCode.NOT_FOUND})


class NatsUpstream:
    """``UpstreamTransport`` over NATS: requests to ``mesh.<tier>.infer.<model>``."""

    def __init__(self, nc: NATS, tier: str, *, from_tier: str, pass_on: bool = True) -> None:
        self._nc = nc
        self.tier = tier
        self._from_tier = from_tier
        #: when no node of the tier serves the model, ask the tier to pass the request on up
        #: (``mesh.<tier>.forward.<model>``); off for a tier's own neighbours.
        self._pass_on = pass_on

    def subject(self, model: str) -> str:
        return subjects.tier_infer(self.tier, model)

    async def send(self, request: wire.InferRequest, timeout_s: float) -> UpstreamReply:
        subject = self.subject(request.model)
        if not tracing.wanted_here():
            return await self._request(subject, request, timeout_s, None)
        with tracing.send_span(
            subject,
            kind=tracing.SpanKind.CLIENT,
            message_id=request.id,
            model=request.model,
            attributes={tracing.TIER: self._from_tier},
        ) as span:
            try:
                reply = await self._request(subject, request, timeout_s, tracing.inject())
            except UpstreamFailure as failure:
                span.set_attribute(tracing.DEGRADED_REASON, failure.reason.value)
                span.set_status(trace.Status(trace.StatusCode.ERROR, failure.detail))
                raise
            span.set_attribute(tracing.BODY_SIZE, reply.request_bytes)
            span.set_attribute(tracing.ANSWERED_BY, reply.response.tier)
            return reply

    async def _request(
        self,
        subject: str,
        request: wire.InferRequest,
        timeout_s: float,
        headers: dict[str, str] | None,
    ) -> UpstreamReply:
        payload = wire.encode_request(request)
        started = time.monotonic()
        try:
            try:
                msg = await self._nc.request(subject, payload, timeout=timeout_s, headers=headers)
            except nats.errors.NoRespondersError:
                if not self._pass_on:
                    raise
                # No node of the tier serves this model (tiers may be heterogeneous): the tier
                # passes it on up. No responders comes back at once, so the budget is intact.
                left = timeout_s - (time.monotonic() - started)
                msg = await self._nc.request(
                    subjects.tier_forward(self.tier, request.model),
                    payload,
                    timeout=max(left, 0.001),
                    headers=headers,
                )
        except nats.errors.NoRespondersError:
            raise UpstreamFailure(
                DegradedReason.NO_RESPONDERS,
                f"no {self.tier} tier serves {request.model} right now",
            ) from None
        except nats.errors.TimeoutError:
            raise UpstreamFailure(
                DegradedReason.TIMEOUT,
                f"{self.tier} tier did not answer within {timeout_s * 1000:.0f} ms",
            ) from None
        except nats.errors.Error as exc:
            # Closed, reconnecting, draining, buffer full, stale, max payload: not usable now.
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
        return UpstreamReply(reply, elapsed_ms, len(payload), len(msg.data))
