"""The bench's NATS servers: a hub and two site leaf servers, ``site`` dialling the hub directly
and ``site2`` through the fault proxy process (the WAN, +``link_ms_one_way`` each way); and the
same hub and site without authentication or TLS, only to measure what those cost."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

from mesh.dev.bench.config import READY, BenchConfig
from mesh.local.servers import NatsServer, ServerConfig
from mesh.local.supervisor import ChildProcess
from mesh.security.keystore import KeyStore


@dataclass(frozen=True)
class BenchServers:
    keystore: KeyStore
    hub: NatsServer
    #: the fault proxy between ``site2`` and the hub.
    proxy: ChildProcess
    site: NatsServer
    site2: NatsServer
    hub_open: NatsServer
    site_open: NatsServer


async def start_servers(
    config: BenchConfig, work: Path, stack: contextlib.AsyncExitStack
) -> BenchServers:
    """Every server started and linked; each stops when ``stack`` closes."""
    # One fleet for every server: each node, the echo and the clients connect with their own
    # credentials, as in a deployment (the leaf links over mutual TLS).
    keystore = await asyncio.to_thread(KeyStore.create, work / "keys")
    hub = NatsServer(
        ServerConfig(name="hub", jetstream_domain="hub", accept_leafnodes=True),
        work / "hub",
        keystore,
    )
    await hub.start()
    stack.push_async_callback(hub.stop)
    proxy = _link_proxy(config, hub, work)
    await proxy.start()
    stack.push_async_callback(proxy.stop)
    site = NatsServer(
        ServerConfig(name="site", jetstream_domain="site", leaf_remotes=[hub.leafnode_url]),
        work / "site",
        keystore,
    )
    site2 = NatsServer(
        ServerConfig(
            name="site2",
            jetstream_domain="site2",
            leaf_remotes=[f"nats-leaf://127.0.0.1:{proxy.info['port']}"],
        ),
        work / "site2",
        keystore,
    )
    for server in (site, site2):
        await server.start()
        stack.push_async_callback(server.stop)
    await hub.wait_leaf_connections(2)
    hub_open, site_open = await _start_open_servers(work, keystore, stack)
    return BenchServers(keystore, hub, proxy, site, site2, hub_open, site_open)


def _link_proxy(config: BenchConfig, hub: NatsServer, work: Path) -> ChildProcess:
    return ChildProcess(
        "proxy",
        [
            sys.executable,
            *("-m", "mesh.dev.bench", "proxy", "--target", f"127.0.0.1:{hub.leaf_port}"),
            *("--latency-ms", str(config.link_ms_one_way)),
        ],
        work / "proxy.log",
        ready_prefix=READY,
    )


async def _start_open_servers(
    work: Path, keystore: KeyStore, stack: contextlib.AsyncExitStack
) -> tuple[NatsServer, NatsServer]:
    hub_open = NatsServer(
        ServerConfig(
            name="hubopen", jetstream_domain="hubopen", accept_leafnodes=True, secure=False
        ),
        work / "hubopen",
        keystore,
    )
    await hub_open.start()
    stack.push_async_callback(hub_open.stop)
    site_open = NatsServer(
        ServerConfig(
            name="siteopen",
            jetstream_domain="siteopen",
            leaf_remotes=[hub_open.leafnode_url],
            secure=False,
        ),
        work / "siteopen",
        keystore,
    )
    await site_open.start()
    stack.push_async_callback(site_open.stop)
    await hub_open.wait_leaf_connections(1)
    return hub_open, site_open
