"""The bench's settings and the names its parts share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

ECHO_SUBJECT = "bench.echo"
#: the bare nats-py + ONNX Runtime responder's subject (raw float32 rows in, probabilities out).
ORT_SUBJECT = "bench.ort"
READY = "BENCH_READY"
MESH_BUDGET_MS = 5000.0
MiB = 1024.0 * 1024.0

#: one request of a row: takes the request's index, returns the tier (or peer) that answered.
Call = Callable[[int], Awaitable[str]]


@dataclass(frozen=True)
class BenchConfig:
    trials: int
    latency_n: int
    throughput_n: int
    link_latency_n: int
    link_throughput_n: int
    concurrency: int = 64
    warmup_n: int = 20
    link_ms_one_way: float = 20.0

    @classmethod
    def full(cls) -> BenchConfig:
        return cls(
            trials=5, latency_n=400, throughput_n=3000, link_latency_n=40, link_throughput_n=640
        )

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(
            trials=1,
            latency_n=20,
            throughput_n=128,
            link_latency_n=4,
            link_throughput_n=64,
            warmup_n=5,
        )
