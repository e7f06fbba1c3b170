"""The embedded nats-server: free ports, restarts that keep them, a hub and a site leaf."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from mesh.errors import UnavailableError
from mesh.local.servers import NatsServer, ServerConfig, Site, free_port
from mesh.security.keystore import KeyStore
from mesh.transport.guard import flush_in_order
from tests.fixtures.chain import Chain, Tier


async def test_a_restarted_server_keeps_its_port_and_its_jetstream_data(tmp_path: Path) -> None:
    server = NatsServer(ServerConfig(name="solo", jetstream_domain="solo"), tmp_path / "solo")
    await server.start()
    try:
        url = server.url
        nc = await server.connect()
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        await js.publish("keep.one", b"1")
        await nc.close()

        await server.kill()
        assert not server.running
        await server.start()
        assert server.url == url
        nc = await server.connect()
        info = await nc.jetstream().stream_info("KEEP")
        await nc.close()
        assert info.state.messages == 1
    finally:
        await server.close()


async def test_a_site_leaf_reaches_responders_on_the_hub_and_keeps_its_own_domain(
    tmp_path: Path,
) -> None:
    site = Site(tmp_path / "site")
    await site.start()
    assert site.leaf is not None
    try:
        hub = await site.hub.connect()
        leaf = await site.leaf.connect()

        async def pong(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(b"pong from the hub")

        await hub.subscribe("ping", cb=pong)
        await flush_in_order(hub)
        reply = None
        for _ in range(50):
            try:
                reply = await leaf.request("ping", b"", timeout=0.5)
                break
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.05)
        assert reply is not None and reply.data == b"pong from the hub"
        assert (await leaf.jetstream().account_info()).domain == "site"
        assert (await hub.jetstream().account_info()).domain == "hub"
        assert "no_advertise: true" in (site.hub.work_dir / "server.conf").read_text()
        await hub.close()
        await leaf.close()
    finally:
        await site.close()


async def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    taken = NatsServer(ServerConfig(name="first"), tmp_path / "first")
    await taken.start()
    try:
        clash = NatsServer(ServerConfig(name="second"), tmp_path / "second")
        clash.client_port = taken.client_port
        with pytest.raises(UnavailableError, match="did not start"):
            await clash.start()
        await clash.close()
    finally:
        await taken.close()


async def test_a_node_started_before_its_server_connects_once_the_server_is_up(
    tmp_path: Path, chain: Chain, keystore: KeyStore
) -> None:
    server = NatsServer(
        ServerConfig(name="late", jetstream_domain="late"), tmp_path / "late", keystore
    )
    server.client_port = free_port()
    starting = asyncio.create_task(chain.start(server.url, Tier("edge")))
    await asyncio.sleep(1.0)
    assert not starting.done()
    await server.start()
    try:
        [node] = await asyncio.wait_for(starting, 30)
        assert node.nc is not None and node.nc.is_connected
        assert node.readiness.problems() == {}
    finally:
        await server.close()
