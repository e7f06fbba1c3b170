"""``mesh ingress``: the Open Inference Protocol (REST and gRPC) in front of the mesh.

It connects to a NATS server of the fleet as an ingress identity, describes the models whose
manifests it is given, hosts an edge tier when given one's settings (``--local``), and prints
``MESH_INGRESS_READY http=URL grpc=HOST:PORT`` once both servers listen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from mesh.ingress.callers import Callers
from mesh.ingress.core import Ingress
from mesh.ingress.gate import Gate, GateLimits
from mesh.ingress.grpc_server import GrpcIngress
from mesh.ingress.rest import RestServer, create_rest_app
from mesh.models.manifest import ModelManifest, load_manifest
from mesh.node.admission import caller_name
from mesh.observability.telemetry import configure_telemetry
from mesh.sdk.client import MeshClient
from mesh.services.process import entry_point, load_settings
from mesh.services.stopping import Shutdown
from mesh.settings import IngressSettings, NodeSettings
from mesh.topology.processes import INGRESS_READY
from mesh.transport.connection import connect

READY_PREFIX = INGRESS_READY
SERVICE = "mesh-ingress"


def load_manifests(paths: Sequence[Path]) -> dict[str, ModelManifest]:
    out: dict[str, ModelManifest] = {}
    for path in paths:
        manifest = load_manifest(path)
        out[manifest.name] = manifest
    return out


def gate_limits(settings: IngressSettings) -> GateLimits:
    return GateLimits(
        max_body=settings.max_body_bytes,
        bytes_in_flight=settings.body_bytes_in_flight or 4 * settings.max_body_bytes,
        bytes_per_caller=settings.body_bytes_per_caller or settings.max_body_bytes,
        requests=settings.max_inflight,
        requests_per_caller=settings.max_inflight_per_caller,
        wait_s=settings.body_wait_s,
        body_timeout_s=settings.body_timeout_s,
    )


async def serve(settings: IngressSettings, shutdown: Shutdown) -> int:
    """Serve REST and gRPC until ``shutdown``."""
    manifests = await asyncio.to_thread(load_manifests, settings.manifests)
    # a hosted edge's settings that cannot work stop the ingress before it connects
    hosted = None
    if settings.local is not None:
        hosted = await asyncio.to_thread(
            load_settings, NodeSettings, "hosted edge (--local)", settings.local
        )
    async with configure_telemetry(SERVICE, "ingress"):
        client = MeshClient(await connect(settings.nats, SERVICE))
        async with client:
            if hosted is not None:
                # labels of its requests are told to the ingress's identity, as an edge
                # node's would be (the name its replies' inbox carries)
                await client.host(hosted, caller=caller_name(client.nc.new_inbox()))
            ingress = Ingress(
                client,
                manifests,
                default_budget_ms=settings.default_budget_ms,
                max_budget_ms=settings.max_budget_ms,
                refresh_s=settings.refresh_s,
                stale_after_s=settings.stale_after_s,
            )
            # one gate for both transports: a caller's share is the same whichever it uses
            callers = Callers(settings.token, settings.callers)
            gate = Gate(gate_limits(settings))
            app = create_rest_app(ingress, callers=callers, gate=gate)
            http = RestServer(
                app, settings.host, settings.http_port, header_timeout_s=settings.header_timeout_s
            )
            grpc_server = GrpcIngress(
                ingress, settings.host, settings.grpc_port, callers=callers, gate=gate
            )
            async with ingress, http, grpc_server:
                print(f"{READY_PREFIX} http={http.url} grpc={grpc_server.address}", flush=True)
                await shutdown.wait()
    return 0


main = entry_point(
    IngressSettings, "ingress", serve, SERVICE, source="flags and MESH_INGRESS_* variables"
)
