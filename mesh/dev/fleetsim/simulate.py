"""A simulated fleet on real servers: ``mesh fleet simulate --nodes 500 --sites 5``.

- a hub ``nats-server`` (JetStream domain ``hub``) and one leaf server per site (its own domain),
  each site's leaf link through a ``FaultProxy`` so a site can be cut off and healed;
- the fleet registry on them (``mesh fleet init``), a signing key, and the demo's int8 edge
  model pushed and signed as the version every node starts with;
- one cloud node at the hub (the tier above, which escalations and audits reach), with its
  heartbeat: what it answered for each edge node bounds what that node may claim to have
  compared (so a rollout of the edge tier takes ``--selector tier=edge``);
- the edge nodes, each a real ``TierNode`` with its own identity, connection, ONNX Runtime
  session, fleet agent and heartbeat, many per process (``mesh.dev.fleetsim.worker``), by default
  one process per site;
- ``SimLoad``: steady requests through the SDK at each site (a queue group spreads them over the
  site's nodes), counting every answer by version and every failure.

Tests, the demo and ``make fleet-500`` drive rollouts against it with a ``mesh controller``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from mesh.dev.faults import FaultProxy
from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import MeshError
from mesh.fleet import registry
from mesh.fleet.release import signed_artifact
from mesh.fleet.signing import SigningKey
from mesh.lifecycle import cancel_and_wait
from mesh.local.layout import node_identity, tier_node_settings
from mesh.local.servers import ADMIN, APPLICATION, NatsServer, ServerConfig
from mesh.local.supervisor import ChildProcess, child_env
from mesh.models.manifest import load_manifest, save_manifest, verify_artifact
from mesh.sdk.client import MeshClient
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role
from mesh.topology.streams import HardExampleLimits, MeshTopology, StreamLimits, TierPlacement
from mesh.transport.jetstream import provision

CONTROLLER = IdentitySpec("controller", Role.CONTROLLER)
CONSOLE = IdentitySpec("console", Role.CONSOLE)
MODEL = "digits"


@dataclass
class SimulationSettings:
    work_dir: Path
    nodes: int = 500
    sites: int = 5
    #: processes the edge nodes run in (default: one per site).
    processes: int | None = None
    heartbeat_s: float = 2.0
    #: share of confident answers each node audits against the cloud.
    audit_rate: float = 0.05
    #: single-row runs of each node's on-device latency gate (its p99 is judged).
    gate_runs: int = 100
    #: the single-row p99 budget written into the manifests pushed for the simulated nodes:
    #: hundreds of them share this machine's cores, so the demo models' 2 ms (one device's
    #: budget) would measure the neighbours, not the model. None keeps the manifest's.
    latency_budget_ms: float | None = 50.0


def site_name(index: int) -> str:
    return f"site-{index}"


class FleetSimulation:
    def __init__(self, settings: SimulationSettings, demo: DemoArtifacts) -> None:
        self.settings = settings
        self.demo = demo
        self.work = settings.work_dir
        self.keystore: KeyStore | None = None
        self.hub = NatsServer(
            ServerConfig(name="hub", jetstream_domain="hub", accept_leafnodes=True),
            self.work / "hub",
            self.work / "keys",
        )
        self.sites: list[NatsServer] = []
        self.proxies: list[FaultProxy] = []
        self.key: SigningKey | None = None
        self.workers: list[ChildProcess] = []
        self.cloud: ChildProcess | None = None
        #: node name to its site.
        self.node_sites: dict[str, str] = {}
        self.initial_version = ""

    # --- start and stop ---------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        await self.hub.start()
        self.keystore = self.hub.keystore
        for k in range(s.sites):
            proxy = FaultProxy("127.0.0.1", self.hub.leaf_port)
            await proxy.start()
            name = site_name(k)
            leaf = NatsServer(
                ServerConfig(name=name, jetstream_domain=name, leaf_remotes=[proxy.url]),
                self.work / name,
                self.keystore,
            )
            await leaf.start()
            self.proxies.append(proxy)
            self.sites.append(leaf)
        await self.hub.wait_leaf_connections(s.sites, timeout=30.0)
        for spec in (ADMIN, APPLICATION, CONTROLLER, CONSOLE):
            await self.issue(spec)
        self.key = await asyncio.to_thread(SigningKey.generate)
        key_path = self.work / "fleet" / "signing.key"
        await asyncio.to_thread(key_path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(self.key.save, key_path)
        nc = await self.hub.connect()
        try:
            hub = nc.jetstream(domain="hub")
            # the fleet's buckets only: the simulated nodes keep no hard examples and no events
            topology = MeshTopology(
                tiers=(TierPlacement("edge", at_sites=True), TierPlacement("cloud", False)),
                sites=tuple(site_name(k) for k in range(s.sites)),
                events=False,
                limits=StreamLimits(hard_examples=HardExampleLimits(max_bytes=1024 * 1024)),
            )
            await provision(lambda domain: nc.jetstream(domain=domain), topology)
            await registry.push(
                hub, await asyncio.to_thread(signed_artifact, self.demo.edge_int8, self.key)
            )
        finally:
            await nc.close()
        self.initial_version = (await asyncio.to_thread(load_manifest, self.demo.edge_int8)).version
        await self._start_cloud()
        await self._start_edges()

    async def issue(self, spec: IdentitySpec) -> Path:
        assert self.keystore is not None
        return await asyncio.to_thread(self.keystore.ensure, spec)

    async def _start_cloud(self) -> None:
        assert self.key is not None
        creds = await self.issue(node_identity("cloud-0", "cloud", domain="hub"))
        settings = tier_node_settings(
            "cloud",
            node="cloud-0",
            server=self.hub.url,
            manifest=self.demo.cloud,
            zone="cloud",
            http_port=None,
            credentials=creds,
            extra={
                "hard_examples": {"enabled": False},
                "fleet": {
                    "enabled": True,
                    "domain": "hub",
                    "trusted_keys": [self.key.public],
                    "cache_dir": str(self.work / "cache" / "cloud-0"),
                    "heartbeat_s": self.settings.heartbeat_s,
                },
            },
        )
        self.cloud = await self._worker("cloud", [settings.model_dump(mode="json")])

    def plan(self) -> list[list[tuple[str, int]]]:
        """Node names and their site index, per worker process."""
        s = self.settings
        processes = max(1, s.processes or s.sites)
        names = [
            (f"edge-{k}-{j:03d}", k) for j in range(s.nodes // s.sites + 1) for k in range(s.sites)
        ]
        names = sorted(names[: s.nodes], key=lambda item: (item[1], item[0]))
        groups: list[list[tuple[str, int]]] = [[] for _ in range(processes)]
        for i, item in enumerate(names):
            groups[(item[1] if processes == s.sites else i) % processes].append(item)
        return [g for g in groups if g]

    async def _start_edges(self) -> None:
        s = self.settings
        assert self.key is not None
        specs: list[list[dict[str, Any]]] = []
        for group in self.plan():
            nodes: list[dict[str, Any]] = []
            for name, k in group:
                site = site_name(k)
                self.node_sites[name] = site
                creds = await self.issue(
                    node_identity(name, "edge", upstream_tier="cloud", entry=True, domain=site)
                )
                settings = tier_node_settings(
                    "edge",
                    node=name,
                    server=self.sites[k].url,
                    zone="device",
                    entry=True,
                    upstream=("cloud", "cloud"),
                    http_port=None,
                    credentials=creds,
                    models=[
                        {
                            "name": MODEL,
                            "manifest": str(self.demo.edge_int8),
                            "audit_rate": s.audit_rate,
                            # On the event loop, always: a hundred nodes in one process
                            # handing batches to worker threads would time each other, and
                            # whichever node the threads left behind would get less traffic.
                            "inline_below_us": 1e6,
                        }
                    ],
                    extra={
                        "hard_examples": {"enabled": False},
                        "fleet": {
                            "enabled": True,
                            "domain": site,
                            "site": site,
                            "labels": {"line": str(int(name.rsplit("-", 1)[1]) % 4)},
                            "trusted_keys": [self.key.public],
                            "cache_dir": str(self.work / "cache" / name),
                            "heartbeat_s": s.heartbeat_s,
                            "gate_runs": s.gate_runs,
                        },
                    },
                )
                nodes.append(settings.model_dump(mode="json"))
            specs.append(nodes)
        self.workers = list(
            await asyncio.gather(
                *(self._worker(f"edges-{i}", nodes) for i, nodes in enumerate(specs))
            )
        )

    async def _worker(self, name: str, nodes: list[dict[str, Any]]) -> ChildProcess:
        import sys

        spec = self.work / "workers" / f"{name}.json"
        await asyncio.to_thread(spec.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(spec.write_text, json.dumps({"nodes": nodes}))
        child = ChildProcess(
            f"simworker {name}",
            [sys.executable, "-m", "mesh.dev.fleetsim.worker", str(spec)],
            self.work / "workers" / f"{name}.log",
            ready_prefix="SIMWORKER ready",
            env=child_env(),
            grace_s=30.0,
        )
        await child.start(timeout=120.0 + 1.0 * len(nodes))
        return child

    async def stop(self) -> None:
        children = [*self.workers, *([self.cloud] if self.cloud else [])]
        await asyncio.gather(*(c.stop() for c in children), return_exceptions=True)
        for server in self.sites:
            await server.stop()
        for proxy in self.proxies:
            await proxy.stop()
        await self.hub.stop()

    async def __aenter__(self) -> FleetSimulation:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- what tests and commands use ------------------------------------------------------

    @property
    def node_names(self) -> list[str]:
        return sorted(self.node_sites)

    def creds(self, spec: IdentitySpec) -> Path:
        assert self.keystore is not None
        return self.keystore.creds_path(spec.name)

    async def push(self, manifest: Path) -> str:
        """Sign ``manifest`` (with the simulated devices' latency budget) with the fleet's key
        and push it to the registry."""
        assert self.key is not None
        manifest = await asyncio.to_thread(self._for_simulated_devices, manifest)
        nc = await self.hub.connect(CONTROLLER.name)
        try:
            return await registry.push(
                nc.jetstream(domain="hub"),
                await asyncio.to_thread(signed_artifact, manifest, self.key),
            )
        finally:
            await nc.close()

    def _for_simulated_devices(self, manifest: Path) -> Path:
        budget = self.settings.latency_budget_ms
        if budget is None:
            return manifest
        parsed = load_manifest(manifest)
        profile = parsed.profile.model_copy(update={"latency_p99_ms": budget})
        out = self.work / "releases" / parsed.version
        out.mkdir(parents=True, exist_ok=True)
        artifact = verify_artifact(parsed, manifest)
        target = out / artifact.name
        shutil.copyfile(artifact, target)
        path = out / manifest.name
        save_manifest(parsed.model_copy(update={"profile": profile}), path)
        return path

    def cut(self, site: int) -> None:
        """Cut site ``site`` off the hub: its leaf link stops and cannot come back."""
        self.proxies[site].refuse(True)
        self.proxies[site].blackhole(True)
        self.proxies[site].reset_all()

    def heal(self, site: int) -> None:
        self.proxies[site].heal()

    async def process_figures(self) -> dict[str, Any]:
        """Resident memory and CPU seconds of the node processes, per node."""

        def read() -> dict[str, Any]:
            rss = 0
            cpu = 0.0
            for child in self.workers:
                if child.pid is None:
                    continue
                proc = psutil.Process(child.pid)
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
            nodes = max(1, len(self.node_sites))
            return {
                "processes": len(self.workers),
                "nodes": len(self.node_sites),
                "rss_mb_per_node": round(rss / nodes / 2**20, 2),
                "cpu_s": round(cpu, 2),
            }

        return await asyncio.to_thread(read)


# --- steady load ----------------------------------------------------------------------------


@dataclass
class LoadFigures:
    sent: int = 0
    answered: int = 0
    errors: list[str] = field(default_factory=list)
    #: wall-clock unix seconds of each error, in order.
    error_times: list[float] = field(default_factory=list)
    #: version to answers (the version of the edge model that answered or escalated).
    versions: Counter[str] = field(default_factory=Counter)
    #: node to the versions it answered with, in order (only changes are kept).
    by_node: dict[str, list[str]] = field(default_factory=dict)


class SimLoad:
    """Requests at a steady rate at every site, through the SDK as the application."""

    def __init__(self, sim: FleetSimulation, rate_per_node: float, budget_ms: float = 5000) -> None:
        self.sim = sim
        self.rate_per_node = rate_per_node
        self.budget_ms = budget_ms
        self.figures = LoadFigures()
        self._tasks: list[asyncio.Task[None]] = []
        self._clients: list[MeshClient] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._rows = np.zeros((1, 64), dtype=np.float32)

    async def start(self) -> None:
        self._rows = await asyncio.to_thread(_test_rows, self.sim.demo.test)
        counts = Counter(self.sim.node_sites.values())
        for k, server in enumerate(self.sim.sites):
            nodes = counts.get(site_name(k), 0)
            if not nodes:
                continue
            client = await MeshClient.connect(server.url, **server.client_options(APPLICATION.name))
            self._clients.append(client)
            self._tasks.append(asyncio.create_task(self._site(client, nodes * self.rate_per_node)))

    async def _site(self, client: MeshClient, rate: float) -> None:
        interval = 1.0 / rate
        due = time.monotonic()
        rng = random.Random(len(self._tasks))
        while True:
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            row = self._rows[rng.randrange(len(self._rows))]
            task = asyncio.create_task(self._one(client, row))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _one(self, client: MeshClient, row: np.ndarray) -> None:
        f = self.figures
        f.sent += 1
        try:
            result = await client.infer(MODEL, row[None, :], budget_ms=self.budget_ms)
        except MeshError as exc:
            f.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            f.error_times.append(time.time())
            return
        f.answered += 1
        edge = result.path[0] if result.path else None
        version = edge.model_version if edge is not None and edge.model_version else "?"
        f.versions[version] += 1
        node = edge.node if edge is not None else result.node
        seen = f.by_node.setdefault(node, [])
        if not seen or seen[-1] != version:
            seen.append(version)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self.budget_ms / 1000 + 1)
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()


def _test_rows(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return np.asarray(data["x"], dtype=np.float32)
