"""A TCP fault-injection proxy for the leaf-to-hub link (the kernel here has no netem).

``FaultProxy`` listens on loopback and forwards every connection to one target. Faults are
switched while it runs and apply to live connections at once:

- ``set_latency(ms)``: one-way delay added to every chunk, in each direction. Chunks wait in a
  per-direction queue with a release time, so the delay does not throttle throughput and order
  is kept.
- ``set_bandwidth(bytes_per_second)``: a token bucket per direction, shared by all connections
  (the link has one capacity, whatever runs over it).
- ``blackhole(True)``: nothing gets through in either direction, connections stay open, nobody
  gets a reset or an EOF. By default the bytes are held and delivered if the link comes back,
  which is what TCP does when packets vanish and are retransmitted later: the byte stream stays
  intact, peers notice only by their own timeouts (NATS pings). Reading stops once a direction
  holds ``hold_limit`` bytes, so senders feel back-pressure as from a full TCP window.
  ``blackhole(True, drop=True)`` throws the bytes away instead (counted in ``bytes_dropped``);
  that leaves holes in the streams, so after the link returns peers typically fail with a
  protocol error: use it to model a link whose connections do not survive the outage.
- ``reset_all()``: every live connection is closed with RST on both sides (``SO_LINGER`` 0).
- ``refuse(True)``: new connections are accepted and reset at once: a link that fails fast.
- ``heal()``: clear every fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from dataclasses import dataclass

from mesh.lifecycle import Service

logger = logging.getLogger("mesh.testing.faults")

_READ_SIZE = 65536
_EOF = b""


@dataclass
class FaultStats:
    """Counters of a ``FaultProxy`` since it was created."""

    #: bytes delivered from clients to the target.
    bytes_to_target: int = 0
    #: bytes delivered from the target back to clients.
    bytes_to_client: int = 0
    #: bytes thrown away by ``blackhole(True, drop=True)``.
    bytes_dropped: int = 0
    connections_accepted: int = 0
    #: connections accepted and reset at once while refusing.
    connections_refused: int = 0
    #: connections closed with RST by ``reset_all``.
    connections_reset: int = 0
    #: connections whose target could not be reached.
    connections_failed: int = 0


class _TokenBucket:
    """A shared token bucket as a virtual finish time (GCRA): bursts up to ``burst`` bytes."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self.burst = 0.0
        self._next = 0.0

    def configure(self, rate: float | None, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._next = 0.0

    def piece_size(self) -> int:
        if self.rate is None:
            return _READ_SIZE
        return max(1, min(_READ_SIZE, int(self.burst)))

    def reserve(self, size: int, now: float) -> float:
        """Take ``size`` bytes of capacity; the delay before they may be sent."""
        if self.rate is None:
            return 0.0
        self._next = max(self._next, now) + size / self.rate
        return max(self._next - self.burst / self.rate - now, 0.0)


class _Queue:
    """Chunks of one direction with their release times, bounded in bytes."""

    def __init__(self, limit: int) -> None:
        self._items: deque[tuple[float, bytes]] = deque()
        self._bytes = 0
        self._limit = limit
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, release_at: float, data: bytes) -> None:
        await self._room.wait()
        self._items.append((release_at, data))
        self._bytes += len(data)
        if self._bytes >= self._limit:
            self._room.clear()
        self._readable.set()

    async def get(self) -> tuple[float, bytes]:
        while not self._items:
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._bytes -= len(item[1])
        if self._bytes < self._limit:
            self._room.set()
        return item


def _set_rst_on_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _reset(writer: asyncio.StreamWriter) -> None:
    _set_rst_on_close(writer)
    writer.transport.abort()


class _Link:
    """One proxied connection: two directions, each a reader task and a writer task."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self._proxy = proxy
        self._client_reader, self._client_writer = client
        self._target_reader, self._target_writer = target

    async def run(self) -> None:
        proxy = self._proxy
        up = _Queue(proxy.hold_limit)
        down = _Queue(proxy.hold_limit)
        tasks = [
            asyncio.create_task(self._read(self._client_reader, up)),
            asyncio.create_task(self._write(up, self._target_writer, to_target=True)),
            asyncio.create_task(self._read(self._target_reader, down)),
            asyncio.create_task(self._write(down, self._client_writer, to_target=False)),
        ]
        try:
            await asyncio.gather(*tasks)
        except OSError:
            self.reset()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.close()

    def reset(self) -> None:
        _reset(self._client_writer)
        _reset(self._target_writer)

    def close(self) -> None:
        self._client_writer.close()
        self._target_writer.close()

    async def _read(self, reader: asyncio.StreamReader, queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(_READ_SIZE)
            await queue.put(loop.time() + self._proxy.latency, data)
            if data == _EOF:
                return

    async def _write(self, queue: _Queue, writer: asyncio.StreamWriter, *, to_target: bool) -> None:
        proxy = self._proxy
        loop = asyncio.get_running_loop()
        bucket = proxy._bucket_up if to_target else proxy._bucket_down
        while True:
            release_at, data = await queue.get()
            delay = release_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if proxy._blackhole_drop and data != _EOF:
                proxy.stats.bytes_dropped += len(data)
                continue
            await proxy._flowing.wait()
            if data == _EOF:
                if writer.can_write_eof() and not writer.is_closing():
                    writer.write_eof()
                return
            size = bucket.piece_size()
            for start in range(0, len(data), size):
                piece = data[start : start + size]
                wait = bucket.reserve(len(piece), loop.time())
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(piece)
                await writer.drain()
                if to_target:
                    proxy.stats.bytes_to_target += len(piece)
                else:
                    proxy.stats.bytes_to_client += len(piece)


class FaultProxy(Service):
    """TCP proxy to one target with switchable faults; an async context manager.

    See the module docstring for what each fault does. ``stop`` is idempotent: it closes the
    listener, then every live connection, and waits for all of its tasks.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        hold_limit: int = 4 * 1024 * 1024,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self._listen_port = listen_port
        self.hold_limit = hold_limit
        self.stats = FaultStats()
        self.latency = 0.0
        self._bucket_up = _TokenBucket()
        self._bucket_down = _TokenBucket()
        self._blackhole = False
        self._blackhole_drop = False
        self._refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._links: dict[asyncio.Task[None], _Link] = {}

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FaultProxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL a NATS leaf server dials to reach the target through this proxy."""
        return f"nats-leaf://{self.address}"

    @property
    def live_connections(self) -> int:
        return len(self._links)

    @property
    def bandwidth(self) -> float | None:
        return self._bucket_up.rate

    @property
    def blackholed(self) -> bool:
        return self._blackhole

    @property
    def refusing(self) -> bool:
        return self._refusing

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.listen_host, self._listen_port, backlog=1024
        )
        logger.info("fault proxy %s -> %s:%d", self.address, self.target_host, self.target_port)

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def set_latency(self, ms: float) -> None:
        """Add ``ms`` of one-way delay to every chunk in each direction (0 to remove)."""
        if ms < 0:
            raise ValueError("latency must be >= 0")
        self.latency = ms / 1000.0
        logger.info("fault proxy %s: latency %.1f ms", self._name(), ms)

    def set_bandwidth(self, bytes_per_second: float | None, burst_bytes: int | None = None) -> None:
        """Cap each direction at ``bytes_per_second`` (``None`` removes the cap).

        ``burst_bytes`` is the bucket size, by default a twentieth of a second of traffic.
        """
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bandwidth must be > 0 or None")
        burst = 0.0
        if bytes_per_second is not None:
            burst = float(burst_bytes) if burst_bytes else max(bytes_per_second / 20.0, 1.0)
        self._bucket_up.configure(bytes_per_second, burst)
        self._bucket_down.configure(bytes_per_second, burst)
        logger.info("fault proxy %s: bandwidth %s B/s", self._name(), bytes_per_second)

    def blackhole(self, on: bool, *, drop: bool = False) -> None:
        """Let nothing through while ``on``; hold the bytes, or throw them away with ``drop``."""
        self._blackhole = on
        self._blackhole_drop = on and drop
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()
        mode = "drop" if drop else "hold"
        logger.info("fault proxy %s: blackhole %s (%s)", self._name(), on, mode)

    def refuse(self, on: bool) -> None:
        """Reset new connections as soon as they are accepted while ``on``."""
        self._refusing = on
        logger.info("fault proxy %s: refuse %s", self._name(), on)

    def reset_all(self) -> int:
        """Close every live connection with RST on both sides; how many were reset."""
        links = list(self._links.items())
        for task, link in links:
            link.reset()
            task.cancel()
        self.stats.connections_reset += len(links)
        logger.info("fault proxy %s: reset %d connections", self._name(), len(links))
        return len(links)

    def heal(self) -> None:
        """Clear every fault: latency, bandwidth cap, blackhole and refusal."""
        self.latency = 0.0
        self._bucket_up.configure(None, 0.0)
        self._bucket_down.configure(None, 0.0)
        self._blackhole = False
        self._blackhole_drop = False
        self._flowing.set()
        self._refusing = False
        logger.info("fault proxy %s: healed", self._name())

    def _name(self) -> str:
        return self.address if self._server is not None else "(stopped)"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if not self.running:
            _reset(writer)
            return
        self._handlers.add(task)
        try:
            self.stats.connections_accepted += 1
            if self._refusing:
                self.stats.connections_refused += 1
                _reset(writer)
                return
            try:
                target = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError as exc:
                self.stats.connections_failed += 1
                logger.debug("fault proxy %s: target unreachable: %s", self._name(), exc)
                _reset(writer)
                return
            link = _Link(self, (reader, writer), target)
            self._links[task] = link
            try:
                await link.run()
            finally:
                del self._links[task]
        except asyncio.CancelledError:
            writer.close()
        finally:
            self._handlers.discard(task)


class SiteLink:
    """A site's leaf link to a clustered hub: one ``FaultProxy`` per hub member, since the site
    dials any member; a fault applies to all of them, so the site cannot reconnect around it."""

    def __init__(self, site: str, proxies: list[FaultProxy]) -> None:
        self.site = site
        self.proxies = proxies

    @classmethod
    async def start(cls, site: str, host: str, ports: list[int]) -> SiteLink:
        proxies: list[FaultProxy] = []
        try:
            for port in ports:
                proxy = FaultProxy(host, port)
                await proxy.start()
                proxies.append(proxy)
        except BaseException:
            for proxy in proxies:
                await proxy.stop()
            raise
        return cls(site, proxies)

    @property
    def urls(self) -> list[str]:
        return [proxy.url for proxy in self.proxies]

    def bytes_carried(self) -> tuple[int, int]:
        """Bytes the link carried so far: from the site to the hub, and back."""
        up = sum(proxy.stats.bytes_to_target for proxy in self.proxies)
        down = sum(proxy.stats.bytes_to_client for proxy in self.proxies)
        return up, down

    def blackhole(self, on: bool, *, drop: bool = False) -> None:
        for proxy in self.proxies:
            proxy.blackhole(on, drop=drop)

    def set_latency(self, ms: float) -> None:
        for proxy in self.proxies:
            proxy.set_latency(ms)

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        for proxy in self.proxies:
            proxy.set_bandwidth(bytes_per_second)

    def refuse(self, on: bool) -> None:
        for proxy in self.proxies:
            proxy.refuse(on)

    def reset_all(self) -> int:
        return sum(proxy.reset_all() for proxy in self.proxies)

    def heal(self) -> None:
        for proxy in self.proxies:
            proxy.heal()

    async def stop(self) -> None:
        for proxy in self.proxies:
            await proxy.stop()


__all__ = ["FaultProxy", "FaultStats", "SiteLink"]
