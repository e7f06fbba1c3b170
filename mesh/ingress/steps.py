"""Work in steps, so that reading a large body never holds the event loop for long.

A parser over a body is a generator that yields between steps of bounded work (about
``STEP_BYTES`` of text or ``STEP_VALUES`` values) and returns its result. The transports
``drive`` it, letting other callers' work run between steps; tests ``finish`` it at once. A
thread would not do: json, msgspec, protobuf and numpy's conversions hold the GIL for a whole
call (``json.loads`` of a 120 MB body in ``asyncio.to_thread`` stalled the loop for 0.96 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")
Steps = Generator[None, None, T]

#: text one step reads (about 2 ms of parsing).
STEP_BYTES = 1 << 20
#: values one step converts.
STEP_VALUES = 1 << 17
#: steps run back to back until they took this long, then the loop runs.
YIELD_AFTER_S = 0.001


def finish(steps: Steps[T]) -> T:
    """Every step at once: the result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result


async def drive(steps: Steps[T]) -> T:
    """Every step, yielding to the event loop between them once ``YIELD_AFTER_S`` of them has
    run: the result. A small body's few steps run at once (each yield is a trip through the
    loop, several a request); a large body still lets other callers in every few ms."""
    clock = time.perf_counter
    since = clock()
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        if clock() - since >= YIELD_AFTER_S:
            await asyncio.sleep(0)
            since = clock()
