"""A node in the NATS micro services API: ``$SRV.PING/INFO/STATS.mesh-node`` list the fleet.

Every node registers as service ``mesh-node`` with its tier, node name, zone and models
(``name@version``, comma separated) and whether it takes the entry subjects (``entry``,
``true`` or ``false``) in the service metadata, and one endpoint, ``status``, on
``mesh.status.<node>`` that answers with the node's ``NodeStatus`` record (msgpack, see
``mesh.wire.records``). The metadata shows the models loaded at start; the status record shows the
versions served now. Any NATS client can find the nodes: ``nats micro ls``, ``nats micro info
mesh-node``, or a request on ``$SRV.INFO.mesh-node`` collecting every reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
from collections.abc import Callable, Mapping

from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service as MicroService

from mesh.lifecycle import Service
from mesh.topology import subjects
from mesh.wire import NodeStatus, encode_node_status

SERVICE_NAME = "mesh-node"
STATUS_ENDPOINT = "status"
PACKAGE = "edge-mesh"


@functools.cache
def package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def models_text(versions: Mapping[str, str]) -> str:
    return ",".join(f"{name}@{version}" for name, version in sorted(versions.items()))


StatusSource = Callable[[], NodeStatus]


class NodeRegistration(Service):
    """The node's entry in the micro services API while it serves; idempotent stop."""

    def __init__(
        self,
        nc: NATS,
        *,
        tier: str,
        node: str,
        zone: str,
        models: Mapping[str, str],
        status: StatusSource,
        entry: bool = False,
    ) -> None:
        self._nc = nc
        self._status = status
        self.metadata = {
            "tier": tier,
            "node": node,
            "zone": zone,
            "models": models_text(models),
            "entry": "true" if entry else "false",
        }
        self.subject = subjects.status(node)
        self._service: MicroService | None = None

    async def _start(self) -> None:
        version = await asyncio.to_thread(package_version)
        service = await add_service(
            self._nc,
            name=SERVICE_NAME,
            version=version,
            description="A tier node of the edge mesh",
            metadata=self.metadata,
        )
        try:
            await service.add_endpoint(
                name=STATUS_ENDPOINT,
                subject=self.subject,
                handler=self._on_status,
                metadata={"encoding": "msgpack", "record": "node_status"},
            )
        except BaseException:
            await service.stop()
            raise
        self._service = service

    async def _stop(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            with contextlib.suppress(Exception):
                await service.stop()

    async def _on_status(self, request: Request) -> None:
        # An exception here becomes an error reply from nats.micro, counted in $SRV.STATS.
        await request.respond(encode_node_status(self._status()))
