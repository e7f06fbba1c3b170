"""What the energy ledger costs the node: its CPU per request with the ledger on against off.

Two edge node processes on one nats-server, the same model (the demo's int8 edge MLP, threshold
0 so every request is answered at the edge), one with ``energy.enabled`` and one without, each
its own tier so requests are addressed to one or the other. Trials interleave the two (runs on
these machines drift minute to minute), each sending ``--requests`` requests with ``--concurrency``
in flight, then the same one at a time; a node's CPU per request is its process's CPU time over
the phase (the kernel's nanosecond counters, as ``mesh bench`` reads them) over its requests.

    .venv/bin/python benchmarks/energy_cost.py [--trials 10] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

import numpy as np

from mesh import MeshClient
from mesh.dev.bench.measure import cpu_seconds
from mesh.dev.models.demo import ensure_demo
from mesh.local.launcher import NodeProcess
from mesh.local.layout import node_identity
from mesh.local.servers import APPLICATION, NatsServer, ServerConfig
from mesh.settings import HardExampleSettings, ModelSettings, NatsSettings, NodeSettings

MODES = {"on": "edgeon", "off": "edgeoff"}


def settings(tier: str, server: str, creds: Path, manifest: Path, energy: bool) -> NodeSettings:
    return NodeSettings(
        tier=tier,
        node=f"{tier}-0",
        zone="device",
        nats=NatsSettings(servers=[server], credentials=creds),
        models=[ModelSettings(name="digits", manifest=manifest, threshold=0.0, audit_rate=0.0)],
        hard_examples=HardExampleSettings(enabled=False),
        energy={"enabled": energy},  # type: ignore[arg-type]
        review={"enabled": False},  # type: ignore[arg-type]
    )


async def phase(
    client: MeshClient, tier: str, x: np.ndarray, requests: int, concurrency: int
) -> None:
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests:
            i = next_index
            next_index += 1
            await client.infer("digits", x[i % len(x)][None], budget_ms=2000, tier=tier)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def main(trials: int, requests: int, concurrency: int, demo_dir: Path) -> None:
    demo = ensure_demo(demo_dir)
    x = np.load(demo.test)["x"].astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="energy-cost-") as work:
        async with NatsServer(ServerConfig(name="bench"), Path(work) / "nats") as server:
            nodes = {}
            for mode, tier in MODES.items():
                creds = await server.issue(node_identity(f"{tier}-0", tier))
                nodes[mode] = NodeProcess(
                    tier,
                    settings(tier, server.url, creds, demo.edge_int8, mode == "on"),
                    Path(work),
                )
            for node in nodes.values():
                await node.start()
            try:
                await server.issue(APPLICATION)
                options = server.client_options(APPLICATION.name)
                async with await MeshClient.connect(server.url, **options) as client:
                    for tier in MODES.values():
                        await phase(client, tier, x, 500, concurrency)
                    figures: dict[tuple[str, int], list[float]] = {}
                    for n in range(trials):
                        order = list(MODES) if n % 2 == 0 else list(reversed(MODES))
                        for mode in order:
                            for c, count in ((concurrency, requests), (1, requests // 4)):
                                pid = nodes[mode].pid
                                assert pid is not None
                                before = cpu_seconds(pid)
                                await phase(client, MODES[mode], x, count, c)
                                used = cpu_seconds(pid) - before
                                figures.setdefault((mode, c), []).append(used / count * 1e6)
            finally:
                for node in nodes.values():
                    await node.stop()
    print(f"edge node CPU per request, {trials} interleaved trials (median of trials)")
    for c in (concurrency, 1):
        on = statistics.median(figures[("on", c)])
        off = statistics.median(figures[("off", c)])
        paired = [a - b for a, b in zip(figures[("on", c)], figures[("off", c)], strict=True)]
        print(
            f"  c={c:<3} ledger on {on:6.1f} us   off {off:6.1f} us   "
            f"difference {on - off:+5.1f} us ({(on - off) / off:+.1%}); "
            f"median of paired differences {statistics.median(paired):+5.1f} us"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--demo-dir", type=Path, default=Path(tempfile.gettempdir()) / "mesh-demo-models"
    )
    args = parser.parse_args()
    asyncio.run(main(args.trials, args.requests, args.concurrency, args.demo_dir))
