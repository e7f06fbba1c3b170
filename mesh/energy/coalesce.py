"""Escalations held a moment so that those close in time go up in one write.

nats-py appends every published message to one buffer and a flusher task writes the buffer when
it next runs: requests published in the same turn of the event loop leave in one socket write,
so the radio sends one burst instead of one per request. ``Coalescer.hold`` parks an escalation
until its group is released (at the earliest deadline of its members, never later than what
each one's budget allows) and releases the whole group in one callback, so their sends all run
before the flusher does. Each member is told its share of the write (``1 / members``), which the
ledger counts as the messages it sent.
"""

from __future__ import annotations

import asyncio


class Coalescer:
    def __init__(self) -> None:
        self._group: list[asyncio.Future[float]] = []
        self._release_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        #: groups released and escalations held, for the node's figures.
        self.groups = 0
        self.held = 0

    async def hold(self, window_s: float, latest_s: float) -> float:
        """Wait until this escalation's group goes (at most ``min(window_s, latest_s)``);
        returns its share of the write. With no time to wait it goes at once, alone."""
        wait = min(window_s, latest_s)
        if wait <= 0:
            return 1.0
        loop = asyncio.get_running_loop()
        release_at = loop.time() + wait
        if self._timer is None:
            self._release_at = release_at
            self._timer = loop.call_at(release_at, self._release)
        elif release_at < self._release_at:
            self._timer.cancel()
            self._release_at = release_at
            self._timer = loop.call_at(release_at, self._release)
        future: asyncio.Future[float] = loop.create_future()
        self._group.append(future)
        self.held += 1
        return await future

    def _release(self) -> None:
        group, self._group, self._timer = self._group, [], None
        waiting = [f for f in group if not f.done()]
        if not waiting:
            return
        self.groups += 1
        share = 1.0 / len(waiting)
        for future in waiting:
            future.set_result(share)

    def release_all(self) -> None:
        """Let every held escalation go now (the node stops, or the step is given back)."""
        if self._timer is not None:
            self._timer.cancel()
        self._release()
