"""The bench's tier nodes, each its own process. Each mesh row is its own tier name on those
servers, so rows never share a queue group: ``edge`` (threshold 0, answers everything, on
``site``), ``edgeesc`` (threshold 1.01, upstream cloud, ``site``), ``edgelink`` (threshold 1.01,
``site2``), ``edgemix`` (the calibrated threshold, ``site2``), and the open servers' copies."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import psutil

from mesh.dev.bench.config import MiB
from mesh.dev.bench.report import MemoryFigures
from mesh.dev.bench.servers import BenchServers
from mesh.dev.models.demo import DemoArtifacts
from mesh.local.launcher import NodeProcess
from mesh.local.layout import local_edge_identity, node_identity, tier_node_settings
from mesh.local.servers import NatsServer
from mesh.security.keystore import KeyStore
from mesh.settings import NodeSettings
from mesh.topology.streams import Spec, event_specs, hard_example_spec
from mesh.transport.jetstream import ensure


@dataclass(frozen=True)
class PlannedNode:
    tier: str
    server: NatsServer
    manifest: Path
    threshold: float | None
    upstream: bool
    entry: bool
    #: on the servers with authentication and TLS (else on the open ones).
    secured: bool


#: the tier of the edge the bench process hosts itself (``MeshClient.connect(local=...)``).
LOCAL_TIER = "edgelocal"


def node_plan(
    servers: BenchServers, demo: DemoArtifacts, calibrated: float
) -> dict[str, PlannedNode]:
    hub, site, site2 = servers.hub, servers.site, servers.site2
    hub_open, site_open = servers.hub_open, servers.site_open
    edge = demo.edge_int8
    return {
        "cloud": PlannedNode("cloud", hub, demo.cloud, None, False, False, True),
        "edge": PlannedNode("edge", site, edge, 0.0, True, True, True),
        "edgeesc": PlannedNode("edgeesc", site, edge, 1.01, True, False, True),
        "edgelink": PlannedNode("edgelink", site2, edge, 1.01, True, False, True),
        "edgemix": PlannedNode("edgemix", site2, edge, calibrated, True, False, True),
        "cloudopen": PlannedNode("cloud", hub_open, demo.cloud, None, False, False, False),
        "edgeopen": PlannedNode("edge", site_open, edge, 0.0, True, True, False),
        "edgeescopen": PlannedNode("edgeesc", site_open, edge, 1.01, True, False, False),
    }


async def provision_streams(plan: dict[str, PlannedNode]) -> None:
    """The administrator's step for the bench's nodes (they create no stream): each node with
    an upstream keeps hard examples, and the site's entry node takes events."""
    wanted: dict[str, tuple[NatsServer, list[Spec]]] = {}
    for name, node in plan.items():
        specs = wanted.setdefault(node.server.config.name, (node.server, []))[1]
        if node.upstream:
            specs.append(hard_example_spec(node.tier))
        if name == "edge":
            specs.extend(event_specs(None))
            # the in-process edge beside it keeps hard examples too
            specs.append(hard_example_spec(LOCAL_TIER))
    for server, specs in wanted.values():
        nc = await server.connect(name="bench-provision")
        try:
            for spec in specs:
                await ensure(nc.jetstream(), spec)
        finally:
            await nc.close()


def node_processes(
    plan: dict[str, PlannedNode], keystore: KeyStore, work: Path
) -> dict[str, NodeProcess]:
    """The nodes, not started yet; issues identities, so it blocks."""
    return {
        name: NodeProcess(
            name,
            _node_settings(
                node.tier,
                node.server.url,
                node.manifest,
                threshold=node.threshold,
                upstream=node.upstream,
                entry=node.entry,
                keystore=keystore if node.secured else None,
                # the site's entry node also consumes the event stream
                events=name == "edge",
            ),
            work,
        )
        for name, node in plan.items()
    }


def _node_settings(
    tier: str,
    server: str,
    manifest: Path,
    *,
    threshold: float | None,
    upstream: bool,
    entry: bool,
    keystore: KeyStore | None,
    events: bool = False,
) -> NodeSettings:
    """One bench node; ``keystore`` None for the open servers (no credentials to present)."""
    identity = node_identity(
        f"{tier}-0", tier, upstream_tier="cloud" if upstream else None, entry=entry
    )
    return tier_node_settings(
        tier,
        node=f"{tier}-0",
        server=server,
        manifest=manifest,
        zone="cloud" if tier == "cloud" else "device",
        entry=entry,
        upstream=("cloud", "cloud") if upstream else None,
        threshold=threshold,
        credentials=keystore.ensure(identity) if keystore is not None else None,
        extra={"events": {"enabled": True}} if events else None,
    )


def local_edge_settings(servers: BenchServers, demo: DemoArtifacts, number: int) -> NodeSettings:
    """An edge hosted in a process (the bench's own is number 0, the ingress's 1): ``edge``'s
    settings (threshold 0, the cloud above), its own tier name and a ``local-edge`` identity;
    it blocks (issues the identity)."""
    node = f"{LOCAL_TIER}-{number}"
    identity = local_edge_identity(node, LOCAL_TIER, upstream_tier="cloud")
    return tier_node_settings(
        LOCAL_TIER,
        node=node,
        server=servers.site.url,
        manifest=demo.edge_int8,
        zone="device",
        upstream=("cloud", "cloud"),
        threshold=0.0,
        credentials=servers.keystore.ensure(identity),
    )


def memory_of(pid: int) -> MemoryFigures:
    """A node's resident memory now and at its peak."""
    return MemoryFigures(_rss_mb(pid), _vm_hwm_mb(pid))


def _vm_hwm_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def _rss_mb(pid: int) -> float | None:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).memory_info().rss / MiB
    return None
