"""``mesh node``: one tier node, configured by a YAML file and ``MESH_*`` variables."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from mesh.node.tier import TierNode
from mesh.observability.telemetry import configure_logging, configure_telemetry
from mesh.settings import NodeSettings

#: the line a node prints on stdout once it serves; whoever starts node processes waits for it.
READY_PREFIX = "MESH_NODE_READY"


#: exit status when the node stops because its NATS connection died (EX_SOFTWARE): its
#: supervisor (``mesh up``, Kubernetes, compose) starts it again.
EXIT_CONNECTION_DEAD = 70


async def serve(settings: NodeSettings) -> int:
    """Serve until SIGINT or SIGTERM (status 0) or a dead connection (``EXIT_CONNECTION_DEAD``)."""
    stop = asyncio.Event()
    fatal: list[str] = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        stop.set()

    async with (
        configure_telemetry(f"mesh-{settings.tier}", settings.node) as telemetry,
        TierNode(settings, metrics=telemetry.metrics) as node,
    ):
        node.on_fatal = on_fatal
        http = node.http.url if node.http is not None else "-"
        print(f"{READY_PREFIX} node={settings.node} tier={settings.tier} http={http}", flush=True)
        await stop.wait()
    if fatal:
        print(f"error: node {settings.node} stopped: {fatal[0]}", file=sys.stderr, flush=True)
        return EXIT_CONNECTION_DEAD
    return 0


def settings_error(error: Exception) -> str:
    """What is wrong with the settings, on one line: an operator reads it in a process log."""
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}"
            for item in error.errors()
        )
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    if isinstance(error, yaml.YAMLError):
        return "not valid YAML: " + " ".join(str(error).split())
    return " ".join(str(error).split())


def main(config: Path | None = None) -> None:
    """Run one node until SIGINT or SIGTERM; invalid settings exit with status 2 and one line."""
    try:
        settings = NodeSettings.load(config)
    except (yaml.YAMLError, ValidationError, ValueError, OSError) as error:
        source = config or "MESH_* variables"
        print(f"error: invalid node settings ({source}): {settings_error(error)}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level, service=f"mesh-{settings.tier}")
    status = asyncio.run(serve(settings))
    if status:
        sys.exit(status)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run one tier node of the mesh.")
    parser.add_argument("--config", type=Path, default=None)
    main(parser.parse_args().config)
