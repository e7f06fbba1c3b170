"""OpenTelemetry tracing of the request path, through the API only.

The SDK (exporters, sampling) is set up by the service at start (``mesh.observability.telemetry``);
without it these calls are OpenTelemetry's no-ops. Trace context crosses tiers in NATS headers,
written and read by OpenTelemetry's propagator (W3C ``traceparent``/``tracestate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind

from mesh.wire import InferResponse

TRACER = trace.get_tracer("mesh")

MESSAGING_SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
MESSAGE_ID = "messaging.message.id"
BODY_SIZE = "messaging.message.body.size"
CONSUMER_GROUP = "messaging.consumer.group.name"

TIER = "mesh.tier"
NODE = "mesh.node"
MODEL = "mesh.model"
MODEL_VERSION = "mesh.model.version"
CONFIDENCE = "mesh.confidence"
ESCALATED = "mesh.escalated"
ESCALATION_REASON = "mesh.escalation.reason"
DEGRADED = "mesh.degraded"
DEGRADED_REASON = "mesh.degraded.reason"
ANSWERED_BY = "mesh.answered_by.tier"


_recording = False


def record_answer(span: trace.Span, response: InferResponse, tier: str) -> None:
    """The answer a request got, on its span at ``tier``: who answered it and how."""
    span.set_attributes(
        {
            MODEL_VERSION: response.model_version,
            CONFIDENCE: response.confidence,
            ESCALATED: response.tier != tier,
            ANSWERED_BY: response.tier,
            DEGRADED: response.degraded,
        }
    )
    if response.reason is not None:
        span.set_attribute(DEGRADED_REASON, response.reason)


def set_recording(on: bool) -> None:
    """Whether this process records spans of its own (an exporter or processor is set up)."""
    global _recording
    _recording = on


def wanted(headers: Mapping[str, str] | None) -> bool:
    """Whether a message's handling needs spans: this process records them, or the message
    carries a trace to continue. Without either a span would go nowhere, so skip its cost."""
    return _recording or bool(headers and "traceparent" in headers)


def recording() -> bool:
    """Whether this process records spans of its own."""
    return _recording


def wanted_here() -> bool:
    """Whether work done now needs spans: this process records them, or the current context
    continues a caller's trace."""
    return _recording or trace.get_current_span().get_span_context().is_valid


def send_span(
    subject: str,
    *,
    kind: SpanKind,
    message_id: str,
    model: str,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> AbstractContextManager[trace.Span]:
    """The span of a request sent on ``subject``, with the messaging conventions' attributes."""
    return TRACER.start_as_current_span(
        f"send {subject}",
        kind=kind,
        attributes={
            MESSAGING_SYSTEM: "nats",
            DESTINATION: subject,
            OPERATION_TYPE: "send",
            OPERATION_NAME: "request",
            MESSAGE_ID: message_id,
            MODEL: model,
            **(attributes or {}),
        },
    )


def extract(headers: Mapping[str, str] | None) -> context.Context:
    """The trace context a message carries (an empty context when it carries none)."""
    return propagate.extract(dict(headers or {}))


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """NATS headers carrying the current trace context."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


__all__ = [
    "TRACER",
    "SpanKind",
    "extract",
    "inject",
]
