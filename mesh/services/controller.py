"""``mesh controller``: drives the fleet's rollouts (any number run, one leads).

It connects to a server of the fleet with the controller's identity and prints
``MESH_CONTROLLER ready name=NAME`` once it watches the fleet.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mesh.fleet.controller import Controller
from mesh.observability.telemetry import configure_telemetry
from mesh.services.process import load_settings, run_process
from mesh.services.stopping import Shutdown, exit_on_signal
from mesh.settings import ControllerSettings
from mesh.transport.connection import connected

READY_PREFIX = "MESH_CONTROLLER ready"
SERVICE = "mesh-controller"


async def serve(settings: ControllerSettings, shutdown: Shutdown) -> int:
    """Take part in leading the fleet's rollouts until ``shutdown``."""
    async with (
        configure_telemetry(SERVICE, settings.name),
        connected(settings.nats, f"mesh-{settings.name}") as nc,
        Controller(
            nc,
            name=settings.name,
            domain=settings.domain,
            tick_s=settings.tick_s,
            lease_s=settings.lease_s,
            offline_after_s=settings.offline_after_s,
            heartbeat_s=settings.heartbeat_s,
        ),
    ):
        print(f"{READY_PREFIX} name={settings.name}", flush=True)
        await shutdown.wait()
    return 0


def main(
    config: Path | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Run a controller until SIGINT or SIGTERM; invalid settings exit with status 2."""
    exit_on_signal()
    settings = load_settings(
        ControllerSettings,
        "controller",
        config,
        flags=flags,
        defaults=defaults,
        source="flags and MESH_CONTROLLER_* variables",
    )
    status = run_process(lambda shutdown: serve(settings, shutdown), settings, SERVICE)
    if status:
        sys.exit(status)
