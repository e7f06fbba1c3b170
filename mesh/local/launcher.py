"""Run the whole mesh on one machine: NATS hub and site, and each tier node as its own process.

Used by ``mesh up``, the demo, the benchmark and the fault tests. Every process started here
dies with its parent (``PR_SET_PDEATHSIG`` on Linux) and is stopped in reverse order.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from mesh.errors import InvalidArgumentError
from mesh.lifecycle import cancel_and_wait
from mesh.local.layout import node_identity, settings_yaml, tier_node_settings
from mesh.local.review import REVIEWER, ReviewProcess, start_review
from mesh.local.servers import APPLICATION, Site
from mesh.local.supervisor import ChildProcess, child_env
from mesh.services.node import READY_PREFIX
from mesh.settings import NodeSettings
from mesh.topology.processes import CONSOLE_READY, CONTROLLER_READY, INGRESS_READY
from mesh.topology.streams import MeshTopology, TierPlacement
from mesh.transport.jetstream import provision

#: how a rig starts a mesh process: the ``mesh`` command of this interpreter, as a user would.
MESH_COMMAND = (sys.executable, "-m", "mesh.cli")


class NodeProcess:
    """One ``mesh node`` process from typed settings; ready once it prints its ready line.

    ``env`` adds environment variables (``OTEL_*`` for instance) to the process's environment.
    """

    def __init__(
        self,
        name: str,
        settings: NodeSettings,
        work_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.config_path = work_dir / f"{name}.yaml"
        self.log_path = work_dir / f"{name}.log"
        self.http_url: str | None = None
        self._child = ChildProcess(
            name,
            [*MESH_COMMAND, "node", "--config", str(self.config_path)],
            self.log_path,
            ready_prefix=READY_PREFIX,
            env=child_env(env),
        )

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def running(self) -> bool:
        return self._child.running

    async def start(self, timeout: float = 60.0) -> None:
        text = yaml.safe_dump(settings_yaml(self.settings), sort_keys=False)
        await asyncio.to_thread(self.config_path.write_text, text)
        await self._child.start(timeout)
        http = self._child.info.get("http")
        self.http_url = http if http and http != "-" else None
        if self.http_url and self.settings.http_port == 0:
            # a restarted node serves its health and metrics where it did before, so whoever
            # scrapes it (or read mesh up's lines) still finds it
            port = int(self.http_url.rsplit(":", 1)[1].split("/")[0])
            self.settings = self.settings.model_copy(update={"http_port": port})

    async def kill(self) -> None:
        """SIGKILL, as a crash would."""
        await self._child.kill()

    async def stop(self) -> None:
        await self._child.stop()

    async def wait(self) -> int:
        """Until the process exits; its exit status."""
        return await self._child.wait()


class Supervised(Protocol):
    """A process ``supervise`` restarts when it exits."""

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> None: ...

    async def wait(self) -> int: ...


class IngressProcess:
    """The ``mesh ingress`` process; ``http_url`` and ``grpc_address`` once it is ready."""

    READY = INGRESS_READY

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        self._child = ChildProcess(
            "ingress", argv, log_path, ready_prefix=self.READY, env=child_env(env)
        )
        self.http_url = ""
        self.grpc_address = ""

    @property
    def pid(self) -> int | None:
        return self._child.pid

    async def start(self, timeout: float = 60.0) -> None:
        await self._child.start(timeout)
        self.http_url = self._child.info.get("http", "")
        self.grpc_address = self._child.info.get("grpc", "")

    async def stop(self) -> None:
        await self._child.stop()


class ControllerProcess:
    """A ``mesh controller`` process (the fleet's, driving rollouts); ready once it watches."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self._child = ChildProcess(
            name, argv, log_path, ready_prefix=CONTROLLER_READY, env=child_env(env)
        )

    @property
    def pid(self) -> int | None:
        return self._child.pid

    async def start(self, timeout: float = 60.0) -> None:
        await self._child.start(timeout)

    async def kill(self) -> None:
        await self._child.kill()

    async def stop(self) -> None:
        await self._child.stop()

    async def wait(self) -> int:
        return await self._child.wait()


#: the reviewer identity the console labels with under ``mesh up`` and the demo.
CONSOLE_REVIEWER = "console-reviewer"


class ConsoleProcess:
    """The ``mesh console`` process; ``url`` once it is ready. Restarted on the port it had."""

    READY = CONSOLE_READY

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        self._argv = argv
        self._child = ChildProcess(
            "console", argv, log_path, ready_prefix=self.READY, env=child_env(env)
        )
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self._child.pid

    async def start(self, timeout: float = 60.0) -> None:
        if self.url and "--port" in self._child.argv:
            # a restart serves where the first start did, so the printed address stays good
            at = self._child.argv.index("--port") + 1
            self._child.argv[at] = self.url.rsplit(":", 1)[1]
        await self._child.start(timeout)
        self.url = self._child.info.get("http", "")

    async def wait(self) -> int:
        return await self._child.wait()

    async def stop(self) -> None:
        await self._child.stop()


#: the tiers ``mesh up`` knows, lowest first, with their residency zones.
TIERS = ("edge", "gateway", "cloud")
ZONES = {"edge": "device", "gateway": "site", "cloud": "cloud"}


@dataclass
class MeshLayout:
    """Which nodes run where: the demo's three tiers unless told otherwise.

    ``extra`` holds settings by tier name, and by node name (``edge-1``) for one node's own.
    ``models`` (tier to model settings, as in a settings file) replaces the demo's digits
    manifests: the tiers it names run, lowest first, each escalating to the next one present,
    the lowest taking the entry subjects (``mesh up --models DIR``)."""

    edge_manifest: Path | None = None
    gateway_manifest: Path | None = None
    cloud_manifest: Path | None = None
    edge_replicas: int = 1
    edge_threshold: float | None = None
    gateway_threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    models: dict[str, list[dict[str, Any]]] | None = None
    #: run the fleet: registry buckets on the hub and the site, a signing key, and every node
    #: with its agent (heartbeats, signed versions assigned with ``mesh fleet assign``).
    fleet: bool = False
    #: the entry tier consumes the site's event stream (``mesh publish``, ``client.publish``).
    events: bool = False
    #: share of confident answers the edge and gateway audit upstream (default: the setting's).
    audit_rate: float | None = None
    #: with ``fleet``: sign the versions the nodes serve and push them to the registry (what a
    #: rollout rolls back to), and run a ``mesh controller`` under supervision (``mesh up``).
    operated: bool = False

    def tiers(self) -> list[str]:
        if self.models is None:
            return list(TIERS)
        unknown = sorted(set(self.models) - set(TIERS))
        if unknown:
            raise InvalidArgumentError(f"tiers {unknown} are not among {list(TIERS)}")
        return [tier for tier in TIERS if self.models.get(tier)]


class EmbeddedMesh:
    """Hub and site NATS servers plus cloud, gateway and edge node processes.

    The cloud tier is on the hub; the gateway and edge tiers are on the site's leaf server, as
    the README's topology draws it. ``leaf_url`` lets a fault proxy sit on the leaf-to-hub link.
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
        self.site = Site(self.work_dir / "nats", site_port=site_port)
        self.nodes: dict[str, NodeProcess] = {}
        self._stopping = False
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
        assert self.site.leaf is not None
        return self.site.leaf.url

    @property
    def hub_url(self) -> str:
        return self.site.hub.url

    async def start_servers(self, leaf_url: str | None = None) -> None:
        await asyncio.to_thread(self.work_dir.mkdir, parents=True, exist_ok=True)
        await self.site.hub.start()
        await self.site.start(leaf_url)
        await self.provision()
        if self.layout.fleet:
            await self.start_fleet()
            if self.layout.operated:
                await self.publish_served()

    def topology(self) -> MeshTopology:
        """The streams this mesh needs: its chain (the cloud at the hub, the rest at the site),
        the entry tier's event models, the fleet's buckets."""
        tiers = self.layout.tiers()
        return MeshTopology(
            tiers=tuple(TierPlacement(t, at_sites=t != "cloud") for t in tiers),
            sites=(self.site.site_name,),
            event_models=tuple(self.entry_models()),
            events=self._events_enabled(),
            fleet=self.layout.fleet,
        )

    async def provision(self) -> None:
        """The administrator's step: every stream and bucket of both domains, from the
        topology; the nodes only look theirs up."""
        nc = await self.site.hub.connect(name="mesh-provision")
        try:
            await provision(lambda domain: nc.jetstream(domain=domain), self.topology())
        finally:
            await nc.close()

    def _events_enabled(self) -> bool:
        """The entry tier takes events: the layout says so, or its own settings do."""
        extra = self.layout.extra.get(self._entry_tier())
        events = extra.get("events") if isinstance(extra, dict) else None
        return self.layout.events or (isinstance(events, dict) and bool(events.get("enabled")))

    def entry_models(self) -> list[str]:
        lay = self.layout
        if lay.models is None:
            return ["digits"]
        return [str(m["name"]) for m in lay.models.get(self._entry_tier(), [])]

    def domain_of(self, tier: str) -> str:
        return "hub" if tier == "cloud" else self.site.site_name

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
        nc = await self.site.hub.connect(name="mesh-publish")
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
        entry = lay.models.get(self._entry_tier(), [])
        return [Path(m["manifest"]) for m in entry if m.get("manifest")]

    async def start_ingress(self, token: str) -> IngressProcess:
        """The Open Inference Protocol ingress beside the site server, as its own process."""
        from mesh.security.identities import IdentitySpec
        from mesh.security.permissions import Role

        creds = await self.site.hub.issue(IdentitySpec("ingress", Role.INGRESS))
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

        creds = await self.site.hub.issue(IdentitySpec("console", Role.CONSOLE))
        argv = [
            *MESH_COMMAND, "console", "--servers", self.hub_url, "--creds", str(creds),
            "--port", str(port),
        ]  # fmt: skip
        if self.review is not None:
            # people label through the console as a reviewer of its own, so the queue's
            # history tells the console's labels from those of `mesh review`
            reviewer = await self.site.hub.issue(IdentitySpec(CONSOLE_REVIEWER, Role.REVIEWER))
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
            self.site.hub, self.work_dir, self.node_env, MESH_COMMAND, settings
        )
        return self.review

    async def reviewer_creds(self) -> Path:
        """Credentials of a person with the reviewer role (``mesh review``)."""
        return await self.site.hub.issue(REVIEWER)

    async def controller_creds(self) -> Path:
        """Credentials of the fleet's controller (push versions, assign them)."""
        from mesh.security.identities import IdentitySpec
        from mesh.security.permissions import Role

        return await self.site.hub.issue(IdentitySpec("controller", Role.CONTROLLER))

    @property
    def app_creds(self) -> Path:
        """Credentials of the application identity (``MESH_CREDS`` of ``mesh up``)."""
        return self.site.keystore.creds_path(APPLICATION.name)

    def client_options(self) -> dict[str, Any]:
        """``MeshClient.connect`` options for the application identity."""
        return self.site.hub.client_options(APPLICATION.name)

    def _upstream_of(self, tier: str) -> str | None:
        tiers = self.layout.tiers()
        at = tiers.index(tier)
        return tiers[at + 1] if at + 1 < len(tiers) else None

    def _downstream_of(self, tier: str) -> str | None:
        tiers = self.layout.tiers()
        at = tiers.index(tier)
        return tiers[at - 1] if at > 0 else None

    def _collect(self, tier: str) -> tuple[str, str | None] | None:
        """The tier below ``tier`` and its domain, as seen from ``tier``'s server."""
        below = self._downstream_of(tier)
        if below is None:
            return None
        domain = self.domain_of(below)
        return below, None if domain == self.domain_of(tier) else domain

    def _entry_tier(self) -> str:
        return self.layout.tiers()[0]

    async def issue_node_identity(self, tier: str, index: int = 0) -> Path:
        spec = node_identity(
            f"{tier}-{index}",
            tier,
            upstream_tier=self._upstream_of(tier),
            entry=tier == self._entry_tier(),
            downstream_tier=self._downstream_of(tier),
            domain=self.domain_of(tier),
        )
        return await self.site.hub.issue(spec)

    def node_settings(
        self, tier: str, index: int = 0, credentials: Path | None = None
    ) -> NodeSettings:
        lay = self.layout
        extra = lay.extra.get(tier)
        extra = extra if isinstance(extra, dict) else None
        node = f"{tier}-{index}"
        own = lay.extra.get(node)
        if isinstance(own, dict):
            # one node's own settings over its tier's (the demo's edge device on battery)
            extra = {**(extra or {}), **own}
        if lay.events and tier == self._entry_tier():
            events = {"enabled": True, **(extra or {}).get("events", {})}
            extra = {**(extra or {}), "events": events}
        if lay.fleet:
            assert self.signing_public is not None, "start the servers first"
            domain = self.domain_of(tier)
            fleet = {
                "enabled": True,
                "domain": domain,
                "site": domain,
                "trusted_keys": [self.signing_public],
                "cache_dir": str(self.work_dir / "fleet" / "cache" / node),
                "heartbeat_s": 1.0,
            }
            extra = {**(extra or {}), "fleet": {**fleet, **(extra or {}).get("fleet", {})}}
        if lay.models is not None:
            upstream = self._upstream_of(tier)
            return tier_node_settings(
                tier,
                node=node,
                server=self.hub_url if tier == "cloud" else self.site_url,
                zone=ZONES[tier],
                entry=tier == self._entry_tier(),
                upstream=(upstream, ZONES[upstream]) if upstream else None,
                collect=self._collect(tier),
                credentials=credentials,
                models=lay.models[tier],
                extra=extra,
            )
        if tier == "cloud":
            return tier_node_settings(
                tier,
                node=node,
                server=self.hub_url,
                manifest=lay.cloud_manifest,
                zone="cloud",
                collect=self._collect(tier),
                credentials=credentials,
                extra=extra,
            )
        if tier == "gateway":
            return tier_node_settings(
                tier,
                node=node,
                server=self.site_url,
                manifest=lay.gateway_manifest,
                zone="site",
                upstream=("cloud", "cloud"),
                threshold=lay.gateway_threshold,
                collect=self._collect(tier),
                credentials=credentials,
                extra=extra,
            )
        return tier_node_settings(
            tier,
            node=node,
            server=self.site_url,
            manifest=lay.edge_manifest,
            zone="device",
            entry=True,
            upstream=("gateway", "site"),
            threshold=lay.edge_threshold,
            credentials=credentials,
            extra=extra,
            audit_rate=lay.audit_rate,
        )

    async def start_nodes(self) -> None:
        tiers = self.layout.tiers()
        plan = [(tier, 0) for tier in reversed(tiers) if tier != "edge"]
        if "edge" in tiers:
            plan += [("edge", i) for i in range(self.layout.edge_replicas)]
        for tier, index in plan:
            name = f"{tier}-{index}"
            creds = await self.issue_node_identity(tier, index)
            node = NodeProcess(
                name, self.node_settings(tier, index, creds), self.work_dir, env=self.node_env
            )
            self.nodes[name] = node
            await node.start()

    async def start(self, leaf_url: str | None = None) -> None:
        await self.start_servers(leaf_url)
        await self.start_nodes()
        if self.layout.fleet and self.layout.operated:
            await self.start_controller()

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
        ``max_restarts`` times in ``window_s`` is left down and reported so."""
        watched: dict[str, Supervised] = dict(self.nodes)
        if self.review is not None:
            watched["review service"] = self.review
        if self.controller is not None:
            watched[f"controller {self.controller.name}"] = self.controller
        watched["nats-server hub"] = self.site.hub
        if self.site.leaf is not None:
            watched[f"nats-server {self.site.site_name}"] = self.site.leaf
        if self.console is not None:
            watched["console"] = self.console
        restarts: dict[str, list[float]] = {name: [] for name in watched}
        waits = {asyncio.create_task(proc.wait()): name for name, proc in watched.items()}
        try:
            while waits:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    name = waits.pop(task)
                    if self._stopping:
                        return
                    status = task.result() if not task.exception() else "unknown"
                    now = time.monotonic()
                    recent = [t for t in restarts[name] if now - t < window_s]
                    what = name if " " in name or name == "console" else f"node {name}"
                    if len(recent) >= max_restarts:
                        report(f"{what} exited with status {status} again; left down")
                        continue
                    report(f"{what} exited with status {status}; restarting it")
                    restarts[name] = [*recent, now]
                    await asyncio.sleep(min(2.0 ** len(recent) * 0.5, 10.0))
                    proc = watched[name]
                    await proc.start()
                    if isinstance(proc, NodeProcess):
                        # the same http URL as before: its port is kept across restarts
                        report(f"node {name} restarted: pid {proc.pid}, http {proc.http_url}")
                    elif isinstance(proc, ConsoleProcess):
                        report(f"console restarted (pid {proc.pid}) at {proc.url}")
                    elif isinstance(proc, ControllerProcess):
                        report(f"{what} restarted (pid {proc.pid})")
                    else:
                        report(f"{what} restarted (pid {proc.pid}) on its own ports")
                    waits[asyncio.create_task(proc.wait())] = name
        finally:
            await cancel_and_wait(list(waits))

    async def stop(self) -> None:
        self._stopping = True
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
        await self.site.stop()

    async def close(self) -> None:
        await self.stop()
        if self._own_dir:
            await asyncio.to_thread(shutil.rmtree, self.work_dir, True)
