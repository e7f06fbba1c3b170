"""``mesh node``: one tier node, configured by a YAML file and ``MESH_*`` variables."""

from __future__ import annotations

import sys
from pathlib import Path

from mesh.node.tier import TierNode
from mesh.observability.telemetry import configure_telemetry
from mesh.services.process import load_settings, run_process
from mesh.services.stopping import Shutdown, exit_on_signal
from mesh.settings import NodeSettings
from mesh.topology.processes import NODE_READY

#: the line a node prints on stdout once it serves; whoever starts node processes waits for it.
READY_PREFIX = NODE_READY


#: exit status when the node stops because its NATS connection died (EX_SOFTWARE): its
#: supervisor (``mesh up``, Kubernetes, compose) starts it again.
EXIT_CONNECTION_DEAD = 70


async def serve(settings: NodeSettings, shutdown: Shutdown) -> int:
    """Serve until ``shutdown`` (status 0) or a dead connection (``EXIT_CONNECTION_DEAD``)."""

    def connection_dead(reason: str) -> None:
        print(f"error: node {settings.node} stopped: {reason}", file=sys.stderr, flush=True)
        shutdown.request(reason, EXIT_CONNECTION_DEAD)

    async with (
        configure_telemetry(f"mesh-{settings.tier}", settings.node) as telemetry,
        TierNode(settings, metrics=telemetry.metrics) as node,
    ):
        node.on_fatal = connection_dead
        http = node.http.url if node.http is not None else "-"
        print(f"{READY_PREFIX} node={settings.node} tier={settings.tier} http={http}", flush=True)
        await shutdown.wait()
    return shutdown.status


def main(config: Path | None = None) -> None:
    """Run one node until SIGINT or SIGTERM; invalid settings exit with status 2 and one line."""
    exit_on_signal()
    settings = load_settings(NodeSettings, "node", config)
    status = run_process(
        lambda shutdown: serve(settings, shutdown), settings, f"mesh-{settings.tier}"
    )
    if status:
        sys.exit(status)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run one tier node of the mesh.")
    parser.add_argument("--config", type=Path, default=None)
    main(parser.parse_args().config)
