"""``mesh fleet simulate``: the simulated fleet under load until stopped, with how to reach it
printed first and its cost per node every 10 s."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from mesh.dev.fleetsim.simulate import CONTROLLER, FleetSimulation, SimLoad, SimulationSettings
from mesh.dev.models.demo import DemoArtifacts
from mesh.fleet.controller import Controller
from mesh.services.stopping import Shutdown

Say = Callable[..., None]


async def run_simulation(
    settings: SimulationSettings,
    demo: DemoArtifacts,
    *,
    rate: float,
    duration: float | None,
    with_controller: bool,
    shutdown: Shutdown,
    say: Say,
) -> None:
    """Until ``shutdown`` (or ``duration``): prints MESH_NATS_URL, the controller's credentials
    and the trusted key on stdout (``mesh rollout`` and ``mesh fleet status`` work against it),
    then the load and each node's cost on stderr."""
    started = time.monotonic()
    async with FleetSimulation(settings, demo) as sim:
        assert sim.key is not None
        say(f"MESH_NATS_URL={sim.hub.url}")
        say(f"MESH_CREDS={sim.creds(CONTROLLER)}")
        say(f"MESH_TRUSTED_KEYS={sim.key.public}")
        say(
            f"{len(sim.node_names)} nodes in {settings.sites} sites started in "
            f"{time.monotonic() - started:.1f}s; signing key "
            f"{settings.work_dir / 'fleet' / 'signing.key'}",
            err=True,
        )
        load = SimLoad(sim, rate)
        await load.start()
        nc = await sim.hub.connect(CONTROLLER.name) if with_controller else None
        ctl = Controller(nc, name="controller-sim") if nc is not None else None
        if ctl is not None:
            await ctl.start()
        try:
            await _report(sim, load, started, duration, shutdown, say)
        finally:
            if ctl is not None:
                await ctl.stop()
            if nc is not None:
                await nc.close()
            await load.stop()


async def _report(
    sim: FleetSimulation,
    load: SimLoad,
    started: float,
    duration: float | None,
    shutdown: Shutdown,
    say: Say,
) -> None:
    last = time.monotonic()
    cpu_last = (await sim.process_figures())["cpu_s"]
    while not shutdown.requested:
        if duration is not None and time.monotonic() - started > duration:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shutdown.wait(), 10.0)
        figures = await sim.process_figures()
        now = time.monotonic()
        cpu_share = (figures["cpu_s"] - cpu_last) / (now - last) / max(1, len(sim.node_names))
        last, cpu_last = now, figures["cpu_s"]
        f = load.figures
        say(
            f"answered {f.answered}/{f.sent}, errors {len(f.errors)}, versions "
            f"{dict(f.versions)}; {figures['rss_mb_per_node']} MB and "
            f"{cpu_share * 1000:.2f} ms CPU/s per node",
            err=True,
        )
