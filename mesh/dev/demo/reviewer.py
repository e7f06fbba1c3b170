"""The demo's reviewer: simulated, and said to be. It reads the review queue through the review
API as a reviewer identity (``mesh review`` would), and labels each item ``delay_s`` after it
was queued with the class the demo's ground truth gives the item's input, a share of them
(``error_rate``) wrong on purpose, as people sometimes are. An item whose input stayed below
the hub (residency) or that the ground truth does not know is skipped."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from typing import Any

import numpy as np

from mesh import MeshError
from mesh.dev.demo.journal import Journal
from mesh.dev.demo.report import ReviewSummary
from mesh.dev.demo.state import MODEL, ReviewView
from mesh.learn.export import row_of
from mesh.lifecycle import cancel_and_wait
from mesh.review.client import ReviewClient


class SimulatedReviewer:
    def __init__(
        self,
        client: ReviewClient,
        truth: tuple[np.ndarray, np.ndarray],
        view: ReviewView,
        journal: Journal,
        *,
        delay_s: float,
        concurrency: int,
        error_rate: float,
        seed: int = 0,
    ) -> None:
        self.client = client
        self.view = view
        self.journal = journal
        self.delay_s = delay_s
        self.error_rate = error_rate
        x, y = truth
        #: the class of each input the load may send, by its values.
        self.truth = {_key(x[i]): int(y[i]) for i in range(len(y))}
        self._random = random.Random(seed)
        self._slots = asyncio.Semaphore(concurrency)
        self._seen: set[str] = set()
        self._working: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        #: seconds from an item's queueing to its label, each.
        self.latencies: list[float] = []
        self.failures = 0

    async def start(self) -> None:
        self.journal.event(
            f"[magenta]simulated reviewer[/] (not a person): labels each queued item "
            f"{self.delay_s:g} s after it is queued from the demo's ground truth, "
            f"{self.error_rate:.0%} of them wrong on purpose"
        )
        self._task = asyncio.create_task(self._poll(), name="simulated-reviewer")

    async def stop(self, settle_s: float = 0.0) -> None:
        """Stop taking items; the labels under way get ``settle_s`` to be given (a label cut
        off after it was sent would count at the desk, not here)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._working and settle_s > 0:
            await asyncio.wait(set(self._working), timeout=settle_s)
        await cancel_and_wait(set(self._working))

    async def _poll(self) -> None:
        for turn in itertools.count():
            with contextlib.suppress(MeshError):
                listed = await self.client.list(model=MODEL, status="pending", limit=200)
                for item in listed.get("items", []):
                    self._take(item)
                if turn % 4 == 0:
                    await self.refresh()
            await asyncio.sleep(0.25)

    async def refresh(self) -> None:
        """The queue's figures, for the live view (the desk's ``stats``)."""
        stats = await self.client.stats(model=MODEL)
        queue = (stats.get("queue") or {}).get(MODEL) or {}
        statuses = queue.get("by_status") or {}
        self.view.queued = int(queue.get("queued", 0))
        self.view.pending = int(statuses.get("pending", 0))
        self.view.labelled = int(statuses.get("labelled", 0))
        self.view.skipped = int(statuses.get("skipped", 0))
        self.view.by_reason = dict(queue.get("by_reason") or {})

    def summary(self, minutes: float) -> ReviewSummary:
        """The queue at the end of the run and its rates over ``minutes`` of load."""
        v = self.view
        latency = sorted(self.latencies)
        median = round(latency[len(latency) // 2], 2) if latency else None
        return ReviewSummary(
            queued=v.queued,
            labelled=v.labelled,
            pending=v.pending,
            skipped=v.skipped,
            by_reason=dict(v.by_reason),
            queued_per_min=round(v.queued / max(minutes, 1e-9), 1),
            labelled_per_min=round(v.labelled / max(minutes, 1e-9), 1),
            reviewer={
                "simulated": True,
                "delay_s": self.delay_s,
                "error_rate": self.error_rate,
                "labels": v.given,
                "wrong_on_purpose": v.wrong,
                "median_s_queued_to_label": median,
            },
        )

    def _take(self, item: dict[str, Any]) -> None:
        item_id = str(item["id"])
        if item_id in self._seen:
            return
        self._seen.add(item_id)
        task = asyncio.create_task(self._label(item_id, float(item.get("queued_at") or 0.0)))
        self._working.add(task)
        task.add_done_callback(self._working.discard)

    async def _label(self, item_id: str, queued_at: float) -> None:
        wait = queued_at + self.delay_s - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        async with self._slots:
            try:
                view = await self.client.show(item_id)
                truth = None if view.get("withheld") else self._truth_of(view)
                if truth is None:
                    await self.client.skip(item_id)
                    return
                label = truth
                if self._random.random() < self.error_rate:
                    others = [c for c in range(len(view["classes"])) if c != truth]
                    label = self._random.choice(others)
                    self.view.wrong += 1
                await self.client.label(item_id, label)
            except (MeshError, ValueError, KeyError, TypeError):
                self.failures += 1
                return
        self.view.given += 1
        if queued_at:
            self.latencies.append(time.time() - queued_at)

    def _truth_of(self, view: dict[str, Any]) -> int | None:
        inputs, _, _ = row_of({**view, "label": {"kind": "label", "label": 0}})
        if len(inputs) != 1:
            return None
        return self.truth.get(_key(next(iter(inputs.values()))))


def _key(row: np.ndarray) -> bytes:
    return np.ascontiguousarray(row, dtype=np.float32).reshape(-1).tobytes()
