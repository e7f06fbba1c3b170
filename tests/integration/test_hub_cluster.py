"""A clustered hub under load (issue 31): three hub servers, three sites, each with its gateway
and edge node; the hub member the cloud node is connected to is killed while requests and events
flow, and started again. Nothing is lost: every request answered, every hard example delivered
to the hub exactly once, every event with exactly one result, and every hub stream back to three
current replicas once the member has returned."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from mesh import wire
from mesh.dev.models.demo import DemoArtifacts
from mesh.dev.soak.load import EventLoad, RequestLoad, close_all, connect_sites
from mesh.dev.soak.rig import RigConfig, ScaleRig
from mesh.dev.soak.tally import EventTally, LoadTally
from mesh.lifecycle import cancel_and_wait
from mesh.local.phases import Phases
from mesh.topology.streams import HUB_DOMAIN, hard_example_stream, inbox_stream

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


async def learned_ids(rig: ScaleRig) -> Counter[str]:
    """Request ids of the hard examples in the hub's learn stream, with how often each is."""
    js = rig.hub_nc.jetstream(domain=HUB_DOMAIN)
    stream = inbox_stream("cloud")
    total = (await js.stream_info(stream)).state.messages
    ids: Counter[str] = Counter()
    if total == 0:
        return ids
    sub = await js.pull_subscribe(
        "", stream=stream, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    try:
        while sum(ids.values()) < total:
            for msg in await sub.fetch(256, timeout=5):
                ids[wire.decode_hard_example(msg.data).id] += 1
    finally:
        await sub.unsubscribe()
    return ids


async def recorded_at_gateways(rig: ScaleRig) -> float:
    """Hard examples the gateways stored, from their own counters."""
    import aiohttp

    total = 0.0
    async with aiohttp.ClientSession() as session:
        for name, node in rig.mesh.nodes.items():
            if rig.mesh.spots[name].tier != "gateway" or not node.http_url:
                continue
            async with session.get(f"{node.http_url}/metrics") as resp:
                for line in (await resp.text()).splitlines():
                    if line.startswith("mesh_hard_examples_total") and 'event="recorded"' in line:
                        total += float(line.rsplit(" ", 1)[1])
    return total


async def backlog(rig: ScaleRig) -> int:
    left = 0
    for site in rig.site_names:
        js = rig.site_nc(site).jetstream(domain=site)
        left += (await js.stream_info(hard_example_stream("gateway"))).state.messages
    return left


async def test_a_hub_member_killed_under_load_loses_nothing(
    demo: DemoArtifacts, tmp_path: Path
) -> None:
    rig = ScaleRig(
        demo,
        tmp_path / "mesh",
        # everything goes up to the cloud, so the member's loss is felt by every request
        RigConfig(
            sites=3, hub_cluster=3, edge_replicas=1, edge_threshold=1.01, gateway_threshold=1.01
        ),
    )
    phases = Phases("test")
    rows = np.load(demo.test)["x"].astype(np.float32)
    tally, events = LoadTally(), EventTally()
    clients = {}
    running: list[asyncio.Task[None]] = []
    publisher: EventLoad | None = None
    try:
        await rig.start(phases)
        mesh = rig.mesh
        clients = await connect_sites(
            {s: mesh.site_url_of(s) for s in rig.site_names}, mesh.client_options()
        )
        requests = RequestLoad(clients, rows, tally, rate_per_s=30, budget_ms=2000)
        publisher = EventLoad(clients, rows, events, rate_per_s=3, prefix="cluster")
        publisher.start_readers()
        stop = asyncio.Event()
        running = [
            asyncio.create_task(requests.run(stop)),
            asyncio.create_task(publisher.run(stop)),
        ]
        await asyncio.sleep(5)

        member = await mesh.hub.member_serving("mesh-cloud-cloud-0")
        await member.kill()
        await asyncio.sleep(8)
        # The kill reached the request path: the cloud node lost its server and is on another
        # member now. (Whether any request was answered degraded meanwhile depends on timing: a
        # request caught in the gap is answered by the gateway or, retried, by the cloud.)
        moved = await mesh.hub.member_serving("mesh-cloud-cloud-0")
        assert moved is not member
        await member.start()
        await mesh.hub.wait_jetstream()
        await asyncio.sleep(8)

        stop.set()
        await asyncio.gather(*running)
        await requests.drain(timeout=10)
        await publisher.wait_results(timeout=60)
        await publisher.stop_readers()

        assert tally.requests > 400
        assert tally.lost_total == 0, tally.lost_examples
        assert tally.answered_total == tally.requests
        degraded = sum(sum(m.degraded.values()) for m in tally.minutes.values())
        print(f"\n{tally.requests} requests through the member's loss, {degraded} degraded")

        assert len(events.published) > 40 and not events.refused
        assert events.waiting == [], f"{len(events.waiting)} events without a result"
        assert events.repeated == []
        assert events.strangers == 0

        async with asyncio.timeout(90):
            while await backlog(rig):  # noqa: ASYNC110 (the cloud takes them up)
                await asyncio.sleep(0.5)
        # Every hard example a gateway recorded reached the cloud, once. How many there are
        # depends on timing, as the degraded answers do: none when every request caught in the
        # gap was answered by the cloud after all (seen on a loaded CI machine).
        learned = await learned_ids(rig)
        twice = sorted(i for i, n in learned.items() if n > 1)
        assert not twice, f"hard examples delivered twice: {twice[:5]}"
        assert len(learned) == await recorded_at_gateways(rig)
        print(f"hard examples: {len(learned)} recorded at the gateways, each delivered once")

        states = await mesh.hub.wait_replicas(rig.hub_nc, rig.hub_streams(), 3, timeout=90)
        assert {s.stream for s in states} >= {inbox_stream("cloud")}
        assert all(s.healthy_replicas == 3 for s in states)
    finally:
        await cancel_and_wait(running)
        if publisher is not None:
            await publisher.stop_readers()
        await close_all(clients)
        with contextlib.suppress(Exception):
            await rig.stop()
