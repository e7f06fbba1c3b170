"""The rig, the mesh under test and everything measured beside it, each its own process: the
NATS servers (``servers``), the tier nodes (``nodes``), the floors, the aiohttp peer and the OIP
ingresses (``responders``), and MLServer when it is installed (``mlserver``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from mesh.dev.bench.config import BenchConfig
from mesh.dev.bench.mlserver import MlServerPeer, start_mlserver_peer
from mesh.dev.bench.nodes import (
    local_edge_settings,
    node_plan,
    node_processes,
    provision_streams,
)
from mesh.dev.bench.responders import Responders, responder_processes
from mesh.dev.bench.servers import BenchServers, start_servers
from mesh.dev.models.demo import DemoArtifacts
from mesh.local.launcher import NodeProcess
from mesh.local.layout import settings_yaml
from mesh.settings import NodeSettings


@dataclass(frozen=True)
class Rig:
    servers: BenchServers
    nodes: dict[str, NodeProcess]
    responders: Responders
    mlserver: MlServerPeer
    #: the edge the bench process hosts itself, on the site's server.
    local_edge: NodeSettings


async def start_rig(
    config: BenchConfig,
    demo: DemoArtifacts,
    *,
    calibrated: float,
    edge_onnx: Path,
    mlserver: str | None,
    work: Path,
    stack: contextlib.AsyncExitStack,
    progress: Callable[[str], None],
) -> Rig:
    """Every process started and ready; each stops when ``stack`` closes."""
    progress("starting NATS hub, two site leaf servers and the 40 ms link")
    servers = await start_servers(config, work, stack)
    progress("starting tier nodes, echo responder and HTTP peers")
    plan = node_plan(servers, demo, calibrated)
    await provision_streams(plan)
    nodes = await asyncio.to_thread(node_processes, plan, servers.keystore, work)
    for node in nodes.values():
        stack.push_async_callback(node.stop)
    hosted = await asyncio.to_thread(local_edge_settings, servers, demo, 1)
    hosted_yaml = work / "ingress-local-edge.yaml"
    await asyncio.to_thread(
        hosted_yaml.write_text, yaml.safe_dump(settings_yaml(hosted), sort_keys=False)
    )
    responders = await responder_processes(
        servers.site, servers.keystore, demo.edge_int8, edge_onnx, hosted_yaml, work
    )
    for helper in responders.all():
        stack.push_async_callback(helper.stop)
    await asyncio.gather(
        *(n.start() for n in nodes.values()),
        responders.echo.start(),
        responders.ort.start(),
        responders.peer.start(),
    )
    await responders.ingress.start()
    await responders.ingress_local.start()
    assert all(helper.pid is not None for helper in responders.all())
    peer = await start_mlserver_peer(mlserver, edge_onnx, work, stack, progress)
    local = await asyncio.to_thread(local_edge_settings, servers, demo, 0)
    return Rig(servers, nodes, responders, peer, local)
