"""A node survives bytes any client can put on the wire, protocol included."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np

from mesh import MeshClient
from mesh.dev.models.demo import DemoArtifacts
from mesh.dev.rawnats import open_session
from mesh.local.servers import NatsServer
from mesh.transport.guard import ConnectionWatch, GuardedClient
from tests.fixtures.chain import Chain, Tier


async def _raw_publish(server: NatsServer, frames: bytes, identity: str = "app") -> None:
    """Frames from a raw connection holding an identity's credentials (by default an
    application's: a device's)."""
    reader, writer = await open_session(server.url, server.creds(identity))
    writer.write(frames)
    writer.write(b"PING\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.readline(), 5)  # PONG: the server has taken the frames
    writer.close()
    await writer.wait_closed()


async def test_subjects_and_replies_that_are_not_utf8_do_not_stop_a_node(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    [node] = await chain.start(nats_server.url, Tier("edgeutf"))
    fatal: list[str] = []
    node.on_fatal = fatal.append
    x = np.load(demo.test)["x"].astype(np.float32)
    await _raw_publish(
        nats_server,
        b"PUB mesh.infer.\xff 5\r\nhello\r\n"
        b"PUB mesh.infer.digits _INBOX.\xfe\xff 5\r\nhello\r\n"
        b"PUB mesh.infer.\xc3\x28 _INBOX.x 5\r\nhello\r\n",
    )
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        for row in x[:20]:
            assert (await client.infer("digits", row[None])).tier == "edgeutf"
    assert isinstance(node.nc, GuardedClient)
    assert node.nc.dropped_malformed == 3
    assert fatal == []
    assert node.readiness.problems() == {}


async def test_a_connection_whose_read_loop_died_is_found_within_seconds(
    nats_server: NatsServer,
) -> None:
    # A plain nats-py client, unguarded, so that its read loop really dies.
    nc = await nats_server.connect()
    dead = asyncio.Event()
    reasons: list[str] = []

    def on_dead(reason: str) -> None:
        reasons.append(reason)
        dead.set()

    async def ignore(_: object) -> None:
        return None

    await nc.subscribe("victim.>", cb=ignore)
    async with ConnectionWatch(nc, on_dead=on_dead, interval_s=1.0, timeout_s=1.0):
        # The administrator's credentials: what is shown here is the client's defect, which
        # permissions would otherwise hide.
        await _raw_publish(nats_server, b"PUB victim.\xff 5\r\nhello\r\n", "admin")
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(dead.wait(), 10)
        waited = time.monotonic() - started
    await nc.close()
    print(f"\nthe watch found the dead read loop after {waited:.2f} s")
    assert reasons and "stopped reading" in reasons[0]
    assert waited < 5
