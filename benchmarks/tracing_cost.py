"""What tracing costs on the edge path: p50 with the OpenTelemetry SDK on against off, one run.

An edge node (the demo edge model, threshold 0 so every request is answered at the edge) on a
real nats-server, and a client in the same process sending one request at a time. "off" is the
API without an SDK (a no-op tracer, as a service runs with no ``OTEL_*`` exporter configured);
"on" is an SDK ``TracerProvider`` sampling every trace, with a ``BatchSpanProcessor`` into an
exporter that drops spans (so the figure is the cost of recording, not of a collector). Both
modes run in interleaved trials, since runs on these machines drift by up to 2x minute to minute.
Both switch the one tracer the mesh uses (``mesh.observability.tracing.TRACER``); the propagator is
the same.

    .venv/bin/python benchmarks/tracing_cost.py [--trials 10] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from mesh import MeshClient
from mesh.dev.models.demo import ensure_demo
from mesh.local.servers import NatsServer, ServerConfig
from mesh.node.tier import TierNode
from mesh.observability import tracing
from mesh.settings import HardExampleSettings, ModelSettings, NatsSettings, NodeSettings


class DroppingExporter(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


async def trial(client: MeshClient, x: np.ndarray, requests: int) -> list[float]:
    samples: list[float] = []
    for i in range(requests):
        row = x[i % len(x)][None]
        started = time.perf_counter()
        await client.infer("digits", row, budget_ms=2000)
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


async def main(trials: int, requests: int, demo_dir: Path) -> None:
    demo = ensure_demo(demo_dir)
    x = np.load(demo.test)["x"].astype(np.float32)
    exporter = DroppingExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracers: dict[str, trace.Tracer] = {
        "off": trace.NoOpTracer(),
        "on": provider.get_tracer("mesh"),
    }
    with tempfile.TemporaryDirectory(prefix="tracing-cost-") as work:
        async with NatsServer(ServerConfig(name="bench"), Path(work) / "nats") as server:
            settings = NodeSettings(
                tier="edge",
                node="edge-bench",
                zone="device",
                entry=True,
                nats=NatsSettings(servers=[server.url]),
                models=[ModelSettings(name="digits", manifest=demo.edge, threshold=0.0)],
                hard_examples=HardExampleSettings(enabled=False),
            )
            async with TierNode(settings), await MeshClient.connect(server.url) as client:
                for mode in tracers:
                    tracing.TRACER = tracers[mode]
                    await trial(client, x, 100)
                results: dict[str, list[float]] = {mode: [] for mode in tracers}
                trial_p50: dict[str, list[float]] = {mode: [] for mode in tracers}
                for n in range(trials):
                    order = list(tracers) if n % 2 == 0 else list(reversed(tracers))
                    for mode in order:
                        tracing.TRACER = tracers[mode]
                        samples = await trial(client, x, requests)
                        results[mode].extend(samples)
                        trial_p50[mode].append(statistics.median(samples))
    provider.shutdown()

    print(f"edge path, {trials} interleaved trials x {requests} sequential requests per mode")
    for mode in tracers:
        s = np.asarray(results[mode])
        print(
            f"  tracing {mode:>3}: p50 {np.percentile(s, 50):7.1f} us   "
            f"p99 {np.percentile(s, 99):7.1f} us   "
            f"median of trial p50s {statistics.median(trial_p50[mode]):7.1f} us"
        )
    on, off = np.median(results["on"]), np.median(results["off"])
    paired = [a / b for a, b in zip(trial_p50["on"], trial_p50["off"], strict=True)]
    print(
        f"  ratio on/off: p50 {on / off:.3f}, median of paired trial ratios "
        f"{statistics.median(paired):.3f}, +{on - off:.1f} us a request"
    )
    print(f"  spans recorded and exported while on: {exporter.spans}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument(
        "--demo-dir", type=Path, default=Path(tempfile.gettempdir()) / "mesh-demo-models"
    )
    args = parser.parse_args()
    asyncio.run(main(args.trials, args.requests, args.demo_dir))
