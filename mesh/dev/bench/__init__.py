"""``mesh bench``: the mesh against the physical floor and against peers, in one run.

How it is measured (the decisions the issue asks to write down):

- The bench process is the load generator and nothing else: every server is its own process
  (nats-server hub and two site leaf servers, the tier nodes, the echo responder, the aiohttp
  peer, MLServer, and the fault proxy on the slow leaf link). The one exception is the
  ONNX Runtime floor, which is by definition in-process.
- Every configuration runs at once, so rows can be interleaved trial by trial: a trial runs each
  row once (order rotated per trial), so minute-to-minute drift hits all rows alike. Figures are
  medians over trials; ratios are medians of the per-trial ratios (paired by trial).
- A row's trial is ``latency_n`` requests one at a time (p50/p99 at concurrency 1), then
  ``throughput_n`` requests with ``concurrency`` in flight (requests per second).
- Payload: one digits row, float32 (1, 64), cycling through the held-out split, the same row
  sequence for every row. Mesh rows go through the SDK (``MeshClient.infer``); the echo sends
  the msgpack ``InferRequest`` the SDK would send (same bytes on the wire); the HTTP peers get
  the same row as JSON (what teams hand-roll, and the V2 protocol for MLServer).
- Topology: hub (cloud node) with two leaf servers. ``site`` dials the hub directly; ``site2``
  dials it through a fault proxy process adding 20 ms each way (40 ms round trip). Each mesh row
  is its own tier name on those servers, so rows never share a queue group: ``edge`` (threshold
  0, answers everything, on ``site``), ``edgeesc`` (threshold 1.01, upstream cloud, ``site``),
  ``edgelink`` (threshold 1.01, ``site2``) and ``edgemix`` (the calibrated threshold, ``site2``).
- CPU per 1,000 requests: user + system time of the row's server processes (the nodes and
  nats-servers a request crosses, the echo responder, the peer's process tree) over a trial,
  divided by the requests of that trial. The fault proxy stands for the WAN and is not counted;
  neither is the load generator.

- The hot path's own figures, for the edge row's throughput phase: the edge node's CPU per
  request and the SDK client's (this process's) CPU per request, both from the kernel's
  nanosecond counters, and the node's mean rows per model call read from its Prometheus
  ``mesh_batch_size`` histogram before and after the phase.

``python -m mesh.dev.bench <role>`` runs the helper servers (echo, peer, proxy).

The parts: ``config`` (settings and shared names), ``payloads`` (what every row sends), the rig
(``servers``, ``nodes``, ``responders``, ``mlserver``, put together by ``rig``), the load
generator (``calls``: connections and one request of each row; ``measure``: a row's trial;
``trials``: the interleaved schedule), ``rows`` (what is measured), ``ratios`` (paired ratios
and targets), ``report`` (the typed report, its JSON and table), ``roles`` (the helper
servers' own code); ``run`` puts them together.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

from mesh.dev.bench.config import BenchConfig
from mesh.dev.bench.report import BenchReport, render
from mesh.dev.bench.run import run_bench

__all__ = ["BenchReport", "bench_main", "render"]


async def bench_main(
    quick: bool,
    cache: Path,
    mlserver: str | None,
    progress: Callable[[str], None],
    only: frozenset[str] | None = None,
) -> BenchReport:
    """Run the bench; SIGTERM cancels it like Ctrl-C, so every process started is stopped."""
    config = BenchConfig.quick() if quick else BenchConfig.full()
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run_bench(config, cache, mlserver, progress, only)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
