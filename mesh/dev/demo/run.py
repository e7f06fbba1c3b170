"""A demo run: starts the mesh with a fault proxy on the site's link, sends the load, cuts and
restores the link, watches the gateway, and ends with the report (``demo_main``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
import nats.js.errors
import numpy as np
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console
from rich.live import Live

from mesh import MeshClient, MeshError
from mesh.dev.demo.receiver import OtlpReceiver, SpanRecord
from mesh.dev.demo.report import (
    DemoReport,
    EventsSummary,
    FleetSummary,
    TraceSummary,
    build_report,
    render_report,
)
from mesh.dev.demo.state import (
    EDGE_REPLICAS,
    GATEWAY,
    GATEWAY_TIER,
    MODEL,
    Clock,
    DemoConfig,
    LinkView,
    Tally,
    Transition,
    gateway_figures,
    hard_examples_buffered,
    transition_counts,
)
from mesh.dev.demo.view import TRANSITION_TEXT, plain_line, render_live, thousands
from mesh.dev.faults import FaultProxy
from mesh.dev.models.demo import ensure_demo
from mesh.local.launcher import EmbeddedMesh, MeshLayout
from mesh.models.validate import require_valid
from mesh.observability import tracing
from mesh.observability.telemetry import install_tracing
from mesh.sdk.client import EventResult
from mesh.topology import subjects
from mesh.wire import decode_node_status

#: the gateway's breaker on its cloud link: trips after 3 failures, probes after 0.5 s, growing
#: to 2 s; fast enough that the display shows it open and closing again within the outage.
DEMO_NODE_SETTINGS: dict[str, Any] = {
    "gateway": {
        "nats": {"reconnect_wait_s": 0.2},
        "upstream": {
            "breaker": {"failure_threshold": 3, "open_seconds": 0.5, "max_open_seconds": 2.0}
        },
    },
    "cloud": {"nats": {"reconnect_wait_s": 0.2}},
    # The edge also consumes the site's event stream, with one alert rule.
    "edge": {
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
        }
    },
}
#: events the demo's publisher sends over the run, as a camera on line 4 would.
DEMO_EVENTS = 200


class DemoRun:
    """One demo run: owns every process and connection it starts."""

    def __init__(self, config: DemoConfig, console: Console) -> None:
        self.config = config
        self.console = console
        self.clock = Clock()
        self.tally = Tally()
        self.view = LinkView()
        self.receiver = OtlpReceiver()
        self.client_spans = InMemorySpanExporter()
        self.mesh: EmbeddedMesh | None = None
        self.proxy: FaultProxy | None = None
        self.client: MeshClient | None = None
        self.hub_nc: NATS | None = None
        #: the demo's own view of the site (streams, status): an administrator's connection, as
        #: the application's identity may only ask for answers.
        self.site_nc: NATS | None = None
        self.work_dir = Path(tempfile.mkdtemp(prefix="mesh-demo-"))
        self._event_sink: Callable[[str], None] = lambda line: None
        self.fleet_events: list[str] = []
        self.events_published = 0
        self.events_results = 0
        self.events_errors = 0
        self.alerts = 0
        self.swaps = 0
        self.rejected = 0
        self.rollouts: list[dict[str, Any]] = []
        #: set once the rollouts that run before the link cut have ended.
        self.fleet_ready = asyncio.Event()
        self.controller: Any = None
        self.initial_version = ""
        self._seen: dict[str, int] = {}
        self._chain = "closed"

    def step(self, text: str) -> None:
        self.console.print(f"[green]✓[/] {text}")

    def event(self, text: str) -> None:
        now = self.clock.now()
        self.view.events.append((now, text))
        self._event_sink(f"{now:5.1f}s  {text}")

    @contextlib.asynccontextmanager
    async def started(self) -> AsyncIterator[None]:
        try:
            await self._start()
            yield
        finally:
            await self._stop()

    async def _start(self) -> None:
        cfg = self.config
        with self.console.status(f"demo models in {cfg.cache} (built on the first run)"):
            demo = await asyncio.to_thread(ensure_demo, cfg.cache)
        self.step(f"demo models ready in {cfg.cache}")
        with self.console.status("evidence gate: latency, memory and accuracy of each model here"):
            reports = await asyncio.to_thread(
                require_valid, [demo.edge_int8, demo.gateway, demo.cloud], demo.test
            )
        self.step(
            "evidence gate passed: "
            + ", ".join(f"{r.version} p99 {r.latency_p99_ms:.2f} ms" for r in reports)
        )
        self.demo = demo
        self.initial_version = reports[0].version
        split = np.load(demo.test)
        self.x: np.ndarray = split["x"].astype(np.float32)
        self.y: np.ndarray = split["y"].astype(np.int64)

        await self.receiver.start()
        install_tracing("mesh-demo", "demo", processors=[SimpleSpanProcessor(self.client_spans)])
        self.mesh = EmbeddedMesh(
            MeshLayout(
                edge_manifest=demo.edge_int8,
                gateway_manifest=demo.gateway,
                cloud_manifest=demo.cloud,
                edge_replicas=EDGE_REPLICAS,
                extra=DEMO_NODE_SETTINGS,
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
        site = self.mesh.site
        with self.console.status("starting NATS hub and site leaf server"):
            await site.hub.start()
            self.proxy = FaultProxy("127.0.0.1", self.mesh.site.hub.leaf_port)
            await self.proxy.start()
            await self.mesh.start_servers(leaf_url=self.proxy.url)
            await self.mesh.site.hub.wait_leaf_connections(1, timeout=15)
        self.step(
            f"NATS hub {self.mesh.hub_url} ⇄ fault proxy {self.proxy.address} ⇄ "
            f"site leaf {self.mesh.site_url}"
        )
        with self.console.status("starting cloud, gateway and 2 edge nodes"):
            await self.mesh.start_nodes()
        self.step(
            "nodes up: cloud-0 on the hub (SVM); gateway-0 (MLP 64) and edge-0, edge-1 "
            "(int8 MLP) on the site"
        )
        self.client = await MeshClient.connect(self.mesh.site_url, **self.mesh.client_options())
        self.hub_nc = await self.mesh.site.hub.connect(name="mesh-demo-observer")
        assert self.mesh.site.leaf is not None
        self.site_nc = await self.mesh.site.leaf.connect(name="mesh-demo-observer-site")
        await self.site_nc.subscribe("mesh.telemetry.>", cb=self._on_telemetry)
        await self.site_nc.subscribe("mesh.actions.alerts.>", cb=self._on_alert)
        await self._warm_up()

    async def _warm_up(self) -> None:
        """Let every tier load and the leaf link carry interest before the clock starts."""
        assert self.client is not None
        try:
            async with asyncio.timeout(20):
                while True:
                    with contextlib.suppress(MeshError):
                        answer = await self.client.infer(
                            MODEL, self.x[:1], budget_ms=2000, tier="cloud"
                        )
                        if answer.tier == "cloud":
                            break
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise MeshError("the cloud tier did not answer from the site within 20 s") from None
        for i in range(8):
            await self.client.infer(MODEL, self.x[i : i + 1], budget_ms=2000)
        self.client_spans.clear()

    async def _stop(self) -> None:
        for close in (
            self.client.close() if self.client else None,
            self.hub_nc.close() if self.hub_nc else None,
            self.site_nc.close() if self.site_nc else None,
        ):
            if close is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(close, 5)
        if self.mesh is not None:
            await self.mesh.close()
        if self.proxy is not None:
            await self.proxy.stop()
        await self.receiver.stop()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- load ----------------------------------------------------------------------------------

    async def _one(self, i: int, semaphore: asyncio.Semaphore) -> None:
        assert self.client is not None
        row = i % len(self.x)
        tally = self.tally
        async with semaphore:
            tally.sent += 1
            tally.rows_sent[row] += 1
            t0 = time.monotonic()
            try:
                result = await self.client.infer(
                    MODEL,
                    self.x[row : row + 1],
                    budget_ms=self.config.budget_ms,
                    request_id=uuid.uuid4().hex,
                )
            except MeshError as error:
                tally.errors[type(error).__name__] += 1
                self.event(f"[red]error reply[/]: {error}")
                return
            ms = (time.monotonic() - t0) * 1000
        tally.answered += 1
        tally.by_tier[result.tier] += 1
        tally.latencies_ms.setdefault(result.tier, []).append(ms)
        tally.request_bytes += result.request_bytes
        if result.tier != "edge":
            tally.escalated_bytes += result.request_bytes
        if result.label == int(self.y[row]):
            tally.correct += 1
        if result.degraded:
            tally.reasons[result.reason or "unknown"] += 1
            tally.degraded_by_tier[result.tier] += 1
        elif (
            tally.traced_id is None
            and result.tier == "cloud"
            and self.clock.now() > 0.1 * self.config.duration_s
        ):
            tally.traced_id = result.id

    async def drive(self) -> None:
        cfg = self.config
        semaphore = asyncio.Semaphore(cfg.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        began = time.monotonic()
        try:
            for i in range(cfg.requests):
                delay = began + i / cfg.rate_per_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._one(i, semaphore))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def outage(self) -> None:
        assert self.proxy is not None and self.mesh is not None
        cfg = self.config
        await asyncio.sleep(cfg.cut_from * cfg.duration_s)
        # the rollouts before the cut finish first (their controller is at the hub)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.fleet_ready.wait(), 0.2 * cfg.duration_s)
        self.proxy.refuse(True)
        self.proxy.reset_all()
        self.view.link = "cut"
        self.view.cut_at_s = self.clock.now()
        self.event("[bold red]link cut[/]: the fault proxy resets the site's link to the hub")
        await asyncio.sleep((cfg.cut_to - cfg.cut_from) * cfg.duration_s)
        self.proxy.heal()
        self.view.link = "reconnecting"
        self.view.healed_at_s = self.clock.now()
        self.event("[green]link restored[/]: the fault proxy lets connections through again")
        with contextlib.suppress(MeshError):
            await self.mesh.site.hub.wait_leaf_connections(1, timeout=30)
            self.view.link = "up"
            self.view.relinked_at_s = self.clock.now()
            self.event("site leaf server reconnected to the hub")

    # -- the fleet -----------------------------------------------------------------------------

    async def fleet_releases(self) -> None:
        """The fleet, before the link cut, with a controller driving staged rollouts: a good
        signed edge version rolls out to a canary node, is judged on live evidence (agreement
        with the gateway included) and then reaches both nodes; a tampered version, assigned
        straight to the edge tier, is refused by both nodes; a version that confuses 3s and 8s
        rolls out to its canary, fails the agreement gate and is rolled back automatically.
        """
        from mesh.fleet.controller import Controller

        cfg = self.config
        assert self.mesh is not None
        await self.mesh.controller_creds()
        nc = await nats.connect(
            self.mesh.hub_url, **self.mesh.site.hub.client_options("controller"), name="ctl"
        )
        self.controller = Controller(
            nc, name="controller-demo", tick_s=0.25, lease_s=2.0, offline_after_s=3.0,
            on_event=lambda text: self.event(f"[cyan]rollout[/]: {text}"),
        )  # fmt: skip
        try:
            async with self.controller:
                await self.release(self.initial_version, "the version serving now", assign=False)
                await asyncio.sleep(0.03 * cfg.duration_s)
                # a good version needs fewer samples to pass than a bad one to be caught
                # surely: 40 lets it reach both nodes before the link cut
                await self.rollout("2-edge", "the float edge MLP, signed", samples=40)
                await self.release("3-edge", "one byte changed after signing", tamper=True)
                if not cfg.quick:
                    # 300 compared answers at the canary: a version agreeing 0.82 where the
                    # baseline agrees 0.97 passes it 0.2% of the time (exact binomial); 150
                    # let it pass 5%, and it reached both nodes before its rollback (seen in CI)
                    await self.rollout(
                        "3-confused", "3s and 8s swapped, signed", confused=True, samples=300
                    )
                self.fleet_ready.set()
        finally:
            await nc.close()

    async def rollout(
        self, version: str, what: str, *, confused: bool = False, samples: int = 150
    ) -> None:
        """Push ``version`` and roll it out over the edge tier: a canary node, then both."""
        from mesh.fleet.admin import read_rollouts, start_rollout
        from mesh.fleet.desired import Selector
        from mesh.fleet.rollout import report

        assert self.mesh is not None and self.hub_nc is not None
        if not await self.release(version, what, assign=False, confused=confused):
            return
        js = self.hub_nc.jetstream(domain="hub")
        try:
            started = await start_rollout(
                js, MODEL, version, stages="1,100%", soak="1.5s",
                gate_terms=["min_requests=30", f"min_samples={samples}", "max_wait_s=15"],
                selector=Selector(tier="edge"), trusted_keys=[self.mesh.signing_public or ""],
                by="demo", offline_after_s=3.0,
            )  # fmt: skip
        except (MeshError, nats.errors.Error, nats.js.errors.Error) as exc:
            self.event(f"[red]rollout of {MODEL}@{version} refused[/]: {exc}")
            return
        self.event(
            f"[cyan]rollout[/]: {MODEL}@{version} to tier=edge: canary 1 node, then all; "
            f"rolls back to {started.previous_version}"
        )
        try:
            async with asyncio.timeout(25.0):
                while True:
                    current = (await read_rollouts(js)).get(MODEL)
                    if current is not None and current.id == started.id and not current.active:
                        break
                    await asyncio.sleep(0.25)
        except TimeoutError:
            from mesh.fleet.admin import act

            current = await act(js, MODEL, "abort", "demo (out of time)")
            self.event(f"[yellow]rollout of {MODEL}@{version} aborted[/]: the run is ending")
        self.rollouts.append(report(current))
        if current.failed_gate:
            self.event(f"[yellow]rollout[/]: {MODEL}@{version} {current.outcome}: {current.reason}")
        else:
            self.event(f"[green]rollout[/]: {MODEL}@{version} {current.outcome}")

    async def release(
        self,
        version: str,
        what: str,
        *,
        tamper: bool = False,
        assign: bool = True,
        confused: bool = False,
    ) -> bool:
        from mesh.dev.models.faulty import confuse_classes
        from mesh.fleet import registry
        from mesh.fleet.desired import DesiredState, Selector
        from mesh.fleet.signing import SigningKey, sign
        from mesh.models.manifest import copy_as_version, sha256_of

        assert self.mesh is not None and self.hub_nc is not None

        def build() -> registry.Artifact:
            assert self.mesh is not None
            out = self.work_dir / "releases" / version
            if version == self.initial_version:
                manifest = copy_as_version(self.demo.edge_int8, version, out)
            elif confused:
                manifest = confuse_classes(self.demo.edge, version, out)
            else:
                manifest = copy_as_version(self.demo.edge, version, out)
            parsed = json.loads(manifest.read_text())
            onnx = (manifest.parent / parsed["artifact"]).read_bytes()
            key = SigningKey.load(self.mesh.signing_key_path)
            signature = sign(key, parsed, sha256_of(manifest.parent / parsed["artifact"]))
            if tamper:
                onnx = onnx[:-1] + bytes([onnx[-1] ^ 1])
            return registry.Artifact(onnx, manifest.read_bytes(), signature.to_json())

        artifact = await asyncio.to_thread(build)
        js = self.hub_nc.jetstream(domain="hub")
        try:
            await registry.push(js, artifact)
            if assign:
                await registry.assign(
                    js,
                    DesiredState(MODEL, version, Selector(tier="edge"), time.time(), by="demo"),
                )
        except (MeshError, nats.errors.Error, nats.js.errors.Error) as exc:
            self.event(f"[red]fleet: could not release {MODEL}@{version}[/]: {exc}")
            return False
        if assign:
            self.event(
                f"[cyan]fleet[/]: {MODEL}@{version} ({what}) pushed and assigned to tier=edge"
            )
        else:
            self.event(f"[cyan]fleet[/]: {MODEL}@{version} ({what}) signed and pushed")
        return True

    # -- events --------------------------------------------------------------------------------

    async def publisher(self) -> None:
        """A camera on line 4: publishes its frames as events over the run, without waiting."""
        assert self.client is not None
        cfg = self.config
        gap = cfg.duration_s * 0.9 / DEMO_EVENTS
        self.event(f"[cyan]events[/]: a publisher sends {DEMO_EVENTS} frames as events")
        for i in range(DEMO_EVENTS):
            row = (i * 7) % len(self.x)
            try:
                await self.client.publish(
                    MODEL, self.x[row : row + 1], source="app", event_id=f"line4-{i}",
                    budget_ms=cfg.budget_ms,
                )  # fmt: skip
                self.events_published += 1
            except MeshError as error:
                self.event(f"[red]event not stored[/]: {error}")
            await asyncio.sleep(gap)

    async def read_results(self) -> None:
        assert self.client is not None
        # aclosing: cancelled while handling a result, the generator still closes its consumer
        async with contextlib.aclosing(self.client.results(MODEL, source="app")) as results:
            await self._count_results(results)

    async def _count_results(self, results: AsyncIterator[EventResult]) -> None:
        async for result in results:
            self.events_results += 1
            if result.error is not None:
                self.events_errors += 1
            elif result.degraded and result.tier == GATEWAY_TIER:
                self.tally.event_hard_examples += 1

    async def _on_alert(self, msg: Any) -> None:
        import msgpack

        self.alerts += 1
        if self.alerts <= 3:
            with contextlib.suppress(Exception):
                alert = msgpack.unpackb(msg.data)
                self.event(
                    f"[magenta]alert[/] on {msg.subject}: event {alert['event_id']} "
                    f"label {alert['labels']} confidence {alert['confidence']:.2f}"
                )

    async def _on_telemetry(self, msg: Any) -> None:
        from mesh.wire import decode_node_event

        try:
            event = decode_node_event(msg.data)
        except MeshError:
            return  # drift events share the subject
        if event.event == "swapped":
            self.swaps += 1
            line = f"{event.node} swapped {event.model} {event.previous} -> {event.version}"
            self.event(f"[cyan]fleet[/]: {line}, no request dropped")
        elif event.event == "rejected":
            self.rejected += 1
            line = f"{event.node} refused {event.model}@{event.version}: {event.reason}"
            self.event(f"[yellow]fleet[/]: {line}")
        else:
            return
        self.fleet_events.append(f"{self.clock.now():5.1f}s {line}")

    async def fleet_summary(self) -> FleetSummary:
        from mesh.fleet import registry

        assert self.hub_nc is not None
        try:
            beats = await registry.read_heartbeats(self.hub_nc.jetstream(domain="hub"))
        except (MeshError, nats.errors.Error, nats.js.errors.Error):
            beats = {}
        return FleetSummary(len(beats), self.swaps, self.rejected, list(self.fleet_events))

    # -- observation ---------------------------------------------------------------------------

    async def poll_status(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                await self.poll_once(session)
                await asyncio.sleep(self.config.poll_interval_s)

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        with contextlib.suppress(nats.errors.Error, MeshError, asyncio.TimeoutError):
            await self.poll_breaker()
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            self.observe_transitions(await self.gateway_metrics(session))
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            view = self.view
            view.backlog, view.stored = await self.stream_state(
                self.site_js(), subjects.hard_example_stream(GATEWAY_TIER)
            )
            view.backlog_peak = max(view.backlog_peak, view.backlog)
            recovered = view.healed_at_s is not None and view.drained_at_s is None
            if recovered and view.backlog == 0 and view.backlog_peak:
                view.drained_at_s = self.clock.now()
                self.event(f"hard-example backlog drained: {view.backlog_peak} sent to the hub")
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            assert self.hub_nc is not None
            self.view.delivered = await self.stream_messages(
                self.hub_nc.jetstream(), subjects.inbox_stream("cloud")
            )

    async def poll_breaker(self) -> None:
        assert self.client is not None
        assert self.site_nc is not None
        msg = await self.site_nc.request(subjects.status(GATEWAY), b"", timeout=0.5)
        status = decode_node_status(msg.data)
        self.view.breaker = status.breakers.get("cloud", next(iter(status.breakers.values()), "?"))

    def observe_transitions(self, metrics: dict[str, float]) -> None:
        """New breaker transitions since the last scrape, in the order the state machine allows.

        A probe in HALF_OPEN takes a millisecond, far less than a poll interval: the gateway's
        transition counters see every change where its status record shows only the current state.
        """
        counts = transition_counts(metrics)
        new = {k: n - self._seen.get(k, 0) for k, n in counts.items() if n > self._seen.get(k, 0)}
        self._seen = counts
        at = round(self.clock.now(), 2)
        while new:
            key = next((k for k in new if k.startswith(f"{self._chain}->")), next(iter(new)))
            before, _, after = key.partition("->")
            self.view.transitions.append(Transition(at, before, after))
            self.event(TRANSITION_TEXT.get(key, f"gateway breaker: {key}"))
            new[key] -= 1
            if new[key] == 0:
                del new[key]
            self._chain = after

    def site_js(self) -> JetStreamContext:
        # The gateway's own backlog figure (its status record) is refreshed by its forwarder only
        # between deliveries, and the forwarder waits on the first undeliverable example for as
        # long as the link is cut: the stream itself is the live figure.
        assert self.site_nc is not None and self.mesh is not None
        return self.site_nc.jetstream(domain=self.mesh.site.site_name)

    @staticmethod
    async def stream_messages(js: JetStreamContext, stream: str) -> int:
        return (await DemoRun.stream_state(js, stream))[0]

    @staticmethod
    async def stream_state(js: JetStreamContext, stream: str) -> tuple[int, int]:
        """Messages in ``stream`` now, and how many it ever stored (its last sequence)."""
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return 0, 0
        return int(info.state.messages), int(info.state.last_seq)

    async def show(self, stop: asyncio.Event) -> None:
        cfg = self.config
        if self.console.is_terminal:
            with Live(
                render_live(cfg, self.tally, self.view, 0.0),
                console=self.console,
                refresh_per_second=4,
                transient=False,
            ) as live:
                self._event_sink = lambda line: None
                while not stop.is_set():
                    live.update(render_live(cfg, self.tally, self.view, self.clock.now()))
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.25)
                live.update(render_live(cfg, self.tally, self.view, self.clock.now()))
            return
        self._event_sink = lambda line: self.console.print(line, highlight=False)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 3.0)
            self.console.print(
                plain_line(cfg, self.tally, self.view, self.clock.now()), markup=False
            )

    async def wait_drained(self) -> float:
        began = time.monotonic()
        view = self.view
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.drain_timeout_s):
                while view.backlog or view.delivered < hard_examples_buffered(view, self.tally):  # noqa: ASYNC110 (polls another process)
                    await asyncio.sleep(0.2)
        await asyncio.sleep(self.config.poll_interval_s * 2)
        return time.monotonic() - began

    async def cloud_only(self) -> tuple[float, int]:
        """Accuracy of the cloud tier alone on the same inputs, weighted as they were sent."""
        assert self.client is not None
        semaphore = asyncio.Semaphore(self.config.concurrency)
        labels: dict[int, int | None] = {}

        async def ask(row: int) -> None:
            assert self.client is not None
            async with semaphore:
                result = await self.client.infer(
                    MODEL, self.x[row : row + 1], budget_ms=2000, tier="cloud"
                )
                labels[row] = result.label

        await asyncio.gather(*(ask(row) for row in self.tally.rows_sent))
        counts = self.tally.rows_sent
        correct = sum(n for row, n in counts.items() if labels[row] == int(self.y[row]))
        return correct / max(sum(counts.values()), 1), len(labels)

    async def gateway_metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        """Counters of the gateway's Prometheus endpoint that the report uses."""
        assert self.mesh is not None
        url = self.mesh.nodes[GATEWAY].http_url
        if url is None:
            return {}
        timeout = aiohttp.ClientTimeout(total=2)
        async with session.get(f"{url}/metrics", timeout=timeout) as resp:
            return gateway_figures(await resp.text())

    def traced(self) -> tuple[str | None, list[SpanRecord]]:
        wanted = self.tally.traced_id
        if wanted is None:
            return None, []
        mine = [
            SpanRecord.of(s)
            for s in self.client_spans.get_finished_spans()
            if (s.attributes or {}).get(tracing.MESSAGE_ID) == wanted
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

    async def run(self) -> DemoReport:
        cfg = self.config
        async with self.started():
            self.console.print(
                f"\n[bold]sending {thousands(cfg.requests)} requests[/] (the digits test split, "
                f"{len(self.x)} rows, repeated) at {cfg.rate_per_s:.0f}/s, up to "
                f"{cfg.concurrency} in flight, budget {cfg.budget_ms:.0f} ms.\n"
                "The edge answers what it is sure of and passes the rest up to the gateway, "
                "which passes what it is unsure of to the cloud.\n"
                f"From {cfg.cut_from:.0%} to {cfg.cut_to:.0%} of the run the site's link to the "
                "hub is cut: the gateway answers on its own (degraded) and keeps those cases as "
                "hard examples for the cloud.\n",
                style="default",
            )
            self.clock = Clock()
            stop = asyncio.Event()
            display = asyncio.create_task(self.show(stop))
            poller = asyncio.create_task(self.poll_status())
            cut = asyncio.create_task(self.outage())
            releases = asyncio.create_task(self.fleet_releases())
            publisher = asyncio.create_task(self.publisher())
            reader = asyncio.create_task(self.read_results())
            try:
                await self.drive()
                await cut
                await releases
                await publisher
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        while self.events_results < self.events_published:  # noqa: ASYNC110
                            await asyncio.sleep(0.1)
                self.event(
                    f"events: {self.events_results}/{self.events_published} results stored, "
                    f"{self.alerts} alerts on mesh.actions.alerts.line4"
                )
                run_s = self.clock.now()
                waiting = self.view.backlog or self.view.delivered < self.tally.degraded
                self.event(
                    "all requests answered"
                    + ("; waiting for the hard-example backlog to drain" if waiting else "")
                )
                drain_s = await self.wait_drained()
                self.event(
                    f"backlog {self.view.backlog}, {self.view.delivered} hard examples at the hub"
                )
            finally:
                stop.set()
                cut.cancel()
                releases.cancel()
                publisher.cancel()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, MeshError):
                    await reader
                await display
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
                with contextlib.suppress(asyncio.CancelledError):
                    await cut
            with self.console.status("asking the cloud tier alone the same questions"):
                cloud_accuracy, unique = await self.cloud_only()
                async with aiohttp.ClientSession() as session:
                    metrics = await self.gateway_metrics(session)
                await asyncio.sleep(0.5)
                trace_id, spans = self.traced()
                fleet = await self.fleet_summary()
                events = EventsSummary(
                    self.events_published, self.events_results, self.events_errors, self.alerts
                )
            return build_report(
                cfg,
                self.tally,
                self.view,
                run_s=run_s,
                drain_s=drain_s,
                cloud_accuracy=cloud_accuracy,
                cloud_inputs=unique,
                gateway_figures=metrics,
                trace=TraceSummary.of(trace_id, self.tally.traced_id, spans),
                fleet=fleet,
                events=events,
                rollouts=list(self.rollouts),
            )


async def _run_interruptibly(run: DemoRun) -> DemoReport:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopping = False

    def interrupt() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        return await run.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def demo_main(cache: Path, requests: int | None, quick: bool, report_path: Path | None) -> int:
    """Run the demo; the exit status: 0, 1 when a request was lost or failed, 130 interrupted."""
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console = Console(highlight=False, soft_wrap=True, width=110)
    config = DemoConfig.of(cache, requests, quick)
    run = DemoRun(config, console)
    try:
        report = asyncio.run(_run_interruptibly(run))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]interrupted[/]: every process the demo started is stopped")
        return 130
    render_report(report, console)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"report written to {report_path}")
    if not report.passed:
        console.print(
            f"[bold red]FAILED[/]: {report.lost} requests lost, "
            f"{sum(report.errors.values())} error replies"
        )
        return 1
    return 0
