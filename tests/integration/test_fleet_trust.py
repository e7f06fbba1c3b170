"""Readers that check what they read, and versions that can be revoked (issue 25), on a simulated
fleet on real servers with real credentials, a real controller and real edge nodes.

- An old assignment re-delivered into the desired-state bucket by a stolen node identity (a push
  consumer's deliveries go wherever its creator names, nats-server #8274) lands as the newest
  entry of its key, and neither the node nor the controller obeys it.
- A revoked version is refused and left: nodes serving it swap back (a downgrade, warned and
  shown by ``mesh fleet status``), a rollout of it is refused, one running is rolled back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats.js.errors
import pytest
from nats.js import api

from mesh.dev.fleetsim.simulate import CONTROLLER, FleetSimulation, SimLoad
from mesh.dev.models.demo import DemoArtifacts
from mesh.fleet import registry
from mesh.fleet.admin import read_rollouts, start_rollout
from mesh.fleet.controller import Controller
from mesh.fleet.desired import DesiredState, Selector, decode_desired, desired_key
from mesh.fleet.rollout import Rollout
from mesh.local.layout import node_identity
from mesh.models.manifest import copy_as_version
from mesh.topology import subjects
from mesh.topology.streams import DESIRED_BUCKET, DESIRED_STREAM, REVOKED_BUCKET, REVOKED_STREAM
from mesh.wire import NodeStatus
from tests.fixtures.commands import mesh_cli
from tests.fixtures.fleet import heartbeats, hub_args, push_version, simulation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

GOOD = "2-edge"
NEXT = "4-edge"
#: JetStream refuses a consumer that would deliver into its own stream.
DELIVER_CYCLE = 10081


async def until(sim: FleetSimulation, done: Callable[[dict[str, NodeStatus]], bool]) -> None:
    async with asyncio.timeout(90.0):
        while not done(await heartbeats(sim)):  # noqa: ASYNC110
            await asyncio.sleep(0.3)


def serving(version: str) -> Callable[[dict[str, NodeStatus]], bool]:
    return lambda found: (
        bool(found) and all(b.models.get("digits") == version for b in found.values())
    )


async def poll(done: Callable[[], Awaitable[bool]], timeout: float = 90.0) -> None:
    async with asyncio.timeout(timeout):
        while not await done():  # noqa: ASYNC110
            await asyncio.sleep(0.3)


async def test_an_old_assignment_re_delivered_into_the_bucket_is_obeyed_by_no_reader(
    tmp_path: Path, demo: DemoArtifacts
) -> None:
    async with simulation(tmp_path, demo, nodes=1) as sim:
        await push_version(sim, copy_as_version, demo.edge_int8, GOOD, tmp_path / "good")
        node = sim.node_names[0]
        key = desired_key("digits", Selector(node=node))
        nc = await sim.hub.connect(CONTROLLER.name)
        js = nc.jetstream(domain="hub")
        controller = Controller(nc, name="ctl", tick_s=0.3, offline_after_s=2.0, heartbeat_s=0.5)
        await controller.start()
        admin = await sim.hub.connect()
        try:
            # assigned the good version, then back to the first: two entries under its key
            for version in (GOOD, sim.initial_version):
                await registry.assign(js, DesiredState("digits", version, Selector(node=node),
                                                       time.time(), by="test"))  # fmt: skip
                await until(sim, serving(version))
            bucket = await registry.desired_bucket(js)
            old = (await bucket.history(key))[0]
            assert decode_desired(old.value or b"").version == GOOD

            # the stolen identity may read the bucket: it creates a consumer on it
            await sim.issue(node_identity("edge-liar", "edge", upstream_tier="cloud", domain="hub"))
            liar = await sim.hub.connect("edge-liar")
            liar_js = liar.jetstream(domain="hub")
            target = subjects.kv(DESIRED_BUCKET, key)
            # straight back into the bucket: the server refuses a delivery into its own stream
            first = int(old.revision or 0)
            with pytest.raises(nats.js.errors.BadRequestError) as refused:
                await liar_js.add_consumer(DESIRED_STREAM, _replay(target, key, first))
            assert refused.value.err_code == DELIVER_CYCLE
            # through another bucket it reads (the revocations), each delivery kept under the
            # old entry's own subject: it lands as the newest entry of the node's key. A push
            # consumer delivers only while someone subscribes to its subject: an administrator
            # tailing both subjects is enough.
            hop = subjects.kv(REVOKED_BUCKET, "replay")
            for tailed in (hop, target):
                await admin.subscribe(tailed)
            await admin.flush()
            await liar_js.add_consumer(DESIRED_STREAM, _replay(hop, key, first))
            await asyncio.sleep(0.5)
            # (the revocations hold nothing else: its first message is the one re-delivered)
            await liar_js.add_consumer(REVOKED_STREAM, _replay(target, None, 1))

            async def landed_old() -> bool:
                return decode_desired((await bucket.get(key)).value or b"").version == GOOD

            await poll(landed_old, timeout=10.0)
            landed = await bucket.get(key)
            print(json.dumps({"replayed": {"key": key, "revision": landed.revision,
                                           "version": GOOD, "was": old.revision}}))  # fmt: skip

            await asyncio.sleep(5.0)  # ten heartbeats: time to swap, had it been obeyed
            assert serving(sim.initial_version)(await heartbeats(sim))
            held = controller.desired.entries[key].state
            assert held.version == sim.initial_version
            assert controller.ignored.get(DESIRED_BUCKET, 0) >= 1
            await liar.close()
        finally:
            await admin.close()
            await controller.stop()
            await nc.close()


def _replay(deliver: str, key: str | None, start: int) -> api.ConsumerConfig:
    """A push consumer re-delivering the entries of ``key`` (None: any message) from sequence
    ``start``, one at a time and never acknowledged (so only the first goes)."""
    return api.ConsumerConfig(
        deliver_subject=deliver,
        filter_subject=None if key is None else subjects.kv(DESIRED_BUCKET, key),
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=api.AckPolicy.EXPLICIT,
        max_ack_pending=1,
        ack_wait=3600.0,
    )


async def test_a_revoked_version_is_refused_left_with_a_warning_and_rolled_back(
    tmp_path: Path, demo: DemoArtifacts
) -> None:
    async with simulation(tmp_path, demo, nodes=2) as sim:
        assert sim.key is not None
        for version in (GOOD, NEXT):
            await push_version(sim, copy_as_version, demo.edge_int8, version, tmp_path / version)
        key_path = sim.work / "fleet" / "signing.key"
        nc = await sim.hub.connect(CONTROLLER.name)
        js = nc.jetstream(domain="hub")
        edge = Selector(tier="edge")
        load = SimLoad(sim, rate_per_node=4.0)
        await load.start()
        controller = Controller(nc, name="ctl", tick_s=0.3, offline_after_s=2.0, heartbeat_s=0.5)
        await controller.start()
        try:
            await registry.assign(js, DesiredState("digits", GOOD, edge, time.time()))
            await until(sim, serving(GOOD))

            # revoked: the nodes leave it for the version they served before, though the
            # desired state still says GOOD, and say they went down
            code, out, err = await mesh_cli(
                "models", "revoke", "digits", GOOD, "--key", str(key_path),
                "--reason", "leaks labels", *hub_args(sim),
            )  # fmt: skip
            assert code == 0 and "revoked digits@2-edge" in out, err
            await until(sim, serving(sim.initial_version))
            for beat in (await heartbeats(sim)).values():
                assert beat.rejected.get(f"digits@{GOOD}", "").startswith("revoked: leaks labels")
                assert beat.downgraded == {"digits": GOOD}
            code, out, _ = await mesh_cli("fleet", "status", *hub_args(sim))
            assert f"WARNING downgraded digits from {GOOD} to {sim.initial_version}" in out
            code, out, _ = await mesh_cli("fleet", "status", "--json", *hub_args(sim))
            rows = [r for r in json.loads(out) if r["node"] in sim.node_sites]
            assert all(r["downgraded"] == {"digits": GOOD} for r in rows)

            # refused by the commands too
            key = sim.key.public
            code, _, err = await mesh_cli(
                "rollout", "start", "digits", GOOD, "--trusted-key", key, *hub_args(sim)
            )
            assert code == 2 and "revoked" in err, err
            code, _, err = await mesh_cli(
                "fleet", "assign", "digits", GOOD, "--selector", "tier=edge", *hub_args(sim)
            )
            assert code == 2 and "revoked" in err, err

            # a rollout under way when its version is revoked is rolled back
            await registry.assign(
                js, DesiredState("digits", sim.initial_version, edge, time.time())
            )
            await start_rollout(
                js, "digits", NEXT, stages="1,100%", soak="120s", selector=edge,
                trusted_keys=[key], offline_after_s=2.0,
            )  # fmt: skip

            async def soaking() -> bool:
                return (await _rollout(js)).phase == "soaking"

            await poll(soaking)
            code, _, err = await mesh_cli(
                "models", "revoke", "digits", NEXT, "--key", str(key_path), *hub_args(sim)
            )
            assert code == 0, err

            async def ended() -> bool:
                return not (await _rollout(js)).active

            await poll(ended)
            r = await _rollout(js)
            await until(sim, serving(sim.initial_version))
        finally:
            await controller.stop()
            await load.stop()
            await nc.close()
    assert r.state == "rolled_back" and r.failed_gate == "revoked", r.reason
    assert load.figures.errors == []


async def _rollout(js: nats.js.JetStreamContext) -> Rollout:
    return (await read_rollouts(js))["digits"]
