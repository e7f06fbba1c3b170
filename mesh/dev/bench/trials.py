"""The schedule: every row warmed up, then interleaved trials. A trial runs each row once (order
rotated per trial), so minute-to-minute drift hits all rows alike; the in-process ONNX Runtime
floor runs after each trial's rows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp

from mesh.dev.bench.config import BenchConfig
from mesh.dev.bench.measure import Row, ort_floor_trial, run_trial
from mesh.typedefs import Array


async def run_trials(
    config: BenchConfig,
    rows: Sequence[Row],
    floor: Row,
    *,
    scraper: aiohttp.ClientSession,
    edge_onnx: Path,
    floor_rows: Sequence[Array],
    progress: Callable[[str], None],
) -> None:
    """Appends each trial's figures to its row's ``trials``."""
    live = [r for r in rows if r.call is not None]
    progress("warming up")
    await _warm_up(config, live, scraper)
    for trial in range(config.trials):
        order = live[trial % len(live) :] + live[: trial % len(live)]
        for row in order:
            progress(f"trial {trial + 1}/{config.trials}: {row.label}")
            row.trials.append(await run_trial(row, config.concurrency, scraper))
        floor.trials.append(
            await asyncio.to_thread(ort_floor_trial, edge_onnx, floor_rows, floor.latency_n)
        )


async def _warm_up(
    config: BenchConfig, live: Sequence[Row], scraper: aiohttp.ClientSession
) -> None:
    warm = config.warmup_n
    for row in live:
        saved = (row.latency_n, row.throughput_n)
        row.latency_n, row.throughput_n = warm, warm
        await run_trial(row, config.concurrency, scraper)
        row.latency_n, row.throughput_n = saved
