"""Tiers may be heterogeneous (issue 12): each model has its own subject per tier, so nodes of one
tier serve different models side by side, and a request for a model no node of a tier serves is
passed on up, never answered NOT_FOUND by a neighbour."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np

from mesh import MeshClient
from mesh.dev.models.demo import DemoArtifacts
from mesh.local.servers import NatsServer
from tests.fixtures.chain import Chain, Tier


async def test_a_node_serving_another_model_joins_a_tier_without_taking_its_requests(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    url = nats_server.url
    await chain.start(
        url, Tier("edge", threshold=0.9, node="edge-digits"), Tier("cloud", node="cloud-h")
    )
    # The situation of the issue: a second entry node of the edge tier that serves another model
    # only (the demo's edge model under another name stands in for iris).
    await chain.start(
        url,
        Tier(
            "edge",
            model_name="iris",
            threshold=0.0,
            novelty=False,
            node="edge-iris",
            upstream="cloud",
        ),
    )
    x = np.load(demo.test)["x"].astype(np.float32)
    async with await MeshClient.connect(url, **nats_server.client_options("app")) as client:
        iris, digits = await asyncio.gather(
            asyncio.gather(*(client.infer("iris", x[i : i + 1]) for i in range(40))),
            asyncio.gather(*(client.infer("digits", x[i : i + 1]) for i in range(40))),
        )
    # Every iris request is answered by the node that serves iris, whichever entry node took it.
    assert Counter(r.node for r in iris) == {"edge-iris": 40}
    assert not any(r.degraded for r in iris), Counter(r.reason for r in iris)
    # Digits answers are not disturbed: answered at the edge or escalated to the cloud, as the
    # threshold says, never degraded because a neighbour does not serve digits.
    assert {r.node for r in digits} <= {"edge-digits", "cloud-h"}
    assert not any(r.degraded for r in digits), Counter(r.reason for r in digits)
    forwarded = [r for r in iris if r.path[0].node == "edge-digits"]
    for r in forwarded:
        assert [(h.node, h.action) for h in r.path] == [
            ("edge-digits", "forwarded"),
            ("edge-iris", "answered"),
        ]


async def test_an_escalation_skips_a_tier_that_does_not_serve_the_model(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    """The gateway serves another model only: unsure digits at the edge pass through it to the
    cloud instead of ending degraded (no responders)."""
    url = nats_server.url
    await chain.start(
        url,
        Tier("edge", threshold=1.01, node="edge-s"),
        Tier("gateway", model_name="iris", node="gateway-s"),
        Tier("cloud", node="cloud-s"),
    )
    x = np.load(demo.test)["x"].astype(np.float32)
    async with await MeshClient.connect(url, **nats_server.client_options("app")) as client:
        result = await client.infer("digits", x[:1], budget_ms=2000)
    assert (result.tier, result.degraded) == ("cloud", False)
    assert [(h.node, h.action) for h in result.path] == [
        ("edge-s", "escalated"),
        ("gateway-s", "forwarded"),
        ("cloud-s", "answered"),
    ]
