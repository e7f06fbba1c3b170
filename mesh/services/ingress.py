"""``mesh ingress``: the Open Inference Protocol (REST and gRPC) in front of the mesh.

It connects to a NATS server of the fleet as an ingress identity, describes the models whose
manifests it is given, and prints ``MESH_INGRESS_READY http=URL grpc=HOST:PORT`` once both
servers listen.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mesh.ingress.core import Ingress
from mesh.ingress.grpc_server import GrpcIngress
from mesh.ingress.rest import create_rest_app
from mesh.models.manifest import ModelManifest, load_manifest
from mesh.observability.telemetry import configure_telemetry
from mesh.sdk.client import MeshClient
from mesh.transport.http import HttpServer

READY_PREFIX = "MESH_INGRESS_READY"


@dataclass
class IngressOptions:
    servers: str
    creds: Path | None
    manifests: Sequence[Path]
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    token: str = ""
    tls_ca: Path | None = None
    default_budget_ms: float = 1000.0
    max_body: int = 64 << 20


def load_manifests(paths: Sequence[Path]) -> dict[str, ModelManifest]:
    out: dict[str, ModelManifest] = {}
    for path in paths:
        manifest = load_manifest(path)
        out[manifest.name] = manifest
    return out


async def serve(options: IngressOptions) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    manifests = await asyncio.to_thread(load_manifests, options.manifests)
    connect: dict[str, object] = {}
    if options.creds is not None:
        connect["user_credentials"] = str(options.creds)
    if options.tls_ca is not None:
        connect["tls"] = await asyncio.to_thread(
            ssl.create_default_context, cafile=str(options.tls_ca)
        )
    async with configure_telemetry("mesh-ingress", "ingress"):
        client = await MeshClient.connect(options.servers, **connect)
        async with client:
            ingress = Ingress(client, manifests, default_budget_ms=options.default_budget_ms)
            app = create_rest_app(ingress, token=options.token, max_body=options.max_body)
            http = HttpServer(app, options.host, options.http_port)
            grpc_server = GrpcIngress(
                ingress, options.host, options.grpc_port, token=options.token,
                max_message=options.max_body,
            )  # fmt: skip
            async with ingress, http, grpc_server:
                print(f"{READY_PREFIX} http={http.url} grpc={grpc_server.address}", flush=True)
                await stop.wait()
    return 0
