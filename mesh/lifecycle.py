"""One lifecycle for every long-lived part: ``start``, an idempotent ``stop``, ``async with``.

The shape is nats.py's ``micro.Service`` and aiohttp's ``AppRunner``: a part is started once
(starting it again is a no-op, starting it after ``stop`` an error), stopped at most once however
often ``stop`` is called, and a start that fails half-way stops what it had started before the
error propagates. Parts are composed with ``AsyncExitStack``. The one exception in the code base
is ``mesh.local.servers.NatsServer``, which the fault tests restart on the same ports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self


class Service:
    """Base of long-lived parts: override ``_start`` and ``_stop``; callers use ``start``,
    ``stop`` and ``async with``."""

    _lifecycle_started: bool = False
    _lifecycle_stopped: bool = False

    @property
    def running(self) -> bool:
        return self._lifecycle_started and not self._lifecycle_stopped

    async def start(self) -> None:
        if self._lifecycle_stopped:
            raise RuntimeError(f"a stopped {type(self).__name__} cannot be started again")
        if self._lifecycle_started:
            return
        self._lifecycle_started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if not self._lifecycle_started or self._lifecycle_stopped:
            return
        self._lifecycle_stopped = True
        await self._stop()

    async def _start(self) -> None:
        return None

    async def _stop(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def cancel_and_wait(
    tasks: asyncio.Task[Any] | Iterable[asyncio.Task[Any]], *, retry_s: float = 0.5
) -> None:
    """Cancel ``tasks`` and wait until every one is done.

    Cancels again until done: on Python 3.11 a cancel can be lost inside ``asyncio.wait_for``
    (nats-py's fetch uses it), which would otherwise leave the awaiting side hanging."""
    pending = {tasks} if isinstance(tasks, asyncio.Task) else set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_s)
