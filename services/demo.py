"""``mesh demo``: the whole mesh on this machine, a WAN outage in the middle, and a report.

It starts an embedded NATS hub and a site leaf server with a fault proxy on the link between
them, a cloud tier on the hub, a gateway and two edge nodes on the site, then sends the digits
held-out split through the SDK as an application would, many requests in flight. Partway it cuts
the site's link to the hub and later restores it. A live view shows what each tier answers, the
gateway's circuit breaker, degraded answers and the hard-example backlog; the run ends with a
report (terminal and JSON) and exits non-zero if a request was lost or answered with an error.

Every node exports its spans by OTLP/HTTP to a small receiver inside the demo, and the demo
traces its own requests, so the report can draw one escalated request's trace across all tiers.
Tracing every request costs the nodes about a fifth of their latency: the figures here include it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
import nats.js.errors
import numpy as np
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mesh import MeshClient, MeshError, tracing
from mesh.discovery import status_subject
from mesh.faults import FaultProxy
from mesh.hardexamples import inbox_stream, local_stream
from mesh.launcher import EmbeddedMesh, MeshLayout
from mesh.models.demo import ensure_demo
from mesh.models.validate import require_valid
from mesh.wire import decode_node_status
from mesh.telemetry import install_tracing

MODEL = "digits"
GATEWAY_TIER = "gateway"
GATEWAY = f"{GATEWAY_TIER}-0"
PANEL_WIDTH = 104
TIER_ORDER = ("edge", "gateway", "cloud")
TIER_STYLE = {"edge": "green", "gateway": "yellow", "cloud": "cyan"}
BREAKER_STYLE = {"closed": "green", "open": "bold red", "half_open": "yellow"}
TRANSITION_TEXT = {
    "closed->open": "gateway breaker to the cloud [bold red]opens[/]: the gateway answers alone",
    "open->half_open": "gateway breaker [yellow]half-open[/]: one probe goes to the cloud",
    "half_open->open": "probe failed: the breaker [bold red]opens[/] again, for longer",
    "half_open->closed": "probe answered: the breaker [green]closes[/], escalation resumes",
}

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
}


@dataclass(frozen=True)
class DemoConfig:
    requests: int = 3000
    #: paced rate; 3,000 requests at 100/s last about 30 s.
    rate_per_s: float = 100.0
    concurrency: int = 32
    budget_ms: float = 500.0
    #: the site-to-hub link is cut between these fractions of the run.
    cut_from: float = 0.35
    cut_to: float = 0.65
    drain_timeout_s: float = 30.0
    poll_interval_s: float = 0.25
    cache: Path = Path.home() / ".cache" / "edge-mesh" / "demo"

    @property
    def duration_s(self) -> float:
        return self.requests / self.rate_per_s

    @classmethod
    def of(cls, cache: Path, requests: int | None, quick: bool) -> DemoConfig:
        if quick:
            return cls(requests=requests or 600, rate_per_s=50.0, cache=cache)
        return cls(requests=requests or 3000, cache=cache)


# --- the OTLP receiver and the span tree ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    node: str
    start_ns: int
    end_ns: int
    attributes: dict[str, str | int | float | bool]

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @classmethod
    def of(cls, span: ReadableSpan) -> SpanRecord:
        ctx = span.context
        assert ctx is not None
        resource = span.resource.attributes
        return cls(
            trace_id=format(ctx.trace_id, "032x"),
            span_id=format(ctx.span_id, "016x"),
            parent_id=format(span.parent.span_id, "016x") if span.parent is not None else None,
            name=span.name,
            service=str(resource.get("service.name", "")),
            node=str(resource.get("service.instance.id", "")),
            start_ns=span.start_time or 0,
            end_ns=span.end_time or 0,
            attributes={
                k: v for k, v in (span.attributes or {}).items() if isinstance(v, str | int | float)
            },
        )


def _any_value(value: Any) -> str | int | float | bool:
    kind = value.WhichOneof("value")
    if kind in {"string_value", "bool_value", "int_value", "double_value"}:
        result: str | int | float | bool = getattr(value, kind)
        return result
    return str(value)


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver (protobuf) on loopback: spans kept by trace id."""

    def __init__(self) -> None:
        self.spans: dict[str, list[SpanRecord]] = {}
        self.received = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        try:
            message.ParseFromString(body)
        except Exception:
            return web.Response(status=400, text="not an OTLP ExportTraceServiceRequest")
        for resource_spans in message.resource_spans:
            resource = {a.key: _any_value(a.value) for a in resource_spans.resource.attributes}
            service = str(resource.get("service.name", ""))
            node = str(resource.get("service.instance.id", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    record = SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        service=service,
                        node=node,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes={a.key: _any_value(a.value) for a in span.attributes},
                    )
                    self.spans.setdefault(record.trace_id, []).append(record)
                    self.received += 1
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


def draw_span_tree(spans: Sequence[SpanRecord]) -> list[str]:
    """One line a span, indented under its parent: offset from the root, duration, where, name."""
    if not spans:
        return []
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[SpanRecord]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    origin = min(s.start_ns for s in spans)
    lines = [f"{'start':>10} {'duration':>10}  [node] span"]

    def walk(parent: str | None, depth: int) -> None:
        kids = sorted(children.get(parent, []), key=lambda s: s.start_ns)
        for i, span in enumerate(kids):
            last = i == len(kids) - 1
            branch = "" if depth == 0 else "   " * (depth - 1) + ("└─ " if last else "├─ ")
            where = span.node or span.service
            extra = ""
            answered = span.attributes.get(tracing.ANSWERED_BY)
            if answered and depth == 0:
                extra = f"  → answered by {answered}"
            reason = span.attributes.get(tracing.DEGRADED_REASON)
            if reason:
                extra += f"  ! {reason}"
            lines.append(
                f"+{(span.start_ns - origin) / 1e6:6.2f} ms {span.duration_ms:7.2f} ms  "
                f"{branch}[{where}] {span.name}{extra}"
            )
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return lines


# --- what the run observes --------------------------------------------------------------------


@dataclass
class Tally:
    """Every request's outcome, as the application saw it."""

    sent: int = 0
    answered: int = 0
    correct: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    by_tier: Counter[str] = field(default_factory=Counter)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    degraded_by_tier: Counter[str] = field(default_factory=Counter)
    request_bytes: int = 0
    escalated_bytes: int = 0
    rows_sent: Counter[int] = field(default_factory=Counter)
    traced_id: str | None = None

    @property
    def in_flight(self) -> int:
        return self.sent - self.answered - sum(self.errors.values())

    @property
    def degraded(self) -> int:
        return sum(self.reasons.values())


@dataclass
class Transition:
    at_s: float
    before: str
    after: str


@dataclass
class LinkView:
    """What the pollers and the fault schedule know about the site, for the display."""

    link: str = "up"
    breaker: str = "?"
    backlog: int = 0
    backlog_peak: int = 0
    delivered: int = 0
    transitions: list[Transition] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    cut_at_s: float | None = None
    healed_at_s: float | None = None
    relinked_at_s: float | None = None
    drained_at_s: float | None = None


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0


# --- the live view ----------------------------------------------------------------------------


def _n(value: int) -> str:
    return f"{value:,}"


def _tier_text(tally: Tally) -> Text:
    text = Text()
    total = max(tally.answered, 1)
    for tier in _tiers(tally.by_tier):
        count = tally.by_tier[tier]
        if text:
            text.append("   ")
        text.append(tier, style=TIER_STYLE.get(tier, "white"))
        text.append(f" {_n(count)} ({count / total:.0%})")
    return text or Text("-", style="dim")


def _tiers(counts: Counter[str]) -> list[str]:
    known = [t for t in TIER_ORDER if counts[t]]
    return known + sorted(t for t in counts if t not in TIER_ORDER and counts[t])


def _link_text(view: LinkView, now: float) -> Text:
    if view.link == "cut":
        since = now - (view.cut_at_s or now)
        return Text.assemble(("CUT", "bold red"), f"  for {since:.1f} s (fault proxy refuses)")
    if view.link == "reconnecting":
        return Text.assemble(("restored", "yellow"), ", leaf server reconnecting")
    return Text("up", style="green")


def render_live(config: DemoConfig, tally: Tally, view: LinkView, now: float) -> RenderableType:
    done = tally.answered + sum(tally.errors.values())
    share = done / config.requests
    width = 36
    filled = int(share * width)
    cut_a, cut_b = int(config.cut_from * width), int(config.cut_to * width)
    bar = Text()
    for i in range(width):
        inside = cut_a <= i < cut_b
        if i < filled:
            bar.append("█", style="red" if inside else "green")
        else:
            bar.append("░" if not inside else "▒", style="red dim" if inside else "dim")
    bar.append(f"  {share:4.0%}  {now:5.1f} s", style="bold")

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", justify="right", no_wrap=True)
    grid.add_column()
    grid.add_row("progress", bar)
    grid.add_row("site ⇄ hub link", _link_text(view, now))
    lost = Text(_n(sum(tally.errors.values())), style="bold red" if tally.errors else "green")
    grid.add_row(
        "requests",
        Text.assemble(
            f"sent {_n(tally.sent)}   answered {_n(tally.answered)}   errors ",
            lost,
            f"   in flight {tally.in_flight}",
        ),
    )
    grid.add_row("answered by", _tier_text(tally))
    degraded = Text(_n(tally.degraded), style="yellow" if tally.degraded else "")
    if tally.reasons:
        degraded.append(
            "   " + "  ".join(f"{r} {_n(c)}" for r, c in tally.reasons.most_common()), style="dim"
        )
    grid.add_row("degraded answers", degraded)
    breaker = Text(view.breaker.upper(), style=BREAKER_STYLE.get(view.breaker, "white"))
    if view.transitions:
        breaker.append(f"   {len(view.transitions)} transitions", style="dim")
    grid.add_row("gateway breaker", breaker)
    grid.add_row(
        "hard examples",
        Text.assemble(
            "backlog at the gateway ",
            (_n(view.backlog), "yellow" if view.backlog else "green"),
            f"   delivered to the hub {_n(view.delivered)}",
        ),
    )
    events = Table.grid(padding=(0, 2))
    events.add_column(style="dim", justify="right")
    events.add_column()
    for at, what in view.events[-6:]:
        events.add_row(f"{at:5.1f} s", what)
    body: RenderableType = Group(grid, Text(""), events) if view.events else grid
    return Panel(
        body,
        title=f"[bold]edge mesh demo[/]  ·  {MODEL}  ·  {_n(config.requests)} requests",
        border_style="blue",
        box=box.ROUNDED,
        padding=(0, 1),
        width=PANEL_WIDTH,
    )


def plain_line(config: DemoConfig, tally: Tally, view: LinkView, now: float) -> str:
    tiers = " ".join(f"{t}={tally.by_tier[t]}" for t in _tiers(tally.by_tier))
    return (
        f"{now:5.1f}s  sent {tally.sent}/{config.requests}  answered {tally.answered}  "
        f"errors {sum(tally.errors.values())}  [{tiers}]  degraded {tally.degraded}  "
        f"link {view.link}  breaker {view.breaker}  backlog {view.backlog}  "
        f"delivered {view.delivered}"
    )


# --- the run ----------------------------------------------------------------------------------


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
        self.work_dir = Path(tempfile.mkdtemp(prefix="mesh-demo-"))
        self._event_sink: Callable[[str], None] = lambda line: None
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
                edge_replicas=2,
                extra=DEMO_NODE_SETTINGS,
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
        self.client = await MeshClient.connect(self.mesh.site_url)
        self.hub_nc = await nats.connect(self.mesh.hub_url, name="mesh-demo-observer")
        await self._warm_up()

    async def _warm_up(self) -> None:
        """Let every tier load and the leaf link carry interest before the clock starts."""
        assert self.client is not None
        deadline = time.monotonic() + 20
        while True:
            try:
                result = await self.client.infer(MODEL, self.x[:1], budget_ms=2000, tier="cloud")
                if result.tier == "cloud":
                    break
            except MeshError:
                pass
            if time.monotonic() > deadline:
                raise MeshError("the cloud tier did not answer from the site within 20 s")
            await asyncio.sleep(0.2)
        for i in range(8):
            await self.client.infer(MODEL, self.x[i : i + 1], budget_ms=2000)
        self.client_spans.clear()

    async def _stop(self) -> None:
        for close in (
            self.client.close() if self.client else None,
            self.hub_nc.close() if self.hub_nc else None,
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
            self.view.backlog = await self.stream_messages(
                self.site_js(), local_stream(GATEWAY_TIER)
            )
            view = self.view
            view.backlog_peak = max(view.backlog_peak, view.backlog)
            recovered = view.healed_at_s is not None and view.drained_at_s is None
            if recovered and view.backlog == 0 and view.backlog_peak:
                view.drained_at_s = self.clock.now()
                self.event(f"hard-example backlog drained: {view.backlog_peak} sent to the hub")
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            assert self.hub_nc is not None
            self.view.delivered = await self.stream_messages(
                self.hub_nc.jetstream(), inbox_stream("cloud")
            )

    async def poll_breaker(self) -> None:
        assert self.client is not None
        msg = await self.client.nats.request(status_subject(GATEWAY), b"", timeout=0.5)
        status = decode_node_status(msg.data)
        self.view.breaker = status.breakers.get("cloud", next(iter(status.breakers.values()), "?"))

    def observe_transitions(self, metrics: dict[str, float]) -> None:
        """New breaker transitions since the last scrape, in the order the state machine allows.

        A probe in HALF_OPEN takes a millisecond, far less than a poll interval: the gateway's
        transition counters see every change where its status record shows only the current state.
        """
        counts = _transition_counts(metrics)
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
        assert self.client is not None and self.mesh is not None
        return self.client.nats.jetstream(domain=self.mesh.site.site_name)

    @staticmethod
    async def stream_messages(js: JetStreamContext, stream: str) -> int:
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return 0
        return int(info.state.messages)

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
        deadline = time.monotonic() + self.config.drain_timeout_s
        began = time.monotonic()
        buffered = self.tally.degraded_by_tier["gateway"]
        while time.monotonic() < deadline:
            if self.view.backlog == 0 and self.view.delivered >= buffered:
                break
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
            text = await resp.text()
        figures: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(
                r"^(mesh_upstream_bytes\w*_total|mesh_breaker_transitions\w*_total)"
                r"(\{[^}]*\})?\s+(\S+)$",
                line,
            )
            if match:
                key = match.group(1) + (match.group(2) or "")
                figures[key] = figures.get(key, 0.0) + float(match.group(3))
        return figures

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

    async def run(self) -> dict[str, Any]:
        cfg = self.config
        async with self.started():
            self.console.print(
                f"\n[bold]sending {_n(cfg.requests)} requests[/] (the digits test split, "
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
            try:
                await self.drive()
                await cut
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
            return self.report(run_s, drain_s, cloud_accuracy, unique, metrics, trace_id, spans)

    def report(
        self,
        run_s: float,
        drain_s: float,
        cloud_accuracy: float,
        unique: int,
        metrics: dict[str, float],
        trace_id: str | None,
        spans: list[SpanRecord],
    ) -> dict[str, Any]:
        cfg, tally, view = self.config, self.tally, self.view
        answered = max(tally.answered, 1)
        upstream_from_metrics = sum(
            v for k, v in metrics.items() if k.startswith("mesh_upstream_bytes")
        )
        latency = {
            tier: {
                "p50": round(float(np.percentile(values, 50)), 2),
                "p99": round(float(np.percentile(values, 99)), 2),
                "count": len(values),
            }
            for tier in _tiers(tally.by_tier)
            if (values := tally.latencies_ms.get(tier))
        }
        upstream = int(upstream_from_metrics) if metrics else tally.escalated_bytes
        return {
            "requests": cfg.requests,
            "sent": tally.sent,
            "answered": tally.answered,
            "lost": cfg.requests - tally.answered,
            "errors": dict(tally.errors),
            "by_tier": {t: round(tally.by_tier[t] / answered, 4) for t in _tiers(tally.by_tier)},
            "answered_by_tier": {t: tally.by_tier[t] for t in _tiers(tally.by_tier)},
            "accuracy": round(tally.correct / answered, 4),
            "cloud_only_accuracy": round(cloud_accuracy, 4),
            "cloud_only_distinct_inputs": unique,
            "degraded": {
                "count": tally.degraded,
                "reasons": dict(tally.reasons.most_common()),
                "by_tier": dict(tally.degraded_by_tier),
            },
            "latency_ms": latency,
            "upstream_bytes": upstream,
            "upstream_bytes_source": "gateway metrics" if metrics else "client request sizes",
            "cloud_only_upstream_bytes": tally.request_bytes,
            "breaker_transitions": [
                {"at_s": t.at_s, "from": t.before, "to": t.after} for t in view.transitions
            ],
            "breaker_transition_counts": _transition_counts(metrics),
            "hard_examples": {
                "buffered": tally.degraded_by_tier["gateway"],
                "delivered": view.delivered,
                "backlog_peak": view.backlog_peak,
                "backlog_left": view.backlog,
                "drained_at_s": _round(view.drained_at_s),
            },
            "link": {
                "cut_at_s": _round(view.cut_at_s),
                "restored_at_s": _round(view.healed_at_s),
                "leaf_reconnected_at_s": _round(view.relinked_at_s),
            },
            "duration_s": round(run_s, 2),
            "drain_s": round(drain_s, 2),
            "config": {
                "rate_per_s": cfg.rate_per_s,
                "concurrency": cfg.concurrency,
                "budget_ms": cfg.budget_ms,
                "edge_replicas": 2,
                "tracing": "every request, OTLP/HTTP to the demo's receiver",
            },
            "trace": {
                "trace_id": trace_id,
                "request_id": tally.traced_id,
                "spans": len(spans),
                "tree": draw_span_tree(spans),
            },
        }


def _transition_counts(metrics: dict[str, float]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for key, value in metrics.items():
        if not key.startswith("mesh_breaker_transitions"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', key))
        counts[f"{labels.get('from', '?')}->{labels.get('to', '?')}"] += int(value)
    return dict(counts)


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


# --- the final report on the terminal ---------------------------------------------------------


def render_report(report: dict[str, Any], console: Console) -> None:
    ok = report["lost"] == 0 and not report["errors"]
    headline = Text.assemble(
        (f"{_n(report['answered'])} of {_n(report['requests'])} answered", "bold"),
        "   lost ",
        (_n(report["lost"]), "bold green" if report["lost"] == 0 else "bold red"),
        "   error replies ",
        (_n(sum(report["errors"].values())), "bold green" if not report["errors"] else "bold red"),
        f"   in {report['duration_s']:.1f} s",
    )

    tiers = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="answers by tier", title_style="bold")
    tiers.add_column("tier")
    tiers.add_column("answered", justify="right")
    tiers.add_column("share", justify="right")
    tiers.add_column("p50 ms", justify="right")
    tiers.add_column("p99 ms", justify="right")
    tiers.add_column("degraded", justify="right")
    for tier, share in report["by_tier"].items():
        lat = report["latency_ms"].get(tier, {})
        tiers.add_row(
            Text(tier, style=TIER_STYLE.get(tier, "white")),
            _n(report["answered_by_tier"][tier]),
            f"{share:.1%}",
            f"{lat.get('p50', 0):.2f}",
            f"{lat.get('p99', 0):.2f}",
            _n(report["degraded"]["by_tier"].get(tier, 0)),
        )

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim", justify="right", no_wrap=True)
    facts.add_column()
    facts.add_row(
        "accuracy",
        f"cascade {report['accuracy']:.2%}   cloud alone {report['cloud_only_accuracy']:.2%}  "
        f"(same inputs)",
    )
    up, cloud_up = report["upstream_bytes"], report["cloud_only_upstream_bytes"]
    facts.add_row(
        "bytes to the cloud",
        f"{_n(up)} B from the site   cloud-only {_n(cloud_up)} B   "
        f"({up / max(cloud_up, 1):.1%} of it)",
    )
    degraded = report["degraded"]
    reasons = ", ".join(f"{r} {_n(c)}" for r, c in degraded["reasons"].items()) or "none"
    facts.add_row("degraded answers", f"{_n(degraded['count'])}   ({reasons})")
    link = report["link"]
    if link["cut_at_s"] is not None:
        facts.add_row(
            "link outage",
            f"cut at {link['cut_at_s']:.1f} s, restored at {link['restored_at_s']:.1f} s, "
            f"leaf back at {link['leaf_reconnected_at_s'] or float('nan'):.1f} s",
        )
    facts.add_row("gateway breaker", _breaker_summary(report["breaker_transitions"]))
    hard = report["hard_examples"]
    facts.add_row(
        "hard examples",
        Text.assemble(
            f"buffered {_n(hard['buffered'])}   delivered to the hub ",
            (_n(hard["delivered"]), "green" if hard["delivered"] == hard["buffered"] else "red"),
            f"   backlog peak {_n(hard['backlog_peak'])}"
            + (
                f", drained at {hard['drained_at_s']:.1f} s"
                if hard["drained_at_s"] is not None
                else ""
            ),
        ),
    )

    trace = report["trace"]
    parts: list[RenderableType] = [headline, Text(""), tiers, facts]
    if trace["tree"]:
        parts += [
            Text(""),
            Text.assemble(
                ("one escalated request's trace ", "bold"), (trace["trace_id"], "magenta")
            ),
            Text("\n".join(trace["tree"]), style="white", no_wrap=True, overflow="ellipsis"),
        ]
    console.print(
        Panel(
            Group(*parts),
            title="[bold]edge mesh demo: report[/]",
            border_style="green" if ok else "red",
            box=box.ROUNDED,
            padding=(0, 1),
            width=PANEL_WIDTH,
        )
    )


def _breaker_summary(transitions: list[dict[str, Any]]) -> str:
    if not transitions:
        return "no transition seen"
    opened = next((t["at_s"] for t in transitions if t["to"] == "open"), None)
    failed = sum(1 for t in transitions if (t["from"], t["to"]) == ("half_open", "open"))
    closed = [t["at_s"] for t in transitions if t["to"] == "closed"]
    parts = []
    if opened is not None:
        parts.append(f"opened at {opened:.1f} s")
    parts.append(f"{failed} failed probe{'s' if failed != 1 else ''}")
    if closed:
        parts.append(f"closed at {closed[-1]:.1f} s")
    return ", ".join(parts) + f"   ({len(transitions)} transitions)"


# --- entry point ------------------------------------------------------------------------------


async def _run_interruptibly(run: DemoRun) -> dict[str, Any]:
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
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"report written to {report_path}")
    if report["lost"] or report["errors"]:
        console.print(
            f"[bold red]FAILED[/]: {report['lost']} requests lost, "
            f"{sum(report['errors'].values())} error replies"
        )
        return 1
    return 0
