"""The NATS adapter to the upstream tier: one request, its span, its outcome classified.

Requests go through a ``ReplyInbox`` of the node's connection (``mesh.transport.replies``), so a
late escalation is hedged to another member of the tier's queue group on the same heap of ticks
as the SDK's, and a permission the node's identity lacks is told at once, not waited out.
"""

from __future__ import annotations

import dataclasses
import itertools

import nats.errors
import nats.js.api
from nats.aio.client import Client as NATS
from opentelemetry import trace

from mesh import wire
from mesh.errors import ErrorCode, InvalidArgumentError, PermissionDeniedError
from mesh.node.latency import HedgePolicy
from mesh.node.policy import DegradedReason
from mesh.node.upstream import UpstreamFailure, UpstreamReply
from mesh.observability import tracing
from mesh.topology import subjects
from mesh.transport.replies import Reply, ReplyInbox

#: error codes from upstream that say nothing about the link's health.
_CALLER_FAULTS = frozenset({ErrorCode.INVALID_ARGUMENT, ErrorCode.NOT_FOUND})
STATUS_HEADER = nats.js.api.Header.STATUS.value
#: the status of the message a server sends in place of a reply when nobody subscribes.
NO_RESPONDERS = "503"


class NatsUpstream:
    """``UpstreamTransport`` over NATS: requests to ``mesh.<tier>.infer.<model>``."""

    def __init__(self, nc: NATS, tier: str, *, from_tier: str, pass_on: bool = True) -> None:
        self._nc = nc
        self.tier = tier
        self._from_tier = from_tier
        #: when no node of the tier serves the model, ask the tier to pass the request on up
        #: (``mesh.<tier>.forward.<model>``); off for a tier's own neighbours.
        self._pass_on = pass_on
        self._tokens = itertools.count(1)
        self._replies = ReplyInbox(nc, lambda: f"{next(self._tokens):x}", _resend)

    def subject(self, model: str) -> str:
        return subjects.tier_infer(self.tier, model)

    async def send(
        self, request: wire.InferRequest, timeout_s: float, hedge: HedgePolicy | None = None
    ) -> UpstreamReply:
        subject = self.subject(request.model)
        if not tracing.wanted_here():
            return await self._request(subject, request, timeout_s, None, hedge)
        with tracing.send_span(
            subject,
            kind=tracing.SpanKind.CLIENT,
            message_id=request.id,
            model=request.model,
            attributes={tracing.TIER: self._from_tier},
        ) as span:
            try:
                reply = await self._request(subject, request, timeout_s, tracing.inject(), hedge)
            except UpstreamFailure as failure:
                span.set_attribute(tracing.DEGRADED_REASON, failure.reason.value)
                span.set_status(trace.Status(trace.StatusCode.ERROR, failure.detail))
                raise
            span.set_attribute(tracing.BODY_SIZE, reply.request_bytes)
            span.set_attribute(tracing.ANSWERED_BY, reply.response.tier)
            return reply

    async def close(self) -> None:
        await self._replies.close(unsubscribe=True)

    async def _request(
        self,
        subject: str,
        request: wire.InferRequest,
        timeout_s: float,
        headers: dict[str, str] | None,
        hedge: HedgePolicy | None,
    ) -> UpstreamReply:
        payload = wire.encode_request(request)
        try:
            answer, elapsed_ms = await self._ask(
                subject, request, payload, timeout_s, headers, hedge
            )
            if _no_responders(answer) and self._pass_on:
                # No node of the tier serves this model (tiers may be heterogeneous): the tier
                # passes it on up. No responders comes back at once, so the budget is intact.
                forward = subjects.tier_forward(self.tier, request.model)
                left_s = max(timeout_s - elapsed_ms / 1000.0, 0.001)
                answer, elapsed_ms = await self._ask(
                    forward, request, payload, left_s, headers, hedge
                )
        except PermissionDeniedError as denied:
            raise UpstreamFailure(DegradedReason.UPSTREAM_ERROR, denied.message) from None
        except nats.errors.Error as exc:
            # Closed, reconnecting, draining, buffer full, stale, max payload: not usable now.
            raise UpstreamFailure(
                DegradedReason.UPSTREAM_ERROR, f"NATS connection not usable: {exc!r}"
            ) from None
        if answer is None:
            raise UpstreamFailure(
                DegradedReason.TIMEOUT,
                f"{self.tier} tier did not answer within {timeout_s * 1000:.0f} ms",
            )
        if _no_responders(answer):
            raise UpstreamFailure(
                DegradedReason.NO_RESPONDERS,
                f"no {self.tier} tier serves {request.model} right now",
            )
        try:
            reply = wire.decode_reply(answer[0])
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
        return UpstreamReply(reply, elapsed_ms, len(payload), len(answer[0]))

    async def _ask(
        self,
        subject: str,
        request: wire.InferRequest,
        payload: bytes,
        timeout_s: float,
        headers: dict[str, str] | None,
        hedge: HedgePolicy | None,
    ) -> tuple[Reply | None, float]:
        token = f"{next(self._tokens):x}"
        return await self._replies.ask(
            subject, payload, timeout_s, headers, token, request, hedge, timeout_s * 1000.0
        )


def _no_responders(answer: Reply | None) -> bool:
    if answer is None:
        return False
    data, headers, _ = answer
    return not data and headers is not None and headers.get(STATUS_HEADER) == NO_RESPONDERS


def _resend(request: wire.InferRequest, left_ms: float) -> bytes:
    """A hedge of ``request``: the same request, with what is left of its budget."""
    return wire.encode_request(dataclasses.replace(request, budget_ms=left_ms))
