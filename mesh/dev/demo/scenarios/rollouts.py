"""The fleet's scenarios, before the link cut, with a controller at the hub driving staged
rollouts (it judges labels too, asking the review queue): the version serving now is pushed; a
tampered version, assigned straight to the edge tier, is refused by both nodes; once the
simulated reviewer has labelled enough of the queue, the learn job trains, signs and rolls out
a better version, which passes its shadow stage on a canary node and then serves on both; then
a version that confuses 3s and 8s begins in shadow too, fails the agreement gate there and is
rolled back without one answer served."""

from __future__ import annotations

import asyncio

import nats

from mesh.dev.demo.journal import Journal
from mesh.dev.demo.scenarios.learning import LearningLoop
from mesh.dev.demo.scenarios.releases import Releaser
from mesh.dev.demo.state import DemoConfig
from mesh.fleet.controller import LABELS_TIMEOUT_S, Controller
from mesh.review.client import ReviewClient

#: the identity the demo's controller and learn job run as (``mesh up``'s controller's).
CONTROLLER = "controller"


async def release_tampered_version(releaser: Releaser) -> None:
    await releaser.release("3-edge", "one byte changed after signing", tamper=True)


async def roll_out_confused_version(releaser: Releaser) -> None:
    # 300 compared answers in its shadow stage: a version agreeing 0.82 where the serving one
    # agrees 0.97 on the same requests passes it 0.2% of the time (exact binomial)
    await releaser.roll_out("4-confused", "3s and 8s swapped, signed", confused=True, samples=300)


async def run_fleet_scenarios(
    config: DemoConfig,
    releaser: Releaser,
    learning: LearningLoop,
    journal: Journal,
    ready: asyncio.Event,
) -> None:
    """The scenarios in order; sets ``ready`` once they have ended."""
    testbed = releaser.testbed
    mesh = testbed.mesh
    await mesh.controller_creds()
    holder: list[ReviewClient] = []

    async def on_error(exc: Exception) -> None:
        for client in holder:
            await client.on_error(exc)

    nc = await nats.connect(
        mesh.hub_url, **mesh.site.hub.client_options(CONTROLLER), name="ctl", error_cb=on_error
    )
    # the controller's identity reads the review queue: labels judge its rollouts, and the
    # learn job exports them
    review = ReviewClient(nc, CONTROLLER, timeout=LABELS_TIMEOUT_S)
    holder.append(review)
    controller = Controller(
        nc, name="controller-demo", tick_s=0.25, lease_s=2.0, offline_after_s=3.0,
        on_event=lambda text: journal.event(f"[cyan]rollout[/]: {text}"), labels=review,
    )  # fmt: skip
    try:
        async with controller:
            await releaser.release(testbed.initial_version, "the version serving now", assign=False)
            await asyncio.sleep(0.02 * config.duration_s)
            await release_tampered_version(releaser)
            await learning.run(ReviewClient(nc, CONTROLLER, timeout=10.0))
            if not config.quick:
                await roll_out_confused_version(releaser)
            ready.set()
    finally:
        await nc.close()
