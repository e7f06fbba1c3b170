"""One trace across every tier: client, edge, gateway, cloud, each on its own NATS connection."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mesh import MeshClient
from mesh.dev.models.demo import DemoArtifacts
from mesh.local.servers import NatsServer
from mesh.observability import tracing
from mesh.settings import HardExampleSettings
from tests.fixtures.chain import Chain, Tier


async def trace_of(
    exporter: InMemorySpanExporter, trace_id: int, count: int, timeout: float = 3.0
) -> list[ReadableSpan]:
    """The spans of one trace, once ``count`` of them have ended (servers end theirs after
    replying, so a little after the client has its answer)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [
            s
            for s in exporter.get_finished_spans()
            if s.context is not None and s.context.trace_id == trace_id
        ]
        if len(found) >= count or asyncio.get_running_loop().time() > deadline:
            return sorted(found, key=lambda s: s.start_time or 0)
        await asyncio.sleep(0.02)


def a_test_digit(demo: DemoArtifacts) -> np.ndarray:
    x: np.ndarray = np.load(demo.test)["x"][:1].astype(np.float32)
    return x


def client_span(exporter: InMemorySpanExporter, request_id: str) -> ReadableSpan:
    [span] = [
        s
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.PRODUCER
        and (s.attributes or {}).get(tracing.MESSAGE_ID) == request_id
    ]
    return span


def span_path(spans: Sequence[ReadableSpan], root: ReadableSpan) -> list[ReadableSpan]:
    """Follow parent-child links down from ``root``; each span must have one child at most."""
    path = [root]
    while True:
        assert path[-1].context is not None
        children = [
            s
            for s in spans
            if s.parent is not None and s.parent.span_id == path[-1].context.span_id
        ]
        assert len(children) <= 1, [c.name for c in children]
        if not children:
            return path
        path.append(children[0])


async def test_an_escalated_request_is_one_trace_from_client_to_cloud(
    nats_server: NatsServer,
    chain: Chain,
    demo: DemoArtifacts,
    spans: InMemorySpanExporter,
) -> None:
    url = nats_server.url
    await chain.start(
        url,
        Tier("edge", threshold=1.01, node="edge-t"),
        Tier("gateway", threshold=1.01, node="gateway-t"),
        Tier("cloud", node="cloud-t"),
    )
    async with await MeshClient.connect(url, **nats_server.client_options("app")) as client:
        result = await client.infer("digits", a_test_digit(demo), budget_ms=3000)
    assert result.tier == "cloud" and not result.degraded

    root = client_span(spans, result.id)
    assert root.context is not None and root.parent is None
    found = await trace_of(spans, root.context.trace_id, 6)
    path = span_path(found, root)
    assert len(found) == 6
    assert [(s.kind, s.name) for s in path] == [
        (SpanKind.PRODUCER, "send mesh.infer.digits"),
        (SpanKind.CONSUMER, "process mesh.infer.digits"),
        (SpanKind.CLIENT, "send mesh.gateway.infer.digits"),
        (SpanKind.CONSUMER, "process mesh.gateway.infer.digits"),
        (SpanKind.CLIENT, "send mesh.cloud.infer.digits"),
        (SpanKind.CONSUMER, "process mesh.cloud.infer.digits"),
    ]
    for span in path:
        attributes = span.attributes or {}
        assert attributes[tracing.MESSAGING_SYSTEM] == "nats"
        assert attributes[tracing.DESTINATION] == span.name.split(" ", 1)[1]
        assert attributes[tracing.OPERATION_TYPE] == span.name.split(" ", 1)[0]
        assert attributes[tracing.MESSAGE_ID] == result.id
        assert attributes[tracing.MODEL] == "digits"
        assert span.status.status_code is not StatusCode.ERROR

    processes = [s.attributes or {} for s in path if s.kind is SpanKind.CONSUMER]
    assert [(a[tracing.TIER], a[tracing.NODE]) for a in processes] == [
        ("edge", "edge-t"),
        ("gateway", "gateway-t"),
        ("cloud", "cloud-t"),
    ]
    assert [a[tracing.ESCALATED] for a in processes] == [True, True, False]
    for a in processes:
        assert a[tracing.MODEL_VERSION] == result.model_version
        assert a[tracing.CONFIDENCE] == pytest.approx(result.confidence)
        assert a[tracing.ANSWERED_BY] == "cloud"
        assert a[tracing.DEGRADED] is False
        assert int(a[tracing.BODY_SIZE]) > 0  # type: ignore[arg-type]
    for edge_or_gateway in processes[:2]:
        assert edge_or_gateway[tracing.ESCALATION_REASON] == "low_confidence"
    sends = [s.attributes or {} for s in path[2::2]]
    assert [a[tracing.TIER] for a in sends] == ["edge", "gateway"]


async def test_a_degraded_request_shows_its_reason_on_the_edge_spans(
    nats_server: NatsServer,
    chain: Chain,
    demo: DemoArtifacts,
    spans: InMemorySpanExporter,
) -> None:
    await chain.start(
        nats_server.url, Tier("edge", threshold=1.01, node="edge-alone", upstream="cloud")
    )
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        result = await client.infer("digits", a_test_digit(demo), budget_ms=3000)
    assert (result.tier, result.degraded, result.reason) == ("edge", True, "no_responders")

    root = client_span(spans, result.id)
    assert root.context is not None
    path = span_path(await trace_of(spans, root.context.trace_id, 3), root)
    assert [s.name for s in path] == [
        "send mesh.infer.digits",
        "process mesh.infer.digits",
        "send mesh.cloud.infer.digits",
    ]
    process, send = path[1], path[2]
    assert (process.attributes or {})[tracing.DEGRADED] is True
    assert (process.attributes or {})[tracing.DEGRADED_REASON] == "no_responders"
    assert (process.attributes or {})[tracing.ESCALATED] is False
    assert (send.attributes or {})[tracing.DEGRADED_REASON] == "no_responders"
    assert send.status.status_code is StatusCode.ERROR


async def test_a_forwarded_hard_example_links_back_to_the_trace_it_came_from(
    nats_server: NatsServer,
    chain: Chain,
    demo: DemoArtifacts,
    spans: InMemorySpanExporter,
) -> None:
    await chain.start(nats_server.url, Tier("edge", threshold=1.01, upstream="cloud"))
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        result = await client.infer("digits", a_test_digit(demo), budget_ms=3000)
        assert result.reason == "no_responders"
        # the client's own span, before the cloud's taking up of the case adds another producer
        origin = client_span(spans, result.id).context
        assert origin is not None
        # The cloud comes up and takes up the edge's backlog into its own stream.
        await chain.start(
            nats_server.url, Tier("cloud", hard_examples=HardExampleSettings(collect_from="edge"))
        )

    deadline = asyncio.get_running_loop().time() + 20
    while True:
        forwards = [
            s for s in spans.get_finished_spans() if s.name == "send mesh.learn.cloud.digits"
        ]
        if forwards or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    [forward] = forwards
    assert forward.kind is SpanKind.PRODUCER
    assert (forward.attributes or {})[tracing.MESSAGE_ID] == result.id
    assert [link.context.trace_id for link in forward.links] == [origin.trace_id]
    assert forward.context is not None and forward.context.trace_id != origin.trace_id
