"""A demo run: the mesh under test, the load, the live view and the watchers, with the scenarios
running beside the load, and the report at the end (``demo_main``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats.errors
from rich.console import Console

from mesh import MeshError
from mesh.dev.demo.battery import BatteryWatch
from mesh.dev.demo.fleetwatch import FleetWatch
from mesh.dev.demo.journal import Journal
from mesh.dev.demo.load import LoadGenerator
from mesh.dev.demo.observer import GatewayObserver
from mesh.dev.demo.panel import render_report
from mesh.dev.demo.publisher import EventPublisher
from mesh.dev.demo.report import DemoReport, TraceSummary, build_report
from mesh.dev.demo.reviewer import SimulatedReviewer
from mesh.dev.demo.scenarios.drain import drain
from mesh.dev.demo.scenarios.learning import LearningLoop
from mesh.dev.demo.scenarios.link import cut_and_heal_link
from mesh.dev.demo.scenarios.releases import Releaser
from mesh.dev.demo.scenarios.rollouts import run_fleet_scenarios
from mesh.dev.demo.state import BATTERY_NODE, MODEL, DemoConfig, LinkView, ReviewView, Tally
from mesh.dev.demo.testbed import Testbed
from mesh.dev.demo.view import show_live, thousands
from mesh.local.phases import Phases
from mesh.review.client import ReviewClient
from mesh.topology import subjects


class DemoRun:
    """One demo run: its parts share what the run observes (the tally, the link view, the
    journal); the testbed owns every process and connection."""

    def __init__(self, config: DemoConfig, console: Console) -> None:
        self.config = config
        self.console = console
        self.tally = Tally()
        self.view = LinkView()
        self.journal = Journal(self.view)
        self.phases = Phases("mesh demo")
        self.testbed = Testbed(config, console, self.phases)
        self.load = LoadGenerator(config, self.testbed, self.tally, self.journal)
        self.observer = GatewayObserver(config, self.testbed, self.view, self.journal)
        self.publisher = EventPublisher(config, self.testbed, self.tally, self.journal)
        self.fleet = FleetWatch(self.testbed, self.journal)
        self.releaser = Releaser(self.testbed, self.journal)
        self.review = ReviewView()
        self.learning = LearningLoop(config, self.releaser, self.review, self.journal)
        self.reviewer: SimulatedReviewer | None = None
        self.battery = BatteryWatch(config, self.testbed, self.view.battery, self.journal)
        #: set once the rollouts that run before the link cut have ended.
        self.fleet_ready = asyncio.Event()

    @contextlib.asynccontextmanager
    async def started(self) -> AsyncIterator[None]:
        async with self.testbed.running():
            site = self.testbed.site_nc
            await site.subscribe("mesh.telemetry.>", cb=self.fleet.on_telemetry)
            await site.subscribe("mesh.actions.alerts.>", cb=self.publisher.on_alert)
            await site.subscribe(subjects.telemetry(BATTERY_NODE), cb=self.battery.on_step)
            async with self.phases.phase("warm up", 90, "the cloud to answer from the site"):
                await self.testbed.warm_up()
            cfg = self.config
            self.reviewer = SimulatedReviewer(
                ReviewClient(self.testbed.reviewer_nc, "reviewer"),
                (self.testbed.x, self.testbed.y),
                self.review,
                self.journal,
                delay_s=cfg.reviewer_delay_s,
                concurrency=cfg.reviewer_concurrency,
                error_rate=cfg.reviewer_error_rate,
            )
            try:
                yield
            finally:
                await self.reviewer.stop()

    async def run(self) -> DemoReport:
        async with self.started():
            self._announce()
            # the load is paced: three times its length covers a slow machine, not a hang
            deadline = self.config.duration_s * 3 + 180
            async with self.phases.phase("load and scenarios", deadline) as phase:
                phase.waiting_for("the load, the link cut, the rollouts and the events' results")
                run_s, drain_s = await self._live()
            assert self.reviewer is not None
            # stopped before the queue's last figures: its labels and theirs tell one moment
            await self.reviewer.stop(settle_s=3.0)
            with contextlib.suppress(MeshError):
                await self.reviewer.refresh()
            with self.console.status("asking the cloud tier alone the same questions"):
                async with self.phases.phase("cloud alone", 180, "the cloud's answers"):
                    cloud_accuracy, unique = await self.load.ask_cloud_alone()
                async with aiohttp.ClientSession() as session:
                    metrics = await self.observer.gateway_metrics(session)
                await asyncio.sleep(0.5)
                trace_id, spans = self.testbed.trace_of(self.tally.traced_id)
                with contextlib.suppress(MeshError, nats.errors.Error, asyncio.TimeoutError):
                    await self.battery.poll_once()
                fleet = await self.fleet.summary()
                events = self.publisher.summary()
            return build_report(
                self.config,
                self.tally,
                self.view,
                run_s=run_s,
                drain_s=drain_s,
                cloud_accuracy=cloud_accuracy,
                cloud_inputs=unique,
                gateway_figures=metrics,
                trace=TraceSummary.of(trace_id, self.tally.traced_id, spans),
                fleet=fleet,
                events=events,
                rollouts=list(self.releaser.rollouts),
                review=self.reviewer.summary(run_s / 60.0),
                improvement=self.learning.improvement,
            )

    def _announce(self) -> None:
        cfg = self.config
        self.console.print(
            f"\n[bold]sending {thousands(cfg.requests)} requests[/] (the digits test split, "
            f"{len(self.testbed.x)} rows, repeated) at {cfg.rate_per_s:.0f}/s, up to "
            f"{cfg.concurrency} in flight, budget {cfg.budget_ms:.0f} ms.\n"
            "The edge answers what it is sure of and passes the rest up to the gateway, "
            "which passes what it is unsure of to the cloud.\n"
            f"The edge starts on a deliberately weak version of {MODEL}. What the tiers "
            "sample goes to a review queue at the hub, which a simulated reviewer labels; "
            f"after {cfg.learn_after} labels the loop trains, signs and rolls out a better "
            "version, beginning in shadow, and a confused version is stopped in shadow.\n"
            f"From {cfg.cut_from:.0%} of the run (once that is done) the site's link to the "
            "hub is cut for a while: the gateway answers on its own (degraded) and keeps those "
            "cases as hard examples for the cloud.\n"
            f"{BATTERY_NODE} is a Raspberry Pi 4 on battery: once the rollouts are done its "
            "battery reports lower, and its power governor takes the cheapest savings until the "
            "node's ledger is back within its budget.\n",
            style="default",
        )

    async def _live(self) -> tuple[float, float]:
        """The load with the scenarios beside it, then the drain: seconds of each."""
        cfg, journal = self.config, self.journal
        journal.restart()
        stop = asyncio.Event()
        display = asyncio.create_task(
            show_live(self.console, cfg, self.tally, self.view, self.review, journal, stop)
        )
        assert self.reviewer is not None
        await self.reviewer.start()
        poller = asyncio.create_task(self.observer.poll())
        battery = asyncio.create_task(self.battery.poll())
        squeeze = asyncio.create_task(self.battery.squeeze(self.fleet_ready))
        cut = asyncio.create_task(
            cut_and_heal_link(cfg, self.testbed, self.view, journal, self.fleet_ready)
        )
        releases = asyncio.create_task(
            run_fleet_scenarios(cfg, self.releaser, self.learning, journal, self.fleet_ready)
        )
        publisher = asyncio.create_task(self.publisher.publish())
        reader = asyncio.create_task(self.publisher.read_results())
        try:
            await self.load.drive()
            await cut
            await releases
            await publisher
            await self.publisher.wait_results(10)
            run_s = journal.now()
            drain_s = await drain(cfg, self.view, self.tally, journal)
        finally:
            stop.set()
            cut.cancel()
            releases.cancel()
            publisher.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, MeshError):
                await reader
            await display
            for watcher in (poller, battery, squeeze):
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            with contextlib.suppress(asyncio.CancelledError):
                await cut
        return run_s, drain_s


async def _run_interruptibly(run: DemoRun) -> DemoReport:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopping = False

    def interrupt() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        return await run.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def demo_main(cache: Path, requests: int | None, quick: bool, report_path: Path | None) -> int:
    """Run the demo; the exit status: 0, 1 when a request was lost or failed, 130 interrupted."""
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console = Console(highlight=False, soft_wrap=True, width=110)
    config = DemoConfig.of(cache, requests, quick)
    run = DemoRun(config, console)
    try:
        report = asyncio.run(_run_interruptibly(run))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]interrupted[/]: every process the demo started is stopped")
        return 130
    render_report(report, console)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"report written to {report_path}")
    status = 0
    if not report.passed:
        console.print(
            f"[bold red]FAILED[/]: {report.lost} requests lost, "
            f"{sum(report.errors.values())} error replies"
        )
        status = 1
    # the last line: where the run could be watched (`mesh up` keeps a console running)
    console.print(f"operator console was at {run.testbed.console_url}", soft_wrap=True)
    return status
