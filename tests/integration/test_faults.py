from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from mesh.dev.faults import FaultProxy
from mesh.transport.guard import flush_in_order
from tests.fixtures.site import LinkedSite

pytestmark = pytest.mark.timeout(30)


class EchoServer:
    """A TCP echo server that closes every connection it accepted when it stops."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._echo, "127.0.0.1", 0, backlog=1024)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as p:
        yield p


@contextlib.asynccontextmanager
async def connect(
    proxy: FaultProxy,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float = 5.0
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


async def test_forwards_both_ways_and_counts(proxy: FaultProxy) -> None:
    assert proxy.address == f"127.0.0.1:{proxy.port}"
    assert proxy.url == f"nats-leaf://127.0.0.1:{proxy.port}"
    async with connect(proxy) as (reader, writer):
        assert await roundtrip(reader, writer, b"hello") == b"hello"
        assert proxy.live_connections == 1
    big = bytes(range(256)) * 4096
    async with connect(proxy) as (reader, writer):
        assert await roundtrip(reader, writer, big) == big
    assert proxy.stats.connections_accepted == 2
    assert proxy.stats.bytes_to_target == proxy.stats.bytes_to_client == 5 + len(big)


async def test_eof_is_forwarded_and_the_connection_ends(proxy: FaultProxy) -> None:
    async with connect(proxy) as (reader, writer):
        writer.write(b"last words")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"last words"
    for _ in range(100):
        if proxy.live_connections == 0:
            break
        await asyncio.sleep(0.01)
    assert proxy.live_connections == 0


async def test_latency_delays_each_direction_without_throttling(proxy: FaultProxy) -> None:
    async with connect(proxy) as (reader, writer):
        await roundtrip(reader, writer, b"warm")
        proxy.set_latency(100)
        started = time.perf_counter()
        chunks = [f"{i:04d}".encode() for i in range(50)]
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.002)
        got = await asyncio.wait_for(reader.readexactly(4 * len(chunks)), 5)
        elapsed = time.perf_counter() - started
    assert got == b"".join(chunks)
    assert 0.2 <= elapsed < 1.0


async def test_latency_switches_while_running(proxy: FaultProxy) -> None:
    async with connect(proxy) as (reader, writer):
        proxy.set_latency(150)
        started = time.perf_counter()
        await roundtrip(reader, writer, b"slow")
        assert time.perf_counter() - started >= 0.3
        proxy.set_latency(0)
        started = time.perf_counter()
        await roundtrip(reader, writer, b"fast")
        assert time.perf_counter() - started < 0.15


async def test_bandwidth_cap_limits_throughput(proxy: FaultProxy) -> None:
    data = b"x" * 100_000
    proxy.set_bandwidth(200_000)
    async with connect(proxy) as (reader, writer):
        started = time.perf_counter()
        assert await roundtrip(reader, writer, data) == data
        elapsed = time.perf_counter() - started
    assert elapsed >= 0.4
    proxy.set_bandwidth(None)
    async with connect(proxy) as (reader, writer):
        started = time.perf_counter()
        assert await roundtrip(reader, writer, data) == data
        assert time.perf_counter() - started < 0.2


async def test_blackhole_holds_bytes_without_closing_then_heal_delivers(proxy: FaultProxy) -> None:
    async with connect(proxy) as (reader, writer):
        await roundtrip(reader, writer, b"before")
        proxy.blackhole(True)
        writer.write(b"during")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.3)
        assert not reader.at_eof()
        assert proxy.live_connections == 1
        proxy.heal()
        assert await asyncio.wait_for(reader.readexactly(6), 2) == b"during"
        assert await roundtrip(reader, writer, b"after") == b"after"
    assert proxy.stats.bytes_dropped == 0


async def test_blackhole_drop_throws_bytes_away(proxy: FaultProxy) -> None:
    async with connect(proxy) as (reader, writer):
        proxy.blackhole(True, drop=True)
        writer.write(b"lost")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.3)
        proxy.blackhole(False)
        assert await roundtrip(reader, writer, b"found") == b"found"
    assert proxy.stats.bytes_dropped == 4


async def test_reset_all_sends_rst_to_both_sides(proxy: FaultProxy) -> None:
    async with connect(proxy) as (reader, writer):
        await roundtrip(reader, writer, b"ping")
        assert proxy.reset_all() == 1
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 2)
    assert proxy.stats.connections_reset == 1
    assert proxy.live_connections == 0
    async with connect(proxy) as (reader, writer):
        assert await roundtrip(reader, writer, b"again") == b"again"


async def test_refuse_resets_new_connections_until_healed(proxy: FaultProxy) -> None:
    proxy.refuse(True)
    async with connect(proxy) as (reader, writer):
        with pytest.raises(ConnectionResetError):
            writer.write(b"anyone?")
            await writer.drain()
            await asyncio.wait_for(reader.read(100), 2)
    assert proxy.stats.connections_refused == 1
    proxy.heal()
    async with connect(proxy) as (reader, writer):
        assert await roundtrip(reader, writer, b"yes") == b"yes"


async def test_unreachable_target_resets_the_client() -> None:
    async with EchoServerGone() as port, FaultProxy("127.0.0.1", port) as proxy:
        async with connect(proxy) as (reader, _):
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(100), 2)
        assert proxy.stats.connections_failed == 1


class EchoServerGone:
    """A port nobody listens on."""

    async def __aenter__(self) -> int:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port: int = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        return port

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_hundreds_of_concurrent_connections_then_clean_stop(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    await proxy.start()
    clients = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(300))
    )
    try:
        payloads = [uuid.uuid4().bytes * 8 for _ in clients]
        echoed = await asyncio.gather(
            *(roundtrip(r, w, p, timeout=10) for (r, w), p in zip(clients, payloads, strict=True))
        )
        assert echoed == payloads
        assert proxy.live_connections == 300
        assert proxy.stats.connections_accepted == 300
        await proxy.stop()
        await proxy.stop()
        assert proxy.live_connections == 0
        eofs = await asyncio.gather(*(asyncio.wait_for(r.read(), 5) for r, _ in clients))
        assert eofs == [b""] * 300
    finally:
        for _, writer in clients:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, w in clients), return_exceptions=True)


async def test_stop_with_faults_active_and_data_in_flight(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    await proxy.start()
    async with connect(proxy) as (_, writer):
        proxy.set_latency(500)
        proxy.set_bandwidth(1000)
        writer.write(b"z" * 50_000)
        await writer.drain()
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        await proxy.stop()
        assert time.perf_counter() - started < 1.0
    with pytest.raises(RuntimeError):
        await proxy.start()


@pytest.mark.timeout(60)
async def test_leaf_link_through_the_proxy_slows_blackholes_and_heals(linked: LinkedSite) -> None:
    site, proxy = linked.site, linked.proxy
    assert site.leaf is not None
    hub = await site.hub.connect()
    leaf = await site.leaf.connect()
    try:
        subject = f"test.faults.{uuid.uuid4().hex}"

        async def respond(msg: Msg) -> None:
            await msg.respond(msg.data)

        await hub.subscribe(subject, cb=respond)
        await flush_in_order(hub)
        await wait_for_route(leaf, subject)

        started = time.perf_counter()
        assert (await leaf.request(subject, b"fast", timeout=2)).data == b"fast"
        fast = time.perf_counter() - started

        proxy.set_latency(200)
        started = time.perf_counter()
        assert (await leaf.request(subject, b"slow", timeout=5)).data == b"slow"
        slow = time.perf_counter() - started
        assert slow >= 0.4 > fast

        proxy.heal()
        proxy.blackhole(True)
        with pytest.raises(NatsTimeoutError):
            await leaf.request(subject, b"void", timeout=0.5)

        proxy.heal()
        assert (await leaf.request(subject, b"back", timeout=2)).data == b"back"
        assert proxy.stats.connections_accepted >= 1
        assert proxy.stats.bytes_to_target > 0 and proxy.stats.bytes_to_client > 0
    finally:
        await leaf.close()
        await hub.close()


async def wait_for_route(nc: NatsClient, subject: str, timeout: float = 10.0) -> None:
    """Wait until the hub's interest in ``subject`` has reached the leaf."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await nc.request(subject, b"probe", timeout=0.5)
            return
        except (NoRespondersError, NatsTimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
