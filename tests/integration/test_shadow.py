"""Shadow stages on a small simulated fleet on real servers (a hub, one site behind a fault
proxy, a cloud node, three edge nodes with their agents, steady load through the SDK, a
controller): a version that confuses two classes runs beside the serving one on the canary's
node, is judged there and rolled back without one answer served; a good version passes its
shadow stage, then serves, and completes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.dev.fleetsim.simulate import CONTROLLER, FleetSimulation, SimLoad
from mesh.dev.models.demo import DemoArtifacts
from mesh.dev.models.faulty import confuse_classes
from mesh.fleet import registry
from mesh.fleet.admin import read_rollouts, start_rollout, summary
from mesh.fleet.controller import Controller
from mesh.fleet.desired import Selector
from mesh.fleet.rollout import Rollout
from mesh.models.manifest import copy_as_version
from mesh.wire import NodeStatus
from tests.fixtures.fleet import LATENCY_NOT_JUDGED, push_version, simulation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BAD = "3-confused"
GOOD = "4-edge"
#: 150 answers compared tell a version agreeing 0.8 from a 0.95 one surely (as at a canary);
#: a good version needs fewer to pass
GATES = ["min_requests=30", "min_samples=150", "max_wait_s=60", LATENCY_NOT_JUDGED]
GOOD_GATES = ["min_requests=30", "min_samples=60", "max_wait_s=60", LATENCY_NOT_JUDGED]


@pytest.fixture
async def sim(tmp_path: Path, demo: DemoArtifacts) -> AsyncIterator[FleetSimulation]:
    async with simulation(tmp_path, demo, nodes=3, audit_rate=1.0) as s:
        yield s


class Watch:
    """What the hub's heartbeats showed, polled: every node seen serving or shadowing each
    version."""

    def __init__(self, sim: FleetSimulation) -> None:
        self.sim = sim
        self.serving: dict[str, set[str]] = {}
        self.shadowing: dict[str, set[str]] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watch:
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _poll(self) -> None:
        nc = await self.sim.hub.connect(CONTROLLER.name)
        try:
            js = nc.jetstream(domain="hub")
            while not self._stop.is_set():
                for name, beat in (await registry.read_heartbeats(js)).items():
                    if not isinstance(beat, NodeStatus) or name not in self.sim.node_sites:
                        continue
                    if (served := beat.models.get("digits")) is not None:
                        self.serving.setdefault(served, set()).add(name)
                    if (shadow := beat.shadows.get("digits")) is not None:
                        self.shadowing.setdefault(shadow.version, set()).add(name)
                await asyncio.sleep(0.2)
        finally:
            await nc.close()


async def finished(sim: FleetSimulation, rollout_id: str, timeout: float = 120.0) -> Rollout:
    nc = await sim.hub.connect(CONTROLLER.name)
    try:
        async with asyncio.timeout(timeout):
            while True:
                r = (await read_rollouts(nc.jetstream(domain="hub"))).get("digits")
                if r is not None and r.id == rollout_id and not r.active:
                    return r
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def test_a_confused_version_fails_in_shadow_unseen_and_a_good_one_passes_and_serves(
    sim: FleetSimulation, demo: DemoArtifacts, tmp_path: Path
) -> None:
    assert sim.key is not None
    await push_version(sim, confuse_classes, demo.edge, BAD, tmp_path / "bad")
    await push_version(sim, copy_as_version, demo.edge, GOOD, tmp_path / "good")
    load = SimLoad(sim, rate_per_node=30.0)
    await load.start()
    nc = await sim.hub.connect(CONTROLLER.name)
    js = nc.jetstream(domain="hub")
    controller = Controller(nc, name="ctl", tick_s=0.3, offline_after_s=2.0)
    try:
        async with Watch(sim) as watch:
            await asyncio.sleep(1.5)
            await controller.start()
            started = await start_rollout(
                js, "digits", BAD, stages="1,100%", soak="2s", gate_terms=GATES,
                selector=Selector(tier="edge"), trusted_keys=[sim.key.public],
                offline_after_s=2.0, shadow=True,
            )  # fmt: skip
            assert [s.name for s in started.stages] == ["shadow", "canary", "all"]
            confused = await finished(sim, started.id)
            started = await start_rollout(
                js, "digits", GOOD, stages="1,100%", soak="2s", gate_terms=GOOD_GATES,
                selector=Selector(tier="edge"), trusted_keys=[sim.key.public],
                offline_after_s=2.0, shadow=True,
            )  # fmt: skip
            passed = await finished(sim, started.id)
    finally:
        await controller.stop()
        await nc.close()
        await load.stop()

    print(json.dumps({"confused": summary(confused), "good": summary(passed)}))
    # the confused version ran beside the served one on the canary's node only, never served
    assert confused.state == "rolled_back" and confused.current_stage == 0, confused.reason
    assert confused.failed_gate == "agreement", confused.reason
    assert confused.figures["canary"] < confused.figures["baseline"] - 0.05
    assert confused.answers_served_before_decision == 0 and confused.max_nodes_serving == 0
    assert len(watch.shadowing.get(BAD, set())) == 1
    assert BAD not in watch.serving and BAD not in load.figures.versions
    shadow_log = confused.log[0]
    assert shadow_log.canary is not None and shadow_log.canary["compared"] >= 150
    assert shadow_log.canary["matched"] > 0
    # the good one passed its shadow stage, then served on every node
    assert passed.state == "completed", passed.reason
    assert [s.result for s in passed.log] == ["pass"] * 3
    assert passed.answers_served_before_decision is not None
    assert passed.answers_served_before_decision > 0
    assert watch.serving.get(GOOD) == set(sim.node_sites)
    assert load.figures.versions[GOOD] > 0 and load.figures.errors == []
