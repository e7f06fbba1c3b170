"""The soak's chaos: a schedule (pure) of what breaks when, and the steps that break it on the
rig, each recorded as ``{at_s, action}`` lines as it happens.

The schedule leaves the first two minutes alone (the second is the baseline the end is judged
against) and the last minute and a half (the recovery the end is judged on), and between them
runs the steps in turn, one every ``gap_s``, over and over for a long soak:

- kill a hub member (hard, as a crash would), keep it down 20 s, let the supervisor start it;
- flap a site's leaf link: cut it (connections reset, new ones refused) 4 s, back 3 s, three times;
- kill a node (a gateway, an edge, the cloud, in turn) and let its supervisor restart it;
- slow a site's link: 150 ms each way and 200 kB/s, for 30 s;
- fill a site's hard-example stream to its limit while its link is cut, then bring the link
  back for the cloud to take them up;
- restart the controller in the middle of a rollout (a new edge version, canary then all).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from mesh import wire
from mesh.dev.faults import SiteLink
from mesh.dev.soak.rig import ScaleRig
from mesh.errors import MeshError
from mesh.fleet import registry
from mesh.fleet.admin import act, read_rollouts, start_rollout, wait_rollout_end
from mesh.fleet.desired import Selector
from mesh.fleet.release import signed_artifact
from mesh.fleet.rollout import report
from mesh.fleet.signing import SigningKey
from mesh.lifecycle import cancel_and_wait
from mesh.models.manifest import copy_as_version
from mesh.topology import subjects
from mesh.topology.headers import MSG_ID
from mesh.topology.streams import HUB_DOMAIN, hard_example_stream

MODEL = "digits"


class Action(StrEnum):
    KILL_HUB_MEMBER = "kill a hub member"
    FLAP_LINK = "flap a site's leaf link"
    KILL_NODE = "kill a node"
    SLOW_LINK = "slow a site's link"
    FILL_HARD_EXAMPLES = "fill a hard-example stream to its limit"
    RESTART_CONTROLLER = "restart the controller mid-rollout"


#: each kind by the name ``mesh soak --only`` takes (``kill-hub-member``...).
KINDS = {action.name.lower().replace("_", "-"): action for action in Action}

ORDER = (
    Action.KILL_HUB_MEMBER,
    Action.FLAP_LINK,
    Action.KILL_NODE,
    Action.SLOW_LINK,
    Action.FILL_HARD_EXAMPLES,
    Action.RESTART_CONTROLLER,
)


@dataclass(frozen=True)
class Step:
    at_s: float
    action: Action
    #: how many steps of this kind came before (which member, site or node it takes).
    turn: int


def quiet_tail(duration_s: float) -> float:
    """The seconds at the end of a soak no step begins in."""
    return min(90.0, duration_s / 6)


def schedule(duration_s: float, kinds: tuple[Action, ...] = ORDER) -> list[Step]:
    """The steps of a soak of ``duration_s``: one every 55 s from the third minute until a
    minute and a half before the end, the ``kinds`` in turn, over and over. A soak shorter than
    ten minutes gets the same shape shrunk (a fifth quiet at the head, a sixth at the tail)."""
    quiet_head_s, quiet_tail_s = min(120.0, duration_s / 5), quiet_tail(duration_s)
    gap_s = min(55.0, duration_s / 8)
    steps: list[Step] = []
    turns: dict[Action, int] = dict.fromkeys(kinds, 0)
    at = quiet_head_s
    while kinds and at <= duration_s - quiet_tail_s - gap_s / 2:
        action = kinds[len(steps) % len(kinds)]
        steps.append(Step(at, action, turns[action]))
        turns[action] += 1
        at += gap_s
    return steps


class Chaos:
    """Runs a schedule on the rig; ``records`` is what happened, ``rollouts`` how each ended."""

    def __init__(
        self,
        rig: ScaleRig,
        rows: np.ndarray,
        work: Path,
        *,
        started: float,
        say: Callable[[str], None],
    ) -> None:
        self.rig = rig
        self.rows = rows
        self.work = work
        self.started = started
        self.say = say
        self.records: list[dict[str, Any]] = []
        self.rollouts: list[dict[str, Any]] = []
        #: hard examples written to fill a stream, and those its limit dropped.
        self.filled = 0
        self.fill_dropped = 0
        self._background: list[asyncio.Task[None]] = []

    def record(self, action: str) -> None:
        at = round(time.monotonic() - self.started, 1)
        self.records.append({"at_s": at, "action": action})
        self.say(f"chaos at {at:.0f}s: {action}")

    async def run(self, steps: list[Step], until_s: float) -> None:
        """The steps in order, each at its time or as soon as the one before has ended; none
        is begun after ``until_s`` (the quiet end the soak is judged on)."""
        for done, step in enumerate(steps):
            if time.monotonic() - self.started > until_s:
                self.record(f"{len(steps) - done} steps left out: the ones before ran late")
                return
            delay = self.started + step.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await self._do(step)
            except (MeshError, TimeoutError) as error:
                # a step that cannot finish is a finding of the soak, not the end of it
                self.record(f"{step.action} did not finish: {error}")

    async def finish(self, timeout: float) -> None:
        """Until steps still running in the background (a rollout to its end) are done."""
        if self._background:
            await asyncio.wait(self._background, timeout=timeout)
        await cancel_and_wait(self._background)

    async def _do(self, step: Step) -> None:
        sites = self.rig.site_names
        site = sites[step.turn % len(sites)]
        match step.action:
            case Action.KILL_HUB_MEMBER:
                await self.kill_hub_member(step.turn)
            case Action.FLAP_LINK:
                await self.flap(self.rig.links[site])
            case Action.KILL_NODE:
                await self.kill_node(step.turn, site)
            case Action.SLOW_LINK:
                await self.slow(self.rig.links[site])
            case Action.FILL_HARD_EXAMPLES:
                await self.fill(site)
            case Action.RESTART_CONTROLLER:
                await self.restart_controller(step.turn)

    def _supervisor(self) -> Any:
        supervisor = self.rig.mesh.supervisor
        if supervisor is None:
            raise MeshError("the rig is not supervised")
        return supervisor

    async def kill_hub_member(self, turn: int) -> None:
        hub = self.rig.mesh.hub
        member = hub.members[turn % hub.size]
        name = f"nats-server {member.config.name}"
        supervisor = self._supervisor()
        restarts = supervisor.restarts[name]
        supervisor.hold(name)
        self.record(f"kill hub member {member.config.name} (down 20 s)")
        await member.kill()
        await asyncio.sleep(20.0)
        supervisor.release(name)
        await supervisor.wait_back(name, restarts, timeout=60.0)
        await hub.wait_jetstream()
        self.record(f"hub member {member.config.name} back")

    async def flap(self, link: SiteLink) -> None:
        self.record(f"flap {link.site}'s leaf link: 3 times down 4 s, up 3 s")
        for _ in range(3):
            link.refuse(True)
            link.reset_all()
            await asyncio.sleep(4.0)
            link.heal()
            await asyncio.sleep(3.0)

    async def kill_node(self, turn: int, site: str) -> None:
        spots = self.rig.mesh.spots
        tier = ("gateway", "edge", "cloud")[turn % 3]
        name = next(
            n for n, s in spots.items() if s.tier == tier and (s.site is None or s.site == site)
        )
        supervisor = self._supervisor()
        restarts = supervisor.restarts[name]
        self.record(f"kill node {name}")
        await self.rig.mesh.nodes[name].kill()
        await supervisor.wait_back(name, restarts, timeout=120.0)
        self.record(f"node {name} restarted by its supervisor")

    async def slow(self, link: SiteLink) -> None:
        self.record(f"slow {link.site}'s link: 150 ms each way, 200 kB/s, for 30 s")
        link.set_latency(150.0)
        link.set_bandwidth(200_000)
        await asyncio.sleep(30.0)
        link.heal()
        self.record(f"{link.site}'s link fast again")

    async def fill(self, site: str) -> None:
        """The site cut off, its gateway's hard-example stream filled past its limit as a long
        outage would, then the link back."""
        link = self.rig.links[site]
        nc = self.rig.site_nc(site)
        js = nc.jetstream(domain=site)
        stream = hard_example_stream("gateway")
        limits = self.rig.mesh.topology().limits.hard_examples
        link.refuse(True)
        link.reset_all()
        self.record(f"cut {site}'s link and fill its {stream} to {limits.max_bytes} bytes")
        before = (await js.stream_info(stream)).state
        written = 0
        while True:
            batch = [self._example(site, written + i) for i in range(200)]
            acks = [
                await js.publish(
                    subjects.hard_examples("gateway", MODEL), data, headers={MSG_ID: ex_id}
                )
                for ex_id, data in batch
            ]
            written += len(acks)
            state = (await js.stream_info(stream)).state
            if state.first_seq > max(before.first_seq, 1) or written > 200_000:
                break
        dropped = state.first_seq - max(before.first_seq, 1)
        self.filled += written
        self.fill_dropped += dropped
        link.heal()
        self.record(
            f"{site}'s link back: {written} hard examples written, {state.bytes} bytes kept, "
            f"{dropped} oldest dropped by the limit"
        )

    def _example(self, site: str, i: int) -> tuple[str, bytes]:
        ex_id = f"fill-{site}-{len(self.records)}-{i}"
        request = wire.InferRequest(
            ex_id, MODEL, {"input": self.rows[i % len(self.rows)][None, :]}, 1000.0
        )
        example = wire.HardExample(
            id=ex_id, model=MODEL, tier="gateway", node=f"{site}-gateway-0",
            reason="timeout", created_at=time.time(), request=request,
            answer=wire.RecordedAnswer(labels=[0], confidence=0.5, model_version="fill"),
        )  # fmt: skip
        return ex_id, wire.encode_hard_example(example)

    async def restart_controller(self, turn: int) -> None:
        mesh = self.rig.mesh
        if mesh.controller is None or mesh.signing_public is None:
            raise MeshError("the rig runs no controller")
        version = f"soak-{turn + 2}"
        js = self.rig.hub_nc.jetstream(domain=HUB_DOMAIN)
        manifest = await asyncio.to_thread(
            copy_as_version, self.rig.demo.edge_int8, version, self.work / "releases" / version
        )
        key = await asyncio.to_thread(SigningKey.load, mesh.signing_key_path)
        await registry.push(js, await asyncio.to_thread(signed_artifact, manifest, key))
        rollout = await start_rollout(
            js, MODEL, version, stages="1,100%", soak="3s",
            gate_terms=["min_requests=30", "min_samples=30", "max_wait_s=90"],
            selector=Selector(tier="edge"), trusted_keys=[mesh.signing_public], by="soak",
        )  # fmt: skip
        self.record(f"rollout of {MODEL}@{version} started: a canary, then every edge")
        async with asyncio.timeout(120):
            while True:
                current = (await read_rollouts(js)).get(MODEL)
                # the controller took it up: its first stage is deploying
                taken = current is not None and current.id == rollout.id and current.log
                if taken and current is not None and current.log[0].started_at:
                    break
                await asyncio.sleep(0.5)
        name = f"controller {mesh.controller.name}"
        supervisor = self._supervisor()
        restarts = supervisor.restarts[name]
        supervisor.hold(name)
        self.record(f"kill the controller mid-rollout ({mesh.controller.name})")
        await mesh.controller.kill()
        await asyncio.sleep(5.0)
        supervisor.release(name)
        await supervisor.wait_back(name, restarts, timeout=60.0)
        self.record("controller restarted by its supervisor")
        self._background.append(asyncio.create_task(self._follow(js, rollout.id, version)))

    async def _follow(self, js: Any, rollout_id: str, version: str) -> None:
        current = await wait_rollout_end(js, MODEL, rollout_id, timeout_s=300.0, poll_s=1.0)
        if current is None:
            current = await act(js, MODEL, "abort", "soak (out of time)")
        summary = report(current)
        self.rollouts.append(summary)
        self.record(f"rollout of {MODEL}@{version}: {json.dumps(summary.get('outcome'))}")


__all__ = ["KINDS", "ORDER", "Action", "Chaos", "Step", "quiet_tail", "schedule"]
