"""The whole held-out split through a real three-tier chain, with fixed thresholds from config:
the share answered at the edge and the chain's accuracy against the cloud model alone."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np

from mesh import MeshClient
from mesh.dev.models.demo import DemoArtifacts
from mesh.local.servers import NatsServer
from tests.fixtures.chain import Chain, Tier

EDGE_THRESHOLD = 0.95
GATEWAY_THRESHOLD = 0.95


async def test_the_chain_is_as_accurate_as_the_cloud_alone_within_one_point(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    url = nats_server.url
    await chain.start(
        url,
        Tier("edge", model="edge-int8", threshold=EDGE_THRESHOLD),
        Tier("gateway", threshold=GATEWAY_THRESHOLD),
        Tier("cloud"),
    )
    split = np.load(demo.test)
    x, y = split["x"].astype(np.float32), split["y"]
    async with await MeshClient.connect(url, **nats_server.client_options("app")) as client:
        chain = await asyncio.gather(
            *(client.infer("digits", x[i : i + 1], budget_ms=5000) for i in range(len(x)))
        )
        cloud = await asyncio.gather(
            *(
                client.infer("digits", x[i : i + 1], budget_ms=5000, tier="cloud")
                for i in range(len(x))
            )
        )
    tiers = Counter(r.tier for r in chain)
    chain_accuracy = float(np.mean([r.label == t for r, t in zip(chain, y, strict=True)]))
    cloud_accuracy = float(np.mean([r.label == t for r, t in zip(cloud, y, strict=True)]))
    at_edge = tiers["edge"] / len(x)
    upstream_bytes = sum(r.request_bytes for r in chain if r.tier != "edge")
    all_bytes = sum(r.request_bytes for r in cloud)
    print(
        f"\nchain on {len(x)} held-out digits (edge {EDGE_THRESHOLD}, gateway "
        f"{GATEWAY_THRESHOLD}): answered at {dict(tiers)}; at the edge {at_edge:.1%}; "
        f"chain accuracy {chain_accuracy:.2%}, cloud alone {cloud_accuracy:.2%}; "
        f"bytes sent above the edge {upstream_bytes / all_bytes:.1%} of cloud-only"
    )
    assert all(not r.degraded for r in chain)
    assert {r.tier for r in cloud} == {"cloud"}
    assert chain_accuracy >= cloud_accuracy - 0.01
    assert at_edge > 0.5
