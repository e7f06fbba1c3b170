"""Batching happens under load: messages waiting on the subscription run as one model call."""

from __future__ import annotations

import asyncio

import numpy as np

from mesh import MeshClient, wire
from mesh.dev.models.demo import DemoArtifacts
from mesh.local.servers import NatsServer
from mesh.observability.metrics import default_metrics
from tests.fixtures.chain import Chain, Tier


async def test_requests_in_flight_together_share_model_calls_and_get_the_same_answers(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    await chain.start(nats_server.url, Tier("edgebatch", model="edge-int8", threshold=0.0))
    x = np.load(demo.test)["x"].astype(np.float32)[:256]
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        alone = [await client.infer("digits", row[None]) for row in x[:64]]

        batches = default_metrics().batch_size
        rows_before, calls_before = batches.sum_count("edgebatch", "digits")
        nc = await nats_server.connect()
        payloads = [
            wire.encode_request(
                wire.InferRequest(
                    id=f"b{i}", model="digits", inputs={"x": row[None]}, budget_ms=5000
                )
            )
            for i, row in enumerate(x)
        ]

        async def ask(i: int) -> wire.InferResponse:
            msg = await nc.request("mesh.infer.digits", payloads[i % len(x)], timeout=10)
            reply = wire.decode_reply(msg.data)
            assert isinstance(reply, wire.InferResponse)
            return reply

        async def worker(start: int) -> list[wire.InferResponse]:
            return [await ask(i) for i in range(start, 1024, 64)]

        together = [
            r for part in await asyncio.gather(*(worker(w) for w in range(64))) for r in part
        ]
        await nc.close()
        rows, calls = batches.sum_count("edgebatch", "digits")

    per_call = (rows - rows_before) / (calls - calls_before)
    print(f"\nrows per model call at 64 in flight: {per_call:.1f}")
    assert rows - rows_before == 1024
    assert per_call > 4.0
    by_id = {r.id: r for r in together}
    for i, single in enumerate(alone):
        batched = by_id[f"b{i}"]
        assert batched.labels == single.labels
        assert abs(batched.confidence - single.confidence) < 1e-6
        assert np.allclose(
            batched.outputs["probabilities"], single.outputs["probabilities"], atol=1e-6
        )
