"""The fleet's scenarios, before the link cut, with a controller at the hub driving staged
rollouts: the version serving now is pushed; a good signed edge version rolls out to a canary
node, is judged on live evidence (agreement with the gateway included) and then reaches both
nodes; a tampered version, assigned straight to the edge tier, is refused by both nodes; a
version that confuses 3s and 8s rolls out to its canary, fails the agreement gate and is rolled
back automatically."""

from __future__ import annotations

import asyncio

import nats

from mesh.dev.demo.journal import Journal
from mesh.dev.demo.scenarios.releases import Releaser
from mesh.dev.demo.state import DemoConfig
from mesh.fleet.controller import Controller


async def roll_out_good_version(releaser: Releaser) -> None:
    # a good version needs fewer samples to pass than a bad one to be caught surely: 40 lets
    # it reach both nodes before the link cut
    await releaser.roll_out("2-edge", "the float edge MLP, signed", samples=40)


async def release_tampered_version(releaser: Releaser) -> None:
    await releaser.release("3-edge", "one byte changed after signing", tamper=True)


async def roll_out_confused_version(releaser: Releaser) -> None:
    # 300 compared answers at the canary: a version agreeing 0.82 where the baseline agrees
    # 0.97 passes it 0.2% of the time (exact binomial); 150 let it pass 5%, and it reached
    # both nodes before its rollback (seen in CI)
    await releaser.roll_out("3-confused", "3s and 8s swapped, signed", confused=True, samples=300)


async def run_fleet_scenarios(
    config: DemoConfig, releaser: Releaser, journal: Journal, ready: asyncio.Event
) -> None:
    """The scenarios in order; sets ``ready`` once they have ended."""
    testbed = releaser.testbed
    mesh = testbed.mesh
    await mesh.controller_creds()
    nc = await nats.connect(mesh.hub_url, **mesh.site.hub.client_options("controller"), name="ctl")
    controller = Controller(
        nc, name="controller-demo", tick_s=0.25, lease_s=2.0, offline_after_s=3.0,
        on_event=lambda text: journal.event(f"[cyan]rollout[/]: {text}"),
    )  # fmt: skip
    try:
        async with controller:
            await releaser.release(testbed.initial_version, "the version serving now", assign=False)
            await asyncio.sleep(0.03 * config.duration_s)
            await roll_out_good_version(releaser)
            await release_tampered_version(releaser)
            if not config.quick:
                await roll_out_confused_version(releaser)
            ready.set()
    finally:
        await nc.close()
