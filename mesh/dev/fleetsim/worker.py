"""Many light tier nodes in one process: ``python -m mesh.dev.fleetsim.worker SPEC.json``.

Each node is a real ``TierNode``: its own NATS connection and identity, its data plane with a
real ONNX Runtime session, its fleet agent and heartbeat. What makes it light is what the spec
leaves out (no HTTP server, no hard-example store, no event consumer) and one thread per
session. The spec is ``{"nodes": [<node settings>...]}``. Prints ``SIMWORKER ready nodes=N
pid=P`` once every node serves, stops them all on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from mesh.node.tier import TierNode
from mesh.observability.metrics import MeshMetrics
from mesh.settings import NodeSettings

READY = "SIMWORKER ready"
#: nodes started at once (each opens a connection and an ONNX Runtime session).
START_CONCURRENCY = 8


async def run(spec_path: Path) -> None:
    spec = json.loads(await asyncio.to_thread(spec_path.read_text))
    settings = [NodeSettings.model_validate(s) for s in spec["nodes"]]
    nodes = [TierNode(s, metrics=MeshMetrics()) for s in settings]
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def start(node: TierNode) -> None:
        async with gate:
            await node.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.gather(*(start(n) for n in nodes))
        print(f"{READY} nodes={len(nodes)} pid={os.getpid()}", flush=True)
        await stop.wait()
    finally:
        await asyncio.gather(*(n.stop() for n in nodes if n.running), return_exceptions=True)


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(run(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
