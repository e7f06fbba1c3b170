"""The request path across tiers, on real nats-server processes and the real demo models."""

from __future__ import annotations

import asyncio
from collections import Counter

import msgpack
import numpy as np
import pytest

from mesh import MeshClient, wire
from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import (
    ErrorCode,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from mesh.local.servers import NatsServer
from mesh.topology import subjects
from mesh.transport.guard import flush_in_order
from tests.fixtures.chain import Chain, Tier


def load_test_split(demo: DemoArtifacts) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(demo.test)
    return data["x"].astype(np.float32), data["y"]


async def test_confident_digits_answered_at_edge_and_unsure_ones_reach_the_cloud(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    # A gateway that is never sure sends everything it gets on to the cloud.
    await chain.start(
        nats_server.url, Tier("edge", threshold=0.9), Tier("gateway", threshold=1.01), Tier("cloud")
    )
    x, _ = load_test_split(demo)
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        results = [await client.infer("digits", x[i : i + 1], budget_ms=2000) for i in range(120)]

    at_edge = [r for r in results if r.tier == "edge"]
    at_cloud = [r for r in results if r.tier == "cloud"]
    assert len(at_edge) + len(at_cloud) == len(results)
    assert at_edge and at_cloud
    for r in at_edge:
        assert r.confidence >= 0.9
        assert [(h.tier, h.action) for h in r.path] == [("edge", "answered")]
        assert not r.degraded
    for r in at_cloud:
        assert [(h.tier, h.action) for h in r.path] == [
            ("edge", "escalated"),
            ("gateway", "escalated"),
            ("cloud", "answered"),
        ]
        edge_hop = r.path[0]
        assert edge_hop.confidence is not None
        # Unsure, or sure of an input unlike its training data (a few test digits are).
        assert (edge_hop.reason, edge_hop.confidence < 0.9) in {
            ("low_confidence", True),
            ("novel", True),
            ("novel", False),
        }
        assert r.model_version == r.path[-1].model_version
        assert r.path[0].latency_ms >= r.path[1].latency_ms >= r.path[2].latency_ms > 0
        assert not r.degraded
        assert r.outputs["probabilities"].shape == (1, 10)


async def test_two_replicas_of_a_tier_share_the_load(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    for name in ("edge-a", "edge-b"):
        await chain.start(nats_server.url, Tier("edge", threshold=0.0, node=name))
    x, _ = load_test_split(demo)
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        results = await asyncio.gather(
            *(client.infer("digits", x[i % len(x)][None], budget_ms=2000) for i in range(400))
        )
    by_node = Counter(r.node for r in results)
    assert set(by_node) == {"edge-a", "edge-b"}
    assert min(by_node.values()) >= 400 * 0.2, by_node


async def test_model_served_only_in_the_cloud_is_reached_from_the_edge(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    await chain.start(
        nats_server.url, Tier("edge"), Tier("gateway"), Tier("cloud", model_name="digits-xl")
    )
    x, y = load_test_split(demo)
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        result = await client.infer("digits-xl", x[:1], budget_ms=2000)
    assert result.tier == "cloud"
    assert result.model == "digits-xl"
    assert [(h.tier, h.action) for h in result.path] == [
        ("edge", "forwarded"),
        ("gateway", "forwarded"),
        ("cloud", "answered"),
    ]
    assert result.label == int(y[0])


async def test_residency_keeps_raw_input_below_the_allowed_zone(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    await chain.start(
        nats_server.url,
        Tier("edge", threshold=1.01),
        Tier("gateway", threshold=1.01),
        Tier("cloud"),
    )
    # A plain subscriber outside the queue groups sees every message on those subjects.
    import nats

    spy = await nats_server.connect()
    seen: dict[str, list[dict[str, object]]] = {"gateway": [], "cloud": []}

    async def sniff(msg: nats.aio.msg.Msg) -> None:
        tier = msg.subject.split(".")[1]
        seen[tier].append(msgpack.unpackb(msg.data, raw=False))

    await spy.subscribe(subjects.tier_wildcard("gateway"), cb=sniff)
    await spy.subscribe(subjects.tier_wildcard("cloud"), cb=sniff)
    await flush_in_order(spy)
    x, _ = load_test_split(demo)
    try:
        async with await MeshClient.connect(
            nats_server.url, **nats_server.client_options("app")
        ) as client:
            on_device = await client.infer("digits", x[:1], budget_ms=2000, residency="device")
            on_site = await client.infer("digits", x[1:2], budget_ms=2000, residency="site")
            anywhere = await client.infer("digits", x[2:3], budget_ms=2000, residency="any")
        await flush_in_order(spy)
        await asyncio.sleep(0.05)
    finally:
        await spy.close()

    assert (on_device.tier, on_device.degraded, on_device.reason) == ("edge", True, "residency")
    assert (on_site.tier, on_site.degraded, on_site.reason) == ("gateway", True, "residency")
    assert (anywhere.tier, anywhere.degraded) == ("cloud", False)
    gateway_ids = [m["id"] for m in seen["gateway"]]
    cloud_ids = [m["id"] for m in seen["cloud"]]
    assert on_device.id not in gateway_ids and on_device.id not in cloud_ids
    assert on_site.id in gateway_ids and on_site.id not in cloud_ids
    assert anywhere.id in gateway_ids and anywhere.id in cloud_ids


@pytest.fixture
async def edge_only(nats_server: NatsServer, chain: Chain) -> NatsServer:
    await chain.start(nats_server.url, Tier("edge", max_rows=16))
    return nats_server


async def raw_request(server: NatsServer, payload: bytes) -> wire.Message:
    nc = await server.connect("app")
    try:
        msg = await nc.request(subjects.entry("digits"), payload, timeout=2)
    finally:
        await nc.close()
    return wire.decode_reply(msg.data)


def request(x: np.ndarray, model: str = "digits", **fields: object) -> bytes:
    return wire.encode_request(
        wire.InferRequest(id="bad-1", model=model, inputs={"input": x}, budget_ms=1000, **fields)  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        (b"\xc1\xff not msgpack", ErrorCode.INVALID_ARGUMENT, "not valid msgpack"),
        (
            msgpack.packb({"v": 1, "id": "x", "model": "digits"}),
            ErrorCode.INVALID_ARGUMENT,
            "missing the field",
        ),
        (request(np.zeros((1, 64), dtype=np.int32)), ErrorCode.INVALID_ARGUMENT, "must be float32"),
        (request(np.zeros((1, 63), dtype=np.float32)), ErrorCode.INVALID_ARGUMENT, "shape [N, 64]"),
        (request(np.zeros((64,), dtype=np.float32)), ErrorCode.INVALID_ARGUMENT, "shape [N, 64]"),
        (request(np.zeros((17, 64), dtype=np.float32)), ErrorCode.RESOURCE_EXHAUSTED, "at most 16"),
    ],
    ids=["not-msgpack", "missing-field", "wrong-dtype", "wrong-shape", "wrong-rank", "oversized"],
)
async def test_bad_input_gets_a_typed_error_reply_and_the_node_keeps_serving(
    edge_only: NatsServer, payload: bytes, code: ErrorCode, words: str
) -> None:
    reply = await raw_request(edge_only, payload)
    assert isinstance(reply, wire.ErrorReply)
    assert reply.code is code
    assert words in reply.message
    good = await raw_request(edge_only, request(np.zeros((2, 64), dtype=np.float32)))
    assert isinstance(good, wire.InferResponse)
    assert len(good.labels) == 2


async def test_unknown_model_at_the_top_tier_is_not_found(
    nats_server: NatsServer, chain: Chain
) -> None:
    await chain.start(nats_server.url, Tier("cloud", entry=True))
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        with pytest.raises(NotFoundError, match="not served at tier cloud"):
            await client.infer("nosuchmodel", np.zeros((1, 64), np.float32))
        with pytest.raises(InvalidArgumentError, match="must be float32"):
            await client.infer("digits", np.zeros((1, 64), np.float64))
        with pytest.raises(ResourceExhaustedError):
            await client.infer("digits", np.zeros((300, 64), np.float32))
        ok = await client.infer("digits", np.zeros((1, 64), np.float32))
        assert ok.tier == "cloud"


async def test_a_tier_refuses_a_request_whose_residency_does_not_allow_its_zone(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    await chain.start(nats_server.url, Tier("cloud"))
    x = np.load(demo.test)["x"][:1].astype(np.float32)
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        with pytest.raises(InvalidArgumentError, match="residency 'device'"):
            await client.infer("digits", x, residency="device", tier="cloud")
        answered = await client.infer("digits", x, residency="cloud", tier="cloud")
    assert answered.tier == "cloud"


async def test_confident_answers_are_audited_upstream_after_the_reply_within_residency(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    """With an audit rate of 1, every confident edge answer is also asked of the cloud after
    the reply, and counted as agreeing or not (per version, in the heartbeat's evidence and
    in mesh_agreement_total); an answer whose residency keeps it on the device is never sent."""
    import nats

    edge, _ = await chain.start(
        nats_server.url,
        Tier("edge", threshold=0.0, audit_rate=1.0, novelty=False),
        Tier("cloud"),
    )
    spy = await nats_server.connect()
    at_cloud: list[str] = []

    async def sniff(msg: nats.aio.msg.Msg) -> None:
        at_cloud.append(msgpack.unpackb(msg.data, raw=False)["id"])

    await spy.subscribe(subjects.tier_wildcard("cloud"), cb=sniff)
    await flush_in_order(spy)
    x, _ = load_test_split(demo)
    evidence = edge.models.get("digits")
    assert evidence is not None
    version = evidence.version
    # the metrics are the process's, shared with the nodes of earlier tests: count from here
    agreement, audits = edge.metrics.agreement, edge.metrics.audits
    agreed_before = agreement.value("edge", "digits", version, "audit", "agree")
    sent_before = audits.value("edge", "digits", version, "sent")
    try:
        async with await MeshClient.connect(
            nats_server.url, **nats_server.client_options("app")
        ) as client:
            anywhere = [await client.infer("digits", x[i : i + 1]) for i in range(20)]
            kept = await client.infer("digits", x[20:21], residency="device")
        async with asyncio.timeout(10):
            while evidence.evidence.compared < 20:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await flush_in_order(spy)
    finally:
        await spy.close()

    assert all(r.tier == "edge" and not r.degraded for r in anywhere)  # answered at the edge
    assert {r.id for r in anywhere} <= set(at_cloud)  # and audited there after the reply
    assert kept.tier == "edge" and kept.id not in at_cloud
    e = evidence.evidence
    assert (e.requests, e.audits, e.compared, e.audit_failures) == (21, 20, 20, 0)
    assert 18 <= e.agreed <= 20  # the cloud and the edge mostly agree on the test digits
    status = edge.status().evidence["digits"]
    assert (status.version, status.compared, status.agreed) == (evidence.version, 20, e.agreed)
    assert agreement.value("edge", "digits", version, "audit", "agree") - agreed_before == e.agreed
    assert audits.value("edge", "digits", version, "sent") - sent_before == 20
