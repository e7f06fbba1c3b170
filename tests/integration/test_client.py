"""The SDK fails fast and speaks only the mesh's typed errors; it sends no headers needlessly."""

from __future__ import annotations

import asyncio
import time

import nats
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from mesh import MeshClient
from mesh.errors import InvalidArgumentError, UnavailableError
from mesh.testing.embedded import NatsServer, free_port


async def test_connecting_where_no_server_listens_fails_fast_with_a_typed_error() -> None:
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="cannot connect"):
        await MeshClient.connect(f"nats://127.0.0.1:{free_port()}", connect_timeout=2)
    assert time.monotonic() - started < 5


async def test_nats_failures_reach_the_caller_as_mesh_errors(nats_server: NatsServer) -> None:
    x = np.zeros((1, 64), np.float32)
    client = await MeshClient.connect(nats_server.url, **nats_server.client_options("app"))
    with pytest.raises(UnavailableError, match="no responders"):
        await client.infer("nobody-serves-this", x)
    with pytest.raises(InvalidArgumentError):
        await client.infer("not a subject token", x)
    await client.close()
    with pytest.raises(UnavailableError):
        await client.infer("digits", x)


async def test_a_request_carries_no_header_block_unless_a_trace_is_continued(
    nats_server: NatsServer,
) -> None:
    seen: list[dict[str, str] | None] = []
    watcher = await nats_server.connect()

    async def reply(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.headers)
        await watcher.publish(msg.reply, b"\x80")

    await watcher.subscribe("mesh.infer.echo", cb=reply)
    await watcher.flush()
    x = np.zeros((1, 4), np.float32)
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        with pytest.raises(InvalidArgumentError):  # the reply is not a mesh reply
            await client.infer("echo", x)
        tracer = TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("caller"):
            assert trace.get_current_span().get_span_context().is_valid
            with pytest.raises(InvalidArgumentError):
                await client.infer("echo", x)
    await watcher.close()
    await asyncio.sleep(0)
    assert seen[0] is None
    assert seen[1] is not None and "traceparent" in seen[1]
