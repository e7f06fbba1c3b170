"""The mesh under test: the demo models through the evidence gate, an embedded NATS hub and site
leaf server with a fault proxy on the link between them, the tier nodes, the span receiver, and
the demo's own connections (the application's client and an administrator's view of each side)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from mesh import MeshClient, MeshError
from mesh.dev.demo.battery import battery_settings
from mesh.dev.demo.receiver import OtlpReceiver, SpanRecord
from mesh.dev.demo.state import BATTERY_NODE, EDGE_REPLICAS, MODEL, DemoConfig
from mesh.dev.faults import FaultProxy
from mesh.dev.models.demo import DemoArtifacts, ensure_demo
from mesh.local.launcher import EmbeddedMesh, MeshLayout
from mesh.local.phases import Phases
from mesh.models.validate import require_valid
from mesh.observability import tracing
from mesh.observability.telemetry import install_tracing


def _review(sample_rate: float) -> dict[str, Any]:
    """A node's review feed in the demo: a large share of its confident answers sampled, so the
    queue fills in seconds (a deployment samples 0.5%), and its totals every 2 s."""
    return {"sample_rate": sample_rate, "max_per_minute": 6000, "traffic_interval_s": 2.0}


#: the gateway's breaker on its cloud link: trips after 3 failures, probes after 0.5 s, growing
#: to 2 s; fast enough that the display shows it open and closing again within the outage.
#: Every tier samples answers for review; the cases the edge passed up most (what a weak edge
#: version is unsure of is what it has most to learn from).
DEMO_NODE_SETTINGS: dict[str, Any] = {
    "gateway": {
        "nats": {"reconnect_wait_s": 0.2},
        "upstream": {
            "breaker": {"failure_threshold": 3, "open_seconds": 0.5, "max_open_seconds": 2.0}
        },
        "review": _review(0.5),
    },
    "cloud": {"nats": {"reconnect_wait_s": 0.2}, "review": _review(0.5)},
    # The edge also consumes the site's event stream, with one alert rule.
    "edge": {
        "review": _review(0.05),
        "events": {
            "enabled": True,
            "actions": [
                {
                    "name": "defect",
                    "labels": [3, 8],
                    "min_confidence": 0.9,
                    "publish": "mesh.actions.alerts.line4",
                }
            ],
        },
    },
}

#: the review service's limits in the demo: far above its load, so what the nodes offer is
#: queued (a deployment keeps people from being flooded: 20 a minute by default).
DEMO_REVIEW_LIMITS: dict[str, Any] = {
    "limits": {"per_minute": 10_000, "per_hour": 100_000, "per_day": 1_000_000},
    "reasons": {
        reason: {"per_minute": 10_000, "per_hour": 100_000, "per_day": 1_000_000}
        for reason in ("sample", "drift")
    },
}

_T = TypeVar("_T")


def _started(value: _T | None) -> _T:
    if value is None:
        raise RuntimeError("the demo's mesh is not started")
    return value


class Testbed:
    """Owns every process and connection the demo starts, and stops them all."""

    def __init__(self, config: DemoConfig, console: Console, phases: Phases | None = None) -> None:
        self.config = config
        self.console = console
        #: the run's clock: each start-up step within a deadline (``mesh.local.phases``).
        self.phases = phases or Phases("mesh demo")
        self.receiver = OtlpReceiver()
        self.client_spans = InMemorySpanExporter()
        self.work_dir = Path(tempfile.mkdtemp(prefix="mesh-demo-"))
        #: the file the battery edge device reads its level from (its battery manager writes it)
        self.battery_level = self.work_dir / "battery-level"
        self.initial_version = ""
        #: the traffic: the test split's rows the load sends (and people may label).
        self.x: np.ndarray = np.empty((0, 0), dtype=np.float32)
        self.y: np.ndarray = np.empty(0, dtype=np.int64)
        #: the rest of the test split: never sent, labelled or trained on.
        self.heldout_x: np.ndarray = np.empty((0, 0), dtype=np.float32)
        self.heldout_y: np.ndarray = np.empty(0, dtype=np.int64)
        self._demo: DemoArtifacts | None = None
        self._mesh: EmbeddedMesh | None = None
        #: the operator console's address with its token, once started.
        self.console_url = ""
        self._proxy: FaultProxy | None = None
        self._client: MeshClient | None = None
        self._hub_nc: NATS | None = None
        #: the demo's own view of the site (streams, status): an administrator's connection, as
        #: the application's identity may only ask for answers.
        self._site_nc: NATS | None = None
        #: the simulated reviewer's connection to the hub, as a reviewer identity.
        self._reviewer_nc: NATS | None = None

    @property
    def demo(self) -> DemoArtifacts:
        return _started(self._demo)

    @property
    def mesh(self) -> EmbeddedMesh:
        return _started(self._mesh)

    @property
    def proxy(self) -> FaultProxy:
        return _started(self._proxy)

    @property
    def client(self) -> MeshClient:
        return _started(self._client)

    @property
    def hub_nc(self) -> NATS:
        return _started(self._hub_nc)

    @property
    def site_nc(self) -> NATS:
        return _started(self._site_nc)

    @property
    def reviewer_nc(self) -> NATS:
        return _started(self._reviewer_nc)

    def hub_js(self) -> JetStreamContext:
        return self.hub_nc.jetstream(domain="hub")

    def site_js(self) -> JetStreamContext:
        # The gateway's own backlog figure (its status record) is refreshed by its forwarder only
        # between deliveries, and the forwarder waits on the first undeliverable example for as
        # long as the link is cut: the stream itself is the live figure.
        return self.site_nc.jetstream(domain=self.mesh.site.site_name)

    def step(self, text: str) -> None:
        self.console.print(f"[green]✓[/] {text}")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        try:
            await self.start()
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        phases = self.phases
        async with phases.phase("models", 900, "the demo models' build and evidence gate"):
            demo = await self._gate_models()
        await self.receiver.start()
        install_tracing("mesh-demo", "demo", processors=[SimpleSpanProcessor(self.client_spans)])
        mesh = self._mesh = self._layout(demo)
        with self.console.status("starting NATS hub and site leaf server"):
            async with phases.phase("NATS servers", 90) as phase:
                phase.waiting_for("the hub to start")
                await mesh.site.hub.start()
                proxy = self._proxy = FaultProxy("127.0.0.1", mesh.site.hub.leaf_port)
                await proxy.start()
                phase.waiting_for("the site's leaf link through the fault proxy, its streams")
                await mesh.start_servers(leaf_url=proxy.url)
                await mesh.site.hub.wait_leaf_connections(1, timeout=15)
        self.step(
            f"NATS hub {mesh.hub_url} ⇄ fault proxy {proxy.address} ⇄ site leaf {mesh.site_url}"
        )
        with self.console.status("starting the review queue at the hub"):
            await mesh.start_review(DEMO_REVIEW_LIMITS)
        self.step("review queue at the hub (mesh review serve)")
        with self.console.status("starting cloud, gateway and 2 edge nodes"):
            async with phases.phase("nodes", 240) as phase:
                await mesh.start_nodes(waiting=phase.waiting_for)
        self.step(
            "nodes up: cloud-0 on the hub (SVM); gateway-0 (MLP 64) and edge-0, edge-1 on the "
            "site, serving a deliberately weak edge version (trained on part of the data)"
        )
        with self.console.status("starting the operator console"):
            token = secrets.token_urlsafe(24)
            async with phases.phase("console", 90, "the console's ready line"):
                console = await mesh.start_console(token)
            self.console_url = f"{console.url}/?token={token}"
        self.step(f"operator console at {self.console_url}")
        async with phases.phase("connect", 30, "the demo's own connections to the hub and site"):
            self._client = await MeshClient.connect(mesh.site_url, **mesh.client_options())
            self._hub_nc = await mesh.site.hub.connect(name="mesh-demo-observer")
            reviewer = await mesh.reviewer_creds()
            self._reviewer_nc = await mesh.site.hub.connect(
                reviewer.stem, name="mesh-demo-reviewer"
            )
            assert mesh.site.leaf is not None
            self._site_nc = await mesh.site.leaf.connect(name="mesh-demo-observer-site")

    async def _gate_models(self) -> DemoArtifacts:
        cache = self.config.cache
        with self.console.status(f"demo models in {cache} (built on the first run)"):
            demo = await asyncio.to_thread(ensure_demo, cache)
        self.step(f"demo models ready in {cache}")
        with self.console.status(
            "evidence gate: latency, memory, energy and accuracy of each model here"
        ):
            reports = await asyncio.to_thread(
                require_valid, [demo.edge_weak, demo.gateway, demo.cloud], demo.test
            )
        self.step(
            "evidence gate passed: "
            + ", ".join(
                f"{r.version} p99 {r.latency_p99_ms:.2f} ms, "
                f"{r.energy_mj or 0:.3f} mJ on {r.device}"
                for r in reports
            )
        )
        self._demo = demo
        self.initial_version = reports[0].version
        split = np.load(demo.test)
        x, y = split["x"].astype(np.float32), split["y"].astype(np.int64)
        traffic = len(x) - round(len(x) * self.config.heldout_share)
        self.x, self.y = x[:traffic], y[:traffic]
        self.heldout_x, self.heldout_y = x[traffic:], y[traffic:]
        return demo

    def _layout(self, demo: DemoArtifacts) -> EmbeddedMesh:
        self.battery_level.write_text("100\n")
        extra = {**DEMO_NODE_SETTINGS, BATTERY_NODE: battery_settings(self.battery_level)}
        return EmbeddedMesh(
            MeshLayout(
                edge_manifest=demo.edge_weak,
                gateway_manifest=demo.gateway,
                cloud_manifest=demo.cloud,
                edge_replicas=EDGE_REPLICAS,
                extra=extra,
                fleet=True,
                # every confident edge answer is also checked with the gateway, so a rollout's
                # canary has 150 answers compared within a few seconds
                audit_rate=1.0,
            ),
            work_dir=self.work_dir,
            node_env={
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.receiver.endpoint,
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            },
        )

    async def warm_up(self) -> None:
        """Let every tier load and the leaf link carry interest before the clock starts."""
        client = self.client
        try:
            async with asyncio.timeout(20):
                while True:
                    with contextlib.suppress(MeshError):
                        answer = await client.infer(MODEL, self.x[:1], budget_ms=2000, tier="cloud")
                        if answer.tier == "cloud":
                            break
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise MeshError("the cloud tier did not answer from the site within 20 s") from None
        for i in range(8):
            await client.infer(MODEL, self.x[i : i + 1], budget_ms=2000)
        self.client_spans.clear()

    async def stop(self) -> None:
        for close in (
            self._client.close() if self._client else None,
            self._hub_nc.close() if self._hub_nc else None,
            self._site_nc.close() if self._site_nc else None,
            self._reviewer_nc.close() if self._reviewer_nc else None,
        ):
            if close is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(close, 5)
        if self._mesh is not None:
            await self._mesh.close()
        if self._proxy is not None:
            await self._proxy.stop()
        await self.receiver.stop()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def trace_of(self, request_id: str | None) -> tuple[str | None, list[SpanRecord]]:
        """The trace of the request ``request_id``: the demo's spans and every node's."""
        if request_id is None:
            return None, []
        mine = [
            SpanRecord.of(s)
            for s in self.client_spans.get_finished_spans()
            if (s.attributes or {}).get(tracing.MESSAGE_ID) == request_id
        ]
        if not mine:
            return None, []
        trace_id = mine[0].trace_id
        spans = [
            s
            for s in self.client_spans.get_finished_spans()
            if s.context is not None and format(s.context.trace_id, "032x") == trace_id
        ]
        records = [SpanRecord.of(s) for s in spans] + self.receiver.spans.get(trace_id, [])
        return trace_id, sorted(records, key=lambda s: s.start_ns)
