from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from mesh.errors import UnavailableError
from mesh.node.batching import Feeds, MicroBatcher, batch_signature, merge, row_count, split

pytestmark = pytest.mark.timeout(10)


def _req(rows: int, value: float = 0.0, cols: int = 4) -> Feeds:
    return {
        "x": np.full((rows, cols), value, dtype=np.float32),
        "mask": np.ones((rows,), dtype=np.int64),
    }


class FakeModel:
    """Doubles ``x``, returns a per-batch scalar too, and records every batch's rows."""

    def __init__(self, delay: float = 0.0, fail: Exception | None = None) -> None:
        self.batches: list[int] = []
        self.delay = delay
        self.fail = fail
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self, feeds: Feeds) -> Feeds:
        self.batches.append(int(feeds["x"].shape[0]))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return {"y": feeds["x"] * 2, "batch_rows": np.array(feeds["x"].shape[0])}


# --- merge and split -----------------------------------------------------------------------


def test_merge_concatenates_along_rows_and_counts_each_request() -> None:
    merged, counts = merge([_req(2, 1.0), _req(1, 2.0), _req(3, 3.0)])
    assert counts == [2, 1, 3]
    assert merged["x"].shape == (6, 4)
    assert merged["mask"].shape == (6,)
    assert merged["x"][:, 0].tolist() == [1, 1, 2, 3, 3, 3]


def test_merge_single_request_is_unchanged() -> None:
    req = _req(2)
    merged, counts = merge([req])
    assert counts == [2]
    assert merged["x"] is req["x"]


@pytest.mark.parametrize(
    "other",
    [
        {"x": np.zeros((1, 5), np.float32), "mask": np.ones((1,), np.int64)},
        {"x": np.zeros((1, 4), np.float64), "mask": np.ones((1,), np.int64)},
        {"x": np.zeros((1, 4), np.float32)},
        {"x": np.zeros((1, 4), np.float32), "other": np.ones((1,), np.int64)},
    ],
    ids=["trailing-shape", "dtype", "fewer-inputs", "other-name"],
)
def test_merge_refuses_requests_that_differ(other: Feeds) -> None:
    assert batch_signature(other) != batch_signature(_req(1))
    with pytest.raises(ValueError):
        merge([_req(1), other])


def test_request_without_common_row_dimension_has_no_signature() -> None:
    assert batch_signature({"x": np.zeros((2, 4)), "m": np.zeros((3,))}) is None
    assert batch_signature({"x": np.array(1.0)}) is None
    assert row_count({"x": np.array(1.0)}) == 1
    assert row_count(_req(5)) == 5


def test_split_undoes_merge_and_copies_non_batch_outputs() -> None:
    requests = [_req(2, 1.0), _req(1, 2.0), _req(3, 3.0)]
    merged, counts = merge(requests)
    outputs = {"y": merged["x"] * 2, "scale": np.array([7.0, 8.0])}
    parts = split(outputs, counts)
    assert len(parts) == 3
    for req, part in zip(requests, parts, strict=True):
        np.testing.assert_array_equal(part["y"], req["x"] * 2)
        np.testing.assert_array_equal(part["scale"], [7.0, 8.0])
    assert parts[0]["scale"] is not parts[1]["scale"]


# --- the async batcher -----------------------------------------------------------------------


async def test_concurrent_submits_form_batches_no_larger_than_max() -> None:
    model = FakeModel(delay=0.002)
    seen: list[int] = []
    async with MicroBatcher(
        model, max_batch_size=8, max_delay_ms=5, name="t", on_batch=seen.append
    ) as batcher:
        results = await asyncio.gather(*(batcher.submit(_req(1, float(i))) for i in range(50)))
    for i, out in enumerate(results):
        assert out["y"].shape == (1, 4)
        assert float(out["y"][0, 0]) == 2.0 * i
    assert sum(model.batches) == 50
    assert max(model.batches) <= 8
    assert len(model.batches) < 50
    assert seen == model.batches
    stats = batcher.stats
    assert (stats.batches, stats.requests, stats.rows) == (len(model.batches), 50, 50)


async def test_multi_row_requests_fill_but_never_overflow_a_batch() -> None:
    model = FakeModel(delay=0.002)
    async with MicroBatcher(model, max_batch_size=8, max_delay_ms=5) as batcher:
        sizes = [3, 3, 3, 5, 2, 1, 4, 4]
        results = await asyncio.gather(*(batcher.submit(_req(n)) for n in sizes))
    assert [r["y"].shape[0] for r in results] == sizes
    assert max(model.batches) <= 8
    assert sum(model.batches) == sum(sizes)


async def test_request_larger_than_max_runs_alone() -> None:
    model = FakeModel()
    async with MicroBatcher(model, max_batch_size=4, max_delay_ms=5) as batcher:
        big, small = await asyncio.gather(batcher.submit(_req(10)), batcher.submit(_req(1)))
    assert big["y"].shape == (10, 4)
    assert small["y"].shape == (1, 4)
    assert model.batches == [10, 1]


async def test_requests_that_cannot_merge_run_in_separate_batches() -> None:
    model = FakeModel(delay=0.002)
    async with MicroBatcher(model, max_batch_size=16, max_delay_ms=5) as batcher:
        narrow, wide = await asyncio.gather(
            batcher.submit(_req(1, cols=4)), batcher.submit(_req(1, cols=6))
        )
    assert narrow["y"].shape == (1, 4)
    assert wide["y"].shape == (1, 6)
    assert model.batches == [1, 1]


async def test_single_caller_does_not_wait_out_the_window() -> None:
    model = FakeModel()
    async with MicroBatcher(model, max_batch_size=32, max_delay_ms=200) as batcher:
        for _ in range(3):
            start = time.monotonic()
            await batcher.submit(_req(1))
            assert time.monotonic() - start < 0.1
    assert model.batches == [1, 1, 1]


async def test_always_wait_holds_a_lone_request_for_the_window() -> None:
    model = FakeModel()
    async with MicroBatcher(model, max_batch_size=32, max_delay_ms=50, always_wait=True) as batcher:
        start = time.monotonic()
        await batcher.submit(_req(1))
        assert time.monotonic() - start >= 0.045


async def test_requests_arriving_while_a_batch_runs_are_batched_together() -> None:
    model = FakeModel()
    model.gate = asyncio.Event()
    async with MicroBatcher(model, max_batch_size=32, max_delay_ms=1000) as batcher:
        first = asyncio.create_task(batcher.submit(_req(1)))
        await model.started.wait()
        rest = [asyncio.create_task(batcher.submit(_req(1))) for _ in range(5)]
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(first, *rest)
    assert model.batches == [1, 5]


async def test_run_error_reaches_every_caller_in_the_batch() -> None:
    model = FakeModel(delay=0.001, fail=RuntimeError("boom"))
    async with MicroBatcher(model, max_batch_size=8, max_delay_ms=5) as batcher:
        results = await asyncio.gather(
            *(batcher.submit(_req(1)) for _ in range(6)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) and str(r) == "boom" for r in results)
        model.fail = None
        assert (await batcher.submit(_req(1)))["y"].shape == (1, 4)


async def test_stop_fails_queued_and_in_flight_requests_as_unavailable() -> None:
    model = FakeModel()
    model.gate = asyncio.Event()
    batcher = MicroBatcher(model, max_batch_size=2, max_delay_ms=5)
    await batcher.start()
    tasks = [asyncio.create_task(batcher.submit(_req(1))) for _ in range(5)]
    await model.started.wait()
    await batcher.stop()
    await batcher.stop()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, UnavailableError) for r in results)
    with pytest.raises(UnavailableError):
        await batcher.submit(_req(1))


async def test_submit_before_start_is_unavailable() -> None:
    batcher = MicroBatcher(FakeModel(), max_batch_size=4, max_delay_ms=1)
    with pytest.raises(UnavailableError):
        await batcher.submit(_req(1))


async def test_cancelling_one_waiter_leaves_the_rest_of_its_batch_intact() -> None:
    model = FakeModel()
    model.gate = asyncio.Event()
    async with MicroBatcher(model, max_batch_size=8, max_delay_ms=5) as batcher:
        blocker = asyncio.create_task(batcher.submit(_req(1, 9.0)))
        await model.started.wait()
        waiting = [asyncio.create_task(batcher.submit(_req(1, float(i)))) for i in range(4)]
        await asyncio.sleep(0)
        waiting[1].cancel()
        model.gate.set()
        results = await asyncio.gather(blocker, *waiting, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert float(results[0]["y"][0, 0]) == 18.0  # type: ignore[index]
    for i in (0, 2, 3):
        assert float(results[i + 1]["y"][0, 0]) == 2.0 * i  # type: ignore[index]
    assert model.batches == [1, 3]


async def test_cancelling_a_waiter_mid_run_does_not_break_the_batch() -> None:
    model = FakeModel()
    model.gate = asyncio.Event()
    async with MicroBatcher(model, max_batch_size=8, max_delay_ms=5) as batcher:
        tasks = [asyncio.create_task(batcher.submit(_req(1, float(i)))) for i in range(3)]
        await model.started.wait()
        tasks[0].cancel()
        model.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [float(r["y"][0, 0]) for r in results[1:]] == [2.0, 4.0]  # type: ignore[index]


@pytest.mark.parametrize(("size", "delay"), [(1, 5.0), (32, 0.0)])
async def test_batching_off_passes_each_request_straight_to_run(size: int, delay: float) -> None:
    model = FakeModel(delay=0.001)
    seen: list[int] = []
    async with MicroBatcher(
        model, max_batch_size=size, max_delay_ms=delay, on_batch=seen.append
    ) as batcher:
        assert not batcher.enabled
        await asyncio.gather(*(batcher.submit(_req(2)) for _ in range(10)))
    assert model.batches == [2] * 10
    assert seen == [2] * 10


async def test_failing_on_batch_hook_does_not_fail_requests() -> None:
    def hook(rows: int) -> None:
        raise RuntimeError("metrics down")

    async with MicroBatcher(FakeModel(), max_batch_size=4, max_delay_ms=1, on_batch=hook) as b:
        assert (await b.submit(_req(1)))["y"].shape == (1, 4)
