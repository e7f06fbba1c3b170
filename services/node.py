"""``mesh node``: one tier node, configured by a YAML file and ``MESH_*`` variables."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from mesh.launcher import READY_PREFIX
from mesh.node import TierNode
from mesh.settings import NodeSettings
from mesh.telemetry import configure_logging, configure_telemetry


async def serve(settings: NodeSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with (
        configure_telemetry(f"mesh-{settings.tier}", settings.node) as telemetry,
        TierNode(settings, metrics=telemetry.metrics) as node,
    ):
        http = node.http.url if node.http is not None else "-"
        print(f"{READY_PREFIX} node={settings.node} tier={settings.tier} http={http}", flush=True)
        await stop.wait()


def main(config: Path | None = None) -> None:
    try:
        settings = NodeSettings.load(config)
    except (ValidationError, ValueError, OSError) as error:
        print(
            f"error: invalid node settings ({config or 'MESH_* variables'}):\n{error}",
            file=sys.stderr,
        )
        sys.exit(2)
    configure_logging(settings.log_level, service=f"mesh-{settings.tier}")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run one tier node of the mesh.")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()
    main(args.config)
    sys.exit(0)
