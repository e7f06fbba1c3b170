"""The processes beside the tier nodes that rows send to: the floors (a bare nats-py echo, a bare
nats-py + ONNX Runtime responder), the hand-rolled aiohttp peer, and the mesh's OIP ingress:
one that sends on to the edge node, one hosting an edge in its own process (``--local``)."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from mesh.dev.bench.config import READY
from mesh.local.servers import NatsServer
from mesh.local.supervisor import ChildProcess
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role
from mesh.topology.processes import INGRESS_READY

#: the bench's ingress token (a local throwaway, as in mesh up).
INGRESS_TOKEN = "bench-ingress-token"


@dataclass(frozen=True)
class Responders:
    echo: ChildProcess
    ort: ChildProcess
    peer: ChildProcess
    ingress: ChildProcess
    #: the ingress hosting an edge in its process (``mesh ingress --local``).
    ingress_local: ChildProcess

    def all(self) -> tuple[ChildProcess, ...]:
        return (self.echo, self.ort, self.peer, self.ingress, self.ingress_local)


async def responder_processes(
    site: NatsServer,
    keystore: KeyStore,
    edge_manifest: Path,
    edge_onnx: Path,
    hosted_edge: Path,
    work: Path,
) -> Responders:
    """The responders, not started yet, each on ``site`` or on its own port; ``hosted_edge``
    is the settings file of the edge the second ingress hosts."""
    py = sys.executable
    echo = ChildProcess(
        "echo",
        [
            py,
            *("-m", "mesh.dev.bench", "echo", "--url", site.url),
            *("--creds", str(site.creds())),
        ],
        work / "echo.log",
        ready_prefix=READY,
    )
    ort_responder = ChildProcess(
        "ort",
        [
            py,
            *("-m", "mesh.dev.bench", "ort", "--url", site.url),
            *("--creds", str(site.creds()), "--model", str(edge_onnx)),
        ],
        work / "ort.log",
        ready_prefix=READY,
    )
    peer = ChildProcess(
        "peer",
        [py, "-m", "mesh.dev.bench", "peer", "--model", str(edge_onnx)],
        work / "peer.log",
        ready_prefix=READY,
    )
    ingress_creds = await asyncio.to_thread(keystore.ensure, IdentitySpec("ingress", Role.INGRESS))

    def ingress(name: str, *extra: str) -> ChildProcess:
        return ChildProcess(
            name,
            [
                *(py, "-m", "mesh.cli", "ingress", "--servers", site.url),
                *("--creds", str(ingress_creds), "--manifest", str(edge_manifest)),
                *("--http-port", "0", "--grpc-port", "0", "--token", INGRESS_TOKEN),
                *extra,
            ],
            work / f"{name}.log",
            ready_prefix=INGRESS_READY,
        )

    return Responders(
        echo,
        ort_responder,
        peer,
        ingress("ingress"),
        ingress("ingress-local", "--local", str(hosted_edge)),
    )
