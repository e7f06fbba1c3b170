"""The one lifecycle: start once, stop at most once, a failed start stops what it started."""

from __future__ import annotations

import asyncio

import pytest

from mesh.lifecycle import Service, cancel_and_wait


class Part(Service):
    def __init__(self, fail: bool = False) -> None:
        self.starts = self.stops = 0
        self.fail = fail

    async def _start(self) -> None:
        self.starts += 1
        if self.fail:
            raise ValueError("no")

    async def _stop(self) -> None:
        self.stops += 1


async def test_start_and_stop_run_once_however_often_they_are_called() -> None:
    part = Part()
    async with part:
        await part.start()
        assert part.running
    await part.stop()
    assert (part.starts, part.stops, part.running) == (1, 1, False)
    with pytest.raises(RuntimeError, match="cannot be started again"):
        await part.start()


async def test_a_start_that_fails_stops_the_part_before_raising() -> None:
    part = Part(fail=True)
    with pytest.raises(ValueError):
        await part.start()
    assert part.stops == 1


async def test_cancel_and_wait_returns_once_every_task_is_done() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(forever()) for _ in range(3)]
    await cancel_and_wait(tasks)
    assert all(task.cancelled() for task in tasks)
