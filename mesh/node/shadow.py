"""A version run in shadow beside the one a node serves (a rollout's shadow stage).

The data plane hands the runner each batch the serving version answered (``offer``): copies of
its inputs and the serving version's classes, once the local pass is over. The runner's task
runs the shadow version on them, one batch at a time, in the shadow model's own worker thread,
never on the event loop the replies go out on; after each model call it rests long enough that
its calls take at most ``cpu_share`` of one core. A batch that finds its queue full is skipped
and counted. The shadow never answers a caller.

What it did is counted per version (``ShadowTally``, reported in the heartbeat as
``wire.ShadowEvidence``): requests, errors and skips, how often it answered as the serving
version did, and, once the tier above answered the same request (the serving version escalated
or audited it, ``upstream``), how often each of the two answered as the tier above did. A review
item offered for a request the shadow ran on carries its answer too (``answer``), so labels
judge it as they judge the serving version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mesh.lifecycle import Service, cancel_and_wait
from mesh.node.served import ServedModel
from mesh.observability.metrics import LATENCY_BUCKETS_MS
from mesh.typedefs import Feeds
from mesh.wire import SHADOW_COUNTERS, ShadowEvidence

log = logging.getLogger("mesh.shadow")

_BOUNDS = tuple(float(b) for b in LATENCY_BUCKETS_MS)
#: requests whose shadow answer (or the tier above's, come first) is kept for matching.
MAX_REMEMBERED = 4096


def rest_after(busy_s: float, share: float) -> float:
    """Seconds to rest after ``busy_s`` of model calls so that they take ``share`` of the time."""
    if share >= 1.0:
        return 0.0
    return busy_s * (1.0 - share) / share


class ShadowTally:
    """Running totals of one shadow version on this node (``wire.ShadowEvidence``)."""

    # The counters are the wire's (``wire.ShadowCounters``): every one it declares is kept,
    # zeroed and reported here. The annotations only type the runner's increments.
    __slots__ = ("busy_s", "latency", "serving", "since", "version", *SHADOW_COUNTERS)

    requests: int
    errors: int
    skipped: int
    matched: int
    compared: int
    agreed: int
    serving_agreed: int

    def __init__(self, version: str, serving: str, since: float) -> None:
        self.version = version
        self.serving = serving
        self.since = since
        for name in SHADOW_COUNTERS:
            setattr(self, name, 0)
        self.busy_s = 0.0
        self.latency = [0] * (len(_BOUNDS) + 1)

    def observe_latency(self, ms: float, count: int) -> None:
        self.latency[bisect_left(_BOUNDS, ms)] += count

    def compare(self, shadow: Sequence[int], serving: Sequence[int], above: Sequence[int]) -> None:
        self.compared += 1
        self.agreed += list(shadow) == list(above)
        self.serving_agreed += list(serving) == list(above)

    def snapshot(self) -> ShadowEvidence:
        return ShadowEvidence(
            version=self.version,
            serving=self.serving,
            since=self.since,
            latency=tuple(self.latency),
            busy_s=round(self.busy_s, 6),
            **{name: getattr(self, name) for name in SHADOW_COUNTERS},
        )


@dataclass(frozen=True, slots=True)
class ShadowAnswer:
    """What the shadow answered for one request: it went to nobody."""

    version: str
    labels: list[int]
    confidence: float


@dataclass(slots=True)
class _Case:
    """One request of a batch: the serving version's classes, the tier above's once known, and
    the shadow's once it ran."""

    model: str
    serving: list[int]
    above: list[int] | None = None
    answer: ShadowAnswer | None = None
    #: whether it was counted against the tier above's answer already.
    compared: bool = False


@dataclass(frozen=True, slots=True)
class _Batch:
    model: str
    version: str
    feeds: Feeds
    #: request ids and rows, in the batch's order.
    requests: list[tuple[str, int]]


class ShadowRunner(Service):
    """The shadow versions of one node, by model name, and the task that runs them."""

    def __init__(
        self,
        *,
        cpu_share: float = 0.25,
        max_queue: int = 64,
    ) -> None:
        self.cpu_share = cpu_share
        self.max_queue = max_queue
        self.models: dict[str, ServedModel] = {}
        self.tallies: dict[str, ShadowTally] = {}
        self._cases: OrderedDict[str, _Case] = OrderedDict()
        self._queue: asyncio.Queue[_Batch] = asyncio.Queue(maxsize=max_queue)
        self._task: asyncio.Task[None] | None = None
        self._answered = asyncio.Event()

    async def _start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="shadow")

    async def _stop(self) -> None:
        await cancel_and_wait([t for t in (self._task,) if t is not None])
        for name in list(self.models):
            await self.remove(name)

    # --- which versions run ---------------------------------------------------------------

    def versions(self) -> dict[str, str]:
        return {name: m.version for name, m in self.models.items()}

    async def put(self, model: ServedModel, serving: str) -> str | None:
        """Run ``model`` (started) in shadow beside ``serving``; the version it replaces."""
        old = self.models.get(model.name)
        self.models[model.name] = model
        self.tallies[model.name] = ShadowTally(model.version, serving, time.time())
        if old is not None:
            await self._stop_model(old)
            return old.version
        return None

    async def serving_changed(self, name: str, version: str) -> None:
        """The node serves ``version`` of ``name`` now: a shadow of that version has nothing
        left to show and stops; another starts counting afresh beside it."""
        model = self.models.get(name)
        if model is None:
            return
        if model.version == version:
            await self.remove(name)
            return
        self.tallies[name] = ShadowTally(model.version, version, time.time())

    async def remove(self, name: str) -> str | None:
        """Stop running ``name``'s shadow; the version it ran."""
        old = self.models.pop(name, None)
        self.tallies.pop(name, None)
        if old is None:
            return None
        await self._stop_model(old)
        return old.version

    async def _stop_model(self, model: ServedModel) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await model.wait_idle()
        await model.runner.stop()

    def snapshot(self) -> dict[str, ShadowEvidence]:
        return {name: tally.snapshot() for name, tally in list(self.tallies.items())}

    # --- what the data plane tells it ------------------------------------------------------

    def offer(self, model: str, feeds: Feeds, requests: Sequence[tuple[str, list[int]]]) -> None:
        """A batch the serving version of ``model`` answered: request ids and its classes per
        request, in the batch's row order. Copied and queued, or skipped when the queue is
        full; cheap on the request path either way."""
        shadow = self.models.get(model)
        tally = self.tallies.get(model)
        if shadow is None or tally is None:
            return
        if self._queue.full():
            tally.skipped += len(requests)
            return
        rows: list[tuple[str, int]] = []
        for request_id, labels in requests:
            self._remember(request_id, _Case(model, list(labels)))
            rows.append((request_id, len(labels)))
        copies = {name: np.array(array, copy=True) for name, array in feeds.items()}
        self._queue.put_nowait(_Batch(model, shadow.version, copies, rows))

    def upstream(self, request_id: str, serving: Sequence[int], above: Sequence[int]) -> None:
        """The tier above answered a request the serving version escalated or audited."""
        case = self._cases.get(request_id)
        if case is None or case.compared:
            return
        if case.answer is None:
            case.above = list(above)
            return
        case.compared = True
        tally = self.tallies.get(case.model)
        if tally is not None and tally.version == case.answer.version:
            tally.compare(case.answer.labels, serving, above)

    def answer(self, request_id: str) -> ShadowAnswer | None:
        case = self._cases.get(request_id)
        return None if case is None else case.answer

    async def wait_answer(self, request_id: str, timeout: float) -> ShadowAnswer | None:
        """The shadow's answer for a request it queued, once it ran (None: not in time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            case = self._cases.get(request_id)
            if case is None or case.answer is not None:
                return None if case is None else case.answer
            left = deadline - loop.time()
            if left <= 0:
                return None
            self._answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), left)

    def _remember(self, request_id: str, case: _Case) -> None:
        self._cases[request_id] = case
        while len(self._cases) > MAX_REMEMBERED:
            self._cases.popitem(last=False)

    # --- running --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch = await self._queue.get()
            model = self.models.get(batch.model)
            tally = self.tallies.get(batch.model)
            if model is None or tally is None or model.version != batch.version:
                continue
            started = time.perf_counter()
            try:
                outputs = await model.run_in_worker(batch.feeds)
                scores = model.score(batch.feeds, outputs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                busy = time.perf_counter() - started
                tally.busy_s += busy
                tally.requests += len(batch.requests)
                tally.errors += len(batch.requests)
                log.debug("shadow %s@%s failed on a batch: %r", model.name, model.version, exc)
                await asyncio.sleep(rest_after(busy, self.cpu_share))
                continue
            busy = time.perf_counter() - started
            self._count(model, tally, batch, scores.labels, scores.confidence.tolist(), busy)
            self._answered.set()
            await asyncio.sleep(rest_after(busy, self.cpu_share))

    def _count(
        self,
        model: ServedModel,
        tally: ShadowTally,
        batch: _Batch,
        labels: list[int],
        confidence: list[float],
        busy: float,
    ) -> None:
        tally.busy_s += busy
        tally.requests += len(batch.requests)
        tally.observe_latency(busy * 1000.0 / max(len(batch.requests), 1), len(batch.requests))
        offset = 0
        for request_id, rows in batch.requests:
            mine = labels[offset : offset + rows]
            lowest = min(confidence[offset : offset + rows], default=float("nan"))
            offset += rows
            case = self._cases.get(request_id)
            if case is None:
                continue
            tally.matched += mine == case.serving
            case.answer = ShadowAnswer(model.version, mine, lowest)
            if case.above is not None and not case.compared:
                case.compared = True
                tally.compare(mine, case.serving, case.above)
