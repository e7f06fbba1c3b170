"""Degraded links on real nats-server processes: a hub and a site leaf server, a fault proxy on
the leaf-to-hub link, tier nodes on both sides. Each test counts what was answered, lost and
degraded, and prints its figures (run with ``-s`` to see them)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import numpy as np
import pytest
from nats.js.api import Header

from mesh import MeshClient, MeshError
from mesh.dev.models.demo import DemoArtifacts
from mesh.local.servers import NatsServer
from mesh.node.breaker import BreakerConfig, BreakerState
from mesh.settings import HardExampleSettings
from mesh.topology import subjects
from mesh.topology.streams import inbox_stream
from mesh.wire import decode_hard_example
from tests.fixtures.chain import Chain, Tier
from tests.fixtures.site import LinkedSite

pytestmark = [pytest.mark.fault, pytest.mark.timeout(180)]

FAST_BREAKER = BreakerConfig(
    failure_threshold=3, open_seconds=0.3, max_open_seconds=1.0, min_calls=1000
)


@pytest.fixture
def digits(demo: DemoArtifacts) -> np.ndarray:
    return np.load(demo.test)["x"].astype(np.float32)


#: the cloud as a process a test can kill, quick to reconnect when its hub returns.
#: the cloud on its own: it takes up the gateway's hard examples from the site's domain.
CLOUD_PROCESS = Tier(
    "cloud",
    node="cloud-0",
    reconnect_wait_s=0.2,
    hard_examples=HardExampleSettings(collect_from="gateway", collect_domains=["site"]),
)


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    errors: list[str] = field(default_factory=list)
    tiers: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    degraded_ids: dict[str, str] = field(default_factory=dict)
    #: each degraded answer's reason, by request id.
    degraded_reasons: dict[str, str] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.sent - self.answered

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "answered": self.answered,
            "lost": self.lost,
            "errors": len(self.errors),
            "by_tier": dict(self.tiers),
            "degraded": sum(self.reasons.values()),
            "degraded_share": round(sum(self.reasons.values()) / max(self.sent, 1), 3),
            "reasons": dict(self.reasons),
        }


async def drive(
    client: MeshClient,
    x: np.ndarray,
    tally: Tally,
    count: int,
    *,
    start: int = 0,
    concurrency: int = 8,
    budget_ms: float = 1000.0,
    rate_per_s: float | None = None,
) -> None:
    """Send ``count`` requests, ``concurrency`` at a time, optionally paced; tally every outcome."""
    semaphore = asyncio.Semaphore(concurrency)
    began = time.monotonic()

    async def one(i: int) -> None:
        async with semaphore:
            tally.sent += 1
            t0 = time.monotonic()
            try:
                result = await client.infer(
                    "digits", x[(start + i) % len(x)][None], budget_ms=budget_ms
                )
            except MeshError as error:
                tally.errors.append(str(error))
                return
            tally.latencies_ms.append((time.monotonic() - t0) * 1000)
            tally.answered += 1
            tally.tiers[result.tier] += 1
            if result.degraded:
                assert result.reason is not None
                tally.reasons[result.reason] += 1
                tally.degraded_ids[result.id] = result.tier
                tally.degraded_reasons[result.id] = result.reason

    tasks = []
    for i in range(count):
        if rate_per_s is not None:
            delay = began + i / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)


async def inbox_ids(hub: NatsServer, tier: str) -> list[str]:
    """Request ids of every hard example in a tier's inbox stream on the hub."""
    nc = await hub.connect()
    try:
        js = nc.jetstream()
        info = await js.stream_info(inbox_stream(tier))
        ids: list[str] = []
        if info.state.messages == 0:
            return ids
        sub = await js.pull_subscribe(subjects.inbox_wildcard(tier), stream=inbox_stream(tier))
        while len(ids) < info.state.messages:
            for msg in await sub.fetch(256, timeout=2):
                ids.append(decode_hard_example(msg.data).id)
                await msg.ack()
        return ids
    finally:
        await nc.close()


async def inbox_count(hub: NatsServer, tier: str) -> int:
    nc = await hub.connect()
    try:
        info = await nc.jetstream().stream_info(inbox_stream(tier))
        return int(info.state.messages)
    finally:
        await nc.close()


def kept_at_gateway(tally: Tally) -> tuple[set[str], set[str]]:
    """The requests whose hard examples the gateway must have kept (it answered them degraded),
    and those it may have kept too: the edge stopped waiting for the gateway (its own answer,
    reason "timeout") while the gateway, its escalation to the cloud failed, still kept the
    case (seen once in CI on a loaded machine)."""
    must = {i for i, tier in tally.degraded_ids.items() if tier == "gateway"}
    may = {
        i
        for i, tier in tally.degraded_ids.items()
        if tier == "edge" and tally.degraded_reasons[i] == "timeout"
    }
    return must, may


async def wait_delivered(hub: NatsServer, must: set[str], what: str) -> list[str]:
    """Up to 60 s for the cloud's inbox on the hub to hold every one of ``must``; every request
    id it holds then, one per hard example."""
    delivered: list[str] = []

    async def arrived() -> bool:
        nonlocal delivered
        try:
            delivered = await inbox_ids(hub, "cloud")
        except Exception:
            return False
        return set(delivered) >= must

    await wait_for(arrived, 60, what)
    return delivered


def site_tiers(gateway_threshold: float) -> tuple[Tier, Tier]:
    """The site's edge and gateway on fast breakers; the gateway keeps its hard examples for the
    cloud at the hub to take up."""
    edge = Tier("edge", model="edge-int8", breaker=FAST_BREAKER)
    gateway = Tier("gateway", threshold=gateway_threshold, upstream="cloud", breaker=FAST_BREAKER)
    return edge, gateway


async def test_hub_killed_and_restarted_every_request_answered_and_hard_examples_arrive_once(
    linked: LinkedSite, chain: Chain, digits: np.ndarray, tmp_path: Path
) -> None:
    await chain.start_process(linked.hub_url, CLOUD_PROCESS, tmp_path)
    _, gateway = await chain.start(linked.leaf_url, *site_tiers(gateway_threshold=1.01))
    tally = Tally()
    async with await MeshClient.connect(linked.leaf_url, **linked.app) as client:
        await drive(client, digits, tally, 200, concurrency=8)
        before_outage = dict(tally.reasons)
        await linked.site.hub.kill()
        await drive(client, digits, tally, 200, start=200, concurrency=8)
        during_outage = Counter(tally.reasons) - Counter(before_outage)
        await linked.site.hub.start()
        await linked.site.hub.wait_leaf_connections(1, timeout=15)
        await drive(client, digits, tally, 200, start=400, concurrency=8, rate_per_s=100)

    assert gateway.upstream is not None
    print("\nhub kill:", json.dumps(tally.summary()))
    print("gateway breaker transitions:", dict(gateway.upstream.breaker.transitions))
    assert tally.errors == []
    assert (tally.sent, tally.answered, tally.lost) == (600, 600, 0)
    assert sum(during_outage.values()) > 0
    assert set(tally.reasons) <= {"no_responders", "breaker_open", "timeout", "upstream_error"}
    assert tally.tiers["cloud"] > 0  # the cloud answered before and after the outage

    degraded_at_gateway, edge_gave_up = kept_at_gateway(tally)
    assert degraded_at_gateway

    await wait_delivered(linked.site.hub, degraded_at_gateway, "hard examples to reach the hub")
    await asyncio.sleep(0.5)
    delivered = await inbox_ids(linked.site.hub, "cloud")
    assert len(delivered) == len(set(delivered)), "a hard example was delivered twice"
    assert degraded_at_gateway <= set(delivered) <= degraded_at_gateway | edge_gave_up
    print(f"hard examples: buffered {len(degraded_at_gateway)}, delivered {len(delivered)}")

    # Exactly once: a second copy with the same request id is dropped by the hub's stream (sent
    # at the hub, where the cloud's collector stores: learn subjects never cross a leaf link).
    nc = await linked.site.hub.connect()
    try:
        some_id = next(iter(degraded_at_gateway))
        ack = await nc.jetstream().publish(
            subjects.inbox("cloud", "digits"),
            b"\x80",
            headers={Header.MSG_ID.value: some_id},
            timeout=2,
        )
        assert ack.duplicate is True
    finally:
        await nc.close()
    assert await inbox_count(linked.site.hub, "cloud") == len(delivered)  # the copy was dropped


async def test_blackholed_link_opens_the_breaker_and_it_closes_after_the_link_returns(
    linked: LinkedSite, chain: Chain, digits: np.ndarray
) -> None:
    edge, _ = await chain.start(
        linked.leaf_url,
        Tier("edge", threshold=1.01, breaker=FAST_BREAKER),
        Tier("cloud", server=linked.hub_url),
    )
    assert edge.upstream is not None
    breaker = edge.upstream.breaker
    budget = 300.0
    async with await MeshClient.connect(linked.leaf_url, **linked.app) as client:
        warm = Tally()
        await drive(client, digits, warm, 20, concurrency=1, budget_ms=budget)
        assert warm.tiers == Counter({"cloud": 20})

        linked.proxy.blackhole(True)
        outage = Tally()
        reasons_in_order: list[str] = []
        began = time.monotonic()
        while time.monotonic() - began < 3.0:
            result = await client.infer("digits", digits[:1], budget_ms=budget)
            outage.sent += 1
            outage.answered += 1
            reasons_in_order.append(result.reason or "")
            outage.latencies_ms.append(result.path[0].latency_ms)
        linked.proxy.heal()

        recovered_after = None
        began = time.monotonic()
        for _ in range(200):
            result = await client.infer("digits", digits[:1], budget_ms=budget)
            if result.tier == "cloud":
                recovered_after = time.monotonic() - began
                break
            await asyncio.sleep(0.05)

    timeouts_before_open = reasons_in_order.index("breaker_open")
    print(
        f"\nblackhole: {outage.sent} answered during the outage, reasons "
        f"{dict(Counter(reasons_in_order))}, failures before the breaker opened "
        f"{timeouts_before_open}, slowest answer {max(outage.latencies_ms):.0f} ms "
        f"(budget {budget:.0f}), recovered {recovered_after:.2f}s after the link returned; "
        f"transitions {dict(breaker.transitions)}"
    )
    assert set(reasons_in_order) <= {"timeout", "breaker_open"}
    assert timeouts_before_open <= FAST_BREAKER.failure_threshold
    assert all(reason == "timeout" for reason in reasons_in_order[:timeouts_before_open])
    # Answered at the budget, not after an upstream timeout: the slack is for a loaded machine's
    # scheduling (20 ms was within reach of one), far short of any wait past the budget.
    assert max(outage.latencies_ms) <= budget * 1.5
    assert recovered_after is not None
    assert breaker.state is BreakerState.CLOSED
    assert breaker.transitions[(BreakerState.CLOSED, BreakerState.OPEN)] >= 1
    assert breaker.transitions[(BreakerState.OPEN, BreakerState.HALF_OPEN)] >= 1
    assert breaker.transitions[(BreakerState.HALF_OPEN, BreakerState.CLOSED)] >= 1


async def test_slow_link_with_a_small_budget_is_answered_locally_for_reason_budget(
    linked: LinkedSite, chain: Chain, digits: np.ndarray
) -> None:
    edge, _ = await chain.start(
        linked.leaf_url, Tier("edge", threshold=1.01), Tier("cloud", server=linked.hub_url)
    )
    linked.proxy.set_latency(150)  # each way: 300 ms added to the round trip
    async with await MeshClient.connect(linked.leaf_url, **linked.app) as client:
        learned = [
            await client.infer("digits", digits[i : i + 1], budget_ms=3000) for i in range(6)
        ]
        assert {r.tier for r in learned} == {"cloud"}
        assert edge.upstream is not None and edge.upstream.latency.p95 is not None
        p95 = edge.upstream.latency.p95

        answers = []
        for i in range(30):
            t0 = time.monotonic()
            result = await client.infer("digits", digits[i : i + 1], budget_ms=100)
            answers.append((result, (time.monotonic() - t0) * 1000))

    waits = [ms for _, ms in answers]
    tiers = Counter(r.tier for r, _ in answers)
    reasons = Counter(r.reason for r, _ in answers)
    print(
        f"\nslow link: upstream p95 {p95:.0f} ms; 100 ms budget answered at {tiers} "
        f"with reasons {reasons}; "
        f"client wait p50 {statistics.median(waits):.1f} ms, max {max(waits):.1f} ms"
    )
    assert p95 >= 300
    assert all(r.tier == "edge" and r.degraded and r.reason == "budget" for r, _ in answers)
    assert max(waits) < 100  # answered without waiting for the upstream


async def test_cloud_process_killed_no_responders_is_handled_in_under_5_ms(
    linked: LinkedSite, chain: Chain, digits: np.ndarray, tmp_path: Path
) -> None:
    cloud = await chain.start_process(linked.hub_url, CLOUD_PROCESS, tmp_path)
    [edge] = await chain.start(linked.leaf_url, Tier("edge", threshold=1.01, upstream="cloud"))
    async with await MeshClient.connect(linked.leaf_url, **linked.app) as client:
        first = await client.infer("digits", digits[:1], budget_ms=2000)
        assert first.tier == "cloud"
        await cloud.kill()

        async def interest_gone() -> bool:
            try:
                await client.nats.request(subjects.tier_infer("cloud", "digits"), b"", timeout=1)
            except nats.errors.NoRespondersError:
                return True
            except nats.errors.TimeoutError:
                return False
            return False

        await wait_for(interest_gone, 10, "the cloud's subscription to vanish")
        results = [
            await client.infer("digits", digits[i : i + 1], budget_ms=2000) for i in range(4)
        ]
    assert edge.upstream is not None
    hops = [r.path[0].latency_ms for r in results]
    print(f"\nno responders: edge hop latencies {[round(h, 2) for h in hops]} ms (timeout 2000 ms)")
    assert all(r.tier == "edge" and r.reason == "no_responders" for r in results)
    # Failing fast, told from waiting: the quickest hop shows the path itself takes a few
    # milliseconds (no timeout ends that soon), and none comes near the 2000 ms timeout. A median
    # bound was a speed assertion: under a loaded CI machine single hops took 5 to 10 ms.
    assert min(hops) < 5.0
    assert max(hops) < 500


async def test_two_thousand_requests_through_an_outage_of_a_third_of_the_run_lose_nothing(
    linked: LinkedSite, chain: Chain, digits: np.ndarray
) -> None:
    edge, gateway, _ = await chain.start(
        linked.leaf_url, *site_tiers(gateway_threshold=0.9), Tier("cloud", server=linked.hub_url)
    )
    total, rate = 2100, 300.0
    tally = Tally()

    async def outage() -> None:
        await asyncio.sleep(total / rate / 3)
        linked.proxy.refuse(True)
        linked.proxy.reset_all()
        await asyncio.sleep(total / rate / 3)
        linked.proxy.heal()

    async with await MeshClient.connect(linked.leaf_url, **linked.app) as client:
        # Lost is told from late here: an answer is waited for 2 s past its budget, not the
        # SDK's 250 ms, which a CI machine running four workers on two cores can stall past (two
        # answers were once later). Answering at the budget is the blackholed-link test's.
        client.grace_ms = 2000.0
        cut = asyncio.create_task(outage())
        await drive(client, digits, tally, total, concurrency=16, budget_ms=500, rate_per_s=rate)
        await cut

    assert gateway.upstream is not None and gateway.store is not None
    summary = tally.summary()
    summary["breaker_transitions"] = {
        f"{a.value}->{b.value}": n for (a, b), n in gateway.upstream.breaker.transitions.items()
    }
    summary["latency_ms_p50"] = round(statistics.median(tally.latencies_ms), 2)
    summary["latency_ms_max"] = round(max(tally.latencies_ms), 1)
    print("\noutage run:", json.dumps(summary))
    assert tally.errors == []
    assert (tally.answered, tally.lost) == (total, 0)
    assert summary["degraded"] > 0
    assert gateway.upstream.breaker.transitions[(BreakerState.CLOSED, BreakerState.OPEN)] >= 1

    degraded_at_gateway, edge_gave_up = kept_at_gateway(tally)
    delivered = await wait_delivered(
        linked.site.hub, degraded_at_gateway, "the hard-example backlog to drain"
    )
    print(
        f"hard examples: buffered {len(degraded_at_gateway)} (+{len(edge_gave_up)} the edge "
        f"gave up on), delivered {len(delivered)}"
    )
    assert len(delivered) == len(set(delivered)), "a hard example was delivered twice"
    assert degraded_at_gateway <= set(delivered) <= degraded_at_gateway | edge_gave_up
    _ = edge
