"""The link cut and heal: partway through the run the fault proxy resets the site's link to the
hub and refuses it, and later lets connections through again."""

from __future__ import annotations

import asyncio
import contextlib

from mesh import MeshError
from mesh.dev.demo.journal import Journal
from mesh.dev.demo.state import DemoConfig, LinkView
from mesh.dev.demo.testbed import Testbed


async def cut_and_heal_link(
    config: DemoConfig,
    testbed: Testbed,
    view: LinkView,
    journal: Journal,
    fleet_ready: asyncio.Event,
) -> None:
    await asyncio.sleep(config.cut_from * config.duration_s)
    # the improve loop and the rollouts finish first (the review queue and their controller
    # are at the hub), at the latest with an eighth of the run left after the cut
    latest = max(0.0, 1.0 - (config.cut_to - config.cut_from) - 0.125 - config.cut_from)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fleet_ready.wait(), latest * config.duration_s)
    proxy = testbed.proxy
    proxy.refuse(True)
    proxy.reset_all()
    view.link = "cut"
    view.cut_at_s = journal.now()
    journal.event("[bold red]link cut[/]: the fault proxy resets the site's link to the hub")
    await asyncio.sleep((config.cut_to - config.cut_from) * config.duration_s)
    proxy.heal()
    view.link = "reconnecting"
    view.healed_at_s = journal.now()
    journal.event("[green]link restored[/]: the fault proxy lets connections through again")
    with contextlib.suppress(MeshError):
        await testbed.mesh.site.hub.wait_leaf_connections(1, timeout=30)
        view.link = "up"
        view.relinked_at_s = journal.now()
        journal.event("site leaf server reconnected to the hub")
