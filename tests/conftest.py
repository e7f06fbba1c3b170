"""Shared fixtures: real nats-server processes on loopback, the demo models, tier nodes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from mesh.models.demo import DemoArtifacts, ensure_demo
from mesh.node import TierNode
from mesh.settings import (
    HardExampleSettings,
    ModelSettings,
    NatsSettings,
    NodeSettings,
    UpstreamSettings,
)
from mesh.testing.embedded import NatsServer, ServerConfig, Site

for _name in [n for n in os.environ if n.startswith("MESH_")]:
    del os.environ[_name]


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fails a test when the mesh's own code makes a blocking call on the event loop."""
    with blockbuster_ctx(scanned_modules=["mesh"]) as bb:
        yield bb


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoArtifacts:
    """The demo models, built once a test session."""
    return ensure_demo(tmp_path_factory.mktemp("demo-models"))


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """One real nats-server with JetStream on free loopback ports."""
    async with NatsServer(
        ServerConfig(name="test", jetstream_domain="test"), tmp_path / "nats"
    ) as server:
        yield server


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """A hub (domain ``hub``) and a site leaf server (domain ``site``), linked directly."""
    s = Site(tmp_path / "site")
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


NodeFactory = Callable[..., Awaitable[TierNode]]


def model_settings(demo: DemoArtifacts, tier: str, **overrides: Any) -> ModelSettings:
    manifest = {
        "edge": demo.edge,
        "edge-int8": demo.edge_int8,
        "gateway": demo.gateway,
        "cloud": demo.cloud,
    }[tier]
    overrides.setdefault("name", "digits")
    return ModelSettings(manifest=manifest, **overrides)


@pytest.fixture
async def start_node() -> AsyncIterator[NodeFactory]:
    """Start tier nodes, each on its own NATS connection; all stopped at the end of the test."""
    nodes: list[TierNode] = []

    async def start(
        tier: str,
        servers: str | list[str],
        models: list[ModelSettings],
        *,
        upstream: str | UpstreamSettings | None = None,
        entry: bool = False,
        zone: str = "device",
        upstream_zone: str = "cloud",
        hard_examples: HardExampleSettings | None = None,
        **kwargs: Any,
    ) -> TierNode:
        if isinstance(upstream, str):
            upstream = UpstreamSettings(tier=upstream, zone=upstream_zone)
        settings = NodeSettings(
            tier=tier,
            node=kwargs.pop("node", f"{tier}-{len(nodes)}"),
            zone=zone,
            entry=entry,
            nats=NatsSettings(servers=[servers] if isinstance(servers, str) else servers),
            upstream=upstream,
            models=models,
            hard_examples=hard_examples or HardExampleSettings(upstream_domain=None),
            http_port=kwargs.pop("http_port", None),
            **kwargs,
        )
        node = TierNode(settings)
        await node.start()
        nodes.append(node)
        return node

    try:
        yield start
    finally:
        for node in reversed(nodes):
            await node.stop()


def _dump_tasks(signum: int, frame: object) -> None:
    """``kill -USR1 <pytest pid>`` prints every asyncio task's stack: for a hung test."""
    import asyncio
    import sys

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        print("no running event loop", file=sys.stderr)
        return
    for task in asyncio.all_tasks(loop):
        task.print_stack(file=sys.stderr)


def pytest_configure(config: pytest.Config) -> None:
    import signal

    signal.signal(signal.SIGUSR1, _dump_tasks)
