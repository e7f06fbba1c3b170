"""Event streams at a site: a hub with the cloud tier, a site leaf (through a fault proxy) with
the edge consuming events. One trace from the publisher through every tier to the stored result;
with the hub link cut, edge-answered events flow on and escalated ones come back degraded."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mesh.dev.models.demo import DemoArtifacts
from mesh.local.servers import Site
from mesh.node.policy import DEGRADED_REASONS
from mesh.sdk.client import EventResult, MeshClient
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role
from mesh.settings import ActionRule, EventSettings
from tests.fixtures.chain import Chain, Tier
from tests.fixtures.site import LinkedSite

pytestmark = pytest.mark.timeout(120)


async def start_tiers(
    linked: LinkedSite,
    chain: Chain,
    threshold: float | None,
    actions: list[ActionRule] | None = None,
) -> None:
    await chain.start(
        linked.leaf_url,
        Tier(
            "edge",
            model="edge-int8",
            threshold=threshold,
            upstream_timeout_ms=300,
            events=EventSettings(enabled=True, actions=actions or []),
        ),
        Tier("cloud", server=linked.hub_url),
    )


async def client_for(site: Site, keystore: KeyStore, name: str) -> MeshClient:
    creds = await asyncio.to_thread(keystore.ensure, IdentitySpec(name, Role.APPLICATION))
    assert site.leaf is not None
    return await MeshClient.connect(site.leaf.url, user_credentials=str(creds))


async def take(client: MeshClient, source: str, count: int) -> list[EventResult]:
    got: list[EventResult] = []
    async with asyncio.timeout(60):
        async for result in client.results("digits", source=source):
            got.append(result)
            if len(got) >= count:
                break
    return got


async def test_one_trace_runs_from_the_publisher_through_every_tier_to_the_stored_result(
    linked: LinkedSite,
    chain: Chain,
    keystore: KeyStore,
    demo: DemoArtifacts,
    spans: InMemorySpanExporter,
) -> None:
    site = linked.site
    every = ActionRule(name="every", min_confidence=0.0, publish="mesh.actions.audit")
    await start_tiers(linked, chain, threshold=1.01, actions=[every])  # all escalate
    x = np.load(demo.test)["x"][:1].astype(np.float32)
    async with await client_for(site, keystore, "cam-t") as client:
        with trace.get_tracer("test").start_as_current_span("sensor reading") as root:
            await client.publish("digits", x, source="cam-t", event_id="traced-1")
        [result] = await take(client, "cam-t", 1)
    assert result.tier == "cloud" and not result.degraded
    trace_id = root.get_span_context().trace_id
    names: list[str] = []
    for _ in range(60):
        names = [
            s.name
            for s in spans.get_finished_spans()
            if s.context is not None and s.context.trace_id == trace_id
        ]
        if "send mesh.actions.audit" in names and any("cloud" in n for n in names):
            break
        await asyncio.sleep(0.05)
    assert "send mesh.events.digits.cam-t" in names, names
    assert "process mesh.events.digits.cam-t" in names, names
    assert "send mesh.cloud.infer.digits" in names, names
    assert "send mesh.results.digits.cam-t" in names, names
    assert "send mesh.actions.audit" in names, names


async def test_with_the_hub_link_cut_edge_answers_flow_on_and_escalations_come_back_degraded(
    linked: LinkedSite,
    chain: Chain,
    keystore: KeyStore,
    demo: DemoArtifacts,
) -> None:
    site, proxy = linked.site, linked.proxy
    await start_tiers(linked, chain, threshold=None)  # the calibrated threshold
    x = np.load(demo.test)["x"].astype(np.float32)[:200]
    async with await client_for(site, keystore, "cam-c") as client:
        proxy.blackhole(True)
        proxy.reset_all()
        for i, row in enumerate(x):
            await client.publish("digits", row[None, :], source="cam-c", event_id=f"c-{i}",
                                 budget_ms=1500)  # fmt: skip
        results = await take(client, "cam-c", len(x))
        proxy.heal()
    assert sorted(r.event_id for r in results) == sorted(f"c-{i}" for i in range(len(x)))
    assert all(r.error is None and r.tier == "edge" for r in results)
    confident = [r for r in results if not r.degraded]
    degraded = [r for r in results if r.degraded]
    assert len(confident) > len(degraded) > 0, (len(confident), len(degraded))
    assert {r.reason for r in degraded} <= DEGRADED_REASONS
    assert {r.reason for r in degraded} & {"breaker_open", "no_responders", "timeout", "budget"}
