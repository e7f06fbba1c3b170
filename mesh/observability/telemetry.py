"""The OpenTelemetry SDK for a service: traces, metrics for Prometheus, JSON logs.

Exporters follow the standard ``OTEL_*`` variables. Traces are exported (OTLP over HTTP) only
when an endpoint or exporter is configured (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER=otlp|console``); otherwise a
sampler that records nothing of its own still passes the caller's trace context on, so one tier
without an exporter does not break a trace. Metrics are ``mesh.observability.metrics``' plain
counters, rendered by the Prometheus registry that the ``/metrics`` route of every service serves.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from mesh.observability import tracing
from mesh.observability.metrics import MeshMetrics, default_metrics

_configured = False


def traces_exporter_configured() -> str | None:
    """Which trace exporter the ``OTEL_*`` variables ask for, or None."""
    chosen = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if chosen == "none":
        return None
    if chosen in {"otlp", "console"}:
        return chosen
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    ):
        return "otlp"
    return None


def install_tracing(
    service: str, node: str, processors: list[SpanProcessor] | None = None
) -> TracerProvider:
    """Set the global tracer provider; extra ``processors`` (tests) record every span."""
    exporter = traces_exporter_configured()
    sampler: Sampler = ParentBased(ALWAYS_ON if exporter or processors else ALWAYS_OFF)
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.instance.id": node}),
        sampler=sampler,
    )
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    for processor in processors or []:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    tracing.set_recording(bool(exporter or processors))
    return provider


@dataclass
class Telemetry:
    metrics: MeshMetrics
    tracer_provider: TracerProvider | None


@asynccontextmanager
async def configure_telemetry(service: str, node: str) -> AsyncIterator[Telemetry]:
    """Install tracing and metrics for this process once; flush spans on the way out."""
    global _configured
    provider: TracerProvider | None = None
    if not _configured:
        _configured = True
        provider = install_tracing(service, node)
    try:
        yield Telemetry(default_metrics(), provider)
    finally:
        if provider is not None:
            provider.shutdown()


async def metrics_handler(_: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


#: longest text kept of a message or a field value in one log line: a log line is not a place
#: for a caller's megabyte (an id, a model name or a parameter can come from the wire).
MAX_LOG_TEXT = 2048


def _clip(text: str) -> str:
    if len(text) <= MAX_LOG_TEXT:
        return text
    return f"{text[:MAX_LOG_TEXT]}... [{len(text) - MAX_LOG_TEXT} more characters]"


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the trace and span ids of the current span.

    A mapping passed as ``extra={"fields": {...}}`` adds its keys to the line. Messages and
    string field values are clipped to ``MAX_LOG_TEXT`` characters; tracebacks are kept whole.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": _clip(record.getMessage()),
            "service": self.service,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(
                {
                    k: _clip(v) if isinstance(v, str) else v
                    for k, v in fields.items()
                    if k not in entry
                }
            )
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            entry["trace_id"] = format(ctx.trace_id, "032x")
            entry["span_id"] = format(ctx.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", service: str = "mesh") -> None:
    """JSON lines on stdout for every logger, Python warnings included (``py.warnings``), so
    nothing a service prints escapes the log format."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
