"""What the console knows, in one place the feeds write and the pages read: the fleet board,
each model's latest rollout and evidence window, the review queue and ground truth, the action
log; and a signal that wakes every open stream when any of it changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.console.actions import ActionLog
from mesh.console.fleetboard import FleetBoard
from mesh.console.quality import QualityBoard
from mesh.fleet.rollout import Rollout
from mesh.fleet.rollout.evidence import Window
from mesh.wire import NodeStatus


@dataclass
class ReviewQueueView:
    items: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    #: why the queue cannot be shown (no desk answers...), or None.
    problem: str | None = "waiting for the review desk"


class ConsoleState:
    def __init__(self, offline_after_s: float, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.offline_after_s = offline_after_s
        self.fleet = FleetBoard(offline_after_s)
        self.rollouts: dict[str, Rollout] = {}
        self.windows: dict[str, Window] = {}
        self.queue = ReviewQueueView()
        self.quality = QualityBoard()
        self.quality_problem: str | None = "waiting for the review desk"
        self.actions = ActionLog()
        self._changed = asyncio.Event()

    def beats(self) -> Mapping[str, NodeStatus]:
        return self.fleet.beats()

    def changed(self) -> None:
        """Wake every stream waiting for a change."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout: float) -> bool:
        """Until something changes (True) or ``timeout`` passes (False)."""
        event = self._changed
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True


__all__ = ["ConsoleState", "ReviewQueueView"]
