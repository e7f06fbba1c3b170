"""Spans of a demo run: a small OTLP/HTTP receiver the nodes export to, and the tree drawing."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan

from mesh.observability import tracing


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One finished span, whether a node exported it or the demo's own client recorded it."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    node: str
    start_ns: int
    end_ns: int
    attributes: dict[str, str | int | float | bool]

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @classmethod
    def of(cls, span: ReadableSpan) -> SpanRecord:
        ctx = span.context
        assert ctx is not None
        resource = span.resource.attributes
        return cls(
            trace_id=format(ctx.trace_id, "032x"),
            span_id=format(ctx.span_id, "016x"),
            parent_id=format(span.parent.span_id, "016x") if span.parent is not None else None,
            name=span.name,
            service=str(resource.get("service.name", "")),
            node=str(resource.get("service.instance.id", "")),
            start_ns=span.start_time or 0,
            end_ns=span.end_time or 0,
            attributes={
                k: v for k, v in (span.attributes or {}).items() if isinstance(v, str | int | float)
            },
        )


def _any_value(value: Any) -> str | int | float | bool:
    kind = value.WhichOneof("value")
    if kind in {"string_value", "bool_value", "int_value", "double_value"}:
        result: str | int | float | bool = getattr(value, kind)
        return result
    return str(value)


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver (protobuf) on loopback: spans kept by trace id."""

    def __init__(self) -> None:
        self.spans: dict[str, list[SpanRecord]] = {}
        self.received = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> OtlpReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        try:
            message.ParseFromString(body)
        except Exception:
            return web.Response(status=400, text="not an OTLP ExportTraceServiceRequest")
        for resource_spans in message.resource_spans:
            resource = {a.key: _any_value(a.value) for a in resource_spans.resource.attributes}
            service = str(resource.get("service.name", ""))
            node = str(resource.get("service.instance.id", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    record = SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        service=service,
                        node=node,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes={a.key: _any_value(a.value) for a in span.attributes},
                    )
                    self.spans.setdefault(record.trace_id, []).append(record)
                    self.received += 1
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


def draw_span_tree(spans: Sequence[SpanRecord]) -> list[str]:
    """One line a span, indented under its parent: offset from the root, duration, where, name."""
    if not spans:
        return []
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[SpanRecord]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    origin = min(s.start_ns for s in spans)
    lines = [f"{'start':>10} {'duration':>10}  [node] span"]

    def walk(parent: str | None, depth: int) -> None:
        kids = sorted(children.get(parent, []), key=lambda s: s.start_ns)
        for i, span in enumerate(kids):
            last = i == len(kids) - 1
            branch = "" if depth == 0 else "   " * (depth - 1) + ("└─ " if last else "├─ ")
            where = span.node or span.service
            extra = ""
            answered = span.attributes.get(tracing.ANSWERED_BY)
            if answered and depth == 0:
                extra = f"  → answered by {answered}"
            reason = span.attributes.get(tracing.DEGRADED_REASON)
            if reason:
                extra += f"  ! {reason}"
            lines.append(
                f"+{(span.start_ns - origin) / 1e6:6.2f} ms {span.duration_ms:7.2f} ms  "
                f"{branch}[{where}] {span.name}{extra}"
            )
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return lines
