"""The hub's NATS servers: one server, or a cluster of several with JetStream replicated across
them (``mesh up --hub-cluster 3``, the soak, the scale tests).

A ``Hub`` of size 1 is the single server the rigs always ran (named ``hub``). A larger one is
a NATS cluster named ``hub`` whose members (``hub-0``, ``hub-1``...) share the JetStream domain
``hub``, dial each other's route ports, and all accept leaf nodes: a site is given every
member's leafnode URL and reconnects to a surviving one. The members start in parallel, since
JetStream elects its meta leader (and an R3 stream its leader) only once two of three are up
(nats-io/k8s#594); a member killed and started again keeps its ports and rejoins through any
other. Route ports are fixed before the first start, because every member's configuration names
every other's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from mesh.errors import DeadlineExceededError, UnavailableError
from mesh.local.servers import ADMIN, ClusterConfig, NatsServer, ServerConfig, free_port
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.topology.streams import HUB_DOMAIN

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaState:
    """Where one replicated stream stands: its leader and each replica's state."""

    stream: str
    leader: str | None
    #: replica server names that are current (caught up and seen recently).
    current: tuple[str, ...]
    #: replica server names that are offline or behind.
    behind: tuple[str, ...]

    @property
    def healthy_replicas(self) -> int:
        """The leader and the replicas that are current."""
        return (1 if self.leader else 0) + len(self.current)


def member_name(index: int, size: int) -> str:
    return HUB_DOMAIN if size == 1 else f"{HUB_DOMAIN}-{index}"


class Hub:
    """The hub: ``size`` servers sharing the JetStream domain ``hub`` (see the module)."""

    def __init__(self, base: Path, keystore: KeyStore | Path, size: int = 1) -> None:
        if size < 1:
            raise ValueError(f"a hub has at least one server, not {size}")
        self.base = base
        self.size = size
        cluster = self._cluster_configs(size)
        self.members = [
            NatsServer(
                ServerConfig(
                    name=member_name(i, size),
                    jetstream_domain=HUB_DOMAIN,
                    accept_leafnodes=True,
                    cluster=cluster[i] if cluster else None,
                ),
                base if size == 1 else base / member_name(i, size),
                keystore,
            )
            for i in range(size)
        ]

    @staticmethod
    def _cluster_configs(size: int) -> list[ClusterConfig]:
        if size == 1:
            return []
        ports = [free_port() for _ in range(size)]
        routes = tuple(f"nats-route://127.0.0.1:{port}" for port in ports)
        password = secrets.token_hex(16)
        return [
            ClusterConfig(name=HUB_DOMAIN, port=port, routes=routes, password=password)
            for port in ports
        ]

    @property
    def first(self) -> NatsServer:
        return self.members[0]

    @property
    def clustered(self) -> bool:
        return self.size > 1

    def member(self, name: str) -> NatsServer:
        for server in self.members:
            if server.config.name == name:
                return server
        raise KeyError(f"the hub has no member {name!r}: {[m.config.name for m in self.members]}")

    @property
    def urls(self) -> list[str]:
        """Every member's client URL, for clients that must outlive any one member."""
        return [m.url for m in self.members]

    @property
    def url(self) -> str:
        """The client URLs as one comma-separated value (``--servers``, ``MESH_HUB_URL``)."""
        return ",".join(self.urls)

    @property
    def leafnode_urls(self) -> list[str]:
        return [m.leafnode_url for m in self.members]

    @property
    def leaf_ports(self) -> list[int]:
        return [m.leaf_port for m in self.members]

    @property
    def running(self) -> list[NatsServer]:
        return [m for m in self.members if m.running]

    @property
    def keystore(self) -> KeyStore:
        return self.first.keystore

    def creds(self, name: str = ADMIN.name) -> Path:
        return self.first.creds(name)

    async def issue(self, spec: IdentitySpec) -> Path:
        return await self.first.issue(spec)

    def client_options(self, name: str = ADMIN.name) -> dict[str, Any]:
        return self.first.client_options(name)

    async def connect(self, identity: str = ADMIN.name, **options: Any) -> NATS:
        """A connection to the hub as ``identity``, given every member (it moves to a
        surviving one); ``options`` pass to ``nats.connect``."""
        options.setdefault("max_reconnect_attempts", -1)
        options.setdefault("reconnect_time_wait", 0.25)
        # a member killed on purpose (the soak, the tests) is no news: one line at debug, not
        # nats-py's traceback of every refused reconnect
        options.setdefault("error_cb", _note_error)
        return await nats.connect(servers=self.urls, **{**self.client_options(identity), **options})

    async def start(self, timeout: float = 60.0) -> None:
        """Every member at once, then until JetStream has a meta leader."""
        try:
            async with asyncio.timeout(timeout):
                # the first one makes the key store the others open
                await self.first.start()
                await asyncio.gather(*(m.start() for m in self.members[1:]))
                await self.wait_jetstream()
        except TimeoutError:
            raise DeadlineExceededError(
                f"hub: JetStream not ready on {self.size} servers after {timeout:.0f}s "
                f"(waiting for a meta leader; see {self.base}/*/server.log)"
            ) from None

    async def wait_jetstream(self, timeout: float = 30.0) -> None:
        """Until every running member sees the same JetStream meta leader."""
        try:
            async with asyncio.timeout(timeout):
                while not await asyncio.to_thread(self._meta_ready):  # noqa: ASYNC110 (another process)
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise DeadlineExceededError(
                f"hub: no JetStream meta leader among {[m.config.name for m in self.running]} "
                f"after {timeout:.0f}s"
            ) from None

    def _meta_ready(self) -> bool:
        if not self.clustered:
            return self.first.running
        leaders = set()
        for server in self.running:
            try:
                meta = server.monitor("jsz").get("meta_cluster")
            except OSError:
                return False
            leader = meta.get("leader") if isinstance(meta, dict) else None
            if not leader:
                return False
            leaders.add(leader)
        return len(leaders) == 1

    async def stop(self) -> None:
        await asyncio.gather(*(m.stop() for m in self.members))

    async def member_serving(self, connection: str) -> NatsServer:
        """The member a client connection named ``connection`` is on now."""

        def find() -> NatsServer | None:
            for server in self.running:
                try:
                    connz = server.monitor("connz?limit=4096")
                except OSError:
                    continue
                conns = connz.get("connections")
                if isinstance(conns, list) and any(
                    isinstance(c, dict) and c.get("name") == connection for c in conns
                ):
                    return server
            return None

        found = await asyncio.to_thread(find)
        if found is None:
            raise UnavailableError(f"hub: no member holds a connection named {connection!r}")
        return found

    async def wait_leaf_connections(self, count: int = 1, timeout: float = 10.0) -> None:
        """Until the members hold ``count`` leaf connections between them."""
        try:
            async with asyncio.timeout(timeout):
                while await self.leaf_connections() < count:  # noqa: ASYNC110 (another process)
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise UnavailableError(f"hub: {count} leaf links not up after {timeout}s") from None

    async def leaf_connections(self) -> int:
        counts = await asyncio.gather(*(m.leaf_connections() for m in self.running))
        return sum(counts)

    async def replicas(self, nc: NATS, streams: Iterable[str]) -> list[ReplicaState]:
        """Each stream's leader and replicas as the hub's JetStream reports them."""
        js = nc.jetstream(domain=HUB_DOMAIN)
        states = []
        for stream in streams:
            info = await js.stream_info(stream)
            cluster = info.cluster
            peers = list(cluster.replicas or []) if cluster is not None else []
            states.append(
                ReplicaState(
                    stream=stream,
                    leader=cluster.leader if cluster is not None else None,
                    current=tuple(str(p.name) for p in peers if p.current and not p.offline),
                    behind=tuple(str(p.name) for p in peers if not p.current or p.offline),
                )
            )
        return states

    async def wait_replicas(
        self, nc: NATS, streams: Sequence[str], replicas: int, timeout: float = 60.0
    ) -> list[ReplicaState]:
        """Until every one of ``streams`` has a leader and ``replicas - 1`` current followers."""
        states: list[ReplicaState] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        states = await self.replicas(nc, streams)
                    except (nats.errors.Error, TimeoutError):
                        states = []
                    if states and all(s.healthy_replicas >= replicas for s in states):
                        return states
                    await asyncio.sleep(0.5)
        except TimeoutError:
            short = [s.stream for s in states if s.healthy_replicas < replicas] or list(streams)
            raise DeadlineExceededError(
                f"hub: streams {short} not back to {replicas} current replicas after {timeout:.0f}s"
            ) from None


async def _note_error(error: Exception) -> None:
    log.debug("hub connection: %s: %s", type(error).__name__, error)


__all__ = ["Hub", "ReplicaState", "member_name"]
