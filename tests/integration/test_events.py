"""Event streams on a real nats-server: applications publish without waiting, the entry tier
answers through the same data plane, one result event per inference event even when the
consuming node is killed mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

import msgpack
import numpy as np
import pytest
from prometheus_client import REGISTRY, generate_latest

from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import InvalidArgumentError, ResourceExhaustedError
from mesh.local.servers import NatsServer
from mesh.sdk.client import EventResult, MeshClient
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role
from mesh.settings import EventSettings, HardExampleSettings
from mesh.topology.streams import RESULTS_STREAM, EventLimits, event_specs
from mesh.transport.guard import flush_in_order
from mesh.transport.jetstream import ensure
from tests.fixtures.chain import Chain, Tier

pytestmark = pytest.mark.timeout(240)


async def source_client(server: NatsServer, keystore: KeyStore, name: str) -> MeshClient:
    creds = await asyncio.to_thread(keystore.ensure, IdentitySpec(name, Role.APPLICATION))
    return await MeshClient.connect(server.url, user_credentials=str(creds))


async def take(client: MeshClient, source: str, count: int, timeout: float) -> list[EventResult]:
    """The first ``count`` results of ``source`` (fails the test if they take over ``timeout``)."""
    got: list[EventResult] = []
    async with asyncio.timeout(timeout):
        async for result in client.results("digits", source=source):
            got.append(result)
            if len(got) >= count:
                break
    return got


async def test_published_events_get_one_result_each_through_the_data_plane(
    nats_server: NatsServer, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> None:
    [node] = await chain.start(
        nats_server.url, Tier("edge", model="edge-int8", events=EventSettings(enabled=True))
    )
    x = np.load(demo.test)["x"][:50].astype(np.float32)
    client = await source_client(nats_server, keystore, "cam1")
    app = await asyncio.to_thread(keystore.ensure, IdentitySpec("app", Role.APPLICATION))
    async with client, await MeshClient.connect(nats_server.url, user_credentials=str(app)) as sdk:
        acks = [
            await client.publish("digits", row[None, :], source="cam1", event_id=f"f-{i}")
            for i, row in enumerate(x)
        ]
        assert [a.duplicate for a in acks] == [False] * 50
        again = await client.publish("digits", x[0][None, :], source="cam1", event_id="f-0")
        assert again.duplicate and again.sequence == acks[0].sequence
        results = await take(client, "cam1", 50, 30)
        want = [(await sdk.infer("digits", row[None, :])).label for row in x]
    assert sorted(r.event_id for r in results) == sorted(f"f-{i}" for i in range(50))
    by_id = {r.event_id: r for r in results}
    assert [by_id[f"f-{i}"].label for i in range(50)] == want
    assert all(r.tier == "edge" and r.model_version == "1-edge-int8" for r in results)
    assert all(r.stored_at >= r.published_at > 0 for r in results)
    with pytest.raises(InvalidArgumentError):
        await client.publish("digits", x[:1], source="cam1", event_id="has space")
    # stream depth and consumer lag, as Prometheus sees them
    assert node.events is not None
    async with asyncio.timeout(10):
        while node.events.figures.get(("messages", "MESH_RESULTS")) != 50.0:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    # acknowledged events are not kept (issue 25): what the stream holds is what waits
    assert node.events.figures[("messages", "MESH_EVENTS")] == 0.0
    assert node.events.figures[("pending", "digits")] == 0.0
    scraped = generate_latest(REGISTRY).decode()
    assert 'mesh_event_streams{figure="messages",of="MESH_RESULTS",tier="edge"} 50.0' in scraped


async def test_malformed_events_get_an_error_result_and_never_block_the_stream(
    nats_server: NatsServer,
    chain: Chain,
    keystore: KeyStore,
    demo: DemoArtifacts,
) -> None:
    await chain.start(
        nats_server.url, Tier("edge", model="edge-int8", events=EventSettings(enabled=True))
    )
    client = await source_client(nats_server, keystore, "cam2")
    async with client:
        js = client.nc.jetstream()
        await js.publish(
            "mesh.events.digits.cam2", b"\xc1garbage", headers={"Nats-Msg-Id": "cam2:bad-1:t"}
        )
        wrong = msgpack.packb({"v": 1, "kind": "inference_event", "id": "bad-2", "model": "digits",
                               "source": "cam2", "inputs": {}, "budget_ms": 100,
                               "residency": "any", "published_at": time.time()})  # fmt: skip
        await js.publish("mesh.events.digits.cam2", wrong, headers={"Nats-Msg-Id": "cam2:bad-2:t"})
        good = np.load(demo.test)["x"][:1].astype(np.float32)
        await client.publish("digits", good, source="cam2", event_id="good-1")
        results = await take(client, "cam2", 3, 30)
    by_id = {r.event_id: r for r in results}
    assert set(by_id) == {"bad-1", "bad-2", "good-1"}
    assert by_id["bad-1"].error is not None and "msgpack" in str(by_id["bad-1"].error)
    assert by_id["bad-2"].error is not None and "non-empty map" in str(by_id["bad-2"].error)
    assert by_id["good-1"].error is None and by_id["good-1"].label is not None


async def test_a_full_event_stream_refuses_what_it_cannot_keep(
    nats_server: NatsServer, keystore: KeyStore
) -> None:
    # No entry node drains it: a tiny stream, provisioned as an administrator would.
    await provision_events(nats_server, EventLimits(max_bytes=4096))
    client = await source_client(nats_server, keystore, "cam3")
    big = np.zeros((4, 64), dtype=np.float32)  # ~1.2 KB an event
    async with client:
        with pytest.raises(ResourceExhaustedError, match="full"):
            for i in range(20):
                await client.publish("digits", big, source="cam3", event_id=f"big-{i}")


async def provision_events(server: NatsServer, limits: EventLimits) -> None:
    """The event streams with ``limits`` (made, or brought to them), as the administrator."""
    admin = await server.connect()
    try:
        for spec in event_specs(None, limits):
            await ensure(admin.jetstream(), spec)
    finally:
        await admin.close()


SOURCES = ("s1", "s2", "s3", "s4")
EVENTS_PER_SOURCE = 2500


async def test_ten_thousand_events_through_two_sigkills_get_exactly_one_result_each(
    nats_server: NatsServer, chain: Chain, keystore: KeyStore, demo: DemoArtifacts, tmp_path: Path
) -> None:
    node = await chain.start_process(
        nats_server.url,
        Tier(
            "edge",
            model="edge-int8",
            node="edge-0",
            events=EventSettings(enabled=True, ack_wait_s=2.0),
            hard_examples=HardExampleSettings(enabled=False),
        ),
        tmp_path,
    )
    # every source may keep all its events waiting while the node is down: this test is about
    # exactly one result per event across kills, not the per-source quota
    await provision_events(nats_server, EventLimits(per_source_events=EVENTS_PER_SOURCE))
    x = np.load(demo.test)["x"].astype(np.float32)
    clients = {s: await source_client(nats_server, keystore, s) for s in SOURCES}
    published = Counter[str]()

    async def publish(source: str) -> None:
        client = clients[source]
        for i in range(EVENTS_PER_SOURCE):
            row = x[i % len(x)][None, :]
            await client.publish("digits", row, source=source, event_id=f"{source}-{i}")
            published[source] += 1

    async def kill_twice() -> None:
        for _ in range(2):
            while sum(published.values()) < 2500 * (_ + 1):  # noqa: ASYNC110 (another task counts)
                await asyncio.sleep(0.05)
            await node.kill()
            await asyncio.sleep(0.5)
            await node.start()

    started = time.monotonic()
    try:
        await asyncio.gather(*(publish(s) for s in SOURCES), kill_twice())
        results: dict[str, list[EventResult]] = {}
        for source in SOURCES:
            results[source] = await take(clients[source], source, EVENTS_PER_SOURCE, 120)
        # Nothing more arrives: exactly one result per event, none duplicated.
        admin = await nats_server.connect()
        try:
            info = await admin.jetstream().stream_info(RESULTS_STREAM)
            events = await admin.jetstream().stream_info("MESH_EVENTS")
        finally:
            await admin.close()
        assert info.state.messages == len(SOURCES) * EVENTS_PER_SOURCE
        # every event was acknowledged once its result was stored, and so is gone (issue 25)
        assert events.state.messages == 0
    finally:
        for client in clients.values():
            await client.close()
    elapsed = time.monotonic() - started
    print(
        f"\n{len(SOURCES) * EVENTS_PER_SOURCE} events, two SIGKILLs: all results in {elapsed:.1f} s"
    )
    for source in SOURCES:
        ids = [r.event_id for r in results[source]]
        assert len(ids) == len(set(ids)) == EVENTS_PER_SOURCE, source
        assert set(ids) == {f"{source}-{i}" for i in range(EVENTS_PER_SOURCE)}
        assert all(r.error is None for r in results[source])
        # Results come back in the order their events were stored, except around a kill, when
        # events in flight are delivered again: the event sequence puts them back in order.
        sequences = [r.event_sequence for r in results[source]]
        assert sorted(sequences) == sorted(set(sequences))


async def test_rules_turn_results_into_alerts_and_webhooks_and_dead_letter_what_fails(
    nats_server: NatsServer, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> None:
    from aiohttp import web

    from mesh.settings import ActionRule, WebhookSettings

    hits: list[dict[str, object]] = []
    calls = Counter[str]()

    async def hook(request: web.Request) -> web.Response:
        calls["hook"] += 1
        if calls["hook"] % 3 == 1:  # every third call fails first: the retry carries it
            return web.Response(status=503)
        hits.append(await request.json())
        return web.Response(status=204)

    async def broken(request: web.Request) -> web.Response:
        calls["broken"] += 1
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rules = [
        ActionRule(name="alert", labels=[3, 8], min_confidence=0.5,
                   publish="mesh.actions.alerts.line4"),
        ActionRule(name="hook", labels=[3], webhook=WebhookSettings(
            url=f"http://127.0.0.1:{port}/hook", attempts=3)),
        ActionRule(name="broken", labels=[8], webhook=WebhookSettings(
            url=f"http://127.0.0.1:{port}/broken", attempts=2, timeout_s=1)),
    ]  # fmt: skip
    await chain.start(
        nats_server.url,
        Tier("edge", model="edge-int8", events=EventSettings(enabled=True, actions=rules)),
    )
    admin = await nats_server.connect()
    alerts: list[bytes] = []

    async def on_alert(msg: object) -> None:
        alerts.append(msg.data)  # type: ignore[attr-defined]

    await admin.subscribe("mesh.actions.alerts.line4", cb=on_alert)
    await flush_in_order(admin)
    x = np.load(demo.test)["x"][:60].astype(np.float32)
    client = await source_client(nats_server, keystore, "line4")
    try:
        async with client:
            for i, row in enumerate(x):
                await client.publish("digits", row[None, :], source="line4", event_id=f"a-{i}")
            results = await take(client, "line4", len(x), 30)
        want_alert = {r.event_id for r in results if set(r.labels) & {3, 8} and r.confidence >= 0.5}
        want_hook = {r.event_id for r in results if 3 in r.labels}
        want_dead = {r.event_id for r in results if 8 in r.labels}
        assert want_alert and want_hook and want_dead
        async with asyncio.timeout(30):
            while (  # noqa: ASYNC110 (the node's tasks report through NATS and HTTP)
                len(alerts) < len(want_alert) or len(hits) < len(want_hook)
            ):
                await asyncio.sleep(0.1)
            js = admin.jetstream()
            while (await js.stream_info("MESH_ACTIONS_DEAD")).state.messages < len(want_dead):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert {msgpack.unpackb(a)["event_id"] for a in alerts} == want_alert
        assert {h["event_id"] for h in hits} == want_hook
        assert all(h["kind"] == "action_event" and h["rule"] == "hook" for h in hits)
        dead = await admin.jetstream().get_last_msg("MESH_ACTIONS_DEAD", "mesh.actions-dead.broken")
        assert "500" in (dead.headers or {}).get("Mesh-Dead-Reason", "")
        assert calls["broken"] == 2 * len(want_dead)
    finally:
        await admin.close()
        await runner.cleanup()


async def test_an_event_that_keeps_failing_is_dead_lettered_and_blocks_nothing(
    nats_server: NatsServer, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> None:
    # A result the result stream will not take (over max_result_bytes): each try fails.
    settings = EventSettings(enabled=True, max_deliver=2, ack_wait_s=1.0)
    await chain.start(nats_server.url, Tier("edge", model="edge-int8", events=settings))
    await provision_events(nats_server, EventLimits(max_result_bytes=2048))
    x = np.load(demo.test)["x"].astype(np.float32)
    client = await source_client(nats_server, keystore, "cam5")
    admin = await nats_server.connect()
    try:
        async with client:
            await client.publish("digits", x[:60], source="cam5", event_id="poison-1")
            await client.publish("digits", x[:1], source="cam5", event_id="after-1")
            [result] = await take(client, "cam5", 1, 30)
            assert result.event_id == "after-1" and result.error is None
            js = admin.jetstream()
            async with asyncio.timeout(30):
                while (await js.stream_info("MESH_EVENTS_DEAD")).state.messages < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            dead = await js.get_last_msg("MESH_EVENTS_DEAD", "mesh.deadletter.digits.cam5")
            assert (dead.headers or {}).get("Nats-Msg-Id") == "poison-1"
            assert "result not stored" in (dead.headers or {}).get("Mesh-Dead-Reason", "")
            consumer = await js.consumer_info("MESH_EVENTS", "mesh-edge-digits")
            assert consumer.num_ack_pending == 0 and consumer.num_pending == 0
            assert (await js.stream_info("MESH_RESULTS")).state.messages == 1
    finally:
        await admin.close()


async def test_mesh_publish_stores_events_and_waits_for_their_results(
    nats_server: NatsServer,
    chain: Chain,
    keystore: KeyStore,
    demo: DemoArtifacts,
    tmp_path: Path,
) -> None:
    import json
    import sys

    await chain.start(
        nats_server.url, Tier("edge", model="edge-int8", events=EventSettings(enabled=True))
    )
    creds = await asyncio.to_thread(keystore.ensure, IdentitySpec("cam6", Role.APPLICATION))
    sample = tmp_path / "x.npz"
    await asyncio.to_thread(np.savez, sample, x=np.load(demo.test)["x"][:3])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh.cli", "publish", "digits", str(sample), "--wait",
        "--servers", nats_server.url, "--creds", str(creds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in out.decode().splitlines()]
    stored, answered = lines[:3], lines[3:]
    assert [s["duplicate"] for s in stored] == [False, False, False]
    assert sorted(a["event_id"] for a in answered) == sorted(s["event_id"] for s in stored)
    assert all(a["tier"] == "edge" and len(a["labels"]) == 1 for a in answered)


async def test_leaving_the_results_loop_ends_its_subscription_so_closing_is_prompt(
    nats_server: NatsServer, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> None:
    await chain.start(
        nats_server.url, Tier("edge", model="edge-int8", events=EventSettings(enabled=True))
    )
    client = await source_client(nats_server, keystore, "cam9")
    x = np.load(demo.test)["x"][:1].astype(np.float32)
    await client.publish("digits", x, source="cam9", event_id="only")
    with contextlib.suppress(Exception):  # nats-py's request inbox is made once, here
        await client.nc.request("mesh.infer.nobody", b"", timeout=0.2)
    before = len(client.nc._subs)
    async with contextlib.aclosing(client.results("digits", source="cam9")) as results:
        async for result in results:
            assert result.event_id == "only"
            break
    # the pull subscription went with the loop: a drain has nothing left to wait for
    assert len(client.nc._subs) == before
    started = time.monotonic()
    await client.close()
    assert time.monotonic() - started < 1.0  # no drain waiting out its timeout


async def test_publish_many_stores_a_batch_in_order_within_its_window_and_a_quota_waits(
    nats_server: NatsServer, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> None:
    # No entry node yet: a quota of 8 waiting events per source, provisioned as an administrator
    await provision_events(nats_server, EventLimits(per_source_events=8))
    x = np.load(demo.test)["x"][:30].astype(np.float32)
    ids = [f"m-{i}" for i in range(len(x))]
    async with await source_client(nats_server, keystore, "cam7") as client:
        first = await client.publish_many(
            "digits", [row[None, :] for row in x[:8]], source="cam7", event_ids=ids[:8], window=3
        )
        assert [a.event_id for a in first] == ids[:8]
        assert [a.sequence for a in first] == sorted(a.sequence for a in first)
        assert not any(a.duplicate for a in first)
        # at its quota, the source waits for room until its timeout, then is refused
        with pytest.raises(ResourceExhaustedError, match="quota"):
            await client.publish_many(
                "digits", [x[8][None, :]], source="cam7", event_ids=[ids[8]], timeout=0.3
            )
        # an entry node drains the stream: the waiting batch gets through, the first again
        # only as duplicates
        waiting = asyncio.create_task(
            client.publish_many(
                "digits", [row[None, :] for row in x], source="cam7", event_ids=ids, timeout=30
            )
        )
        await chain.start(
            nats_server.url, Tier("edge", model="edge-int8", events=EventSettings(enabled=True))
        )
        acks = await waiting
        results = await take(client, "cam7", len(x), 30)
    assert [a.event_id for a in acks] == ids
    assert [a.duplicate for a in acks[:8]] == [True] * 8
    assert sorted(r.event_id for r in results) == sorted(ids)
    with pytest.raises(InvalidArgumentError, match="repeat"):
        await client.publish_many("digits", [x[:1], x[:1]], source="cam7", event_ids=["a", "a"])
