"""The load generator's side of every row: its connections, and one request of each row (a
``Call``: the request's index in, the tier or peer that answered out). The echo's client is bare
nats-py; the mesh's rows connect as an application does, with ``MeshClient.connect``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from nats.aio.client import Client as NATS

from mesh import wire
from mesh.dev.bench.config import ECHO_SUBJECT, MESH_BUDGET_MS, ORT_SUBJECT, BenchConfig, Call
from mesh.dev.bench.payloads import Payloads
from mesh.dev.bench.responders import INGRESS_TOKEN
from mesh.dev.bench.rig import Rig
from mesh.events.records import decode_result
from mesh.ingress.proto import grpc_predict_v2_pb2 as oip_pb
from mesh.sdk.client import MeshClient


@dataclass(frozen=True)
class Clients:
    #: bare nats-py on ``site``: the floors' requests and the event results.
    nc_site: NATS
    site: MeshClient
    site2: MeshClient
    open: MeshClient
    #: on ``site``, hosting an edge in this process (``MeshClient.connect(local=...)``).
    local: MeshClient
    #: the HTTP rows' pool, ``concurrency`` connections.
    http: aiohttp.ClientSession
    #: reads the edge node's metrics around a throughput phase.
    scraper: aiohttp.ClientSession


async def connect_clients(
    rig: Rig, config: BenchConfig, stack: contextlib.AsyncExitStack
) -> Clients:
    servers = rig.servers
    site, site2 = servers.site, servers.site2
    nc_site = await site.connect(name="bench-client-echo")
    stack.push_async_callback(nc_site.close)
    client_site = await MeshClient.connect(
        site.url, name="bench-client-site", **site.client_options()
    )
    stack.push_async_callback(client_site.close)
    client_site2 = await MeshClient.connect(
        site2.url, name="bench-client-site2", **site2.client_options()
    )
    stack.push_async_callback(client_site2.close)
    client_open = await MeshClient.connect(servers.site_open.url, name="bench-client-open")
    stack.push_async_callback(client_open.close)
    client_local = await MeshClient.connect(
        site.url, name="bench-client-local", local=rig.local_edge, **site.client_options()
    )
    stack.push_async_callback(client_local.close)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=config.concurrency))
    stack.push_async_callback(http.close)
    scraper = aiohttp.ClientSession()
    stack.push_async_callback(scraper.close)
    return Clients(nc_site, client_site, client_site2, client_open, client_local, http, scraper)


class RowCalls:
    """One request of each row, over ``clients``, cycling through ``payloads``."""

    def __init__(self, payloads: Payloads, clients: Clients, rig: Rig, model_infer: Any) -> None:
        self.payloads = payloads
        self.clients = clients
        self._model_infer = model_infer
        self._peer_url = f"http://127.0.0.1:{rig.responders.peer.info['port']}/predict"
        self._mlserver_url = f"{rig.mlserver.url}/v2/models/digits/infer"
        self._oip_url = f"{rig.responders.ingress.info['http']}/v2/models/digits/infer"
        hosting = rig.responders.ingress_local.info["http"]
        self._oip_local_url = f"{hosting}/v2/models/digits/infer"
        self._oip_auth = {"Authorization": f"Bearer {INGRESS_TOKEN}"}
        self._grpc_auth = (("authorization", f"Bearer {INGRESS_TOKEN}"),)
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._event_ids = itertools.count()

    @classmethod
    async def open(
        cls, payloads: Payloads, clients: Clients, rig: Rig, stack: contextlib.AsyncExitStack
    ) -> RowCalls:
        channel = grpc.aio.insecure_channel(rig.responders.ingress.info["grpc"])
        stack.push_async_callback(channel.close)
        model_infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=oip_pb.ModelInferResponse.FromString,
        )
        calls = cls(payloads, clients, rig, model_infer)
        # Events: publish, then wait for the result event (the stream's round trip), at the
        # same concurrency as request/reply; results are read from their subject as stored.
        await clients.nc_site.subscribe("mesh.results.digits.bench", cb=calls._on_result)
        return calls

    def mesh(self, client: MeshClient, tier: str | None) -> Call:
        rows = self.payloads.rows

        async def call(i: int) -> str:
            result = await client.infer(
                "digits", rows[i % len(rows)], budget_ms=MESH_BUDGET_MS, tier=tier
            )
            return result.tier

        return call

    async def echo(self, i: int) -> str:
        envelopes = self.payloads.envelopes
        await self.clients.nc_site.request(ECHO_SUBJECT, envelopes[i % len(envelopes)], timeout=5.0)
        return "echo"

    async def ort(self, i: int) -> str:
        raw = self.payloads.raw
        await self.clients.nc_site.request(ORT_SUBJECT, raw[i % len(raw)], timeout=5.0)
        return "ort"

    async def peer(self, i: int) -> str:
        await self._post(
            self._peer_url, {"inputs": self.payloads.json_rows[i % len(self.payloads)]}
        )
        return "peer"

    async def mlserver(self, i: int) -> str:
        await self._post(self._mlserver_url, self.payloads.v2_body(i))
        return "mlserver"

    async def oip_rest(self, i: int) -> str:
        answer = await self._post(self._oip_url, self.payloads.v2_body(i), self._oip_auth)
        return str(answer["parameters"]["tier"])

    async def oip_rest_local(self, i: int) -> str:
        answer = await self._post(self._oip_local_url, self.payloads.v2_body(i), self._oip_auth)
        return str(answer["parameters"]["tier"])

    async def _post(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> Any:
        """POST ``body`` as JSON; the JSON answer (an HTTP error raises)."""
        async with self.clients.http.post(url, json=body, headers=headers) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def oip_grpc(self, i: int) -> str:
        request = self.payloads.grpc[i % len(self.payloads)]
        reply = await self._model_infer(request, metadata=self._grpc_auth, timeout=5.0)
        return str(reply.parameters["tier"].string_param)

    async def event(self, i: int) -> str:
        event_id = f"bench-{next(self._event_ids)}"
        future = asyncio.get_running_loop().create_future()
        self._waiting[event_id] = future
        await self.clients.site.publish(
            "digits", self.payloads.rows[i % len(self.payloads)], source="bench",
            event_id=event_id, budget_ms=MESH_BUDGET_MS,
        )  # fmt: skip
        try:
            return await asyncio.wait_for(future, 5.0)
        finally:
            self._waiting.pop(event_id, None)

    async def _on_result(self, msg: Any) -> None:
        try:
            record = decode_result(msg.data)
            reply = wire.decode_reply(record.reply)
        except Exception:
            return
        future = self._waiting.pop(record.event_id, None)
        if future is not None and not future.done():
            tier = reply.tier if isinstance(reply, wire.InferResponse) else "error"
            future.set_result(tier)
