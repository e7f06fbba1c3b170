"""Every NATS header the mesh reads or writes."""

from __future__ import annotations

#: JetStream's deduplication key (nats-py spells it ``nats.js.api.Header.MSG_ID``).
MSG_ID = "Nats-Msg-Id"
#: why a message went to a dead-letter stream.
DEAD_REASON = "Mesh-Dead-Reason"
#: the NATS micro services error headers an error reply carries.
SERVICE_ERROR = "Nats-Service-Error"
SERVICE_ERROR_CODE = "Nats-Service-Error-Code"
#: W3C trace context, written and read by OpenTelemetry's propagator.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
