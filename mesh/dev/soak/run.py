"""A soak run: the rig started, the load on every site, the chaos schedule beside it, the
processes and streams sampled, and the report once every process is stopped; every phase within
a deadline that names what it waited for."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mesh.dev.models.demo import ensure_demo
from mesh.dev.soak.chaos import ORDER, Action, Chaos, quiet_tail, schedule
from mesh.dev.soak.load import EventLoad, RequestLoad, close_all, connect_sites
from mesh.dev.soak.report import MinuteRecord, SoakReport, machine
from mesh.dev.soak.rig import ProcessFigures, RigConfig, ScaleRig
from mesh.dev.soak.tally import EventTally, LoadTally
from mesh.errors import MeshError
from mesh.lifecycle import cancel_and_wait
from mesh.local.phases import Phases
from mesh.sdk.client import MeshClient
from mesh.topology.streams import HardExampleLimits, StreamLimits

Say = Callable[[str], None]


@dataclass
class SoakConfig:
    minutes: float = 10.0
    sites: int = 3
    hub_cluster: int = 3
    #: requests per second over all sites, and events.
    rate_per_s: float = 30.0
    events_per_s: float = 3.0
    budget_ms: float = 1000.0
    edge_replicas: int = 2
    #: each gateway's hard-example stream (and the hub's learn stream): small, to be filled.
    hard_example_bytes: int = 2 * 1024 * 1024
    #: seconds between samples of every process and stream.
    sample_s: float = 15.0
    chaos: bool = True
    #: the kinds of chaos step to run (default: every kind, in ``chaos.ORDER``).
    only: tuple[Action, ...] = ORDER

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0


@dataclass
class _Samples:
    """What the samples of one minute saw: the last memory figure, the fewest tasks and
    descriptors (a count taken while requests are in flight is not a leak), the last streams."""

    rss_mb: dict[str, float] = field(default_factory=dict)
    #: CPU seconds of each process at the first and the last sample, and when they were taken.
    cpu_first: tuple[float, dict[str, float]] = (0.0, {})
    cpu_last: tuple[float, dict[str, float]] = (0.0, {})
    fds: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    streams: dict[str, dict[str, int]] = field(default_factory=dict)
    hard_examples: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    #: bytes each site's link carried (up, down) at the first and the last sample.
    links_first: tuple[float, dict[str, tuple[int, int]]] = (0.0, {})
    links_last: tuple[float, dict[str, tuple[int, int]]] = (0.0, {})

    def add_links(self, carried: dict[str, tuple[int, int]]) -> None:
        now = time.monotonic()
        if not self.links_first[1]:
            self.links_first = (now, carried)
        self.links_last = (now, carried)

    def link_bytes_per_s(self) -> dict[str, dict[str, float]]:
        (t0, first), (t1, last) = self.links_first, self.links_last
        if t1 <= t0:
            return {}
        return {
            site: {
                "up": round((last[site][0] - up) / (t1 - t0)),
                "down": round((last[site][1] - down) / (t1 - t0)),
            }
            for site, (up, down) in first.items()
            if site in last
        }

    def add(self, figures: ProcessFigures) -> None:
        self.rss_mb.update(figures.rss_mb)
        now = time.monotonic()
        if not self.cpu_first[1]:
            self.cpu_first = (now, dict(figures.cpu_s))
        self.cpu_last = (now, dict(figures.cpu_s))
        for name, n in figures.fds.items():
            self.fds[name] = min(n, self.fds.get(name, n))
        for name, n in figures.tasks.items():
            self.tasks[name] = min(n, self.tasks.get(name, n))

    def cpu_ms_per_s(self) -> dict[str, float]:
        """CPU milliseconds each process spent per second of the minute (a process restarted
        within it is left out)."""
        (t0, first), (t1, last) = self.cpu_first, self.cpu_last
        if t1 <= t0:
            return {}
        return {
            name: round((last[name] - cpu) / (t1 - t0) * 1000.0, 1)
            for name, cpu in first.items()
            if name in last and last[name] >= cpu
        }


class SoakRun:
    def __init__(self, config: SoakConfig, say: Say, work: Path, cache: Path) -> None:
        self.config = config
        self.say = say
        self.work = work
        self.cache = cache
        self.phases = Phases("mesh soak")
        self.tally = LoadTally()
        self.events = EventTally()
        self.samples: dict[int, _Samples] = {}
        self.started = 0.0

    def _rig_config(self) -> RigConfig:
        cfg = self.config
        return RigConfig(
            sites=cfg.sites,
            hub_cluster=cfg.hub_cluster,
            edge_replicas=cfg.edge_replicas,
            limits=StreamLimits(hard_examples=HardExampleLimits(max_bytes=cfg.hard_example_bytes)),
            audit_rate=0.2,
            operated=True,
        )

    async def run(self) -> SoakReport:
        started_info = await asyncio.to_thread(machine)
        async with self.phases.phase("models", 900, "the demo models' build"):
            demo = await asyncio.to_thread(ensure_demo, self.cache)
        rows = np.load(demo.test)["x"].astype(np.float32)
        rig = ScaleRig(demo, self.work / "mesh", self._rig_config())
        clients: dict[str, MeshClient] = {}
        try:
            self.say(
                f"starting {self.config.hub_cluster} hub servers and {self.config.sites} sites"
            )
            await rig.start(self.phases)
            supervisor = asyncio.create_task(rig.mesh.supervise(self.say))
            try:
                clients = await self._warm_up(rig)
                chaos = Chaos(rig, rows, self.work, started=0.0, say=self.say)
                await self._soak(rig, clients, rows, chaos)
                await self._drain(rig, chaos)
            finally:
                await close_all(clients)
                await cancel_and_wait(supervisor)
            minutes = await self._minutes()
            buffered, delivered = await rig.hard_examples()
            supervised = rig.mesh.supervisor
            restarts = supervised.restarts if supervised is not None else {}
            restarted = {name: n for name, n in restarts.items() if n}
        finally:
            async with self.phases.phase("stop", 120, "every process the soak started to end"):
                await rig.stop()
        started_info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
        return SoakReport(
            config=asdict(self.config),
            load=self.tally,
            events=self.events,
            minutes=minutes,
            chaos=chaos.records,
            rollouts=chaos.rollouts,
            restarted=restarted,
            hard_examples={
                "buffered_at_end": buffered,
                "delivered": delivered,
                "filled": chaos.filled,
                "dropped_by_limit": chaos.fill_dropped,
            },
            phases=self.phases.timings(),
            machine=started_info,
        )

    async def _warm_up(self, rig: ScaleRig) -> dict[str, MeshClient]:
        mesh = rig.mesh
        async with self.phases.phase("warm up", 120) as phase:
            clients = await connect_sites(
                {s: mesh.site_url_of(s) for s in rig.site_names}, mesh.client_options()
            )
            row = np.zeros((1, 64), dtype=np.float32)
            for site, client in clients.items():
                phase.waiting_for(f"the cloud to answer from {site}")
                while True:
                    with contextlib.suppress(MeshError):
                        answer = await client.infer("digits", row, budget_ms=2000, tier="cloud")
                        if answer.tier == "cloud":
                            break
                    await asyncio.sleep(0.5)
        return clients

    async def _soak(
        self, rig: ScaleRig, clients: dict[str, MeshClient], rows: np.ndarray, chaos: Chaos
    ) -> None:
        cfg = self.config
        self.started = time.monotonic()
        chaos.started = self.started
        requests = RequestLoad(
            clients, rows, self.tally, rate_per_s=cfg.rate_per_s, budget_ms=cfg.budget_ms,
            started=self.started,
        )  # fmt: skip
        publisher = EventLoad(clients, rows, self.events, rate_per_s=cfg.events_per_s)
        publisher.start_readers()
        stop = asyncio.Event()
        steps = schedule(cfg.duration_s, cfg.only) if cfg.chaos else []
        self.say(
            f"soak: {cfg.rate_per_s:g} requests/s and {cfg.events_per_s:g} events/s over "
            f"{cfg.sites} sites for {cfg.minutes:g} min; {len(steps)} chaos steps"
        )
        tasks = [
            asyncio.create_task(requests.run(stop), name="soak-requests"),
            asyncio.create_task(publisher.run(stop), name="soak-events"),
            asyncio.create_task(self._sample(rig, stop), name="soak-sampler"),
        ]
        until = cfg.duration_s - quiet_tail(cfg.duration_s)
        chaos_task = asyncio.create_task(chaos.run(steps, until), name="soak-chaos")
        deadline = cfg.duration_s + 600
        try:
            async with self.phases.phase("soak", deadline) as phase:
                phase.waiting_for(f"{cfg.minutes:g} minutes of load and chaos")
                await asyncio.sleep(cfg.duration_s)
                stop.set()
                phase.waiting_for("the chaos schedule's last step")
                await chaos_task
                phase.waiting_for("the requests sent last (their budget)")
                await requests.drain(timeout=cfg.budget_ms / 1000 + 5)
                await asyncio.gather(*tasks)
            async with self.phases.phase("results", 120, "every event's result"):
                await publisher.wait_results(timeout=90)
        finally:
            stop.set()
            await cancel_and_wait([*tasks, chaos_task])
            await publisher.stop_readers()

    async def _drain(self, rig: ScaleRig, chaos: Chaos) -> None:
        async with self.phases.phase("drain", 420) as phase:
            phase.waiting_for("the rollout the chaos started to end")
            await chaos.finish(timeout=300)
            phase.waiting_for("every site's hard examples taken up by the cloud")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(90):
                    while (await rig.hard_examples())[0] > 0:  # noqa: ASYNC110 (other processes)
                        await asyncio.sleep(1.0)

    async def _sample(self, rig: ScaleRig, stop: asyncio.Event) -> None:
        while not stop.is_set():
            minute = int((time.monotonic() - self.started) // 60)
            if minute >= self.config.minutes:
                return
            samples = self.samples.setdefault(minute, _Samples())
            samples.add(await rig.process_figures())
            samples.add_links({site: link.bytes_carried() for site, link in rig.links.items()})
            samples.streams = await rig.stream_figures()
            buffered, delivered = await rig.hard_examples()
            samples.hard_examples = {"buffered": buffered, "delivered": delivered}
            samples.events = {
                "published": len(self.events.published),
                "results": sum(self.events.results.values()),
            }
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.sample_s)

    async def _minutes(self) -> list[MinuteRecord]:
        records = []
        for minute in range(int(self.config.minutes)):
            samples = self.samples.get(minute, _Samples())
            records.append(
                MinuteRecord(
                    minute=minute + 1,
                    load=self.tally.minute(minute),
                    rss_mb=samples.rss_mb,
                    cpu_ms_per_s=samples.cpu_ms_per_s(),
                    link_bytes_per_s=samples.link_bytes_per_s(),
                    fds=samples.fds,
                    tasks=samples.tasks,
                    streams=samples.streams,
                    hard_examples=samples.hard_examples,
                    events=samples.events,
                )
            )
        return records


async def run_soak(config: SoakConfig, say: Say, cache: Path, work: Path | None = None) -> Any:
    """Run a soak in ``work`` (default: a temporary folder, removed at the end)."""
    if work is not None:
        return await SoakRun(config, say, work, cache).run()
    with tempfile.TemporaryDirectory(prefix="mesh-soak-") as tmp:
        return await SoakRun(config, say, Path(tmp), cache).run()


__all__ = ["SoakConfig", "SoakRun", "run_soak"]
