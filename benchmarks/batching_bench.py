"""Micro-batching on vs off with a real ONNX model: p50 latency at concurrency 1, throughput at 64.

Builds a logistic regression on the digits data set (as the runtime tests do), then runs every
configuration in interleaved rounds (runs on these machines drift by up to 2x from one minute to
the next) and prints the median over rounds.

    .venv/bin/python benchmarks/batching_bench.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from mesh.node.runtime import ModelRunner, OnnxModel


@dataclass(frozen=True)
class Config:
    label: str
    max_batch_size: int
    inline_below_us: float
    always_wait: bool = False


CONFIGS = [
    Config("off, inline when cheap", 1, 150.0),
    Config("off, always thread", 1, 0.0),
    Config("on (eager), inline when cheap", 32, 150.0),
    Config("on (eager), always thread", 32, 0.0),
    Config("on (fixed 1 ms window), inline", 32, 150.0, always_wait=True),
    Config("on (fixed 1 ms window), thread", 32, 0.0, always_wait=True),
]


def build_model(directory: Path) -> tuple[Path, np.ndarray]:
    data = load_digits()
    pixels = (data.data / 16.0).astype(np.float32)
    clf = LogisticRegression(max_iter=300).fit(pixels, data.target)
    onnx_model = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
    )
    path = directory / "digits-logreg.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    return path, pixels


async def latency_p50_us(runner: ModelRunner, rows: np.ndarray, requests: int) -> float:
    times: list[float] = []
    for i in range(requests):
        feeds = {"input": rows[i % len(rows)][None, :]}
        start = time.perf_counter()
        await runner.infer(feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


async def throughput_rps(
    runner: ModelRunner, rows: np.ndarray, concurrency: int, per_client: int
) -> float:
    async def client(offset: int) -> None:
        for i in range(per_client):
            await runner.infer({"input": rows[(offset + i) % len(rows)][None, :]})

    start = time.perf_counter()
    await asyncio.gather(*(client(c * per_client) for c in range(concurrency)))
    return concurrency * per_client / (time.perf_counter() - start)


async def trial(model: OnnxModel, config: Config, rows: np.ndarray) -> tuple[float, float, float]:
    async with ModelRunner(
        model,
        max_batch_size=config.max_batch_size,
        max_delay_ms=1.0,
        inline_below_us=config.inline_below_us,
        always_wait=config.always_wait,
    ) as runner:
        await latency_p50_us(runner, rows, 200)
        p50 = await latency_p50_us(runner, rows, 2000)
        before = runner.batcher.stats
        rps = await throughput_rps(runner, rows, 64, 200)
        after = runner.batcher.stats
    mean_batch = (after.rows - before.rows) / max(after.batches - before.batches, 1)
    return p50, rps, mean_batch


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, rows = build_model(Path(tmp))
        model = OnnxModel.load(path)
        single = model.warmup()
        per_row = model.per_row_seconds_batched or 0.0
        print(f"model: 1 row {single * 1e6:.1f} us, batched {per_row * 1e6:.2f} us/row")
        results: dict[str, list[tuple[float, float, float]]] = {c.label: [] for c in CONFIGS}
        for _ in range(rounds):
            for config in CONFIGS:
                results[config.label].append(await trial(model, config, rows))
    print(f"{'batching':34} {'p50 c=1 (us)':>13} {'req/s c=64':>11} {'rows/batch':>11}")
    for config in CONFIGS:
        trials = results[config.label]
        p50 = statistics.median(t[0] for t in trials)
        rps = statistics.median(t[1] for t in trials)
        batch = statistics.median(t[2] for t in trials)
        print(f"{config.label:34} {p50:13.1f} {rps:11.0f} {batch:11.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args().rounds))
