"""An edge tier inside the application's process (``MeshClient.connect(url, local=...)``), beside
an edge node with the same settings, on real servers: a hub with the cloud tier and a site leaf
linked through a fault proxy. The same inputs give the same answers, the same degraded reasons
with the link cut, and the same hard examples; the in-process edge runs under its own
``local-edge`` identity, which takes no requests over NATS."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import MeshError, UnavailableError
from mesh.local.layout import local_edge_identity
from mesh.local.servers import APPLICATION
from mesh.node.policy import DEGRADED_REASONS
from mesh.node.tier import TierNode
from mesh.sdk.client import InferResult, MeshClient
from mesh.security.keystore import KeyStore
from mesh.settings import NatsSettings, NodeSettings
from mesh.topology.streams import hard_example_stream
from mesh.wire import decode_hard_example
from tests.fixtures.chain import Chain, Tier, admin_options
from tests.fixtures.site import LinkedSite
from tests.integration.test_fleet import (
    CONTROLLER,
    V1,
    Fleet,
    loading,
    monotone,
    wait_for,
)
from tests.integration.test_fleet import (
    fleet as fleet_fixture,  # noqa: F401 (the fixture ``fleet``)
)

pytestmark = pytest.mark.timeout(180)

LOCAL = "app-edge"


async def start(
    linked: LinkedSite, chain: Chain, keystore: KeyStore
) -> tuple[TierNode, NodeSettings, Path]:
    """The cloud on the hub, an edge node on the site, and the settings of an edge hosted in
    the application: the edge node's, under its own name and ``local-edge`` identity."""
    edge, _ = await chain.start(
        linked.leaf_url,
        Tier("edge", model="edge-int8", node="edge-ref", upstream_timeout_ms=300),
        Tier("cloud", server=linked.hub_url),
    )
    identity = local_edge_identity(LOCAL, "edge", upstream_tier="cloud")
    creds = await asyncio.to_thread(keystore.ensure, identity)
    local = edge.settings.model_copy(
        update={
            "node": LOCAL,
            "nats": NatsSettings(servers=[linked.leaf_url], credentials=creds),
        }
    )
    app = await asyncio.to_thread(keystore.ensure, APPLICATION)
    return edge, local, app


async def start_with_clients(
    linked: LinkedSite, chain: Chain, keystore: KeyStore
) -> tuple[TierNode, MeshClient, MeshClient]:
    """``start``, and the application's two clients at the site: one that asks the edge node
    over NATS, one hosting the edge in its process."""
    edge, settings, app = await start(linked, chain, keystore)
    remote = await MeshClient.connect(linked.leaf_url, user_credentials=str(app))
    local = await MeshClient.connect(linked.leaf_url, user_credentials=str(app), local=settings)
    return edge, remote, local


def answer(result: InferResult) -> tuple[Any, ...]:
    """What two edges given the same input must agree on (node names aside)."""
    return (
        result.tier,
        result.labels,
        result.degraded,
        result.reason,
        [(hop.tier, hop.action, hop.reason) for hop in result.path],
    )


async def both(
    remote: MeshClient, local: MeshClient, rows: np.ndarray, budget_ms: float
) -> tuple[list[InferResult], list[InferResult]]:
    """Each row to the edge node and the in-process edge at the same moment, so that their
    breakers see the link alike."""
    theirs: list[InferResult] = []
    ours: list[InferResult] = []
    for row in rows:
        a, b = await asyncio.gather(
            remote.infer("digits", row[None, :], budget_ms=budget_ms),
            local.infer("digits", row[None, :], budget_ms=budget_ms),
        )
        theirs.append(a)
        ours.append(b)
    return theirs, ours


async def cut(client: MeshClient, row: np.ndarray) -> None:
    """Wait until the site's server knows the hub is gone (the cloud has no responders here),
    so that both edges meet the cut alike from their first escalation."""
    async with asyncio.timeout(20):
        while True:
            try:
                await client.infer("digits", row[None, :], budget_ms=200, tier="cloud")
            except UnavailableError:
                return
            except MeshError:
                pass
            await asyncio.sleep(0.05)


async def hard_examples(linked: LinkedSite, keystore: KeyStore) -> dict[str, list[str]]:
    """The reasons of the hard examples kept at the site, per node that kept them."""
    nc = await nats.connect(linked.leaf_url, **admin_options(keystore))
    kept: dict[str, list[str]] = {}
    try:
        js = nc.jetstream()
        stream = hard_example_stream("edge")
        info = await js.stream_info(stream)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if not info.state.messages:
                break
            example = decode_hard_example((await js.get_msg(stream, seq)).data)
            kept.setdefault(example.node, []).append(example.reason)
    finally:
        await nc.close()
    return kept


async def test_the_in_process_edge_answers_degrades_and_keeps_hard_examples_as_an_edge_node(
    linked: LinkedSite, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> None:
    edge, remote, local = await start_with_clients(linked, chain, keystore)
    rows = np.load(demo.test)["x"].astype(np.float32)[:120]
    try:
        assert local.local is not None and local.local.serves("digits")
        # the link up: confident rows answered in place, the others by the cloud
        theirs, ours = await both(remote, local, rows, 3000)
        assert [answer(r) for r in ours] == [answer(r) for r in theirs]
        assert {r.node for r in ours if r.tier == "edge"} == {LOCAL}
        assert {r.node for r in theirs if r.tier == "edge"} == {"edge-ref"}
        assert Counter(r.tier for r in ours)["cloud"] > 0
        assert all(r.request_bytes == 0 for r in ours if r.tier == "edge")

        # the link cut: escalations come back degraded, for the same reasons, and are kept
        linked.proxy.blackhole(True)
        linked.proxy.reset_all()
        await cut(remote, rows[0])
        theirs, ours = await both(remote, local, rows[:60], 1500)
        kept = await hard_examples(linked, keystore)
        linked.proxy.heal()
    finally:
        await local.close()
        await remote.close()
    degraded = [r for r in ours if r.degraded]
    assert degraded, "no escalation while the link was cut"
    assert {r.reason for r in degraded} <= DEGRADED_REASONS
    assert [(r.tier, r.labels, r.degraded) for r in ours] == [
        (r.tier, r.labels, r.degraded) for r in theirs
    ]
    assert Counter(r.reason for r in ours) == Counter(r.reason for r in theirs)
    assert Counter(kept.get(LOCAL, [])) == Counter(r.reason for r in degraded)
    assert Counter(kept.get(LOCAL, [])) == Counter(kept.get(edge.settings.node, []))
    assert local.local is None or not local.local.running


async def test_the_in_process_edge_takes_no_requests_over_nats(
    linked: LinkedSite, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> None:
    edge, remote, client = await start_with_clients(linked, chain, keystore)
    row = np.load(demo.test)["x"].astype(np.float32)[:1]
    async with client:
        # local=False sends the request over NATS, to the edge node (the ingress does so for a
        # call pinned to a version the edge it hosts does not serve)
        over_nats = await client.infer("digits", row, budget_ms=1000, local=False)
        assert over_nats.node == "edge-ref" or over_nats.tier == "cloud"
        assert LOCAL not in [hop.node for hop in over_nats.path]
        await edge.stop()
        # the edge tier has no node over NATS now: the in-process one is asked in-process only
        with pytest.raises(UnavailableError):
            await remote.infer("digits", row, budget_ms=1000, tier="edge")
        result = await client.infer("digits", row, budget_ms=1000)
        assert result.node == LOCAL or result.tier == "cloud"
    await remote.close()


async def test_the_in_process_edge_takes_a_new_version_from_the_fleet_under_load(
    fleet_fixture: Fleet,  # noqa: F811 (the fixture imported above)
    keystore: KeyStore,
    demo: DemoArtifacts,
) -> None:
    fleet = fleet_fixture
    leaf = fleet.site.leaf
    assert leaf is not None
    tier = fleet.edge(LOCAL)
    creds = await asyncio.to_thread(
        keystore.ensure, local_edge_identity(LOCAL, "edge", domain="site")
    )
    settings = NodeSettings(
        tier="edge",
        node=LOCAL,
        zone="device",
        nats=NatsSettings(servers=[leaf.url], credentials=creds),
        models=[tier.served_model(demo)],
        hard_examples=tier.hard_examples,
        fleet=tier.fleet,
    )
    rows = np.load(demo.test)["x"].astype(np.float32)
    controller, hub = str(fleet.creds(CONTROLLER)), fleet.site.hub.url
    v2 = await fleet.release(demo, "2-edge")
    await fleet.mesh("models", "push", str(v2), "--servers", hub, "--creds", controller)
    client = await MeshClient.connect(
        leaf.url, user_credentials=str(fleet.creds(APPLICATION)), local=settings
    )
    async with loading(client, rows) as load:
        hosted = client.local
        assert hosted is not None
        await wait_for(lambda: load.answered > 300, 30, "load on the in-process edge")
        await fleet.seen_at_hub({LOCAL})
        _, out, _ = await fleet.mesh(
            "fleet", "assign", "digits", "2-edge", "--selector", "tier=edge,site=site",
            "--servers", hub, "--creds", controller,
        )  # fmt: skip
        assert f"1 nodes: {LOCAL}" in out, out
        await wait_for(lambda: hosted.node.served_versions()["digits"] == "2-edge", 60, "the swap")
        after = load.answered
        await wait_for(lambda: load.answered > after + 300, 30, "answers after the swap")
    assert load.errors == [], load.errors[:5]
    assert set(load.by_node) == {LOCAL}
    versions = load.by_node[LOCAL]
    assert versions[0] == V1
    assert monotone(versions, "2-edge")


async def test_answers_made_in_place_let_the_process_s_other_tasks_run_traced_or_not(
    linked: LinkedSite,
    chain: Chain,
    keystore: KeyStore,
    demo: DemoArtifacts,
    spans: InMemorySpanExporter,
) -> None:
    _, settings, app = await start(linked, chain, keystore)
    row = np.load(demo.test)["x"].astype(np.float32)[:1]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with await MeshClient.connect(
        linked.leaf_url, user_credentials=str(app), local=settings
    ) as client:
        other = asyncio.create_task(ticker())
        async with asyncio.timeout(30):  # a loop that never yields would hang here
            for _ in range(200):
                await client.infer("digits", row, budget_ms=1000)
        other.cancel()
    assert ticks >= 100
    assert any(s.name == "process local digits" for s in spans.get_finished_spans())
