"""What a stolen identity tried against ``mesh up`` (issue 25), each tried again here with real
credentials against real servers: a hub (JetStream domain ``hub``) and a site leaf server
(domain ``site``), provisioned by the administrator as ``mesh fleet init`` does.

Every attack is refused the way the server refuses it (a ``Permissions Violation``, or the
stream's own limits) and changes nothing: the streams keep their configurations, the desired
state keeps its keys, other sources keep publishing and getting their results.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
import numpy as np
import pytest
from nats.aio.client import Client as NATS

from mesh import MeshClient
from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import DeadlineExceededError, NotFoundError, ResourceExhaustedError
from mesh.events.records import InferenceEvent, encode_event
from mesh.local.servers import ADMIN
from mesh.node.breaker import BreakerConfig
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role, inbox_prefix
from mesh.settings import EventSettings
from mesh.topology.streams import (
    EVENTS_STREAM,
    MODEL_STORE_STREAM,
    EventLimits,
    event_specs,
)
from mesh.transport.jetstream import ensure
from tests.fixtures.chain import Chain, Tier
from tests.fixtures.site import LinkedSite

pytestmark = pytest.mark.timeout(120)

EDGE = IdentitySpec(
    "edge-0", Role.NODE, tier="edge", upstream_tier="gateway", entry=True, domain="site"
)
CONTROLLER = IdentitySpec("controller", Role.CONTROLLER)
VICTIM = IdentitySpec("victim", Role.APPLICATION)
ATTACKER = IdentitySpec("attacker", Role.APPLICATION)


@dataclass
class Identity:
    """A connection as one identity, and the permission violations the server reported."""

    nc: NATS
    violations: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def expect_violation(self, subject: str) -> None:
        """Wait for the server's refusal of ``subject``. A server maps its own domain's API
        (``$JS.<its domain>.API``) to ``$JS.API`` before it checks, and reports that."""
        _, api, operation = subject.partition(".API.")
        names = [subject] if not api else [subject, f"$JS.API.{operation}"]
        wanted = [f'permissions violation for publish to "{n}"'.lower() for n in names]
        async with asyncio.timeout(5.0):
            while not any(w in v for v in self.violations for w in wanted):
                self.changed.clear()
                await self.changed.wait()


Connect = Callable[[str, IdentitySpec], Awaitable[Identity]]


@pytest.fixture
async def connect(keystore: KeyStore) -> AsyncIterator[Connect]:
    opened: list[NATS] = []

    async def open_(url: str, spec: IdentitySpec) -> Identity:
        creds = await asyncio.to_thread(keystore.ensure, spec)
        identity = Identity(nc=NATS())

        async def on_error(error: Exception) -> None:
            identity.violations.append(str(error).lower())
            identity.changed.set()

        await identity.nc.connect(
            url,
            user_credentials=str(creds),
            inbox_prefix=inbox_prefix(spec.name),
            error_cb=on_error,
            allow_reconnect=False,
        )
        opened.append(identity.nc)
        return identity

    yield open_
    for nc in opened:
        await nc.close()


async def admin_js(linked: LinkedSite, domain: str) -> tuple[NATS, Any]:
    nc = await linked.site.hub.connect()
    return nc, nc.jetstream(domain=domain)


async def refused_api(who: Identity, subject: str, body: dict[str, Any]) -> None:
    """Call the JetStream API as ``who``: the server refuses and nothing answers."""
    with pytest.raises(nats.errors.TimeoutError):
        await who.nc.request(subject, json.dumps(body).encode(), timeout=0.5)
    await who.expect_violation(subject)


# ---- JetStream is administered by the fleet, not by its members ---------------------------


@pytest.mark.parametrize("prefix", ["$JS.API", "$JS.hub.API", "$JS.site.API"])
async def test_a_node_cannot_rewrite_a_stream_to_republish_into_the_desired_state(
    provisioned: LinkedSite, connect: Connect, prefix: str
) -> None:
    edge = await connect(provisioned.leaf_url, EDGE)
    evil = {
        "name": "MESH_ACTIONS_DEAD",
        "subjects": ["mesh.actions-dead.>"],
        "republish": {"src": "mesh.actions-dead.x", "dest": "$KV.MESH_FLEET_DESIRED.digits.x"},
    }
    for verb in ("CREATE", "UPDATE"):
        await refused_api(edge, f"{prefix}.STREAM.{verb}.MESH_ACTIONS_DEAD", evil)
    sealing = {"name": EVENTS_STREAM, "subjects": ["mesh.events.>"], "max_age": 10**9,
               "sealed": True}  # fmt: skip
    await refused_api(edge, f"{prefix}.STREAM.UPDATE.{EVENTS_STREAM}", sealing)
    # the node may publish action dead letters; with the stream as provisioned, nothing is
    # republished anywhere
    await edge.nc.publish("mesh.actions-dead.x", b'{"version": "evil"}')
    await edge.nc.flush()
    nc, hub = await admin_js(provisioned, "hub")
    try:
        desired = await hub.key_value("MESH_FLEET_DESIRED")
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await desired.get("digits.x")
        events = (await nc.jetstream(domain="site").stream_info(EVENTS_STREAM)).config
        assert not events.sealed and events.max_age == EventLimits().max_age_s
        dead = (await nc.jetstream(domain="site").stream_info("MESH_ACTIONS_DEAD")).config
        assert dead.republish is None
    finally:
        await nc.close()


@pytest.mark.parametrize("domain", ["hub", "site"])
async def test_no_runtime_identity_can_make_a_stream_that_captures_others_traffic(
    provisioned: LinkedSite, connect: Connect, domain: str
) -> None:
    edge = await connect(provisioned.leaf_url, EDGE)
    controller = await connect(provisioned.hub_url, CONTROLLER)
    capture = {"name": "MESH_HARD_EDGE", "no_ack": True,
               "subjects": ["mesh.infer.>", "_INBOX_victim.>", "_INBOX_ingress.>"]}  # fmt: skip
    await refused_api(edge, f"$JS.{domain}.API.STREAM.CREATE.CAPTURE", capture)
    await refused_api(edge, f"$JS.{domain}.API.STREAM.UPDATE.MESH_HARD_EDGE", capture)
    widened = {"name": MODEL_STORE_STREAM, "subjects": ["$O.MESH_MODELS.>", "mesh.>"]}
    await refused_api(controller, f"$JS.{domain}.API.STREAM.UPDATE.{MODEL_STORE_STREAM}", widened)
    nc, js = await admin_js(provisioned, domain)
    try:
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info("CAPTURE")
        store = (await js.stream_info(MODEL_STORE_STREAM)).config
        # as provisioned: the store's own subjects (a site's copy is a mirror, with none)
        assert all(subject.startswith("$O.MESH_MODELS.") for subject in store.subjects or [])
    finally:
        await nc.close()


# ---- events are fair between applications --------------------------------------------------


#: the site's entry node, taking the events for digits.
EVENTS_EDGE = Tier("edge", model="edge-int8", node="edge-0", events=EventSettings(enabled=True))


async def app(provisioned: LinkedSite, keystore: KeyStore, spec: IdentitySpec) -> MeshClient:
    creds = await asyncio.to_thread(keystore.ensure, spec)
    return await MeshClient.connect(provisioned.leaf_url, user_credentials=str(creds))


async def test_events_for_a_model_no_tier_serves_are_refused_at_publish(
    provisioned: LinkedSite, keystore: KeyStore
) -> None:
    attacker = await app(provisioned, keystore, ATTACKER)
    big = np.zeros((256, 4096), dtype=np.float32)  # 4 MiB
    async with attacker:
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(NotFoundError, match="zzz"):
                await attacker.publish("zzz", big, source="attacker")
        assert time.monotonic() - started < 5.0  # refused at once, not timed out
    nc, js = await admin_js(provisioned, "site")
    try:
        assert (await js.stream_info(EVENTS_STREAM)).state.bytes == 0
    finally:
        await nc.close()


async def test_a_flooding_source_fills_its_own_quota_and_nobody_elses(
    provisioned: LinkedSite, keystore: KeyStore
) -> None:
    # no entry node drains the stream: the flood stays, as far as its quota lets it
    nc, js = await admin_js(provisioned, "site")
    try:
        for spec in event_specs(("digits",), EventLimits(per_source_events=8)):
            await ensure(js, spec)
    finally:
        await nc.close()
    attacker, victim = (
        await app(provisioned, keystore, ATTACKER),
        await app(provisioned, keystore, VICTIM),
    )
    row = np.zeros((1, 64), dtype=np.float32)
    async with attacker, victim:
        with pytest.raises(ResourceExhaustedError, match=r"attacker.*quota"):
            for i in range(50):
                await attacker.publish("digits", row, source="attacker", timeout=0.3,
                                       event_id=f"flood-{i}")  # fmt: skip
        acks = [
            await victim.publish("digits", row, source="victim", event_id=f"mine-{i}")
            for i in range(8)
        ]
    assert [a.duplicate for a in acks] == [False] * 8


async def test_another_source_can_neither_take_an_event_id_first_nor_drop_a_result(
    provisioned: LinkedSite, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> None:
    await chain.start(provisioned.leaf_url, EVENTS_EDGE)
    attacker = await connect_raw(provisioned, keystore, ATTACKER)
    victim = await app(provisioned, keystore, VICTIM)
    row = np.load(demo.test)["x"][:1].astype(np.float32)
    try:
        async with victim:
            # the victim's ids, taken first under the attacker's own subject
            for event_id in ("frame-1", "frame-2"):
                forged = InferenceEvent(
                    id=event_id, model="digits", source="attacker",
                    inputs={"input": row}, budget_ms=1000.0,
                    residency="any", published_at=time.time(),
                )  # fmt: skip
                await attacker.jetstream().publish(
                    "mesh.events.digits.attacker",
                    encode_event(forged),
                    headers={"Nats-Msg-Id": f"victim:{event_id}:forged"},
                )
            acks = [
                await victim.publish("digits", row, source="victim", event_id=event_id)
                for event_id in ("frame-1", "frame-2")
            ]
            assert [a.duplicate for a in acks] == [False, False]
            got = []
            async with asyncio.timeout(30):
                async for result in victim.results("digits", source="victim"):
                    got.append(result)
                    if len(got) == 2:
                        break
        assert sorted(r.event_id for r in got) == ["frame-1", "frame-2"]
        assert all(r.error is None and r.label is not None for r in got)
    finally:
        await attacker.close()


async def test_one_sources_backlog_delays_anothers_event_by_at_most_its_quota(
    provisioned: LinkedSite, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> None:
    """The bound: another source's event waits behind at most ``per_source_events`` events of
    a flooding source (the quota), whatever the flood; before, it waited behind all of them
    (221 s in the attack)."""
    await chain.start(provisioned.leaf_url, EVENTS_EDGE)
    attacker = await app(provisioned, keystore, ATTACKER)
    victim = await app(provisioned, keystore, VICTIM)
    row = np.load(demo.test)["x"][:1].astype(np.float32)
    flooding = True

    async def flood() -> None:
        i = 0
        while flooding:
            # an attacker takes no answer for one: refused past its quota, or not acknowledged
            # within its 0.2 s (a loaded CI machine once took longer), it sends the next
            with contextlib.suppress(ResourceExhaustedError, DeadlineExceededError):
                await attacker.publish("digits", row, source="attacker", event_id=f"f-{i}",
                                       timeout=0.2)  # fmt: skip
            i += 1

    async with attacker, victim:
        task = asyncio.create_task(flood())
        await asyncio.sleep(1.0)
        waits = []
        for k in range(5):
            started = time.monotonic()
            await victim.publish("digits", row, source="victim", event_id=f"v-{k}")
            async with asyncio.timeout(30):
                async for result in victim.results("digits", source="victim"):
                    if result.event_id == f"v-{k}":
                        break
            waits.append(time.monotonic() - started)
        flooding = False
        await task
    print(f"\nanother source's event, publish to result, under a flood: {waits}")
    assert max(waits) < 5.0


async def connect_raw(provisioned: LinkedSite, keystore: KeyStore, spec: IdentitySpec) -> NATS:
    creds = await asyncio.to_thread(keystore.ensure, spec)
    return await nats.connect(
        provisioned.leaf_url, user_credentials=str(creds), inbox_prefix=inbox_prefix(spec.name)
    )


# ---- one caller's flood takes its own share --------------------------------------------------


async def test_one_callers_flood_of_waiting_requests_takes_only_its_share(
    provisioned: LinkedSite, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> None:
    # an upstream that takes every escalation and never answers: each waits out its budget
    admin = await provisioned.site.leaf.connect(ADMIN.name)  # type: ignore[union-attr]
    await admin.subscribe("mesh.gateway.infer.>", queue="mesh.gateway", cb=_swallow)
    await admin.flush()
    [edge] = await chain.start(
        provisioned.leaf_url,
        Tier("edge", model="edge-int8", node="edge-0", threshold=1.01, upstream="gateway",
             upstream_timeout_ms=5000, breaker=NEVER_OPENS),
    )  # fmt: skip
    assert edge.endpoint is not None
    attacker = await app(provisioned, keystore, ATTACKER)
    victim = await app(provisioned, keystore, VICTIM)
    row = np.load(demo.test)["x"][:1].astype(np.float32)
    share = edge.settings.max_inflight_per_caller
    try:
        async with attacker, victim:
            flood = [
                asyncio.create_task(attacker.infer("digits", row, budget_ms=2000))
                for _ in range(share + 100)
            ]
            await asyncio.sleep(0.5)
            mine = await asyncio.gather(
                *(victim.infer("digits", row, budget_ms=1000) for _ in range(5))
            )
            outcomes = await asyncio.gather(*flood, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, ResourceExhaustedError)]
        assert refused and all("share" in str(o) for o in refused)
        # one batch's own requests may pass the share by at most a batch (32 rows)
        assert len(outcomes) - len(refused) <= share + 32
        assert all(r.degraded and r.reason == "timeout" for r in mine)
    finally:
        await admin.close()


#: a breaker that never opens, so every escalation waits out its budget (and holds its slot).
NEVER_OPENS = BreakerConfig(failure_threshold=10**6, min_calls=10**6)


async def _swallow(msg: Any) -> None:
    return None
