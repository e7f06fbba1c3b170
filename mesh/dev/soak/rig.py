"""The mesh at scale on this machine: a hub of several servers, several sites each with its
gateway and edge nodes, every site's leaf link through fault proxies (one per hub member), the
administrator's connections to read streams, and what the soak reads off it: each process's
memory, descriptors and tasks, each stream's storage, hard examples buffered and delivered."""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from nats.aio.client import Client as NATS

from mesh.dev.faults import SiteLink
from mesh.dev.models.demo import DemoArtifacts
from mesh.local.launcher import EmbeddedMesh, MeshLayout
from mesh.local.phases import Phases
from mesh.local.servers import NatsServer
from mesh.topology.streams import (
    HUB_DOMAIN,
    BucketSpec,
    ObjectStoreSpec,
    StreamLimits,
    StreamSpec,
    hard_example_stream,
    inbox_stream,
)

#: links that come back fast: the gateway notices a dead cloud link within a few requests and
#: probes it again soon (as the demo's gateway does), every node reconnects within 0.2 s.
NODE_SETTINGS: dict[str, Any] = {
    "gateway": {
        "nats": {"reconnect_wait_s": 0.2},
        "upstream": {
            "breaker": {"failure_threshold": 3, "open_seconds": 0.5, "max_open_seconds": 2.0}
        },
    },
    "cloud": {"nats": {"reconnect_wait_s": 0.2}},
    "edge": {"nats": {"reconnect_wait_s": 0.2}},
}

_TASKS = re.compile(r"^mesh_asyncio_tasks(?:\{\})?\s+([0-9.eE+-]+)$", re.MULTILINE)


@dataclass
class RigConfig:
    sites: int = 3
    hub_cluster: int = 3
    edge_replicas: int = 2
    #: the gateway sends everything up (1.01) so that a hub outage shows at once.
    gateway_threshold: float | None = None
    edge_threshold: float | None = None
    limits: StreamLimits | None = None
    audit_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=lambda: dict(NODE_SETTINGS))
    #: the served versions signed and pushed, and a supervised controller (rollouts).
    operated: bool = False


class ScaleRig:
    """Owns every process and connection of a scale run, and stops them all."""

    def __init__(self, demo: DemoArtifacts, work: Path, config: RigConfig) -> None:
        self.demo = demo
        self.config = config
        self.mesh = EmbeddedMesh(
            MeshLayout(
                edge_manifest=demo.edge_int8,
                gateway_manifest=demo.gateway,
                cloud_manifest=demo.cloud,
                edge_replicas=config.edge_replicas,
                edge_threshold=config.edge_threshold,
                gateway_threshold=config.gateway_threshold,
                extra=config.extra,
                fleet=True,
                events=True,
                operated=config.operated,
                audit_rate=config.audit_rate,
                hub_cluster=config.hub_cluster,
                sites=config.sites,
                limits=config.limits,
            ),
            work_dir=work,
        )
        self.links: dict[str, SiteLink] = {}
        self._hub_nc: NATS | None = None
        self._site_ncs: dict[str, NATS] = {}

    @property
    def hub_nc(self) -> NATS:
        if self._hub_nc is None:
            raise RuntimeError("the rig is not started")
        return self._hub_nc

    def site_nc(self, site: str) -> NATS:
        return self._site_ncs[site]

    @property
    def site_names(self) -> list[str]:
        return [site.site_name for site in self.mesh.sites]

    async def start(self, phases: Phases) -> None:
        mesh = self.mesh
        async with phases.phase("start NATS servers", 120) as phase:
            phase.waiting_for(f"{mesh.hub.size} hub servers, {len(mesh.sites)} sites' links")
            await mesh.start_servers(links=self._link)
        async with phases.phase("start nodes", 240) as phase:
            await mesh.start_nodes(waiting=phase.waiting_for)
        if mesh.layout.operated:
            async with phases.phase("controller", 90, "the controller's ready line"):
                await mesh.start_controller()
        async with phases.phase("connect the administrator", 30):
            self._hub_nc = await mesh.hub.connect(name="soak-admin")
            for site in mesh.sites:
                assert site.leaf is not None
                self._site_ncs[site.site_name] = await site.leaf.connect(
                    name=f"soak-admin-{site.site_name}", max_reconnect_attempts=-1
                )

    async def _link(self, site: str, ports: list[int]) -> list[str]:
        link = await SiteLink.start(site, "127.0.0.1", ports)
        self.links[site] = link
        return link.urls

    async def stop(self) -> None:
        for nc in [self._hub_nc, *self._site_ncs.values()]:
            if nc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 5.0)
        await self.mesh.close()
        for link in self.links.values():
            await link.stop()

    # --- what the soak reads --------------------------------------------------------------

    def hub_streams(self) -> list[str]:
        """Every stream, bucket and store of the hub's domain."""
        return [_stream_of(spec) for spec in self.mesh.topology().plan(HUB_DOMAIN)]

    async def stream_figures(self) -> dict[str, dict[str, int]]:
        """Messages and bytes of every stream of every domain (``domain/stream``)."""
        figures: dict[str, dict[str, int]] = {}
        domains = [(HUB_DOMAIN, self.hub_nc), *self._site_ncs.items()]
        for domain, nc in domains:
            js = nc.jetstream(domain=domain)
            try:
                infos = await asyncio.wait_for(js.streams_info(), 5.0)
            except Exception:  # a domain out of reach right now: no figures this minute
                continue
            for info in infos:
                state = info.state
                figures[f"{domain}/{info.config.name}"] = {
                    "messages": int(state.messages),
                    "bytes": int(state.bytes),
                }
        return figures

    async def hard_examples(self) -> tuple[int, int]:
        """Hard examples buffered at the sites (not taken up yet) and delivered to the hub."""
        figures = await self.stream_figures()
        buffered = sum(
            v["messages"]
            for k, v in figures.items()
            if k.split("/", 1)[1] == hard_example_stream("gateway")
        )
        delivered = figures.get(f"{HUB_DOMAIN}/{inbox_stream('cloud')}", {}).get("messages", 0)
        return buffered, delivered

    def processes(self) -> dict[str, int]:
        """Every process of the rig by name, with its pid."""
        procs: dict[str, int] = {}
        servers: list[NatsServer] = [*self.mesh.hub.members]
        servers += [s.leaf for s in self.mesh.sites if s.leaf is not None]
        for server in servers:
            if server.pid is not None:
                procs[f"nats-{server.config.name}"] = server.pid
        for name, node in self.mesh.nodes.items():
            if node.pid is not None:
                procs[name] = node.pid
        return procs

    async def process_figures(self) -> ProcessFigures:
        """RSS in MB, CPU seconds so far and open descriptors of every process, and asyncio
        tasks of those that report them (the nodes' ``mesh_asyncio_tasks``)."""
        figures = await asyncio.to_thread(process_figures_of, self.processes())
        async with aiohttp.ClientSession() as session:
            for name, node in self.mesh.nodes.items():
                if node.http_url:
                    count = await _scrape_tasks(session, node.http_url)
                    if count is not None:
                        figures.tasks[name] = count
        return figures


def _stream_of(spec: StreamSpec | BucketSpec | ObjectStoreSpec) -> str:
    return spec.name if isinstance(spec, StreamSpec) else spec.stream


@dataclass
class ProcessFigures:
    """Each process's figures at one moment, by name."""

    rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)


def process_figures_of(pids: dict[str, int]) -> ProcessFigures:
    figures = ProcessFigures()
    for name, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            with proc.oneshot():
                figures.rss_mb[name] = round(proc.memory_info().rss / 1e6, 1)
                cpu = proc.cpu_times()
                figures.cpu_s[name] = cpu.user + cpu.system
                figures.fds[name] = proc.num_fds()
    return figures


async def _scrape_tasks(session: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with session.get(f"{url.rstrip('/')}/metrics", timeout=aiohttp.ClientTimeout(2)) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    match = _TASKS.search(text)
    return int(float(match.group(1))) if match else None


__all__ = ["NODE_SETTINGS", "ProcessFigures", "RigConfig", "ScaleRig"]
