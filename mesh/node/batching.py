"""Dynamic micro-batching: concurrent requests for one model run as one batch.

The shape follows MLServer's adaptive batcher: each request waits on a future in a queue, a
collector task merges queued requests into a batch (``merge``), runs it, and splits the outputs
back to the callers (``split``). ``merge`` and ``split`` are pure and synchronous.

Collection policy. The collector takes the first queued request, then adds the requests behind it
that can merge with it (same input names, dtypes and trailing shapes; FIFO order is kept, so the
first one that cannot merge closes the batch and heads the next) until the batch holds
``max_batch_size`` rows or ``max_delay_ms`` has passed since the first request arrived. When the
queue is empty and no other batch is in flight, it yields to the event loop once (so submitters
that are already runnable can enqueue) and, if the queue is still empty, runs the batch at once
instead of waiting out the window: waiting could only add latency, since nothing else is using
the model. While a batch is in flight the collector does wait (up to the window) and stops
waiting as soon as the in-flight batches finish. This gives concurrency-1 callers the latency of a
direct call and still batches under load; ``always_wait=True`` restores the fixed-window
behaviour of MLServer and Triton, for comparison (see ``benchmarks/batching_bench.py``).

Batching is off when ``max_batch_size <= 1`` or ``max_delay_ms <= 0``: ``submit`` then calls
``run`` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mesh.errors import UnavailableError
from mesh.lifecycle import Service
from mesh.typedefs import Feeds

log = logging.getLogger(__name__)

#: Runs one (possibly merged) batch and returns its outputs by name.
BatchRunner = Callable[[Feeds], Awaitable[Feeds]]
#: Called with the row count of every batch run, e.g. to observe a histogram.
BatchCallback = Callable[[int], None]
#: What two requests must share to merge: per input, its name, dtype and trailing shape.
Signature = tuple[tuple[str, str, tuple[int, ...]], ...]


def batch_signature(feeds: Feeds) -> Signature | None:
    """The merge signature of a request, or None when it has no common row dimension."""
    if not feeds:
        return None
    rows: int | None = None
    parts: list[tuple[str, str, tuple[int, ...]]] = []
    for name, arr in feeds.items():
        if arr.ndim == 0:
            return None
        if rows is None:
            rows = arr.shape[0]
        elif arr.shape[0] != rows:
            return None
        parts.append((name, arr.dtype.str, tuple(arr.shape[1:])))
    return tuple(sorted(parts))


def row_count(feeds: Feeds) -> int:
    """Rows in a request: the first dimension shared by its inputs (1 when there is none)."""
    if batch_signature(feeds) is None:
        return 1
    return int(next(iter(feeds.values())).shape[0])


def merge(requests: Sequence[Feeds]) -> tuple[Feeds, list[int]]:
    """Concatenate requests along axis 0; returns the batch and each request's row count.

    Raises ``ValueError`` when the requests do not share one signature (``batch_signature``).
    """
    if not requests:
        raise ValueError("nothing to merge")
    if len(requests) == 1:
        return dict(requests[0]), [row_count(requests[0])]
    signature = batch_signature(requests[0])
    if signature is None:
        raise ValueError("request has no common row dimension to batch on")
    for feeds in requests[1:]:
        if batch_signature(feeds) != signature:
            raise ValueError("requests differ in input names, dtypes or trailing shapes")
    counts = [row_count(feeds) for feeds in requests]
    merged = {
        name: np.concatenate([feeds[name] for feeds in requests], axis=0) for name in requests[0]
    }
    return merged, counts


def split(outputs: Feeds, counts: Sequence[int]) -> list[Feeds]:
    """Undo ``merge`` on a batch's outputs.

    An output whose first dimension equals the batch's total rows is split by ``counts``; any
    other output (a scalar, a per-batch value) is copied to every request.
    """
    total = sum(counts)
    offsets = np.cumsum(counts)[:-1]
    results: list[Feeds] = [{} for _ in counts]
    for name, arr in outputs.items():
        if arr.ndim >= 1 and arr.shape[0] == total:
            for result, part in zip(results, np.split(arr, offsets, axis=0), strict=True):
                result[name] = part
        else:
            for result in results:
                result[name] = arr.copy()
    return results


@dataclass(frozen=True, slots=True)
class BatcherStats:
    batches: int
    requests: int
    rows: int


@dataclass(slots=True)
class _Pending:
    feeds: Feeds
    rows: int
    signature: Signature | None
    arrived: float
    future: asyncio.Future[Feeds]


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class MicroBatcher(Service):
    """Queues requests and runs them through ``run`` in merged batches.

    An async context manager: ``stop`` is idempotent and fails every queued or in-flight request
    with ``UnavailableError``.
    """

    def __init__(
        self,
        run: BatchRunner,
        *,
        max_batch_size: int,
        max_delay_ms: float,
        name: str = "",
        on_batch: BatchCallback | None = None,
        always_wait: bool = False,
    ) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_delay_ms = max_delay_ms
        self.on_batch = on_batch
        self._run = run
        self._always_wait = always_wait
        self._delay = max_delay_ms / 1000.0
        self._queue: deque[_Pending] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._collector: asyncio.Task[None] | None = None
        self._batch_tasks: dict[asyncio.Task[None], list[_Pending]] = {}
        self._forming: list[_Pending] = []
        self._direct: set[asyncio.Task[Any]] = set()
        self._in_flight = 0
        self._started = False
        self._closed = False
        self._batches = 0
        self._requests = 0
        self._rows = 0

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1 and self.max_delay_ms > 0

    @property
    def stats(self) -> BatcherStats:
        return BatcherStats(batches=self._batches, requests=self._requests, rows=self._rows)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """Requests are queued, being collected, or running."""
        return bool(self._queue or self._forming or self._in_flight)

    async def _start(self) -> None:
        self._started = True
        if self.enabled:
            self._collector = asyncio.get_running_loop().create_task(
                self._collect_forever(), name=f"batcher-{self.name}"
            )
            self._collector.add_done_callback(self._collector_done)

    async def _stop(self) -> None:
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        self._fail_queued(UnavailableError(f"batcher {self.name!r} stopped"))
        for caller in list(self._direct):
            caller.cancel()
        in_flight = dict(self._batch_tasks)
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        for batch in in_flight.values():
            self._fail(batch, UnavailableError(f"batcher {self.name!r} stopped"))

    async def submit(self, feeds: Feeds) -> Feeds:
        """Run one request, batched with others when batching is on; returns its outputs."""
        if not self._started or self._closed:
            raise UnavailableError(f"batcher {self.name!r} is not running")
        if not self.enabled:
            self._record(row_count(feeds), 1)
            return await self._run(feeds)
        rows = row_count(feeds)
        if not self._queue and not self._forming and self._in_flight == 0 and not self._always_wait:
            return await self._run_now(feeds, rows)
        loop = asyncio.get_running_loop()
        signature = batch_signature(feeds)
        pending = _Pending(feeds, rows, signature, loop.time(), loop.create_future())
        self._queue.append(pending)
        self._wake()
        return await pending.future

    async def _run_now(self, feeds: Feeds, rows: int) -> Feeds:
        """Idle: nothing to batch with, so run in the caller, skipping the collector's task and
        future (two to four event-loop passes a request). Requests arriving meanwhile queue up
        and batch as usual."""
        caller = asyncio.current_task()
        if caller is not None:
            self._direct.add(caller)
        self._in_flight += 1
        try:
            self._record(rows, 1)
            return await self._run(feeds)
        except asyncio.CancelledError:
            if self._closed and caller is not None:
                caller.uncancel()
                raise UnavailableError(f"batcher {self.name!r} stopped") from None
            raise
        finally:
            self._in_flight -= 1
            if caller is not None:
                self._direct.discard(caller)
            self._wake()

    # --- collector ---------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    async def _wait_for_change(self, within: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        handle = loop.call_later(within, _resolve, waiter) if within is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    def _pop_live(self) -> _Pending | None:
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                return pending
        return None

    async def _collect_forever(self) -> None:
        while True:
            first = self._pop_live()
            if first is None:
                await self._wait_for_change(None)
                continue
            batch = await self._fill(first)
            self._forming = []
            self._dispatch(batch)

    async def _fill(self, first: _Pending) -> list[_Pending]:
        batch = self._forming = [first]
        rows = first.rows
        if first.signature is None or rows >= self.max_batch_size:
            return batch
        loop = asyncio.get_running_loop()
        deadline = first.arrived + self._delay
        yielded = False
        while True:
            while self._queue:
                head = self._queue[0]
                if head.future.done():
                    self._queue.popleft()
                    continue
                if head.signature != first.signature or rows + head.rows > self.max_batch_size:
                    return batch
                self._queue.popleft()
                batch.append(head)
                rows += head.rows
            if rows >= self.max_batch_size:
                return batch
            remaining = deadline - loop.time()
            if remaining <= 0:
                return batch
            if self._in_flight == 0 and not self._always_wait:
                if yielded:
                    return batch
                yielded = True
                await asyncio.sleep(0)
                continue
            yielded = False
            await self._wait_for_change(remaining)

    def _dispatch(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]
        if not live:
            return
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run_batch(live))
        self._batch_tasks[task] = live
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batch_tasks.pop(task, None)
        self._in_flight -= 1
        self._wake()

    async def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            feeds, counts = merge([p.feeds for p in batch])
            self._record(sum(counts), len(batch))
            outputs = await self._run(feeds)
            results = split(outputs, counts) if len(batch) > 1 else [outputs]
        except asyncio.CancelledError:
            self._fail(batch, UnavailableError(f"batcher {self.name!r} stopped"))
            raise
        except Exception as exc:
            self._fail(batch, exc)
            return
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    def _record(self, rows: int, requests: int) -> None:
        self._batches += 1
        self._requests += requests
        self._rows += rows
        if self.on_batch is not None:
            try:
                self.on_batch(rows)
            except Exception:
                log.exception("on_batch hook of batcher %r failed", self.name)

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)

    def _fail_queued(self, exc: BaseException) -> None:
        queued = [*self._forming, *self._queue]
        self._forming = []
        self._queue.clear()
        self._fail(queued, exc)

    def _collector_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:
            log.error("collector of batcher %r died", self.name, exc_info=err)
            self._closed = True
            self._fail_queued(UnavailableError(f"batcher {self.name!r} failed: {err}"))
