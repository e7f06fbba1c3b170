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
from mesh.ingress.core import Ingress
from mesh.local.launcher import NodeProcess
from mesh.local.servers import NatsServer
from mesh.models.manifest import load_manifest
from mesh.security.identities import IdentitySpec
from mesh.security.permissions import Role
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
    ingress = await started_ingress(nats_server, demo)
    tally = Tally()
    try:
        warm = Tally()
        await steady_load(client, x, 3.0, warm)  # both nodes answer before the freeze
        assert warm.lost == 0, warm.line()
        assert len(warm.nodes) == 2, warm.line()
        await ingress.refresh()
        assert (ingress.state.nodes, ingress.ready()) == (2, True)
        started = time.monotonic()
        async with frozen(nodes[1], 15.0) as thawed:
            await steady_load(client, x, 15.0, tally)
            # what the ingress counts is what answers: ready, on the node that is not frozen
            await ingress.refresh()
            assert (ingress.state.nodes, ingress.ready()) == (1, True)
            await thawed
        after = Tally()
        await steady_load(client, x, 3.0, after)
        took = time.monotonic() - started
        policy = client.policy(subjects.entry("digits"))
        assert policy is not None
        await counted(ingress, 2)
    finally:
        await ingress.stop()
        await ingress.client.close()
        await client.close()
    print(f"\nedge-1 frozen 15 s at {RATE:.0f}/s, budget {BUDGET_MS:.0f} ms: {tally.line()}")
    print(f"hedges sent {policy.sent}, refused for credit {policy.refused}")
    print(f"after it resumed: {after.line()} ({took:.1f} s in all)")
    assert tally.sent == int(15.0 * RATE)
    assert tally.lost == 0, tally.line()
    assert after.lost == 0, after.line()
    assert len(after.nodes) == 2, after.line()  # the thawed node is back in the queue group
    # and lives on: its connection watch does not take the connection the server replaced
    # while it was frozen for one that stopped reading
    assert nodes[1].running


async def test_a_frozen_gateway_costs_its_edge_no_escalation(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts, tmp_path: Path
) -> None:
    gateways = [
        await chain.start_process(
            nats_server.url,
            Tier("gateway", node=f"gateway-{i}", entry=False,
                 hard_examples=HardExampleSettings(enabled=False)),
            tmp_path,
        )
        for i in range(2)
    ]  # fmt: skip
    [edge_node] = await chain.start(
        nats_server.url,
        Tier("edge", node="edge-0", threshold=1.0, upstream="gateway", upstream_zone="site",
             hard_examples=HardExampleSettings(enabled=False)),
    )  # fmt: skip
    x = np.load(demo.test)["x"].astype(np.float32)
    client = await MeshClient.connect(nats_server.url, **nats_server.client_options("app"))
    tally = Tally()
    try:
        warm = Tally()
        await steady_load(client, x, 3.0, warm)
        assert (warm.lost, warm.degraded) == (0, 0), warm.line()
        assert edge_node.upstream is not None
        hedging = edge_node.upstream.hedging
        before = hedging.sent
        async with frozen(gateways[1], 8.0) as thawed:
            await steady_load(client, x, 8.0, tally)
            await thawed
    finally:
        await client.close()
    print(f"\ngateway-1 frozen 8 s, its edge at {RATE:.0f}/s: {tally.line()}, "
          f"degraded {tally.degraded}; the edge's hedges {before} before, "
          f"{hedging.sent - before} during")  # fmt: skip
    assert tally.lost == 0, tally.line()
    assert tally.degraded == 0, tally.line()
    assert hedging.sent > before


async def counted(ingress: Ingress, nodes: int) -> None:
    """Until the ingress has counted ``nodes`` entry nodes answering (a thawed node answers
    once it has worked through what waited in its socket and reconnected)."""
    async with asyncio.timeout(10.0):
        while True:
            await ingress.refresh()
            if ingress.state.nodes == nodes:
                return
            await asyncio.sleep(0.2)


async def started_ingress(nats_server: NatsServer, demo: DemoArtifacts) -> Ingress:
    creds = await nats_server.issue(IdentitySpec("ingress", Role.INGRESS))
    manifest = await asyncio.to_thread(load_manifest, demo.edge)
    client = await MeshClient.connect(nats_server.url, user_credentials=str(creds))
    ingress = Ingress(client, {"digits": manifest}, refresh_s=3600.0)
    await ingress.start()
    return ingress
