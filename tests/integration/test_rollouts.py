"""Staged rollouts on a simulated fleet on real servers: a hub and two sites (each linked through
a fault proxy), a cloud node, twelve edge nodes with their agents in one process, steady load
through the SDK, and controllers run as ``mesh controller`` processes or in this one.

- a good version goes through four stages to every node with no failed request, while the
  leading controller is killed and another takes over, and while a site is cut off (it
  converges once healed); a node reporting impossible counters is ignored and flagged;
- a version that confuses two classes is stopped at its canary stage by the agreement gate and
  rolled back; no more nodes than the canary ever served it (watched independently);
- bad rollout requests are refused with nothing written.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.dev.fleetsim.simulate import (
    CONTROLLER,
    FleetSimulation,
    SimLoad,
    site_name,
)
from mesh.dev.models.demo import DemoArtifacts
from mesh.dev.models.faulty import confuse_classes
from mesh.fleet import registry
from mesh.fleet.admin import read_rollouts, start_rollout, summary
from mesh.fleet.controller import Controller
from mesh.fleet.desired import DesiredState, Selector
from mesh.fleet.rollout import Rollout
from mesh.local.supervisor import ChildProcess, child_env
from mesh.models.manifest import copy_as_version
from mesh.topology.streams import nodes_bucket
from mesh.wire import NodeStatus, VersionEvidence, encode_node_status
from tests.fixtures.commands import mesh_cli
from tests.fixtures.fleet import (
    LATENCY_NOT_JUDGED,
    heartbeats,
    hub_args,
    push_version,
    simulation,
    wait_rollout,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

GOOD = "2-edge"
# A cut site catches up once nats-server restarts its mirrors and sources across the leaf link.
# It kicks them when the link comes back, unless a consumer create it sent during the cut is
# still outstanding: that one is waited out (30 s) and retried after a backoff of 10 s per
# failed attempt, so a cut of a minute or more can take about a minute to heal.
HEAL_S = 120.0
BAD = "3-confused"


@pytest.fixture
async def sim(tmp_path: Path, demo: DemoArtifacts) -> AsyncIterator[FleetSimulation]:
    async with simulation(tmp_path, demo, nodes=12, sites=2) as s:
        yield s


async def start_controller(sim: FleetSimulation, name: str) -> ChildProcess:
    child = ChildProcess(
        name,
        [
            sys.executable, "-m", "mesh.cli", "controller", *hub_args(sim), "--name", name,
            "--tick", "0.3", "--lease", "2", "--offline-after", "2",
        ],
        sim.work / f"{name}.log",
        ready_prefix="MESH_CONTROLLER ready",
        env=child_env(),
    )  # fmt: skip
    await child.start()
    return child


def site_to_cut(sim: FleetSimulation, r: Rollout) -> int:
    """A site whose cut leaves the current stage something to be judged on: a node of the stage
    online (the version's side) and one outside it (the baseline, which the judge waits for
    while none of its nodes is online, never skips). Site 1 unless all of site 0 is in the
    stage. With the liar ordered last (its telemetry is suspect from the start), stage 3's 7 of
    the 12 nodes hold all six of site 0 in 6 orders of 792; cutting site 1 would then leave the
    stage waiting for a baseline until the test gave up (perhaps what a CI run met once).
    Seven nodes cannot hold all of both sites, so one of the two always fits."""
    members = set(r.targets[: r.stage_size(r.current_stage)])
    if members == set(r.targets):
        return 1  # the last stage: every target in it, no baseline to wait for
    for index in (1, 0):
        kept = [n for n in r.targets if sim.node_sites.get(n) not in (None, site_name(index))]
        if any(n in members for n in kept) and any(n not in members for n in kept):
            return index
    raise AssertionError(
        f"no site can be cut leaving stage {r.current_stage + 1} a baseline and a node of its "
        f"own online; the order was {r.targets}"
    )


async def served(sim: FleetSimulation) -> dict[str, str]:
    """Node to the version of digits it last reported, from the hub's heartbeats."""
    return {name: b.models.get("digits", "") for name, b in (await heartbeats(sim)).items()}


async def converged(sim: FleetSimulation, version: str, timeout: float) -> None:
    """Wait until every simulated node reports serving ``version`` (the heartbeats are in
    another process's KV bucket: polled)."""
    async with asyncio.timeout(timeout):
        while set((await served(sim)).values()) != {version}:  # noqa: ASYNC110
            await asyncio.sleep(0.3)


async def fake_node(sim: FleetSimulation, stop: asyncio.Event) -> None:
    """A node that beats with counters that cannot be true (more agreed than compared)."""
    nc = await sim.hub.connect()
    js = nc.jetstream(domain="hub")
    try:
        while not stop.is_set():
            beat = NodeStatus(
                node="edge-liar",
                tier="edge",
                models={"digits": sim.initial_version},
                ready=True,
                time=time.time(),
                site="hub",
                evidence={
                    "digits": VersionEvidence(
                        version=sim.initial_version,
                        since=time.time() - 60,
                        requests=10_000,
                        compared=10,
                        agreed=500,
                        audits=10,
                        latency=(0,) * 15,
                    )
                },
            )
            subject = f"$KV.{nodes_bucket('hub')}.edge-liar"
            await js.publish(subject, encode_node_status(beat))
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def test_a_good_version_reaches_every_node_through_four_stages_past_a_dead_leader_and_a_cut(
    sim: FleetSimulation, demo: DemoArtifacts, tmp_path: Path
) -> None:
    assert sim.key is not None
    await push_version(sim, copy_as_version, demo.edge, GOOD, tmp_path / "good")
    load = SimLoad(sim, rate_per_node=4.0)
    await load.start()
    liar_stop = asyncio.Event()
    liar = asyncio.create_task(fake_node(sim, liar_stop))
    first = await start_controller(sim, "ctl-a")
    second: ChildProcess | None = None
    try:
        await asyncio.sleep(2.0)  # every node (and the liar) has beaten, with evidence
        code, out, err = await mesh_cli(
            "rollout", "start", "digits", GOOD, "--stages", "1,25%,50%,100%", "--soak", "2s",
            "--gate", "min_requests=20", "--gate", "min_samples=30",
            "--gate", "max_agreement_drop=0.1", "--gate", LATENCY_NOT_JUDGED,
            "--selector", "tier=edge",
            "--trusted-key", sim.key.public, *hub_args(sim), "--offline-after", "2",
        )  # fmt: skip
        # This test is about the mechanics (stages, a dead leader, a cut); telling a confused
        # version apart is the next test's, on 150 answers. On 15 compared answers a side, a
        # version as good as the baseline failed a stage's 0.05 drop about 3% of the time
        # (exact binomial; CI saw 12 of 15 against 15 of 15): 30 and 0.1 make it 0.2%.
        assert code == 0, err
        assert "over 13 nodes" in out  # the liar looked like a node serving digits

        # Kill the leader once stage 2 runs; another controller finishes the rollout.
        await wait_rollout(sim, lambda r: r.current_stage >= 1)
        await first.kill()
        second = await start_controller(sim, "ctl-b")
        # Cut a site off once stage 3 runs; its nodes converge after the link heals.
        cut = site_to_cut(sim, await wait_rollout(sim, lambda r: r.current_stage >= 2))
        sim.cut(cut)
        try:
            r = await wait_rollout(sim, lambda r: not r.active, timeout=180.0)
        except TimeoutError as exc:
            # what the leading controller did meanwhile, with where the rollout stood
            tail = (sim.work / "ctl-b.log").read_text().splitlines()[-40:]
            raise TimeoutError(f"{exc}\nctl-b's log, its end:\n" + "\n".join(tail)) from None
        versions_during_cut = await served(sim)
        sim.heal(cut)
        healed = time.monotonic()
        await converged(sim, GOOD, timeout=HEAL_S)
        heal_s = time.monotonic() - healed
    finally:
        liar_stop.set()
        await liar
        await load.stop()
        await first.stop()
        if second is not None:
            await second.stop()

    print(json.dumps({"rollout": summary(r), "load": load.figures.answered, "heal_s": heal_s}))
    assert r.state == "completed" and r.outcome == "completed", r.reason
    # every stage ran once, in order, and passed
    assert [s.result for s in r.log] == ["pass"] * 4
    started = [s.started_at for s in r.log]
    assert all(a is not None and b is not None and a < b for a, b in itertools.pairwise(started))
    assert r.max_nodes_serving >= 12 - 6  # at least the nodes of the site not cut
    assert "edge-liar" in r.flagged and "agreed" in r.flagged["edge-liar"]
    log_b = (sim.work / "ctl-b.log").read_text()
    assert "ctl-b leads" in log_b
    # The cut site's nodes were still on the old version when the rollout ended at the hub.
    cut_nodes = [n for n, s in sim.node_sites.items() if s == site_name(cut)]
    assert any(versions_during_cut.get(n) != GOOD for n in cut_nodes) or not cut_nodes
    assert load.figures.errors == []
    assert load.figures.answered > 200
    # once a node answered with the new version it never answered with the old one again
    for node, versions in load.figures.by_node.items():
        assert versions in ([sim.initial_version], [GOOD], [sim.initial_version, GOOD]), node


async def test_a_version_that_confuses_two_classes_is_stopped_at_the_canary_and_rolled_back(
    sim: FleetSimulation, demo: DemoArtifacts, tmp_path: Path
) -> None:
    assert sim.key is not None
    await push_version(sim, confuse_classes, demo.edge, BAD, tmp_path / "bad")
    load = SimLoad(sim, rate_per_node=8.0)
    await load.start()
    nc = await sim.hub.connect(CONTROLLER.name)
    js = nc.jetstream(domain="hub")
    controller = Controller(nc, name="ctl", tick_s=0.3, offline_after_s=2.0)
    most = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, sum(1 for v in (await served(sim)).values() if v == BAD))
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.sleep(1.5)
        await controller.start()
        r = await start_rollout(
            js, "digits", BAD, stages="2,50%,100%", soak="2s",
            gate_terms=["min_requests=20", "min_samples=150", LATENCY_NOT_JUDGED],
            selector=Selector(tier="edge"),
            trusted_keys=[sim.key.public], offline_after_s=2.0,
        )  # fmt: skip
        assert r.canary_nodes == 2
        r = await wait_rollout(sim, lambda r: not r.active)
        await converged(sim, sim.initial_version, timeout=30.0)
    finally:
        stop.set()
        await watcher
        await controller.stop()
        await nc.close()
        await load.stop()

    print(json.dumps({"rollout": summary(r), "most": most}, indent=None))
    assert r.state == "rolled_back" and r.outcome == "rolled_back"
    assert r.failed_gate == "agreement", r.reason
    assert r.figures["canary"] < r.figures["baseline"] - 0.05
    assert r.figures["samples"] >= 150
    assert r.current_stage == 0 and r.log[0].result == "fail"
    assert r.max_nodes_serving <= 2
    assert 1 <= most <= 2
    assert load.figures.errors == []


async def test_bad_rollout_requests_are_refused_and_change_nothing(
    sim: FleetSimulation, demo: DemoArtifacts, tmp_path: Path
) -> None:
    assert sim.key is not None
    await push_version(sim, copy_as_version, demo.edge, GOOD, tmp_path / "good")
    await asyncio.sleep(1.5)
    key = sim.key.public
    other = "ed25519:" + "A" * 43
    bad = [
        (["digits", "9-missing", "--trusted-key", key], "not in the registry"),
        (["digits", GOOD, "--trusted-key", other], "trust"),
        (["digits", GOOD, "--trusted-key", key, "--stages", "1,50%"], "not 100%"),
        (["digits", GOOD, "--trusted-key", key, "--gate", "max_latency=3"], "unknown metric"),
        (["digits", GOOD, "--trusted-key", key, "--selector", "site=nowhere"], "matches no"),
        (["digits", GOOD, "--trusted-key", key, "--stages", "50%,10%,100%"], "smaller"),
    ]
    for args, message in bad:
        code, out, err = await mesh_cli("rollout", "start", *args, *hub_args(sim))
        assert code == 2, (args, out, err)
        assert message in err, (args, err)
    # an assignment more specific than the rollout's selector would outlive it: refused
    nc = await sim.hub.connect(CONTROLLER.name)
    try:
        js = nc.jetstream(domain="hub")
        state = DesiredState(
            "digits", sim.initial_version, Selector(site=site_name(0)), time.time()
        )
        await registry.assign(js, state)
        code, _, err = await mesh_cli(
            "rollout", "start", "digits", GOOD, "--trusted-key", key, *hub_args(sim)
        )
        assert code == 2 and "more specific" in err and state.key in err, err
        assert await read_rollouts(js) == {}
        await (await registry.desired_bucket(js)).delete(state.key)
    finally:
        await nc.close()
    # one rollout at a time per model
    code, _, err = await mesh_cli(
        "rollout", "start", "digits", GOOD, "--trusted-key", key, *hub_args(sim)
    )
    assert code == 0, err
    code, _, err = await mesh_cli(
        "rollout", "start", "digits", GOOD, "--trusted-key", key, *hub_args(sim)
    )
    assert code == 2 and "one rollout per model" in err
    code, out, err = await mesh_cli("rollout", "abort", "digits", *hub_args(sim))
    assert code == 0 and "rolling_back" in out, err
    code, out, _ = await mesh_cli("rollout", "status", "--json", *hub_args(sim))
    (record,) = json.loads(out)
    assert record["state"] == "rolling_back" and record["outcome"] == "aborted"
