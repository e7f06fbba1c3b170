"""Trials of a row: latency at concurrency 1, throughput at ``concurrency``, CPU from the kernel.

CPU time comes from ``/proc/<pid>/schedstat`` (nanoseconds on a CPU, summed over the process's
threads), not from the 10 ms ticks of ``/proc/<pid>/stat``: a trial is a few seconds, and ticks
would round a node's share to whole hundredths of a second. The bench process's own CPU during a
row's throughput phase is the client's (the SDK's) cost: nothing else runs in it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from mesh.dev.bench.config import Call
from mesh.typedefs import Array


@dataclass
class Trial:
    p50_ms: float | None
    p99_ms: float | None
    throughput_rps: float | None
    cpu_ms_per_1k: float | None
    requests: int
    errors: int
    answered_by: Counter[str]
    #: CPU of the row's node process per request of the throughput phase, in microseconds.
    node_cpu_us: float | None = None
    #: CPU of this (the client) process per request of the throughput phase, in microseconds.
    client_cpu_us: float | None = None
    #: mean rows per model call at the node during the throughput phase.
    rows_per_call: float | None = None
    #: the row's device energy per answer over the throughput phase, by its node's ledger, and
    #: what one request and its reply upstream cost it (its energy per answer cloud-only), J.
    device_j_per_answer: float | None = None
    cloud_only_j_per_answer: float | None = None


@dataclass
class Row:
    key: str
    label: str
    call: Call | None
    processes: list[psutil.Process]
    latency_n: int
    throughput_n: int
    note: str = ""
    unavailable: str | None = None
    trials: list[Trial] = field(default_factory=list)
    #: the node whose CPU and batches the throughput phase reports, and its metrics URL.
    node_pid: int | None = None
    metrics_url: str | None = None
    #: the node whose energy ledger the throughput phase reads: its metrics URL and tier.
    energy_url: str | None = None
    energy_tier: str = ""


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all threads, from the scheduler's nanosecond counters."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, ValueError, IndexError),
                open(f"/proc/{pid}/task/{task}/schedstat") as stat,
            ):
                total += int(stat.read().split()[0])
        return total / 1e9
    with contextlib.suppress(psutil.Error):  # no /proc: the ticks psutil can read
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    return 0.0


def processes_cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    return sum(cpu_seconds(proc.pid) for proc in processes)


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


async def batch_totals(session: aiohttp.ClientSession, metrics_url: str) -> tuple[float, float]:
    """(rows, model calls) so far at a node, from its ``mesh_batch_size`` histogram."""
    async with session.get(metrics_url) as resp:
        text = await resp.text()
    rows = calls = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "mesh_batch_size":
            continue
        for sample in family.samples:
            if sample.name == "mesh_batch_size_sum":
                rows += sample.value
            elif sample.name == "mesh_batch_size_count":
                calls += sample.value
    return rows, calls


async def energy_totals(
    session: aiohttp.ClientSession, metrics_url: str, tier: str
) -> tuple[float, float, float | None]:
    """(joules, answers, joules of one request up and its reply) so far at a node of ``tier``,
    from its ``mesh_energy_joules``, ``mesh_requests`` and ``mesh_energy_upstream_joules``."""
    async with session.get(metrics_url) as resp:
        text = await resp.text()
    joules = answers = 0.0
    upstream: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("tier") != tier:
                continue
            if sample.name == "mesh_energy_joules_total":
                joules += sample.value
            elif sample.name == "mesh_requests_total" and sample.labels.get("outcome") != "error":
                answers += sample.value
            elif sample.name == "mesh_energy_upstream_joules":
                upstream = sample.value
    return joules, answers, upstream


async def run_trial(
    row: Row, concurrency: int, session: aiohttp.ClientSession | None = None
) -> Trial:
    assert row.call is not None
    call = row.call
    answered: Counter[str] = Counter()
    errors = 0
    latencies: list[float] = []
    cpu_before = processes_cpu_seconds(row.processes)
    for i in range(row.latency_n):
        started = time.perf_counter()
        try:
            tier = await call(i)
        except Exception:
            errors += 1
            continue
        latencies.append(time.perf_counter() - started)
        answered[tier] += 1
    phase = await _throughput_phase(row, concurrency, session, answered)
    errors += phase.errors
    cpu = processes_cpu_seconds(row.processes) - cpu_before
    requests = row.latency_n + row.throughput_n
    ok_throughput = row.throughput_n - max(0, errors - (row.latency_n - len(latencies)))
    p50 = percentile(latencies, 50)
    p99 = percentile(latencies, 99)
    elapsed = phase.elapsed
    return Trial(
        p50_ms=p50 * 1000 if p50 is not None else None,
        p99_ms=p99 * 1000 if p99 is not None else None,
        throughput_rps=ok_throughput / elapsed if elapsed > 0 else None,
        cpu_ms_per_1k=cpu * 1000 / requests * 1000 if row.processes else None,
        requests=requests,
        errors=errors,
        answered_by=answered,
        node_cpu_us=phase.node_cpu_us,
        client_cpu_us=phase.client_cpu_us,
        rows_per_call=phase.rows_per_call,
        device_j_per_answer=phase.device_j,
        cloud_only_j_per_answer=phase.cloud_only_j,
    )


@dataclass
class _Phase:
    """The figures of a row's throughput phase."""

    elapsed: float
    errors: int
    node_cpu_us: float | None
    client_cpu_us: float | None
    rows_per_call: float | None
    device_j: float | None
    cloud_only_j: float | None


async def _throughput_phase(
    row: Row, concurrency: int, session: aiohttp.ClientSession | None, answered: Counter[str]
) -> _Phase:
    assert row.call is not None
    call = row.call
    next_index = errors = 0

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < row.throughput_n:
            i = next_index
            next_index += 1
            try:
                answered[await call(i)] += 1
            except Exception:
                errors += 1

    metrics_url = row.metrics_url if session is not None else None
    energy_url = row.energy_url if session is not None else None
    batches_before = await batch_totals(session, metrics_url) if session and metrics_url else None
    energy_before = (
        await energy_totals(session, energy_url, row.energy_tier)
        if session is not None and energy_url
        else None
    )
    node_before = cpu_seconds(row.node_pid) if row.node_pid else None
    client_before = cpu_seconds(os.getpid())
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    client_cpu = cpu_seconds(os.getpid()) - client_before
    node_cpu = (
        cpu_seconds(row.node_pid) - node_before
        if row.node_pid is not None and node_before is not None
        else None
    )
    rows_per_call: float | None = None
    if batches_before is not None and session is not None and metrics_url:
        rows, calls = await batch_totals(session, metrics_url)
        if calls > batches_before[1]:
            rows_per_call = (rows - batches_before[0]) / (calls - batches_before[1])
    device_j: float | None = None
    cloud_only_j: float | None = None
    if energy_before is not None and session is not None and energy_url:
        joules, answers, cloud_only_j = await energy_totals(session, energy_url, row.energy_tier)
        if answers > energy_before[1]:
            device_j = (joules - energy_before[0]) / (answers - energy_before[1])
    per_request_us = 1e6 / row.throughput_n if row.throughput_n else None
    return _Phase(
        elapsed,
        errors,
        node_cpu * per_request_us if node_cpu is not None and per_request_us else None,
        client_cpu * per_request_us if per_request_us else None,
        rows_per_call,
        device_j,
        cloud_only_j,
    )


def ort_floor_trial(model_path: Path, rows: Sequence[Array], n: int) -> Trial:
    """Raw ``InferenceSession.run`` on one row, in this process: the floor of any serving."""
    from mesh.node.runtime import OnnxModel

    model = OnnxModel.load(model_path)
    session, name = model.session, model.inputs[0].name
    for x in rows[:20]:
        session.run(None, {name: x})
    times: list[float] = []
    cpu_before = time.process_time()
    for i in range(n):
        x = rows[i % len(rows)]
        started = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu_before
    p50 = percentile(times, 50) or 0.0
    p99 = percentile(times, 99) or 0.0
    return Trial(
        p50_ms=p50 * 1000,
        p99_ms=p99 * 1000,
        throughput_rps=n / sum(times) if times else None,
        cpu_ms_per_1k=cpu * 1000 / n * 1000,
        requests=n,
        errors=0,
        answered_by=Counter({"in-process": n}),
    )


def within_ratio(rows: dict[str, Row], key: str, top: str, bottom: str) -> float | None:
    """Median over the trials of one row of ``top / bottom``, both figures of the same trial."""
    row = rows.get(key)
    if row is None:
        return None
    ratios = [
        getattr(t, top) / getattr(t, bottom)
        for t in row.trials
        if getattr(t, top) is not None and getattr(t, bottom)
    ]
    return float(statistics.median(ratios)) if ratios else None


def paired_ratio(rows: dict[str, Row], top: str, bottom: str, attr: str) -> float | None:
    """Median over trials of ``top.attr / bottom.attr`` within the same trial."""
    a, b = rows.get(top), rows.get(bottom)
    if a is None or b is None:
        return None
    ratios = []
    for ta, tb in zip(a.trials, b.trials, strict=False):
        va, vb = getattr(ta, attr), getattr(tb, attr)
        if va is not None and vb:
            ratios.append(va / vb)
    return float(statistics.median(ratios)) if ratios else None
