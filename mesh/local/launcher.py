"""Run the whole mesh on one machine: the NATS hub (one server or a cluster) and sites, and each
tier node as its own process.

Used by ``mesh up``, the demo, the benchmark and the fault tests. Every process started here
dies with its parent (``PR_SET_PDEATHSIG`` on Linux) and is stopped in reverse order.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mesh.errors import InvalidArgumentError
from mesh.local.cluster import Hub
from mesh.local.layout import TIERS, ZONES, MeshLayout, NodePlanner, NodeSpot
from mesh.local.processes import (
    CONSOLE_REVIEWER,
    MESH_COMMAND,
    ConsoleProcess,
    ControllerProcess,
    IngressProcess,
    NodeProcess,
)
from mesh.local.review import REVIEWER, ReviewProcess, start_review
from mesh.local.servers import APPLICATION, Site
from mesh.local.supervisor import Supervised, Supervisor, Watched
from mesh.topology.streams import MeshTopology, StreamLimits, TierPlacement
from mesh.transport.jetstream import provision

#: the URLs a site dials to reach the hub, given the site and the hub's leafnode ports (a rig
#: puts a fault proxy in front of each).
LinkMaker = Callable[[str, list[int]], Awaitable[list[str]]]


class EmbeddedMesh:
    """The hub's NATS servers (one, or a cluster), each site's leaf server, and the cloud,
    gateway and edge node processes.

    The cloud tier is on the hub; the gateway and edge tiers are on each site's leaf server, as
    the README's topology draws it. ``leaf_url`` (the first site's) or ``links`` (any site's)
    let a fault proxy sit on a leaf-to-hub link.
    """

    def __init__(
        self,
        layout: MeshLayout,
        work_dir: Path | None = None,
        node_env: Mapping[str, str] | None = None,
        site_port: int | None = None,
    ) -> None:
        self.layout = layout
        self.node_env = dict(node_env or {})
        self._own_dir = work_dir is None
        self.work_dir = Path(
            work_dir or Path(tempfile.gettempdir()) / f"mesh-up-{uuid.uuid4().hex}"
        )
        servers = self.work_dir / "nats"
        self.hub = Hub(servers / "hub", servers / "keys", layout.hub_cluster)
        self.sites = [
            Site(servers, name, servers / "keys", site_port if k == 0 else None, hub=self.hub)
            for k, name in enumerate(layout.site_names())
        ]
        #: the first site (the only one, unless the layout has several).
        self.site = self.sites[0]
        self.nodes: dict[str, NodeProcess] = {}
        #: where each node stands, by name.
        self.spots: dict[str, NodeSpot] = {}
        #: what ``supervise`` restarted and holds down, while it runs.
        self.supervisor: Supervisor | None = None
        #: the key the fleet's nodes trust (``layout.fleet``), made when the servers start.
        self.signing_key_path = self.work_dir / "fleet" / "signing.key"
        self.signing_public: str | None = None
        self.ingress: IngressProcess | None = None
        self.console: ConsoleProcess | None = None
        self.review: ReviewProcess | None = None
        self.controller: ControllerProcess | None = None
        #: ``model@version`` of every version signed and pushed at start (``layout.operated``).
        self.published: list[str] = []

    @property
    def site_url(self) -> str:
        """The first site's client URL (where applications and the ingress connect)."""
        return self.site_url_of(self.site.site_name)

    def site_url_of(self, site: str) -> str:
        for each in self.sites:
            if each.site_name == site and each.leaf is not None:
                return each.leaf.url
        raise InvalidArgumentError(f"no started site {site!r} among {self.layout.site_names()}")

    @property
    def hub_url(self) -> str:
        """Every hub member's client URL, comma-separated (as ``--servers`` takes them)."""
        return self.hub.url

    async def start_servers(
        self, leaf_url: str | Sequence[str] | None = None, *, links: LinkMaker | None = None
    ) -> None:
        """The hub, then every site at once; ``leaf_url`` is what the first site dials instead
        of the hub's leafnode ports, ``links(site, ports)`` what any site dials."""
        await asyncio.to_thread(self.work_dir.mkdir, parents=True, exist_ok=True)
        await self.hub.start()

        async def start_site(k: int, site: Site) -> None:
            url = leaf_url if k == 0 else None
            if url is None and links is not None:
                url = await links(site.site_name, self.hub.leaf_ports)
            await site.start(url)

        await asyncio.gather(*(start_site(k, site) for k, site in enumerate(self.sites)))
        await self.provision()
        if self.layout.fleet:
            await self.start_fleet()
            if self.layout.operated:
                await self.publish_served()

    def topology(self) -> MeshTopology:
        """The streams this mesh needs: its chain (the cloud at the hub, the rest at each
        site), the entry tier's event models, the fleet's buckets, the hub's replicas."""
        tiers = self.layout.tiers()
        return MeshTopology(
            tiers=tuple(TierPlacement(t, at_sites=t != "cloud") for t in tiers),
            sites=tuple(self.layout.site_names()),
            event_models=tuple(self.entry_models()),
            events=self._events_enabled(),
            fleet=self.layout.fleet,
            limits=self.layout.limits or StreamLimits(),
            hub_replicas=self.layout.hub_replicas(),
        )

    async def provision(self) -> None:
        """The administrator's step: every stream and bucket of every domain, from the
        topology; the nodes only look theirs up."""
        nc = await self.hub.connect(name="mesh-provision")
        try:
            await provision(lambda domain: nc.jetstream(domain=domain), self.topology())
        finally:
            await nc.close()

    def _events_enabled(self) -> bool:
        """The entry tier takes events: the layout says so, or its own settings do."""
        extra = self.layout.extra.get(self.layout.tiers()[0])
        events = extra.get("events") if isinstance(extra, dict) else None
        return self.layout.events or (isinstance(events, dict) and bool(events.get("enabled")))

    def entry_models(self) -> list[str]:
        lay = self.layout
        if lay.models is None:
            return ["digits"]
        return [str(m["name"]) for m in lay.models.get(lay.tiers()[0], [])]

    def domain_of(self, tier: str, site: str | None = None) -> str:
        return self.planner().domain_of(tier, site or self.site.site_name)

    def planner(self) -> NodePlanner:
        """Every node's place and settings, once the servers listen."""
        return NodePlanner(
            self.layout,
            hub_urls=self.hub.urls,
            site_urls={site.site_name: self.site_url_of(site.site_name) for site in self.sites},
            work_dir=self.work_dir,
            signing_public=self.signing_public,
        )

    async def start_fleet(self) -> None:
        """The signing key the fleet's nodes will trust."""
        from mesh.fleet.signing import SigningKey

        def make_key() -> str:
            self.signing_key_path.parent.mkdir(parents=True, exist_ok=True)
            if self.signing_key_path.exists():
                return SigningKey.load(self.signing_key_path).public
            key = SigningKey.generate()
            key.save(self.signing_key_path)
            return key.public

        self.signing_public = await asyncio.to_thread(make_key)

    def served_manifests(self) -> list[Path]:
        """Manifests of every version the nodes are configured to serve."""
        lay = self.layout
        if lay.models is None:
            given = (lay.edge_manifest, lay.gateway_manifest, lay.cloud_manifest)
            return [m for m in given if m is not None]
        return [
            Path(m["manifest"])
            for tier in lay.tiers()
            for m in lay.models.get(tier, [])
            if m.get("manifest")
        ]

    async def publish_served(self) -> None:
        """Sign every version the nodes serve with the fleet's key and push it to the hub's
        registry: a rollout needs what it would roll back to there."""
        from mesh.fleet import registry
        from mesh.fleet.release import signed_artifact
        from mesh.fleet.signing import SigningKey
        from mesh.models.manifest import load_manifest

        key = await asyncio.to_thread(SigningKey.load, self.signing_key_path)
        nc = await self.hub.connect(name="mesh-publish")
        try:
            js = nc.jetstream(domain="hub")
            for manifest in dict.fromkeys(self.served_manifests()):
                artifact = await asyncio.to_thread(signed_artifact, manifest, key)
                await registry.store(js, artifact)
                parsed = await asyncio.to_thread(load_manifest, manifest)
                self.published.append(f"{parsed.name}@{parsed.version}")
        finally:
            await nc.close()

    async def start_controller(self) -> ControllerProcess:
        """The fleet's controller, as its own ``mesh controller`` process at the hub."""
        creds = await self.controller_creds()
        name = "controller-0"
        argv = [
            *MESH_COMMAND, "controller", "--servers", self.hub_url, "--creds", str(creds),
            "--name", name,
        ]  # fmt: skip
        process = ControllerProcess(name, argv, self.work_dir / f"{name}.log", self.node_env)
        await process.start()
        self.controller = process
        return process

    def entry_manifests(self) -> list[Path]:
        """Manifests of the models the entry tier serves (what the ingress describes)."""
        lay = self.layout
        if lay.models is None:
            return [lay.edge_manifest] if lay.edge_manifest is not None else []
        entry = lay.models.get(lay.tiers()[0], [])
        return [Path(m["manifest"]) for m in entry if m.get("manifest")]

    async def start_ingress(self, token: str) -> IngressProcess:
        """The Open Inference Protocol ingress beside the site server, as its own process."""
        from mesh.security.identities import IdentitySpec
        from mesh.security.permissions import Role

        creds = await self.hub.issue(IdentitySpec("ingress", Role.INGRESS))
        argv = [
            *MESH_COMMAND, "ingress", "--servers", self.site_url,
            "--creds", str(creds), "--http-port", "0", "--grpc-port", "0",
        ]  # fmt: skip
        for manifest in self.entry_manifests():
            argv += ["--manifest", str(manifest)]
        env = {**self.node_env, "MESH_INGRESS_TOKEN": token}
        process = IngressProcess(argv, self.work_dir / "ingress.log", env)
        await process.start()
        self.ingress = process
        return process

    async def start_console(
        self, token: str, *, port: int = 0, offline_after_s: float | None = None
    ) -> ConsoleProcess:
        """The operator console at the hub, as its own process, with the console identity."""
        from mesh.security.identities import IdentitySpec
        from mesh.security.permissions import Role

        creds = await self.hub.issue(IdentitySpec("console", Role.CONSOLE))
        argv = [
            *MESH_COMMAND, "console", "--servers", self.hub_url, "--creds", str(creds),
            "--port", str(port),
        ]  # fmt: skip
        if self.review is not None:
            # people label through the console as a reviewer of its own, so the queue's
            # history tells the console's labels from those of `mesh review`
            reviewer = await self.hub.issue(IdentitySpec(CONSOLE_REVIEWER, Role.REVIEWER))
            argv += ["--reviewer-creds", str(reviewer)]
        if offline_after_s is not None:
            argv += ["--offline-after", f"{offline_after_s:g}"]
        env = {**self.node_env, "MESH_CONSOLE_TOKEN": token}
        process = ConsoleProcess(argv, self.work_dir / "console.log", env)
        await process.start()
        self.console = process
        return process

    async def start_review(self, settings: Mapping[str, Any] | None = None) -> ReviewProcess:
        """The review queue's service at the hub (``mesh review serve``), as its own process."""
        self.review = await start_review(
            self.hub, self.work_dir, self.node_env, MESH_COMMAND, settings
        )
        return self.review

    async def reviewer_creds(self) -> Path:
        """Credentials of a person with the reviewer role (``mesh review``)."""
        return await self.hub.issue(REVIEWER)

    async def controller_creds(self) -> Path:
        """Credentials of the fleet's controller (push versions, assign them)."""
        from mesh.security.identities import IdentitySpec
        from mesh.security.permissions import Role

        return await self.hub.issue(IdentitySpec("controller", Role.CONTROLLER))

    @property
    def app_creds(self) -> Path:
        """Credentials of the application identity (``MESH_CREDS`` of ``mesh up``)."""
        return self.hub.keystore.creds_path(APPLICATION.name)

    def client_options(self) -> dict[str, Any]:
        """``MeshClient.connect`` options for the application identity."""
        return self.hub.client_options(APPLICATION.name)

    async def start_nodes(self, waiting: Callable[[str], None] | None = None) -> None:
        """Every node, a wave at a time (the top tier first), the nodes of a wave at once;
        ``waiting`` hears which nodes' ready lines each wave waits for."""
        planner = self.planner()
        for wave in planner.spots():
            if waiting is not None:
                names = ", ".join(spot.name for spot in wave)
                waiting(f"the ready lines of {names}")
            for spot in wave:
                creds = await self.hub.issue(planner.identity(spot))
                self.spots[spot.name] = spot
                self.nodes[spot.name] = NodeProcess(
                    spot.name, planner.settings(spot, creds), self.work_dir, env=self.node_env
                )
            async with asyncio.TaskGroup() as group:
                for spot in wave:
                    group.create_task(self.nodes[spot.name].start())

    async def start(self, leaf_url: str | None = None, *, links: LinkMaker | None = None) -> None:
        await self.start_servers(leaf_url, links=links)
        await self.start_nodes()
        if self.layout.fleet and self.layout.operated:
            await self.start_controller()

    def watched(self) -> dict[str, Watched]:
        """What ``supervise`` restarts: every node, the review service, the controller, every
        NATS server and the console."""
        watched: dict[str, Watched] = {}
        for name, node in self.nodes.items():
            watched[name] = Watched(f"node {name}", node, _node_back(name, node))
        if self.review is not None:
            label = "review service"
            watched[label] = Watched(label, self.review, _server_back(label, self.review))
        if self.controller is not None:
            label = f"controller {self.controller.name}"
            watched[label] = Watched(label, self.controller, _process_back(label, self.controller))
        servers = [*self.hub.members, *(s.leaf for s in self.sites if s.leaf is not None)]
        for server in servers:
            label = f"nats-server {server.config.name}"
            watched[label] = Watched(label, server, _server_back(label, server))
        if self.console is not None:
            console = self.console
            watched["console"] = Watched(
                "console",
                console,
                lambda: f"console restarted (pid {console.pid}) at {console.url}",
            )
        return watched

    async def supervise(
        self,
        report: Callable[[str], None],
        *,
        max_restarts: int = 5,
        window_s: float = 60.0,
    ) -> None:
        """Restart a node, the controller or a NATS server that exits while the mesh runs (a
        crash, or status 70 from a node whose NATS connection died), reporting each exit; a
        server comes back on the ports it had, so links and clients find it again, and a node
        on the same http URL (reported with its new pid). A process that exits more than
        ``max_restarts`` times in ``window_s`` is left down and reported so. ``self.supervisor``
        is its state while it runs (restarts so far; ``hold`` keeps a process down a while)."""
        supervisor = self.supervisor = Supervisor(
            self.watched(), report, max_restarts=max_restarts, window_s=window_s
        )
        await supervisor.run()

    async def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stopping = True
        if self.console is not None:
            await self.console.stop()
        if self.ingress is not None:
            await self.ingress.stop()
        if self.review is not None:
            await self.review.stop()
        if self.controller is not None:
            await self.controller.stop()
        for node in reversed(list(self.nodes.values())):
            await node.stop()
        for site in reversed(self.sites):
            await site.stop()
        await self.hub.stop()

    async def close(self) -> None:
        await self.stop()
        if self._own_dir:
            await asyncio.to_thread(shutil.rmtree, self.work_dir, True)


def _node_back(name: str, node: NodeProcess) -> Callable[[], str]:
    # the same http URL as before: its port is kept across restarts
    return lambda: f"node {name} restarted: pid {node.pid}, http {node.http_url}"


def _process_back(label: str, process: Supervised, where: str = "") -> Callable[[], str]:
    # a function, not a lambda in the caller's loop: a lambda there would read ``label`` when
    # it is called, after the loop has moved it on to the last server's name
    return lambda: f"{label} restarted (pid {process.pid}){where}"


def _server_back(label: str, server: Supervised) -> Callable[[], str]:
    return _process_back(label, server, " on its own ports")


#: kept importable from here: the layout moved to ``mesh.local.layout``.
__all__ = [
    "CONSOLE_REVIEWER",
    "MESH_COMMAND",
    "REVIEWER",
    "TIERS",
    "ZONES",
    "ConsoleProcess",
    "ControllerProcess",
    "EmbeddedMesh",
    "IngressProcess",
    "LinkMaker",
    "MeshLayout",
    "NodeProcess",
    "Supervised",
]
