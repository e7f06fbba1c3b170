"""Rollouts on 500 simulated nodes in 5 sites under steady load: ``make fleet-500``.

Skipped unless ``FLEET_500=1`` (it takes about fifteen minutes and most of the machine). Three
rollouts, one after the other, on one fleet, each checked against what the nodes report:

1. a good version through 4 stages (2%, 10%, 50%, 100%) to all 500 nodes, with the leading
   controller killed during stage 2 and restarted;
2. a version confusing two classes, stopped at its canary stage and rolled back;
3. another good version with one site cut off during stage 3: the rollout completes on the
   nodes it can reach and the site converges once its link returns.

Zero failed requests throughout. Figures (time per stage, memory and CPU per node) go to
``$FLEET_500_REPORT`` (default ``fleet-500.json``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mesh.dev.fleetsim.simulate import CONTROLLER, FleetSimulation, SimLoad, SimulationSettings
from mesh.dev.models.demo import DemoArtifacts
from mesh.dev.models.faulty import confuse_classes
from mesh.fleet import registry
from mesh.fleet.admin import start_rollout
from mesh.fleet.desired import Selector
from mesh.fleet.rollout import Rollout
from mesh.local.phases import Phases
from mesh.local.supervisor import ChildProcess, child_env
from mesh.models.manifest import copy_as_version
from mesh.wire import NodeStatus
from tests.fixtures.fleet import rollout_of

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        os.environ.get("FLEET_500") != "1", reason="the 500-node run: make fleet-500"
    ),
]

NODES = int(os.environ.get("FLEET_500_NODES", "500"))
SITES = 5
GATES = ["min_requests=100", "min_samples=150"]


#: every step of the run within a deadline that names what it waited for (issue 31).
PHASES = Phases("make fleet-500")


@pytest.fixture
async def sim(tmp_path: Path, demo: DemoArtifacts) -> AsyncIterator[FleetSimulation]:
    settings = SimulationSettings(
        work_dir=tmp_path / "sim", nodes=NODES, sites=SITES, heartbeat_s=2.0, audit_rate=0.3
    )
    s = FleetSimulation(settings, demo)
    try:
        waiting = f"{NODES} simulated nodes in {SITES} sites, the cloud node, the registry"
        async with PHASES.phase("start the fleet", 1200, waiting):
            await s.start()
        yield s
    finally:
        await s.stop()


class Observer:
    """Reads every node's heartbeat at the hub each second, apart from the controller."""

    def __init__(self, sim: FleetSimulation) -> None:
        self.sim = sim
        self.served: dict[str, str] = {}
        self.most: dict[str, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        nc = await self.sim.hub.connect(CONTROLLER.name)
        js = nc.jetstream(domain="hub")
        try:
            while not stop.is_set():
                beats = await registry.read_heartbeats(js)
                now = time.time()
                self.served = {
                    n: b.models.get("digits", "")
                    for n, b in beats.items()
                    if isinstance(b, NodeStatus) and now - b.time < 10
                }
                counts: dict[str, int] = {}
                for version in self.served.values():
                    counts[version] = counts.get(version, 0) + 1
                for version, count in counts.items():
                    self.most[version] = max(self.most.get(version, 0), count)
                await asyncio.sleep(1.0)
        finally:
            await nc.close()

    async def converged(self, version: str, nodes: int, timeout: float) -> float:
        started = time.monotonic()
        async with PHASES.phase(f"{nodes} nodes serving {version}", timeout) as phase:
            while (serving := sum(1 for v in self.served.values() if v == version)) < nodes:
                phase.waiting_for(f"heartbeats: {serving} of {nodes} nodes serving {version}")
                await asyncio.sleep(0.5)
        return time.monotonic() - started


async def controller(sim: FleetSimulation, name: str) -> ChildProcess:
    child = ChildProcess(
        name,
        [
            sys.executable, "-m", "mesh.cli", "controller", "--servers", sim.hub.url,
            "--creds", str(sim.creds(CONTROLLER)), "--name", name, "--tick", "1",
            "--lease", "5", "--offline-after", "10",
        ],
        sim.work / f"{name}.log",
        ready_prefix="MESH_CONTROLLER ready",
        env=child_env(),
    )  # fmt: skip
    await child.start()
    return child


async def wait_for(sim: FleetSimulation, done: Any, timeout: float, what: str) -> Rollout:
    async with PHASES.phase(what, timeout) as phase:
        while True:
            r = await rollout_of(sim)
            if done(r):
                return r
            phase.waiting_for(f"{what}: rollout {r.version} {r.state}, stage {r.current_stage}")
            await asyncio.sleep(1.0)


async def start(sim: FleetSimulation, version: str, stages: str, soak: str) -> Rollout:
    assert sim.key is not None
    nc = await sim.hub.connect(CONTROLLER.name)
    try:
        return await start_rollout(
            nc.jetstream(domain="hub"), "digits", version, stages=stages, soak=soak,
            gate_terms=GATES, trusted_keys=[sim.key.public], selector=Selector(tier="edge"),
        )  # fmt: skip
    finally:
        await nc.close()


def stage_times(r: Rollout) -> list[dict[str, Any]]:
    return [
        {
            "stage": s.name,
            "nodes": r.stage_size(i),
            "deploy_s": round(log.reached_at - log.started_at, 1)
            if log.reached_at and log.started_at
            else None,
            "total_s": round(log.judged_at - log.started_at, 1)
            if log.judged_at and log.started_at
            else None,
            "result": log.result,
            "canary_agreement": (log.canary or {}).get("agreement"),
            "canary_compared": (log.canary or {}).get("compared"),
            "canary_requests": (log.canary or {}).get("requests"),
            "baseline_agreement": (log.baseline or {}).get("agreement"),
        }
        for i, (s, log) in enumerate(zip(r.stages, r.log, strict=True))
    ]


async def test_rollouts_on_500_nodes(
    sim: FleetSimulation, demo: DemoArtifacts, tmp_path: Path
) -> None:
    report: dict[str, Any] = {"nodes": NODES, "sites": SITES}
    errors_after: dict[str, int] = {}
    started_wall = time.time()
    for version, build in (
        ("2-edge", lambda out: copy_as_version(demo.edge, "2-edge", out)),
        ("3-confused", lambda out: confuse_classes(demo.edge, "3-confused", out)),
        ("4-edge", lambda out: copy_as_version(demo.edge, "4-edge", out)),
    ):
        await sim.push(await asyncio.to_thread(build, tmp_path / version))
    load = SimLoad(sim, rate_per_node=1.0)
    observer = Observer(sim)
    stop = asyncio.Event()
    watching = asyncio.create_task(observer.run(stop))
    await load.start()
    ctl = await controller(sim, "ctl-a")
    try:
        await observer.converged(sim.initial_version, NODES, timeout=60)
        # what a node costs, with the load on and nothing rolling out
        before = await sim.process_figures()
        t0 = time.monotonic()
        await asyncio.sleep(30)
        after = await sim.process_figures()
        report["per_node"] = {
            "rss_mb": after["rss_mb_per_node"],
            "cpu_ms_per_s": round(
                (after["cpu_s"] - before["cpu_s"]) / (time.monotonic() - t0) / NODES * 1000, 3
            ),
            "requests_per_s": 1.0,
            "heartbeat_s": 2.0,
            "processes": after["processes"],
        }

        # 1. good version, leader killed during stage 2 and restarted
        await start(sim, "2-edge", "2%,10%,50%,100%", "20s")
        await wait_for(sim, lambda r: r.current_stage >= 1, 600, "rollout 1 reaching stage 2")
        await ctl.kill()
        killed_at = time.monotonic()
        ctl = await controller(sim, "ctl-a")
        r = await wait_for(sim, lambda r: not r.active, 900, "rollout 1 ending")
        errors_after["good"] = len(load.figures.errors)
        report["good"] = {
            "outcome": r.outcome,
            "stages": stage_times(r),
            "max_nodes_serving": r.max_nodes_serving,
            "controller_restarted_after_s": round(time.monotonic() - killed_at, 1),
            "converged_s": await observer.converged("2-edge", NODES, timeout=120),
        }
        assert r.outcome == "completed", r.reason
        assert [s.result for s in r.log] == ["pass"] * 4

        # 2. a version confusing two classes: stopped at the canary, rolled back
        await start(sim, "3-confused", "2%,10%,50%,100%", "20s")
        r = await wait_for(sim, lambda r: not r.active, 600, "rollout 2 rolled back")
        errors_after["bad"] = len(load.figures.errors)
        report["bad"] = {
            "outcome": r.outcome,
            "failed_gate": r.failed_gate,
            "figures": r.figures,
            "canary_nodes": r.canary_nodes,
            "max_nodes_serving": r.max_nodes_serving,
            "most_seen_by_observer": observer.most.get("3-confused", 0),
            "stages": stage_times(r),
            "back_s": await observer.converged("2-edge", NODES, timeout=120),
        }
        assert r.outcome == "rolled_back" and r.failed_gate == "agreement", r.reason
        assert observer.most.get("3-confused", 0) <= r.canary_nodes

        # 3. a site cut off during stage 3 converges when its link returns
        await start(sim, "4-edge", "2%,10%,50%,100%", "20s")
        await wait_for(sim, lambda r: r.current_stage >= 2, 600, "rollout 3 reaching stage 3")
        errors_after["before_cut"] = len(load.figures.errors)
        sim.cut(SITES - 1)
        cut_at = time.monotonic()
        r = await wait_for(sim, lambda r: not r.active, 900, "rollout 3 ending, a site cut")
        await asyncio.sleep(max(0.0, 20 - (time.monotonic() - cut_at)))
        errors_after["cut"] = len(load.figures.errors)
        sim.heal(SITES - 1)
        healed_at = time.monotonic()
        converged = await observer.converged("4-edge", NODES, timeout=300)
        report["cut"] = {
            "outcome": r.outcome,
            "stages": stage_times(r),
            "cut_s": round(healed_at - cut_at, 1),
            "converged_after_heal_s": round(converged, 1),
        }
        assert r.outcome == "completed", r.reason
    finally:
        stop.set()
        await load.stop()
        await ctl.stop()
        await watching
        report["load"] = {
            "sent": load.figures.sent,
            "answered": load.figures.answered,
            "errors": len(load.figures.errors),
            "first_errors": load.figures.errors[:5],
            "errors_by_end_of": errors_after,
            "error_seconds_since_start": sorted(
                {round(t - started_wall) for t in load.figures.error_times}
            ),
        }
        report["phases_s"] = PHASES.timings()
        out = Path(os.environ.get("FLEET_500_REPORT", "fleet-500.json"))
        await asyncio.to_thread(out.write_text, json.dumps(report, indent=1))
    assert load.figures.errors == []
