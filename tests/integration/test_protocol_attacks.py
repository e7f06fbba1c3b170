"""A node survives bytes any client can put on the wire, protocol included."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np

from mesh import MeshClient
from mesh.embedded import NatsServer
from mesh.models.demo import DemoArtifacts
from tests.conftest import NodeFactory, model_settings


async def _raw_publish(url: str, frames: bytes) -> None:
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    await reader.readline()  # INFO
    writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n' + frames)
    writer.write(b"PING\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.readline(), 5)  # PONG: the server has taken the frames
    writer.close()
    await writer.wait_closed()


async def test_a_subject_that_is_not_utf8_makes_the_node_not_ready_and_call_its_supervisor(
    nats_server: NatsServer, start_node: NodeFactory, demo: DemoArtifacts
) -> None:
    node = await start_node("edgeutf", nats_server.url, [model_settings(demo, "edge")], entry=True)
    fatal: list[str] = []
    noticed = asyncio.Event()

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        noticed.set()

    node.on_fatal = on_fatal
    x = np.load(demo.test)["x"].astype(np.float32)
    async with await MeshClient.connect(nats_server.url) as client:
        assert (await client.infer("digits", x[0][None])).tier == "edgeutf"
    assert node.readiness.problems() == {}

    await _raw_publish(nats_server.url, b"PUB mesh.infer.\xff 5\r\nhello\r\n")
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(noticed.wait(), 10)
    waited = time.monotonic() - started
    print(f"\nnode found its connection dead after {waited:.2f} s")
    assert fatal, "the node never noticed that its connection stopped reading"
    assert "stopped reading" in node.readiness.problems()["nats"]
    assert waited < 8
