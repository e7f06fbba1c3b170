"""The event side of the application: a camera on line 4 publishing its frames as events, the
reader of their stored results, and the alerts the edge's action rule fires on them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgpack

from mesh import MeshError
from mesh.dev.demo.journal import Journal
from mesh.dev.demo.load import ApplicationPart
from mesh.dev.demo.report import EventsSummary
from mesh.dev.demo.state import GATEWAY_TIER, MODEL, DemoConfig, Tally
from mesh.dev.demo.testbed import Testbed
from mesh.sdk.client import EventResult

#: events the demo's publisher sends over the run, as a camera on line 4 would.
DEMO_EVENTS = 200


class EventPublisher(ApplicationPart):
    def __init__(
        self, config: DemoConfig, testbed: Testbed, tally: Tally, journal: Journal
    ) -> None:
        super().__init__(config, testbed, tally, journal)
        self.published = 0
        self.results = 0
        self.errors = 0
        self.alerts = 0

    def summary(self) -> EventsSummary:
        return EventsSummary(self.published, self.results, self.errors, self.alerts)

    async def publish(self) -> None:
        """Publishes the frames over the run, without waiting for their results."""
        cfg = self.config
        x = self.testbed.x
        gap = cfg.duration_s * 0.9 / DEMO_EVENTS
        self.journal.event(f"[cyan]events[/]: a publisher sends {DEMO_EVENTS} frames as events")
        for i in range(DEMO_EVENTS):
            row = (i * 7) % len(x)
            try:
                await self.testbed.client.publish(
                    MODEL, x[row : row + 1], source="app", event_id=f"line4-{i}",
                    budget_ms=cfg.budget_ms,
                )  # fmt: skip
                self.published += 1
            except MeshError as error:
                self.journal.event(f"[red]event not stored[/]: {error}")
            await asyncio.sleep(gap)

    async def read_results(self) -> None:
        # aclosing: cancelled while handling a result, the generator still closes its consumer
        results = self.testbed.client.results(MODEL, source="app")
        async with contextlib.aclosing(results) as stored:
            await self._count_results(stored)

    async def _count_results(self, results: AsyncIterator[EventResult]) -> None:
        async for result in results:
            self.results += 1
            if result.error is not None:
                self.errors += 1
            elif result.degraded and result.tier == GATEWAY_TIER:
                self.tally.event_hard_examples += 1

    async def wait_results(self, timeout_s: float) -> None:
        """Until every published event has its result, or ``timeout_s``; then says how many."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.results < self.published:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        self.journal.event(
            f"events: {self.results}/{self.published} results stored, "
            f"{self.alerts} alerts on mesh.actions.alerts.line4"
        )

    async def on_alert(self, msg: Any) -> None:
        self.alerts += 1
        if self.alerts <= 3:
            with contextlib.suppress(Exception):
                alert = msgpack.unpackb(msg.data)
                self.journal.event(
                    f"[magenta]alert[/] on {msg.subject}: event {alert['event_id']} "
                    f"label {alert['labels']} confidence {alert['confidence']:.2f}"
                )
