"""The load: the digits test split sent through the SDK as an application would, paced, many
requests in flight, every outcome tallied; and afterwards the same inputs to the cloud alone."""

from __future__ import annotations

import asyncio
import time
import uuid

from mesh import MeshError
from mesh.dev.demo.journal import Journal
from mesh.dev.demo.state import MODEL, DemoConfig, Tally
from mesh.dev.demo.testbed import Testbed
from mesh.sdk.client import InferResult


class ApplicationPart:
    """A side of the demo's application (the requests, the events): it sends through the
    testbed's SDK client, tallies what comes back, and tells the journal."""

    def __init__(
        self, config: DemoConfig, testbed: Testbed, tally: Tally, journal: Journal
    ) -> None:
        self.config = config
        self.testbed = testbed
        self.tally = tally
        self.journal = journal


class LoadGenerator(ApplicationPart):
    async def drive(self) -> None:
        cfg = self.config
        semaphore = asyncio.Semaphore(cfg.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        began = time.monotonic()
        try:
            for i in range(cfg.requests):
                delay = began + i / cfg.rate_per_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._send(i, semaphore))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _send(self, i: int, semaphore: asyncio.Semaphore) -> None:
        x = self.testbed.x
        row = i % len(x)
        tally = self.tally
        async with semaphore:
            tally.sent += 1
            tally.rows_sent[row] += 1
            t0 = time.monotonic()
            try:
                result = await self.testbed.client.infer(
                    MODEL,
                    x[row : row + 1],
                    budget_ms=self.config.budget_ms,
                    request_id=uuid.uuid4().hex,
                )
            except MeshError as error:
                tally.errors[type(error).__name__] += 1
                self.journal.event(f"[red]error reply[/]: {error}")
                return
            ms = (time.monotonic() - t0) * 1000
        self._count(row, result, ms)

    def _count(self, row: int, result: InferResult, ms: float) -> None:
        tally = self.tally
        tally.answered += 1
        tally.by_tier[result.tier] += 1
        tally.latencies_ms.setdefault(result.tier, []).append(ms)
        tally.request_bytes += result.request_bytes
        if result.tier != "edge":
            tally.escalated_bytes += result.request_bytes
        if result.label == int(self.testbed.y[row]):
            tally.correct += 1
        if result.degraded:
            tally.reasons[result.reason or "unknown"] += 1
            tally.degraded_by_tier[result.tier] += 1
        elif (
            tally.traced_id is None
            and result.tier == "cloud"
            and self.journal.now() > 0.1 * self.config.duration_s
        ):
            tally.traced_id = result.id

    async def ask_cloud_alone(self) -> tuple[float, int]:
        """Accuracy of the cloud tier alone on the same inputs, weighted as they were sent."""
        semaphore = asyncio.Semaphore(self.config.concurrency)
        labels: dict[int, int | None] = {}
        x, y = self.testbed.x, self.testbed.y

        async def ask(row: int) -> None:
            async with semaphore:
                result = await self.testbed.client.infer(
                    MODEL, x[row : row + 1], budget_ms=2000, tier="cloud"
                )
                labels[row] = result.label

        await asyncio.gather(*(ask(row) for row in self.tally.rows_sent))
        counts = self.tally.rows_sent
        correct = sum(n for row, n in counts.items() if labels[row] == int(y[row]))
        return correct / max(sum(counts.values()), 1), len(labels)
