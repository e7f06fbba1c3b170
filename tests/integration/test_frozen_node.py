"""A frozen node costs nothing: one of two nodes stopped with SIGSTOP under steady load loses no
request that had budget left (issue 26, finding 2).

A GC pause, a disk stall or a starved CPU look the same to the mesh as SIGSTOP: the node's
connection stays open, the server keeps routing its share of the queue group to it, and nothing
comes back. The nodes here are real ``mesh node`` processes on a real server, the load comes
through the SDK at a steady rate, open loop (one task per request, sent on the clock whatever
the answers do), so the frozen node gets its share for the whole freeze.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from mesh import MeshClient
from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import MeshError
from mesh.local.launcher import NodeProcess
from mesh.local.servers import NatsServer
from mesh.settings import HardExampleSettings
from mesh.topology import subjects
from tests.fixtures.chain import Chain, Tier

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RATE = 40.0
BUDGET_MS = 500.0


@dataclass
class Tally:
    """What the load saw: every request sent, answered or failed, with its latency."""

    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    #: the nodes that answered, by name.
    nodes: Counter[str] = field(default_factory=Counter)
    degraded: int = 0

    @property
    def answered(self) -> int:
        return len(self.latencies_ms)

    @property
    def lost(self) -> int:
        return sum(self.errors.values())

    def line(self) -> str:
        p99 = float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else float("nan")
        return (
            f"sent {self.sent}, answered {self.answered}, lost {self.lost} "
            f"{dict(self.errors)}, p99 {p99:.1f} ms, by node {dict(self.nodes)}"
        )


async def steady_load(
    client: MeshClient, x: np.ndarray, seconds: float, tally: Tally, *, tier: str | None = None
) -> None:
    """``RATE`` requests a second for ``seconds``, each on its own task."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        started = loop.time()
        try:
            result = await client.infer("digits", x[i % len(x)][None, :], budget_ms=BUDGET_MS,
                                        tier=tier)  # fmt: skip
        except MeshError as error:
            tally.errors[error.code.value] += 1
            return
        tally.latencies_ms.append((loop.time() - started) * 1000.0)
        tally.nodes[result.node] += 1
        tally.degraded += result.degraded

    start = loop.time()
    count = int(seconds * RATE)
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / RATE - loop.time()))
        tally.sent += 1
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def frozen(process: NodeProcess, seconds: float):  # type: ignore[no-untyped-def]
    """``process`` stopped with SIGSTOP for ``seconds`` in the background, always resumed."""
    assert process.pid is not None
    pid = process.pid

    async def freeze() -> None:
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    task = asyncio.create_task(freeze())
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def edge(name: str) -> Tier:
    return Tier(
        "edge",
        node=name,
        threshold=0.0,
        hard_examples=HardExampleSettings(enabled=False),
    )


async def test_one_of_two_edge_nodes_frozen_for_15_s_loses_no_request(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts, tmp_path: Path
) -> None:
    nodes = [await chain.start_process(nats_server.url, edge(f"edge-{i}"), tmp_path)
             for i in range(2)]  # fmt: skip
    x = np.load(demo.test)["x"].astype(np.float32)
    client = await MeshClient.connect(nats_server.url, **nats_server.client_options("app"))
    tally = Tally()
    try:
        warm = Tally()
        await steady_load(client, x, 3.0, warm)  # both nodes answer before the freeze
        assert warm.lost == 0, warm.line()
        assert len(warm.nodes) == 2, warm.line()
        started = time.monotonic()
        async with frozen(nodes[1], 15.0) as thawed:
            await steady_load(client, x, 15.0, tally)
            await thawed
        after = Tally()
        await steady_load(client, x, 3.0, after)
        took = time.monotonic() - started
        policy = client.policy(subjects.entry("digits"))
        assert policy is not None
    finally:
        await client.close()
    print(f"\nedge-1 frozen 15 s at {RATE:.0f}/s, budget {BUDGET_MS:.0f} ms: {tally.line()}")
    print(f"hedges sent {policy.sent}, refused for credit {policy.refused}")
    print(f"after it resumed: {after.line()} ({took:.1f} s in all)")
    assert tally.sent == int(15.0 * RATE)
    assert tally.lost == 0, tally.line()
    assert after.lost == 0, after.line()
