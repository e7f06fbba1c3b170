"""``mesh controller``: drives the fleet's rollouts (any number run, one leads).

It connects to a server of the fleet with the controller's identity and prints
``MESH_CONTROLLER ready name=NAME`` once it watches the fleet.
"""

from __future__ import annotations

import asyncio

from mesh.fleet.controller import LABELS_TIMEOUT_S, Controller
from mesh.observability.telemetry import configure_telemetry
from mesh.review.client import ReviewClient
from mesh.security.creds import user_claims
from mesh.services.process import entry_point
from mesh.services.stopping import Shutdown
from mesh.settings import ControllerSettings
from mesh.topology.processes import CONTROLLER_READY
from mesh.transport.connection import connected

READY_PREFIX = CONTROLLER_READY
SERVICE = "mesh-controller"


async def serve(settings: ControllerSettings, shutdown: Shutdown) -> int:
    """Take part in leading the fleet's rollouts until ``shutdown``."""
    creds = settings.nats.credentials
    claims = await asyncio.to_thread(user_claims, creds) if creds is not None else {}
    async with (
        configure_telemetry(SERVICE, settings.name),
        connected(settings.nats, f"mesh-{settings.name}") as nc,
    ):
        # the review desk's labels, asked as this identity (the API's subject names it)
        labels = ReviewClient(nc, str(claims.get("name") or "controller"), timeout=LABELS_TIMEOUT_S)
        async with Controller(
            nc,
            name=settings.name,
            domain=settings.domain,
            tick_s=settings.tick_s,
            lease_s=settings.lease_s,
            offline_after_s=settings.offline_after_s,
            heartbeat_s=settings.heartbeat_s,
            labels=labels,
        ):
            print(f"{READY_PREFIX} name={settings.name}", flush=True)
            await shutdown.wait()
    return 0


main = entry_point(
    ControllerSettings, "controller", serve, SERVICE, source="flags and MESH_CONTROLLER_* variables"
)
